"""`eval --tune-weights`: embed a BEIR corpus once, learn weights on one split, score another,
and write the weights file."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embed_collections.atomic import write_json_atomic
from embed_collections.errors import UsageError
from embed_collections.evaluation.beir import index_corpus, load_beir, read_qrels
from embed_collections.evaluation.tuning import (
    DEFAULT_FOLDS,
    TuningResult,
    cached_corpus_vectors,
    cosine_scores,
    exact_metrics,
    judge,
    mask_self_hits,
    one_hot,
    tune_weights,
)
from embed_collections.query.search import QueryEncoder
from embed_collections.record.files import TUNING_FILE, WEIGHTS_FILE
from embed_collections.record.run_record import read_run_record
from embed_collections.record.weights import write_weights_file

log = logging.getLogger(__name__)


@dataclass
class TuningReport:
    """What `eval --tune-weights` measured; `to_json` is what `--json` prints."""

    dataset: str
    tune_split: str
    split: str
    models: list[str]
    member_metrics: list[dict[str, float]]
    ensemble_metrics: dict[str, float]
    tuned_metrics: dict[str, float]
    equal_metrics: dict[str, float]
    result: TuningResult
    weights_file: str
    corpus_size: int
    eval_queries: int
    cache_misses: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """{"members": [...], "ensemble": {...}, "weights": [...], "tuning": {...}} + context."""

        def rounded(metrics: dict[str, float]) -> dict[str, float]:
            return {k: round(v, 5) for k, v in metrics.items()}

        return {
            "members": [
                {"model": m, **rounded(metrics)}
                for m, metrics in zip(self.models, self.member_metrics)
            ],
            "ensemble": {**rounded(self.ensemble_metrics), "split": self.split},
            "weights": [round(w, 4) for w in self.result.weights],
            "tuning": {
                **self.result.to_json(),
                "tuned_weights_on_eval_split": rounded(self.tuned_metrics),
                "equal_weights_on_eval_split": rounded(self.equal_metrics),
            },
            "dataset": self.dataset,
            "split": self.split,
            "tune_split": self.tune_split,
            "models": self.models,
            "weights_file": self.weights_file,
            "corpus_size": self.corpus_size,
            "eval_queries": self.eval_queries,
            "cache_misses": self.cache_misses,
            "seconds": round(self.seconds, 3),
        }


def check_splits(beir_dir: Path, tune_split: str, split: str) -> None:
    """Both qrels splits exist, or a usage error naming those that do."""
    folder = Path(beir_dir) / "qrels"
    available = sorted(p.stem for p in folder.glob("*.tsv")) if folder.is_dir() else []
    for option, name in (("--tune-split", tune_split), ("--split", split)):
        if name not in available:
            raise UsageError(
                f"{option} {name}: {beir_dir} has no qrels/{name}.tsv; available splits: "
                f"{', '.join(available) or 'none'}"
            )


def tune_beir(
    beir_dir: Path,
    config: Any,
    tune_split: str = "train",
    split: str = "test",
    weights_out: Path | None = None,
    folds: int = DEFAULT_FOLDS,
) -> TuningReport:
    """Embed the corpus once through the run's cache, learn weights on `tune_split` by exact
    search, score every member and the ensemble on `split`, and write the weights file."""
    started = time.perf_counter()
    if len(config.models) < 2:
        raise UsageError(
            f"--tune-weights needs at least two models, got {', '.join(config.models)} "
            "(add members with --models A,B)"
        )
    if tune_split == split:
        log.warning(
            "--tune-split and --split are both %s: the weights are scored on the queries they "
            "were learned on, so the scores flatter them (use --tune-split train --split test)",
            split,
        )
    check_splits(beir_dir, tune_split, split)
    dataset = load_beir(beir_dir, tune_split)
    eval_qrels = read_qrels(Path(beir_dir) / "qrels" / f"{split}.tsv")
    tune_queries = dataset.judged_queries()
    if not tune_queries:
        raise UsageError(
            f"qrels/{tune_split}.tsv of {beir_dir} judges no query with a relevant document; "
            "choose another --tune-split"
        )
    eval_queries = {
        qid: dataset.queries[qid]
        for qid, judged in eval_qrels.items()
        if qid in dataset.queries and any(r > 0 for r in judged.values())
    }
    if not eval_queries:
        raise UsageError(
            f"qrels/{split}.tsv of {beir_dir} judges no query with a relevant document; "
            "choose another --split"
        )
    config, summary, _ = index_corpus(dataset, config, upload=False)
    record = read_run_record(config.output_dir)
    corpus_ids, corpus_vectors = cached_corpus_vectors(config, record, dataset.name)
    query_ids = list(dict.fromkeys([*tune_queries, *eval_queries]))
    texts = [dataset.queries[q] for q in query_ids]
    encoder = QueryEncoder.from_record(
        record, config.engine.device, config.output_dir, config.trust_remote_code
    )
    scores = cosine_scores(encoder.per_model(texts), corpus_vectors)
    del corpus_vectors
    mask_self_hits(scores, query_ids, corpus_ids)
    row = {q: i for i, q in enumerate(query_ids)}
    tune_rows = np.array([row[q] for q in tune_queries])
    eval_rows = np.array([row[q] for q in eval_queries])
    tuning = judge(list(tune_queries), dataset.qrels, corpus_ids)
    evaluation = judge(list(eval_queries), eval_qrels, corpus_ids)
    models = [model.name for model in record.models]
    result = tune_weights(scores[:, tune_rows], tuning, models, folds)
    result.split = tune_split
    eval_scores = scores[:, eval_rows]
    members = [
        exact_metrics(eval_scores, one_hot(len(models), i), evaluation, corpus_ids)
        for i in range(len(models))
    ]
    ensemble = exact_metrics(eval_scores, result.weights, evaluation, corpus_ids)
    tuned = exact_metrics(eval_scores, result.tuned_weights, evaluation, corpus_ids)
    equal = exact_metrics(eval_scores, [1.0] * len(models), evaluation, corpus_ids)
    weights_path = Path(weights_out or config.output_dir / WEIGHTS_FILE)
    write_weights_file(
        weights_path,
        models,
        result.weights,
        {"dataset": dataset.name, "tune_split": tune_split, "helps": result.ensemble_helps},
    )
    report = TuningReport(
        dataset=dataset.name,
        tune_split=tune_split,
        split=split,
        models=models,
        member_metrics=members,
        ensemble_metrics=ensemble,
        tuned_metrics=tuned,
        equal_metrics=equal,
        result=result,
        weights_file=str(weights_path),
        corpus_size=len(corpus_ids),
        eval_queries=len(eval_queries),
        cache_misses=summary.extra.cache_misses,
        seconds=time.perf_counter() - started,
    )
    write_json_atomic(config.output_dir / TUNING_FILE, report.to_json())
    log.info(result.message)
    return report
