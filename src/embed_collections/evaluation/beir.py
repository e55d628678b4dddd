"""Measure retrieval quality on a BEIR-format data set with a run's ensemble (`eval`).

The corpus becomes one chunk file under `<output_dir>/beir/<name>/` and goes through the normal
pipeline, so its vectors land in the same embedding cache as any run and a repeated evaluation
embeds nothing. Queries are embedded once per model, searched in batches in each mode, mapped back
to corpus ids (the `chunk_id` of each point, through its id) and scored with
`metrics.evaluate_run`.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from embed_collections.atomic import write_bytes_atomic, write_json_atomic
from embed_collections.engine import Reranker
from embed_collections.errors import EmbedCollectionsError, UsageError
from embed_collections.evaluation.metrics import evaluate_run
from embed_collections.evaluation.tuning import cached_corpus_vectors, exact_search_metrics
from embed_collections.query.rerank import check_rerank_top_n, load_reranker
from embed_collections.query.search import (
    SEARCH_MODES,
    QueryEncoder,
    build_queries,
    open_run_store,
    resolve_recorded,
    uses_weighted_fusion,
    weighted_named_search,
)
from embed_collections.record.config import RunConfig
from embed_collections.record.files import CORPUS_CHUNK_FILE, EVAL_FILE
from embed_collections.record.run_record import RunRecord, read_run_record
from embed_collections.record.summary import RunSummary
from embed_collections.runner.pipeline import run as run_pipeline
from embed_collections.stores import Store
from embed_collections.stores.open import point_id

log = logging.getLogger(__name__)

SEARCH_LIMIT = 100
SEARCH_BATCH = 256  # queries per store call: large enough to amortise, small enough to stream


@dataclass(frozen=True)
class BeirDataset:
    """A BEIR folder read into memory: corpus id -> (title, text), queries and one qrels split."""

    name: str
    corpus: dict[str, tuple[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]

    def judged_queries(self) -> dict[str, str]:
        """The queries the split judges with at least one relevant document, in qrels order."""
        return {
            qid: self.queries[qid]
            for qid, judged in self.qrels.items()
            if qid in self.queries and any(rel > 0 for rel in judged.values())
        }


@dataclass
class ModeResult:
    """One search mode's scores and speed."""

    mode: str
    metrics: dict[str, float]
    search_seconds: float  # first stage and, for a reranked mode, the reranker
    queries: int
    rerank_seconds: float | None = None  # the reranker's part of search_seconds

    def to_json(self) -> dict[str, Any]:
        rate = self.queries / self.search_seconds if self.search_seconds > 0 else None
        data = {
            **{name: round(value, 5) for name, value in self.metrics.items()},
            "search_seconds": round(self.search_seconds, 3),
            "queries_per_second": round(rate, 1) if rate else None,
            "ms_per_query": round(1000 * self.search_seconds / self.queries, 2)
            if self.queries
            else None,
        }
        if self.rerank_seconds is not None:
            data["rerank_seconds"] = round(self.rerank_seconds, 3)
        return data


@dataclass
class EvalReport:
    """Everything `eval` measured; `to_json` is what `eval_results.json` holds."""

    dataset: str
    beir_dir: str
    split: str
    collection: str
    corpus_size: int
    query_count: int
    models: list[str]
    combine: str
    weights: list[float]
    sparse: str | None
    fusion: str
    rrf_k: int
    index_seconds: float
    embedding_seconds: float
    query_embedding_seconds: float
    cache_hits: int
    cache_misses: int
    storage: dict[str, Any] = field(default_factory=dict)
    vector_ram_bytes_per_point: float | None = None
    disk_bytes_per_point: float | None = None
    modes: dict[str, ModeResult] = field(default_factory=dict)
    reranker: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "modes"}
        for key in ("index_seconds", "embedding_seconds", "query_embedding_seconds"):
            data[key] = round(data[key], 3)
        data["search_limit"] = SEARCH_LIMIT
        data["modes"] = {mode: result.to_json() for mode, result in self.modes.items()}
        return data


