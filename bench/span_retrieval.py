"""18. Our chunks against another chunker's on one retrieval set that does not depend on the
cutting: section headings of the source pages are the queries, and a chunk is relevant to a
heading when its character span in the page overlaps that section's span (the heading's line to
the next heading of the same or a higher level). Heading lines are removed from every chunk, so
a query is never found verbatim. Each chunking becomes a BEIR set, scored by `eval`.

    BENCH_RAW=path/to/Raw BENCH_CORPUS=path/to/Chunked python bench/span_retrieval.py \\
        --pages 150 --out bench/results/spans

The other chunker's spans are its `start_char`/`end_char` where it wrote them; otherwise they
are found by locating its text in the page (whitespace-insensitive). Queries: headings of two
words or more whose text names one section in the sample.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
from collections import Counter
from functools import lru_cache
from pathlib import Path

from common import machine, now

from embed_collections.chunking import chunk_tree, sizing_for
from embed_collections.chunking.structure import find_sections

HEADING_LINE = re.compile(r"^\s{0,3}#{1,6}\s+.*$", re.M)
SPACE = re.compile(r"\s+")


def section_spans(text: str) -> list[tuple[str, int, int]]:
    """(heading, start, end) of every section with its subsections."""
    sections = find_sections(text, "markdown")
    spans = []
    for index, section in enumerate(sections):
        if not section.level:
            continue
        end = len(text)
        for later in sections[index + 1 :]:
            if later.level and later.level <= section.level:
                end = later.start
                break
        spans.append((section.heading, section.start, end))
    return spans


@lru_cache(maxsize=4)
def collapsed(raw: str) -> tuple[str, list[int]]:
    """`raw` with whitespace runs as one space, and each kept character's index in `raw`."""
    positions, chars = [], []
    for index, char in enumerate(raw):
        if char.isspace():
            if chars and chars[-1] == " ":
                continue
            char = " "
        chars.append(char)
        positions.append(index)
    return "".join(chars), positions


def locate(raw: str, text: str, cursor: int) -> tuple[int, int] | None:
    """Where `text` lies in `raw`, comparing with whitespace collapsed."""
    haystack, positions = collapsed(raw)
    needle = SPACE.sub(" ", text).strip()
    if not needle:
        return None
    head, tail = needle[:80], needle[-80:]
    start = haystack.find(head, _collapsed_index(positions, cursor))
    if start < 0:
        start = haystack.find(head)
    if start < 0:
        return None
    end = haystack.find(tail, start)
    end = end + len(tail) if end >= 0 else start + len(needle)
    return positions[start], positions[min(end, len(positions)) - 1] + 1


def _collapsed_index(positions: list[int], raw_index: int) -> int:
    from bisect import bisect_left

    return bisect_left(positions, raw_index)


def spans_of(records: list[dict], raw: str) -> list[tuple[int, int, str]]:
    """(start, end, text) of every chunk, located where the file does not say."""
    out, cursor = [], 0
    for record in records:
        meta = record.get("metadata") or {}
        text = str(record.get("text", ""))
        if isinstance(meta.get("start_char"), int) and isinstance(meta.get("end_char"), int):
            span = (meta["start_char"], meta["end_char"])
        else:
            span = locate(raw, text, cursor)
        if span is None:
            continue
        cursor = span[0]
        out.append((span[0], span[1], text))
    return out


def build_set(pages, chunks_of, label: str) -> tuple[list, dict, list]:
    """One chunking's corpus, queries and judgements (query, chunk)."""
    headings: Counter[str] = Counter()
    page_spans = {}
    for relative, raw in pages.items():
        spans = [s for s in section_spans(raw) if len(s[0].split()) >= 2]
        page_spans[relative] = spans
        headings.update(h.lower() for h, _, _ in spans)
    corpus, qrels, queries = [], [], {}
    for relative, raw in pages.items():
        chunks = spans_of(chunks_of(relative), raw)
        for number, (start, end, text) in enumerate(chunks):
            body = HEADING_LINE.sub("", text).strip()
            if len(body) < 20:
                continue
            doc_id = f"{label}:{relative}#{number}"
            corpus.append({"_id": doc_id, "title": "", "text": body})
            SPANS[doc_id] = (relative, start, end)
            for heading, a, b in page_spans[relative]:
                if headings[heading.lower()] == 1 and start < b and a < end:
                    query_id = f"q:{relative}:{a}"
                    queries[query_id] = heading
                    SECTIONS[query_id] = (relative, a, b)
                    qrels.append((query_id, doc_id))
    return corpus, queries, qrels


SPANS: dict[str, tuple[str, int, int]] = {}  # chunk id -> (page, start, end)
SECTIONS: dict[str, tuple[str, int, int]] = {}  # query id -> the section's (page, start, end)


