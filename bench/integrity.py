"""Kill-and-corrupt loop: kill `run` (SIGKILL) at random moments, damage the store, re-run, and
check that every run ending with exit 0 or 3 left the store equal to its input.

Corruptions, applied in turn after each kill: orphan points written into a shard by another
tool, a deleted segment file, a foreign upload (other vectors for the run's ids, through the
same store path `upload` uses). The store is read back (ids and counts) after every re-run.

    PYTHONPATH=src python bench/integrity.py --kills 10 --seed 1
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

CORRUPTIONS = ("orphans", "segment", "foreign")
COLLECTIONS = {"alpha": 300, "beta": 200, "gamma": 120}


def write_corpus(root: Path) -> dict[str, set[str]]:
    """Three collections of short distinct texts; returns collection -> expected point ids."""
    from embed_collections.stores.open import point_id

    expected = {}
    for name, size in COLLECTIONS.items():
        folder = root / name
        folder.mkdir(parents=True)
        records = [
            {"text": f"{name} record {i}: " + "word " * (i % 40), "metadata": {"chunk_id": f"{i}"}}
            for i in range(size)
        ]
        (folder / f"{name}_chunks.json").write_text(json.dumps(records), encoding="utf-8")
        expected[name] = {point_id(name, str(i)) for i in range(size)}
    return expected


def run_command(chunked: Path, out: Path, model: Path) -> list[str]:
    return [
        sys.executable, "-m", "embed_collections", "run",
        "--chunked-dir", str(chunked), "--output-dir", str(out),
        "--lease-dir", str(out.parent / "leases"), "--models", str(model),
        "--device", "cpu", "--batch-size", "16", "--wave-size", "150", "-q",
    ]  # fmt: skip


def corrupt(kind: str, store_root: Path, rng: random.Random) -> str:
    """Damage one collection of the store; returns what was done."""
    from qdrant_edge import EdgeShard, Point, UpdateOperation

    from embed_collections.stores import PointBatch
    from embed_collections.stores.edge import EdgeStore

    present = [name for name in COLLECTIONS if (store_root / name / "segments").is_dir()]
    if not present:
        return "nothing stored yet"
    name = rng.choice(present)
    try:
        if kind == "orphans":
            shard = EdgeShard.load(str(store_root / name))
            dim = json.loads((store_root / f"{name}.layout.json").read_text())["dense"][""]
            points = [
                Point(str(uuid.uuid4()), {"": [0.1] * dim}, {"text": "orphan"}) for _ in range(3)
            ]
            shard.update(UpdateOperation.upsert_points(points))
            shard.flush()
            shard.close()
            return f"3 orphan points in {name}"
        if kind == "segment":
            segments = sorted((store_root / name / "segments").iterdir())
            (segments[0] / "segment.json").unlink()
            return f"segment.json of {name} deleted"
        with EdgeStore(store_root) as store:
            ids = sorted(store.point_ids(name))[:50]
            dim = store.layout(name).dense[""]  # type: ignore[union-attr]
            vectors = np.full((len(ids), dim), 0.5, dtype=np.float32)
            store.upsert(name, PointBatch(ids=ids, dense={"": vectors}, payloads=[{}] * len(ids)))
            store.finish(name, build_index=False)
        return f"foreign vectors for {len(ids)} points of {name}"
    except Exception as error:  # the killed run may have left it unopenable already
        return f"{kind} on {name} not applied ({error})"[:200]


def read_store(store_root: Path) -> dict[str, set[str]]:
    from embed_collections.stores.edge import EdgeStore

    with EdgeStore(store_root) as store:
        return {name: store.point_ids(name) for name in store.collections()}


def main(argv: list[str] | None = None) -> int:
    """Run the loop; print one line per kill and a JSON result; exit 1 on any violation."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args(argv)
    from embed_collections.engine.tiny_model import build_tiny_model

    rng = random.Random(args.seed)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="integrity-"))
    chunked = work / "Chunked"
    expected = write_corpus(chunked)
    model = build_tiny_model(work / "model", 32, seed=1)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    full = subprocess.run(
        run_command(chunked, work / "calibrate", model), env=env, capture_output=True
    )
    duration = time.perf_counter() - started
    shutil.rmtree(work / "calibrate")
    rows, violations = [], 0
    for kind in CORRUPTIONS:
        out = work / f"out-{kind}"
        for kill in range(args.kills):
            if kill % 3 == 0:
                shutil.rmtree(out / "cache", ignore_errors=True)  # so some kills land in embedding
            delay = rng.uniform(0.5, duration)
            child = subprocess.Popen(
                run_command(chunked, out, model),
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                child.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                child.send_signal(signal.SIGKILL)
                child.wait()
            done = corrupt(kind, out / "qdrant", rng)
            rerun = subprocess.run(
                run_command(chunked, out, model), env=env, capture_output=True, text=True
            )
            stored = read_store(out / "qdrant") if rerun.returncode in (0, 3) else {}
            equal = stored == expected
            bad = rerun.returncode in (0, 3) and not equal
            violations += bad
            row = {"corruption": kind, "kill_at_s": round(delay, 2), "damage": done,
                   "rerun_exit": rerun.returncode, "store_equals_input": equal}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
            if rerun.returncode not in (0, 3):
                print(rerun.stderr[-2000:], file=sys.stderr)
    result = {
        "kills_per_corruption": args.kills,
        "full_run_seconds": round(duration, 1),
        "calibration_exit": full.returncode,
        "reruns": len(rows),
        "reruns_ok": sum(r["rerun_exit"] == 0 for r in rows),
        "violations": violations,
    }
    print(json.dumps(result))
    return 1 if violations or any(r["rerun_exit"] != 0 for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
