"""Kill-and-corrupt loop: kill `run` (SIGKILL) at random moments, damage the store, re-run, and
check that every run ending with exit 0 or 3 left the store equal to its input.

Corruptions, applied in turn after each kill: orphan points written into a shard by another
tool, a deleted segment file, a foreign upload (other vectors for the run's ids, through the
same store path `upload` uses), a vector file truncated to 0 bytes, 2 KB of random bytes written
into a vector file, one point deleted and one foreign point added (the count stays). After every
re-run the store is read back: ids, and every vector against the reference run's (finite, equal).

Two more loops: `--worker-kills N` kills one of two CPU workers (`--device cpu:0,cpu:1`) at a
random moment and counts runs that hang (no exit within --hang-after seconds) or leave a wrong
store; `--full-disk N` (root: mounts a 30 MB tmpfs) fills the disk while the run writes its
store and counts SIGBUS deaths and runs without a readable summary.

    PYTHONPATH=src python bench/integrity.py --kills 10 --seed 1 --worker-kills 20 --full-disk 20
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

CORRUPTIONS = ("orphans", "segment", "foreign", "truncate", "random", "swap")
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
        if kind in ("truncate", "random"):
            files = sorted((store_root / name / "segments").glob("*/vector_storage/*/chunk_*.mmap"))
            if not files:
                return f"{kind} on {name} not applied (no vector file)"
            target = rng.choice(files)
            if kind == "truncate":
                target.write_bytes(b"")
                return f"{target.relative_to(store_root)} truncated to 0 bytes"
            with target.open("r+b") as handle:
                handle.seek(rng.randrange(0, 4096))
                handle.write(rng.randbytes(2048))
            return f"2 KB of random bytes in {target.relative_to(store_root)}"
        if kind == "swap":
            shard = EdgeShard.load(str(store_root / name))
            dim = json.loads((store_root / f"{name}.layout.json").read_text())["dense"][""]
            victim = sorted(COLLECTION_IDS[name])[rng.randrange(COLLECTIONS[name])]
            shard.update(UpdateOperation.delete_points([victim]))
            foreign = Point(str(uuid.uuid4()), {"": [0.1] * dim}, {"text": "foreign"})
            shard.update(UpdateOperation.upsert_points([foreign]))
            shard.flush()
            shard.close()
            return f"one point of {name} deleted, one foreign point added"
        with EdgeStore(store_root) as store:
            ids = sorted(store.point_ids(name))[:50]
            dim = store.layout(name).dense[""]  # type: ignore[union-attr]
            vectors = np.full((len(ids), dim), 0.5, dtype=np.float32)
            store.upsert(name, PointBatch(ids=ids, dense={"": vectors}, payloads=[{}] * len(ids)))
            store.finish(name, build_index=False)
        return f"foreign vectors for {len(ids)} points of {name}"
    except Exception as error:  # the killed run may have left it unopenable already
        return f"{kind} on {name} not applied ({error})"[:200]


COLLECTION_IDS: dict[str, set[str]] = {}


def read_store(store_root: Path) -> dict[str, dict[str, np.ndarray]]:
    """collection -> point id -> vector, read straight from every shard of a copy of the store
    (opening a shard rewrites some of its files: reading the store itself would send every
    collection of the next run to the full read-back, and the stat check would go untested)."""
    with tempfile.TemporaryDirectory(prefix="read-store-") as scratch:
        copy = Path(scratch) / "qdrant"  # sparse: the shards' 32 MB files are mostly holes
        subprocess.run(["cp", "-a", "--sparse=always", str(store_root), str(copy)], check=True)
        return read_shards(copy)


def read_shards(store_root: Path) -> dict[str, dict[str, np.ndarray]]:
    from qdrant_edge import EdgeShard, ScrollRequest

    found = {}
    for layout in sorted(store_root.glob("*.layout.json")):
        name = layout.name.removesuffix(".layout.json")
        shard = EdgeShard.load(str(store_root / name))
        try:
            records, _ = shard.scroll(ScrollRequest(limit=100_000, with_vector=True))
            found[name] = {str(r.id): np.asarray(r.vector, dtype=np.float32) for r in records}
        finally:
            shard.close()
    return found


def equals(stored: dict, reference: dict) -> bool:
    """Same collections, same ids, every vector finite and equal to the reference run's."""
    if {n: set(p) for n, p in stored.items()} != {n: set(p) for n, p in reference.items()}:
        return False
    return all(
        np.isfinite(vector).all() and np.allclose(vector, reference[name][pid], atol=1e-5)
        for name, points in stored.items()
        for pid, vector in points.items()
    )