def load_beir(folder: Path, split: str = "test") -> BeirDataset:
    """Read `corpus.jsonl`, `queries.jsonl` and `qrels/<split>.tsv`; UsageError on a bad file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"BEIR folder not found: {folder}")
    corpus_file, queries_file = folder / "corpus.jsonl", folder / "queries.jsonl"
    qrels_file = folder / "qrels" / f"{split}.tsv"
    for path in (corpus_file, queries_file, qrels_file):
        if not path.is_file():
            hint = ""
            if path == qrels_file and (folder / "qrels").is_dir():
                splits = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
                hint = f"; available splits: {', '.join(splits) or 'none'} (use --split)"
            raise UsageError(f"BEIR folder {folder} has no {path.relative_to(folder)}{hint}")
    corpus = {
        str(record["_id"]): (str(record.get("title") or ""), str(record.get("text") or ""))
        for record in read_jsonl(corpus_file, ("_id",))
    }
    queries = {
        str(record["_id"]): str(record["text"])
        for record in read_jsonl(queries_file, ("_id", "text"))
    }
    qrels = read_qrels(qrels_file)
    if not corpus:
        raise UsageError(f"{corpus_file} holds no documents")
    missing = [qid for qid in qrels if qid not in queries]
    if missing:
        log.warning(
            "%d judged queries of %s are not in %s (skipped), e.g. %s",
            len(missing),
            qrels_file.name,
            queries_file.name,
            missing[0],
        )
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", folder.resolve().name).strip(".") or "beir"
    return BeirDataset(name, corpus, queries, qrels)


def read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, each holding the `required` keys."""
    records = []
    with path.open(encoding="utf-8-sig") as handle, utf8_only(path):
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise UsageError(f"{path} line {number}: not valid JSON ({error.msg})") from error
            absent = [key for key in required if not isinstance(record, dict) or key not in record]
            if absent:
                raise UsageError(f'{path} line {number}: "{absent[0]}" is missing')
            records.append(record)
    return records


@contextmanager
def utf8_only(path: Path) -> Iterator[None]:
    """Turn a decoding failure while reading `path` into a one-line UsageError."""
    try:
        yield
    except UnicodeDecodeError as error:
        raise UsageError(
            f"{path}: not UTF-8 text ({error.reason}: byte 0x{error.object[error.start]:02x}); "
            "convert the file to UTF-8"
        ) from error


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """`query-id<TAB>corpus-id<TAB>score` rows (a header row is skipped)."""
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8-sig") as handle, utf8_only(path):
        for number, line in enumerate(handle, start=1):
            parts = line.rstrip("\n\r").split("\t")
            if not line.strip() or (number == 1 and parts[0] == "query-id"):
                continue
            try:
                qid, doc, score = parts[0], parts[1], int(float(parts[2]))
            except (IndexError, ValueError) as error:
                raise UsageError(
                    f"{path} line {number}: expected query-id, corpus-id and an integer score "
                    "separated by tabs"
                ) from error
            qrels.setdefault(qid, {})[doc] = score
    return qrels


def write_corpus_chunks(dataset: BeirDataset, path: Path) -> bool:
    """Write the corpus as a chunk file unless that content is already there; True if written."""
    records = [
        {"text": corpus_text(dataset, doc_id), "metadata": {"chunk_id": doc_id, "doc_id": doc_id}}
        for doc_id in dataset.corpus
    ]
    content = json.dumps(records, ensure_ascii=False).encode("utf-8")
    if path.is_file() and path.read_bytes() == content:
        return False
    write_bytes_atomic(path, content)
    return True


