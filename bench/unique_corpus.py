"""A copy of some collections with every duplicate text dropped: the case where `run` gains
nothing from deduplication, so `run` vs plain `encode` measures the engine alone.

    python bench/unique_corpus.py --collections Docling     # writes bench/results/unique/Chunked
    python bench/unique_corpus.py --all                     # every collection, 8,505 texts
    python bench/peers.py --corpus bench/results/unique/Chunked --collections Docling \\
        --peers ours st --repeats 3
"""

from __future__ import annotations

import argparse
import json
import shutil

from common import DEFAULT_CORPUS, WORK


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=DEFAULT_CORPUS)
    parser.add_argument("--collections", nargs="+", default=["Docling"])
    parser.add_argument("--all", action="store_true", help="every collection of the corpus")
    args = parser.parse_args()
    from embed_collections.corpus.discovery import discover_collections, find_chunk_files

    found = discover_collections(args.corpus)
    target = WORK / "unique" / "Chunked"
    shutil.rmtree(target, ignore_errors=True)
    seen: set[str] = set()  # across collections: no text is embedded twice anywhere
    for name in sorted(found) if args.all else args.collections:
        kept = dropped = 0
        for path in find_chunk_files(found[name]):
            records = json.loads(path.read_text(encoding="utf-8"))
            unique = [r for r in records if r["text"] not in seen and not seen.add(r["text"])]
            kept, dropped = kept + len(unique), dropped + len(records) - len(unique)
            if not unique:
                continue
            out = target / name / path.relative_to(found[name])
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(unique), encoding="utf-8")
        if kept or not args.all:
            print(f"{name}: {kept} unique texts kept, {dropped} duplicates dropped")
    print(f"{len(seen)} unique texts in all -> {target}")


if __name__ == "__main__":
    main()