def write_set(out: Path, corpus: list, queries: dict, qrels: list, keep: set) -> dict:
    """A BEIR folder holding only the queries in `keep` (those both chunkings can answer)."""
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    with (out / "corpus.jsonl").open("w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in corpus)
    kept = {q: t for q, t in queries.items() if q in keep}
    with (out / "queries.jsonl").open("w") as handle:
        handle.writelines(json.dumps({"_id": q, "text": t}) + "\n" for q, t in kept.items())
    lines = [f"{q}\t{d}\t1" for q, d in qrels if q in keep]
    (out / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(lines))
    return {"chunks": len(corpus), "queries": len(kept), "judgements": len(lines)}


def span_scores(corpus: list, queries: dict, spans: dict, sections: dict) -> dict:
    """Dense scores that do not depend on the cutting: span recall@10 (the share of the
    section's characters the top 10 chunks cover), hit@10 and MRR@10 (the first chunk that
    overlaps the section). MiniLM through sentence-transformers, exact cosine (searching the
    run's store one query at a time took 0.7 s a query on the loaded machine)."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from embed_collections.engine import locate_model

    model = SentenceTransformer(
        str(locate_model("sentence-transformers/all-MiniLM-L6-v2", None)[0])
    )
    documents = model.encode(
        [row["text"] for row in corpus], batch_size=64, normalize_embeddings=True
    )
    query_ids = list(queries)
    asked = model.encode([queries[q] for q in query_ids], batch_size=64, normalize_embeddings=True)
    ranked = np.argsort(-(asked @ documents.T), axis=1)[:, :10]
    recall = hits = reciprocal = 0.0
    for row, query_id in enumerate(query_ids):
        relative, a, b = sections[query_id]
        covered: list[tuple[int, int]] = []
        first = 0
        for rank, index in enumerate(ranked[row], 1):
            page, start, end = spans[corpus[index]["_id"]]
            if page == relative and start < b and a < end:
                covered.append((max(a, start), min(b, end)))
                first = first or rank
        recall += union_length(covered) / max(1, b - a)
        hits += bool(first)
        reciprocal += 1 / first if first else 0.0
    count = max(1, len(query_ids))
    return {
        "span_recall@10": round(recall / count, 5),
        "hit@10": round(hits / count, 5),
        "mrr@10": round(reciprocal / count, 5),
    }


def union_length(intervals: list[tuple[int, int]]) -> int:
    total, reach = 0, -1
    for start, end in sorted(intervals):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pages", type=int, default=150)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("bench/results/spans"))
    args = parser.parse_args()
    raw_root = Path(os.environ.get("BENCH_RAW", "Raw"))
    chunked_root = Path(os.environ.get("BENCH_CORPUS", "Chunked"))
    every = sorted(p.relative_to(raw_root).as_posix() for p in raw_root.rglob("*.md"))
    chosen = sorted(random.Random(args.seed).sample(every, min(args.pages, len(every))))
    pages = {rel: (raw_root / rel).read_text(encoding="utf-8") for rel in chosen}
    shutil.rmtree(args.out, ignore_errors=True)
    source = args.out / "pages"
    for rel, text in pages.items():
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_text(text, encoding="utf-8")
    ours_dir = args.out / "ours_chunked"
    report = chunk_tree(source, ours_dir, sizing_for(["minilm"], args.chunk_size))

    def ours(rel: str) -> list[dict]:
        return json.loads((ours_dir / (rel.removesuffix(".md") + "_chunks.json")).read_text())

    def theirs(rel: str) -> list[dict]:
        path = chunked_root / (rel.removesuffix(".md") + "_chunks.json")
        return json.loads(path.read_text()) if path.exists() else []

    built = {
        "ours": build_set(pages, ours, "ours"),
        "original": build_set(pages, theirs, "original"),
    }
    keep = set(built["ours"][1]) & set(built["original"][1])
    results = {}
    for label, (corpus, queries, qrels) in built.items():
        counts = write_set(args.out / label, corpus, queries, qrels, keep)
        command = [sys.executable, "-m", "embed_collections", "eval", "--beir"]
        command += [args.out / label, "--output-dir", args.out / f"{label}_eval"]
        command += ["--models", "minilm", "--sparse", "bm25", "--device", "cpu", "-q", "--json"]
        command += ["--cache-dir", args.out / "cache", "--lease-dir", args.out / "leases"]
        done = subprocess.run(list(map(str, command)), capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"eval of {label} failed: {done.stderr[-2000:]}")
        kept = {q: t for q, t in queries.items() if q in keep}
        spans = span_scores(corpus, kept, SPANS, SECTIONS)
        results[label] = {"counts": counts, "eval": json.loads(done.stdout), "spans": spans}
    (args.out / "span_results.json").write_text(json.dumps(results, indent=2))
    print(
        f"{now()} {machine()}; {len(pages)} pages (seed {args.seed}); ours: {report.chunks} chunks"
    )
    for label, result in results.items():
        print(label, result["counts"])
        for mode in ("dense", "sparse", "hybrid"):
            print(f"  {mode}: {result['eval']['modes'][mode]}")
        print(f"  spans: {result['spans']}")


if __name__ == "__main__":
    main()