def resolve_modes(modes: list[str] | None, sparse: str | None) -> list[str]:
    """The requested modes, or dense (plus sparse and hybrid with sparse vectors); checked."""
    if not modes:
        return ["dense", "sparse", "hybrid"] if sparse else ["dense"]
    unknown = [m for m in modes if m not in SEARCH_MODES]
    if unknown:
        raise UsageError(
            f'Unknown search mode "{unknown[0]}". Choose from {", ".join(SEARCH_MODES)}'
        )
    if not sparse and any(m in ("sparse", "hybrid") for m in modes):
        raise UsageError("Modes sparse and hybrid need sparse vectors: add --sparse bm25")
    return list(dict.fromkeys(modes))


def evaluate_beir(
    beir_dir: Path,
    config: RunConfig,
    modes: list[str] | None = None,
    split: str = "test",
    fusion: str = "rrf",
    rrf_k: int = 60,
    rerank: str | Path | None = None,
    rerank_top_n: list[int] | None = None,
) -> EvalReport:
    """Index the BEIR corpus with `config`'s ensemble (through the cache), search every judged
    query in each mode, score the rankings and write `eval_results.json`.

    `config` supplies the models, weights, combine mode, sparse kind, engine, cache and store;
    its `chunked_dir`, `collections` and `upload` are set here. With `rerank` (a cross-encoder),
    each mode is also scored reranked, as `MODE+rerank@N` for each N of `rerank_top_n` [50].
    """
    chosen = resolve_modes(modes, config.sparse)
    top_ns = list(dict.fromkeys(rerank_top_n or [50]))
    for top_n in top_ns:
        check_rerank_top_n(top_n, 1)
    reranker = None
    if rerank:  # loaded before indexing: a broken reranker fails in seconds
        reranker = load_reranker(
            rerank, trust_remote_code=config.trust_remote_code, device=config.engine.device
        )
    dataset = load_beir(beir_dir, split)
    queries = dataset.judged_queries()
    if not queries:
        raise UsageError(f"No query in {beir_dir} has a relevant document in qrels/{split}.tsv")
    config, summary, index_seconds = index_corpus(dataset, config, upload=True)

    record = read_run_record(config.output_dir)
    encoder = QueryEncoder.from_record(
        record, config.engine.device, config.output_dir, config.trust_remote_code
    )
    texts = list(queries.values())
    started = time.perf_counter()
    encoder = precompute_queries(encoder, texts, chosen)
    embed_seconds = time.perf_counter() - started

    report = EvalReport(
        dataset=dataset.name,
        beir_dir=str(beir_dir),
        split=split,
        collection=dataset.name,
        corpus_size=len(dataset.corpus),
        query_count=len(queries),
        models=[model.name for model in record.models],
        combine=record.combine,
        weights=record.weights,
        sparse=record.sparse.kind if record.sparse else None,
        fusion=fusion,
        rrf_k=rrf_k,
        index_seconds=index_seconds,
        embedding_seconds=sum(
            model["embed_seconds"] + model["load_seconds"]
            for model in summary.extra.models.values()
        ),
        query_embedding_seconds=embed_seconds,
        cache_hits=summary.extra.cache_hits,
        cache_misses=summary.extra.cache_misses,
    )
    measure_storage(report, record, config.output_dir)
    qrels = {qid: dataset.qrels[qid] for qid in queries}
    corpus_ids = list(dataset.corpus)
    store = open_run_store(record, config.qdrant_api_key, config.output_dir)
    try:
        for mode in chosen:
            started = time.perf_counter()
            run = search_all(store, dataset.name, encoder, queries, corpus_ids, mode, fusion, rrf_k)
            seconds = time.perf_counter() - started
            report.modes[mode] = ModeResult(mode, evaluate_run(run, qrels), seconds, len(queries))
            log.info(
                "%s: nDCG@10 %.4f in %.2f s", mode, report.modes[mode].metrics["ndcg@10"], seconds
            )
            for top_n in top_ns if reranker else []:
                assert reranker is not None
                result = reranked_result(reranker, dataset, queries, run, qrels, top_n)
                result.mode = f"{mode}+rerank@{top_n}"
                result.search_seconds += seconds
                report.modes[result.mode] = result
    finally:
        store.close()
    report.reranker = reranker.describe() if reranker else None
    if "dense" in chosen and uses_weighted_fusion(encoder, "dense"):
        report.modes["dense-exact"] = exact_dense_result(config, record, encoder, queries, qrels)
    write_json_atomic(config.output_dir / EVAL_FILE, report.to_json())
    return report