def main(argv: list[str] | None = None) -> int:
    """Run the loop; print one line per kill and a JSON result; exit 1 on any violation."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--corruptions", type=int, default=len(CORRUPTIONS))
    parser.add_argument("--worker-kills", type=int, default=0)
    parser.add_argument("--hang-after", type=float, default=300)
    parser.add_argument("--full-disk", type=int, default=0)
    args = parser.parse_args(argv)
    from embed_collections.engine.models.tiny import build_tiny_model

    rng = random.Random(args.seed)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="integrity-"))
    chunked = work / "Chunked"
    COLLECTION_IDS.update(write_corpus(chunked))
    model = build_tiny_model(work / "model", 32, seed=1)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    full = subprocess.run(
        run_command(chunked, work / "calibrate", model), env=env, capture_output=True
    )
    duration = time.perf_counter() - started
    reference = read_store(work / "calibrate" / "qdrant")
    shutil.rmtree(work / "calibrate")
    rows, violations = [], 0
    for kind in CORRUPTIONS[: args.corruptions]:
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
            equal = rerun.returncode in (0, 3) and equals(read_store(out / "qdrant"), reference)
            bad = rerun.returncode in (0, 3) and not equal
            violations += bad
            row = {"corruption": kind, "kill_at_s": round(delay, 2), "damage": done,
                   "rerun_exit": rerun.returncode, "store_equals_input": equal}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
            if rerun.returncode not in (0, 3):
                print(rerun.stderr[-2000:], file=sys.stderr)
    workers = worker_kills(args, chunked, work, model, env, reference, rng, duration)
    disk = full_disk(args, chunked, work, model, env)
    result = {
        "kills_per_corruption": args.kills,
        "full_run_seconds": round(duration, 1),
        "calibration_exit": full.returncode,
        "reruns": len(rows),
        "reruns_ok": sum(r["rerun_exit"] == 0 for r in rows),
        "violations": violations,
        "worker_kills": workers,
        "full_disk": disk,
    }
    print(json.dumps(result))
    failed = violations or any(r["rerun_exit"] != 0 for r in rows)
    failed = failed or workers.get("hangs") or workers.get("wrong_stores")
    return 1 if failed or disk.get("sigbus") or disk.get("no_summary") else 0


def worker_kills(args, chunked, work, model, env, reference, rng, duration) -> dict:
    """Kill one of two CPU workers at a random moment; the run must end and the store be right."""
    hangs = wrong = 0
    exits: list[int | None] = []
    for attempt in range(args.worker_kills):
        out = work / f"out-workers-{attempt}"
        command = [*run_command(chunked, out, model), "--device", "cpu:0,cpu:1"]
        child = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + rng.uniform(0.5, duration)
        killed = None
        while time.monotonic() < deadline + 60 and killed is None and child.poll() is None:
            workers = children_of(child.pid)
            if workers and time.monotonic() >= deadline:
                killed = rng.choice(workers)
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.002)
        try:
            child.wait(timeout=args.hang_after)
        except subprocess.TimeoutExpired:
            hangs += 1
            child.kill()
            child.wait()
        exits.append(child.returncode)
        if child.returncode in (0, 3) and not equals(read_store(out / "qdrant"), reference):
            wrong += 1
        print(json.dumps({"worker_kill": attempt, "killed_pid": killed,
                          "exit": child.returncode}), flush=True)  # fmt: skip
    return {"tries": args.worker_kills, "hangs": hangs, "wrong_stores": wrong, "exits": exits}


def children_of(pid: int) -> list[int]:
    """The spawned worker processes of run `pid` (not its forked store process, which runs the
    same command line as the run itself)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        own = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    workers = []
    for child in map(int, text.split()):
        try:
            if Path(f"/proc/{child}/cmdline").read_bytes() != own:
                workers.append(child)
        except OSError:
            continue
    return workers


def full_disk(args, chunked, work, model, env) -> dict:
    """Fill a 30 MB tmpfs while the run writes its store: never SIGBUS, always a summary."""
    if not args.full_disk:
        return {}
    sigbus = no_summary = 0
    exits: list[int] = []
    disk = work / "disk30"
    disk.mkdir(exist_ok=True)
    for attempt in range(args.full_disk):
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=30m", "tmpfs", str(disk)], capture_output=True
        )
        if mounted.returncode:
            return {"skipped": mounted.stderr.decode().strip()}
        try:
            out = disk / "out"
            command = run_command(chunked, out, model)
            command += ["--cache-dir", str(work / f"disk-cache-{attempt % 2}")]
            child = subprocess.Popen(
                command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            deadline = time.monotonic() + 120
            while child.poll() is None and time.monotonic() < deadline:
                if (out / "qdrant").is_dir() and any((out / "qdrant").iterdir()):
                    break
                time.sleep(0.005)
            with (disk / "filler").open("wb") as handle:
                try:
                    while True:
                        handle.write(b"\0" * 262144)
                        handle.flush()
                except OSError:
                    pass
            err = child.communicate(timeout=600)[1].decode(errors="replace")
            exits.append(child.returncode)
            sigbus += child.returncode in (-signal.SIGBUS, 128 + signal.SIGBUS)
            stopped = ""
            try:
                summary = json.loads((out / "embedding_summary_v6.json").read_text())
                no_summary += "running" in summary
                stopped = str(summary.get("stopped", ""))[:90]
            except (OSError, ValueError):
                no_summary += 1
            if "Traceback" in err:
                print(err[-1500:], file=sys.stderr)
            row = {"full_disk": attempt, "exit": child.returncode, "stopped": stopped}
            print(json.dumps(row), flush=True)
        finally:
            subprocess.run(["umount", "-l", str(disk)], check=False)
    return {"tries": args.full_disk, "sigbus": sigbus, "no_summary": no_summary, "exits": exits}


if __name__ == "__main__":
    sys.exit(main())
