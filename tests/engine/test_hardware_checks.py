"""What the engine asks of the machine: GPU drivers, bf16 units, weight sizes, CPU leases."""

from __future__ import annotations

import json
import time

import pytest
from helpers import cli_run_args, run_cli, write_chunks

from embed_collections.engine import devices
from embed_collections.engine.cache import EmbeddingCache, text_digest
from embed_collections.engine.executors.batches import weights_size
from embed_collections.engine.executors.local import embed_pending
from embed_collections.engine.lease import DeviceLease
from embed_collections.engine.models.folders import model_fingerprint
from embed_collections.engine.models.resolve import resolve_model
from embed_collections.engine.options import EngineOptions
from embed_collections.errors import LeaseTimeoutError, UsageError
from embed_collections.record.files import SUMMARY_FILE


@pytest.mark.parametrize(
    ("files", "present"),
    [((), False), (("nvidia0", "nvidiactl"), True), (("kfd",), True), (("dxg",), True)],
)
def test_gpu_drivers_include_wsl2(tmp_path, monkeypatch, files, present):
    monkeypatch.setattr(devices.sys, "platform", "linux")
    monkeypatch.setattr(devices, "DEV", tmp_path)
    for name in files:
        (tmp_path / name).touch()
    assert devices.gpu_driver_present() is present


CPUINFO = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f {extra}\n\nprocessor\t: 1\n"


@pytest.mark.parametrize(("extra", "has"), [("", False), ("avx512_bf16", True), ("amx_bf16", True)])
def test_bfloat16_on_a_cpu_needs_its_units(tmp_path, monkeypatch, extra, has):
    (tmp_path / "cpuinfo").write_text(CPUINFO.format(extra=extra))
    monkeypatch.setattr(devices, "CPUINFO", tmp_path / "cpuinfo")
    assert devices.cpu_has_bfloat16() is has
    if has:
        devices.check_dtype(["cpu"], "bfloat16")
        return
    with pytest.raises(
        UsageError, match=r"^--dtype bfloat16: this CPU has no bf16.*--dtype float32"
    ):
        EngineOptions(device="cpu", dtype="bfloat16").resolved()
    devices.check_dtype(["cpu"], "float32")  # other precisions are not checked


def test_lease_memory_counts_only_the_weights_torch_loads(tmp_path):
    sizes = {
        "model.safetensors": 1000,
        "pytorch_model.bin": 900,  # the same weights: torch prefers safetensors
        "onnx/model.onnx": 5000,
        "onnx/model_O4.bin": 5000,
        "openvino/openvino_model.bin": 5000,
        "training_args.bin": 70,
        "2_Dense/model.safetensors": 100,
        "3_Old/pytorch_model.bin": 10,
    }
    for name, size in sizes.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"\0" * size)
    assert weights_size(tmp_path) == 1000 + 100 + 10


def test_cpu_runs_with_their_own_caches_do_not_queue_unless_they_share_a_lease_dir(
    tmp_path, tiny_models
):
    spec = resolve_model(str(tiny_models["tiny32"]))
    texts = {text_digest(t): t for t in ("one text", "another text")}
    shared = tmp_path / "shared-leases"
    with DeviceLease("someone-else", "cpu", lease_dir=shared):  # another run, busy on the CPU
        opts = EngineOptions(device="cpu", backend="torch", show_progress=False, lease_timeout=0.3)
        opts = opts.resolved()
        fingerprint = model_fingerprint(spec, "torch", opts.dtype)
        with EmbeddingCache(tmp_path / "own" / "embeddings.sqlite") as cache:
            started = time.monotonic()
            telemetry = embed_pending(spec, fingerprint, texts, cache, opts, [])
            assert telemetry.chunks_embedded == 2 and telemetry.lease_wait_seconds < 0.3
            assert (tmp_path / "own" / "leases" / "cpu.lock").exists()  # beside the cache
            assert time.monotonic() - started < 60
        opted_in = EngineOptions(
            device="cpu", backend="torch", show_progress=False, lease_timeout=0.3, lease_dir=shared
        ).resolved()
        with (
            EmbeddingCache(tmp_path / "other" / "embeddings.sqlite") as cache,
            pytest.raises(LeaseTimeoutError, match="held by pid .* for model someone-else since"),
        ):
            embed_pending(spec, fingerprint, texts, cache, opted_in, [])


@pytest.mark.slow
def test_a_lease_timeout_still_writes_the_summary(tmp_path, tiny_models):
    chunked, out = tmp_path / "Chunked", tmp_path / "out"
    write_chunks(chunked / "Alpha" / "a_chunks.json", ["first text", "second text"])
    with DeviceLease("someone-else", "cpu", lease_dir=tmp_path / "leases"):
        args = cli_run_args(chunked, out, [tiny_models["tiny32"]], "--lease-timeout", "0.5")
        result = run_cli(args, tmp_path)
    assert result.code == 1, result.err
    assert "--lease-timeout" in result.err and "Traceback" not in result.err
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert "someone-else" in summary["stopped"]
