"""The second stage of a search: a reranker scores (query, text) pairs of the first stage's
candidates and reorders them; hits keep their first-stage cosine and gain `rerank_score`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from embed_collections.engine import Reranker, create_reranker
from embed_collections.errors import UsageError

DEFAULT_RERANK_TOP_N = 50
MAX_RERANK_TOP_N = 1000


def check_rerank_top_n(rerank_top_n: int, top_k: int) -> None:
    """A UsageError unless 1 <= top_k <= rerank_top_n <= MAX_RERANK_TOP_N."""
    if (
        isinstance(rerank_top_n, bool)
        or not isinstance(rerank_top_n, int)
        or not 1 <= rerank_top_n <= MAX_RERANK_TOP_N
    ):
        raise UsageError(
            f"rerank_top_n is {rerank_top_n!r}; give a whole number from 1 to {MAX_RERANK_TOP_N} "
            f"(the first-stage candidates the reranker scores, default {DEFAULT_RERANK_TOP_N})"
        )
    if top_k > rerank_top_n:
        raise UsageError(
            f"top_k {top_k} is above rerank_top_n {rerank_top_n}: the reranker can only return "
            f"candidates it scored (raise rerank_top_n to at least {top_k}, or lower top_k)"
        )


def choose_reranker(
    rerank: bool | str | Path | Reranker | None,
    default: Reranker | None,
    loaded: dict[str, Reranker],
    trust_remote_code: bool = False,
    device: str = "",
) -> Reranker | None:
    """The reranker a search uses: None takes `default` (the one given to `open`/`serve`), False
    none, True `default` (an error without one), a name loads that model once (kept in
    `loaded`), a Reranker is used as given."""
    if rerank is None or rerank is False:
        return default if rerank is None else None
    if rerank is True:
        if default is None:
            raise UsageError(
                "rerank is true but no reranker is loaded: open the run (or start serve) with "
                "--rerank MODEL, or name the model"
            )
        return default
    if isinstance(rerank, Reranker):
        return rerank
    if isinstance(rerank, (str, Path)):
        key = str(rerank)
        if key not in loaded:
            loaded[key] = load_reranker(key, trust_remote_code=trust_remote_code, device=device)
        return loaded[key]
    raise UsageError(f"rerank is {rerank!r}; give a model name or folder, true, false or null")


def load_reranker(
    name: str | Path,
    model_cache_dir: Path | None = None,
    trust_remote_code: bool = False,
    device: str = "",
    max_length: int | None = None,
) -> Reranker:
    """A reranker resolved like an embedding model and loaded now, so a broken one fails first
    (`max_length`: tokens read of each pair, 1 to the model's limit)."""
    if max_length is not None and (isinstance(max_length, bool) or max_length < 1):
        raise UsageError(f"--rerank-max-length is {max_length!r}; give a whole number from 1")
    return create_reranker(
        str(name), model_cache_dir=model_cache_dir, trust_remote_code=trust_remote_code,
        device=device, max_length=max_length,
    ).load()  # fmt: skip


def rerank_many(reranker: Reranker, searches: list[tuple[str, list[Any], int]]) -> list[list[Any]]:
    """Each (query, candidate `SearchHit`s, keep) reordered by the reranker's scores, `keep`
    best each; the pairs of every search are scored in one call (a server's concurrent
    requests together)."""
    pairs = [(query, hit.text) for query, hits, _ in searches for hit in hits]
    scores = reranker.score(pairs).tolist() if pairs else []
    answers, start = [], 0
    for _, hits, keep in searches:
        scored = [
            replace(hit, rerank_score=float(score))
            for hit, score in zip(hits, scores[start : start + len(hits)])
        ]
        start += len(hits)
        # Equal reranker scores keep the first stage's order (sorted is stable).
        scored.sort(key=lambda hit: -(hit.rerank_score or 0.0))
        answers.append(scored[:keep])
    return answers