def reranked_result(
    reranker: Reranker,
    dataset: BeirDataset,
    queries: dict[str, str],
    run: dict[str, list[str]],
    qrels: dict[str, dict[str, int]],
    top_n: int,
) -> ModeResult:
    """A first-stage run with each query's first `top_n` documents reordered by the reranker
    (the rest keep their place after them, so Recall@100 compares); all pairs in one call."""
    pairs, spans = [], []
    for qid, text in queries.items():
        head = run.get(qid, [])[:top_n]
        spans.append((qid, head))
        pairs += [(text, corpus_text(dataset, doc)) for doc in head]
    started = time.perf_counter()
    scores = reranker.score(pairs).tolist()
    seconds = time.perf_counter() - started
    reranked: dict[str, list[str]] = {}
    start = 0
    for qid, head in spans:
        own = scores[start : start + len(head)]
        start += len(head)
        order = sorted(range(len(head)), key=lambda i: -own[i])
        reranked[qid] = [head[i] for i in order] + run.get(qid, [])[top_n:]
    metrics = evaluate_run(reranked, qrels)
    log.info("reranked top %d: nDCG@10 %.4f in %.2f s", top_n, metrics["ndcg@10"], seconds)
    return ModeResult(f"rerank@{top_n}", metrics, seconds, len(queries), rerank_seconds=seconds)


def corpus_text(dataset: BeirDataset, doc_id: str) -> str:
    """A corpus document as it was indexed (title, blank line, text)."""
    title, text = dataset.corpus[doc_id]
    return f"{title}\n\n{text}" if title.strip() else text


def measure_storage(report: EvalReport, record: RunRecord, output_dir: Path) -> None:
    """The collection's storage options, the RAM its dense vectors need per point (computed from
    the options: the quantized copy, plus the originals unless on disk) and the disk it takes
    per point (measured: blocks allocated to the embedded store's segments, vectors, index and
    payloads; the write-ahead log's fixed 64 MB aside; None on a server)."""
    if record.layout is None:
        return
    storage = record.layout.storage
    report.storage = storage.to_json()
    report.vector_ram_bytes_per_point = sum(
        storage.ram_bytes(dim) for dim in record.layout.dense.values()
    )
    store_path = resolve_recorded(output_dir, record.store.path)
    if store_path and report.corpus_size:
        segments = store_path / report.collection / "segments"
        size = sum(p.stat().st_blocks * 512 for p in segments.rglob("*") if p.is_file())
        report.disk_bytes_per_point = round(size / report.corpus_size, 1)


def index_corpus(
    dataset: BeirDataset, config: RunConfig, upload: bool
) -> tuple[RunConfig, RunSummary, float]:
    """Write the corpus as a chunk file and run the pipeline on it (embedding through the cache);
    returns the config used, the run's summary and its seconds."""
    chunked_dir = config.output_dir / "beir"
    if write_corpus_chunks(dataset, chunked_dir / dataset.name / CORPUS_CHUNK_FILE):
        log.info("Wrote %d corpus documents to %s", len(dataset.corpus), chunked_dir / dataset.name)
    config = replace(config, chunked_dir=chunked_dir, collections=(dataset.name,), upload=upload)
    started = time.perf_counter()
    summary = run_pipeline(config)
    seconds = time.perf_counter() - started
    if dataset.name in summary.failed_collections:
        raise EmbedCollectionsError(
            f"Indexing the BEIR corpus failed: {summary.failed_collections[dataset.name]}"
        )
    return config, summary, seconds


