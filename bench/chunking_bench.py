"""17. Chunking throughput: MB of Markdown per second on one core, `ec.chunk` against the library
it builds on (semantic-text-splitter's MarkdownSplitter counting with the same tokenizer, on
whole pages), median of interleaved repeats.

    RAYON_NUM_THREADS=1 BENCH_RAW=path/to/Raw python bench/chunking_bench.py [--pages 200]

BENCH_RAW: a folder of Markdown pages (the `Raw` tree the corpus was cut from; not shipped).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from common import machine, median, now

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # one core: the tokenizers' thread pool too
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["minilm"])
    args = parser.parse_args()
    from semantic_text_splitter import MarkdownSplitter

    from embed_collections.chunking import chunk_tree, sizing_for

    raw = Path(os.environ.get("BENCH_RAW", "Raw"))
    pages = sorted(raw.rglob("*.md"))[: args.pages]
    work = Path(tempfile.mkdtemp())
    source = work / "src"
    for page in pages:
        target = source / page.relative_to(raw)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(page, target)
    texts = [p.read_text(encoding="utf-8") for p in pages]
    megabytes = sum(len(t.encode()) for t in texts) / 1e6
    sizing = sizing_for(args.models)
    tokenizer = sizing.budgets[0].tokenizer.counter
    library = MarkdownSplitter.from_huggingface_tokenizer(tokenizer, sizing.capacity)
    ours, theirs, floor = [], [], []  # floor: one tokenisation of every page, nothing else
    for repeat in range(args.repeats):
        shutil.rmtree(work / "out", ignore_errors=True)
        started = time.perf_counter()
        report = chunk_tree(source, work / "out", sizing)
        ours.append(megabytes / (time.perf_counter() - started))
        started = time.perf_counter()
        pieces = sum(len(library.chunks(text)) for text in texts)
        theirs.append(megabytes / (time.perf_counter() - started))
        started = time.perf_counter()
        tokenizer.encode_batch(texts, add_special_tokens=False)
        floor.append(megabytes / (time.perf_counter() - started))
        print(
            f"repeat {repeat}: ours {ours[-1]:.2f} MB/s, library {theirs[-1]:.2f} MB/s, "
            f"tokenizer alone {floor[-1]:.2f} MB/s"
        )
    print(f"{now()} {machine()}")
    print(
        f"{len(pages)} pages, {megabytes:.2f} MB, models {args.models}, capacity "
        f"{sizing.capacity} tokens: ec.chunk {median(ours):.2f} MB/s ({report.chunks} chunks, "
        f"written to disk), MarkdownSplitter+tokenizer {median(theirs):.2f} MB/s ({pieces} "
        f"chunks, in memory); ratio {median(ours) / median(theirs):.2f}x; the tokenizer alone "
        f"{median(floor):.2f} MB/s"
    )
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
