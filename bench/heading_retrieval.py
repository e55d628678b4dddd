"""Build a BEIR-format retrieval set from a chunk tree: section headings are the queries, the
chunks of that section (with their heading lines removed) are the relevant documents.

Used to measure ensemble weights (README, "Choosing ensemble weights"):

    python bench/heading_retrieval.py --chunked-dir $BENCH_CORPUS \\
        --out bench/results/headings --max-chunks 2000

Only headings that name one section are kept: a heading text found in more than one source file
("Overview", "Installation") is ambiguous and dropped, as are headings of fewer than two words.
The corpus is a seeded sample of `--max-chunks` eligible chunks (all of them with 0); a query is
kept when at least one of its chunks is in the sample. Queries are split at random (seeded) into
`train` and `test` qrels.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import defaultdict
from pathlib import Path

HEADING_LINE = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
MIN_TEXT = 80  # characters left after removing headings; shorter chunks are headings only


def heading_of(record: dict) -> str:
    """The chunk's section heading: metadata heading_text, else the last section_path entry,
    else its first markdown heading line."""
    metadata = record.get("metadata") or {}
    heading = metadata.get("heading_text") or ""
    path = metadata.get("section_path") or []
    if not heading and path:
        heading = str(path[-1])
    if not heading:
        for line in str(record.get("text", "")).splitlines():
            match = HEADING_LINE.match(line)
            if match:
                heading = match.group(1)
                break
    return " ".join(re.sub(r"[`*_]", "", heading).split())


def body_of(text: str) -> str:
    """The chunk without its markdown heading lines (so the query is not copied verbatim)."""
    return "\n".join(line for line in text.splitlines() if not HEADING_LINE.match(line)).strip()


def build(chunked_dir: Path, out: Path, max_chunks: int, test_share: float, seed: int) -> dict:
    """Write corpus.jsonl, queries.jsonl, qrels/train.tsv and qrels/test.tsv; return counts."""
    sections: dict[str, list[tuple[str, str]]] = defaultdict(list)  # heading -> (doc id, body)
    files_of: dict[str, set[str]] = defaultdict(set)
    spelled: dict[str, str] = {}  # lower-cased heading -> its first spelling
    for path in sorted(chunked_dir.rglob("*_chunks.json")):
        records = json.loads(path.read_text(encoding="utf-8"))
        for index, record in enumerate(records if isinstance(records, list) else []):
            heading = heading_of(record)
            body = body_of(str(record.get("text", "")))
            if len(heading.split()) < 2 or len(body) < MIN_TEXT:
                continue
            doc_id = f"{path.relative_to(chunked_dir).as_posix()}#{index}"
            sections[heading.lower()].append((doc_id, body))
            spelled.setdefault(heading.lower(), heading)
            files_of[heading.lower()].add(str(path))
    specific = {h: docs for h, docs in sections.items() if len(files_of[h]) == 1}
    chunks = sorted((doc, body, h) for h, docs in specific.items() for doc, body in docs)
    rng = random.Random(seed)
    rng.shuffle(chunks)
    if max_chunks:
        chunks = chunks[:max_chunks]
    relevant: dict[str, list[str]] = defaultdict(list)
    for doc, _, heading in chunks:
        relevant[heading].append(doc)
    headings = sorted(relevant)
    rng.shuffle(headings)
    query_ids = {heading: f"q{i}" for i, heading in enumerate(headings)}
    test = set(headings[: round(len(headings) * test_share)])
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    with (out / "corpus.jsonl").open("w", encoding="utf-8") as handle:
        for doc, body, _ in sorted(chunks):
            handle.write(json.dumps({"_id": doc, "title": "", "text": body}) + "\n")
    with (out / "queries.jsonl").open("w", encoding="utf-8") as handle:
        for heading in headings:
            handle.write(json.dumps({"_id": query_ids[heading], "text": spelled[heading]}) + "\n")
    for split, chosen in (
        ("train", [h for h in headings if h not in test]),
        ("test", sorted(test)),
    ):
        rows = [f"{query_ids[h]}\t{doc}\t1" for h in chosen for doc in sorted(relevant[h])]
        text = "query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n"
        (out / "qrels" / f"{split}.tsv").write_text(text, encoding="utf-8")
    counts = {
        "corpus": len(chunks),
        "queries": len(headings),
        "train_queries": len(headings) - len(test),
        "test_queries": len(test),
        "eligible_chunks": sum(len(d) for d in specific.values()),
    }
    (out / "build.json").write_text(
        json.dumps({**counts, "max_chunks": max_chunks, "seed": seed, "test_share": test_share})
    )
    return counts


def main() -> None:
    """Parse the options and build the set."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunked-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-chunks", type=int, default=2000, help="0: every eligible chunk")
    parser.add_argument("--test-share", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args()
    counts = build(args.chunked_dir, args.out, args.max_chunks, args.test_share, args.seed)
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