def exact_dense_result(
    config: RunConfig,
    record: RunRecord,
    encoder: QueryEncoder,
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
) -> ModeResult:
    """Beside a `named` run's weighted fusion in the store: exact search by the same weighted
    cosines in numpy, which is what `concat` with these weights would rank by."""

    started = time.perf_counter()
    corpus_ids, corpus_vectors = cached_corpus_vectors(config, record, config.collections[0])
    dense = encoder.dense(list(queries.values()))
    weights = [spec.weight for spec in encoder.specs]
    per_model = [dense[name] for name in encoder.vector_names]
    metrics = exact_search_metrics(
        per_model, corpus_vectors, weights, list(queries), qrels, corpus_ids
    )
    return ModeResult("dense-exact", metrics, time.perf_counter() - started, len(queries))


@dataclass
class PrecomputedQueryEncoder(QueryEncoder):
    """A QueryEncoder whose vectors for one list of queries were computed once, for every mode."""

    texts: list[str] = field(default_factory=list)
    dense_vectors: dict[str, np.ndarray] = field(default_factory=dict)
    sparse_vectors: list[tuple[list[int], list[float]]] = field(default_factory=list)

    def dense(self, queries: list[str], batch_size: int = 64) -> dict[str, np.ndarray]:
        if queries != self.texts:
            return super().dense(queries, batch_size)
        return self.dense_vectors

    def sparse_queries(self, queries: list[str]) -> list[tuple[list[int], list[float]]]:
        if queries != self.texts:
            return super().sparse_queries(queries)
        return self.sparse_vectors


def precompute_queries(
    encoder: QueryEncoder, texts: list[str], modes: list[str]
) -> PrecomputedQueryEncoder:
    """Embed the queries once per model (not once per mode), as the modes will need them."""
    dense = encoder.dense(texts) if {"dense", "hybrid"} & set(modes) else {}
    sparse = encoder.sparse_queries(texts) if {"sparse", "hybrid"} & set(modes) else []
    return PrecomputedQueryEncoder(
        encoder.specs,
        encoder.combine,
        encoder.vector_names,
        encoder.sparse,
        encoder.device,
        encoder.backends,
        encoder.dtypes,
        encoder.run_device,
        texts=texts,
        dense_vectors=dense,
        sparse_vectors=sparse,
    )


def search_all(
    store: Store,
    collection: str,
    encoder: QueryEncoder,
    queries: dict[str, str],
    corpus_ids: list[str],
    mode: str,
    fusion: str = "rrf",
    rrf_k: int = 60,
) -> dict[str, list[str]]:
    """Ranked corpus ids per query id; a hit whose id is its query's id is dropped (as BEIR does).

    Hits come back without payloads and are mapped to corpus ids through the point ids the
    pipeline derives from `chunk_id`: turning 100 payloads per query into Python objects
    measured 2-5x slower than the search itself.
    """
    by_point = {point_id(collection, doc_id): doc_id for doc_id in corpus_ids}
    ids = list(queries)
    if uses_weighted_fusion(encoder, mode):
        texts = list(queries.values())
        results = weighted_named_search(
            store, collection, encoder, texts, SEARCH_LIMIT, with_payload=False
        )
        return {
            qid: [doc for doc in (by_point.get(h.id, "") for h in hits) if doc and doc != qid]
            for qid, hits in zip(ids, results)
        }
    built = [
        replace(query, with_payload=False)
        for query in build_queries(
            encoder, list(queries.values()), mode, SEARCH_LIMIT, fusion, rrf_k
        )
    ]
    run: dict[str, list[str]] = {}
    for start in range(0, len(built), SEARCH_BATCH):
        results = store.search(collection, built[start : start + SEARCH_BATCH])
        for qid, hits in zip(ids[start : start + SEARCH_BATCH], results):
            ranked = (by_point.get(hit.id, "") for hit in hits)
            run[qid] = [doc for doc in ranked if doc and doc != qid]
    return run
