"""Device lease: real processes contending for real flock locks in a temporary lease folder."""

from __future__ import annotations

import gc
import json
import logging
import re
import signal
import subprocess
import sys
import threading
import time
import weakref
from datetime import datetime
from pathlib import Path

import pytest

from embed_collections.engine.lease import DeviceLease, LeaseEvent, default_lease_dir
from embed_collections.errors import EmbedCollectionsError, LeaseTimeoutError

# Takes the lease, says so on stdout, holds it, then writes its acquire/release times.
HOLDER = """
import json, sys, time
from datetime import datetime
from embed_collections.engine.lease import DeviceLease

lease_dir, device, model, hold_s, out = sys.argv[1:6]
with DeviceLease(model, device, lease_dir=lease_dir, max_wait_time=10.0):
    acquired = datetime.now().isoformat()
    print("acquired", flush=True)
    sys.stdin.read() if hold_s == "stdin" else time.sleep(float(hold_s))
    released = datetime.now().isoformat()
if out != "-":
    with open(out, "w") as f:
        json.dump({"acquire": acquired, "release": released}, f)
"""


def start_holder(
    lease_dir: Path, hold_s: float | str, out: Path | None = None, device: str = "cpu"
) -> subprocess.Popen[str]:
    """Start a process holding the lease and return once it has acquired it (`hold_s` "stdin":
    until its stdin closes)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lease_dir), device, "holder-model", str(hold_s),
         str(out) if out else "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "acquired"
    return proc


def test_acquire_release_records_events(tmp_path: Path) -> None:
    with DeviceLease("model-a", "cpu", lease_dir=tmp_path) as lease:
        assert lease.is_held
    assert not lease.is_held
    acquire, release = lease.events
    assert (acquire.event_type, acquire.model, acquire.device) == ("acquire", "model-a", "cpu")
    assert 0.0 <= acquire.wait_seconds < 0.5  # free: taken at once, not after a poll
    assert acquire.peak_memory_bytes is None
    assert (release.event_type, release.wait_seconds) == ("release", 0.0)
    assert release.peak_memory_bytes is not None and release.peak_memory_bytes > 1_000_000
    t0, t1 = (datetime.fromisoformat(e.timestamp) for e in lease.events)
    assert t0 <= t1 and t0.tzinfo is None  # local time
    assert all(len(e.timestamp.rsplit(".", 1)[1]) == 6 for e in lease.events)  # microseconds
    assert acquire.to_dict() == {
        "event_type": "acquire", "model": "model-a", "device": "cpu",
        "timestamp": acquire.timestamp, "wait_seconds": acquire.wait_seconds,
        "peak_memory_bytes": None,
    }  # fmt: skip
    assert json.loads(json.dumps(release.to_dict()))["event_type"] == "release"
    assert (tmp_path / "cpu.lock").exists()  # kept: deleting flock files races


def test_release_on_exception_and_idempotent(tmp_path: Path) -> None:
    lease = DeviceLease("model-a", "cpu", lease_dir=tmp_path)
    with pytest.raises(RuntimeError), lease:
        raise RuntimeError("boom")
    lease.release()
    assert [e.event_type for e in lease.events] == ["acquire", "release"]
    with DeviceLease("model-b", "cpu", lease_dir=tmp_path, max_wait_time=0.0) as again:
        assert again.events[0].event_type == "acquire"  # free, so no wait was needed


def test_shared_events_and_hold_drops_model(tmp_path: Path) -> None:
    class Model:
        pass

    events: list[LeaseEvent] = []
    with DeviceLease("a", "cpu", lease_dir=tmp_path, events=events) as lease:
        ref = weakref.ref(lease.hold(Model()))
        assert ref() is not None
    gc.collect()
    assert ref() is None
    with DeviceLease("b", "cpu", lease_dir=tmp_path, events=events) as other:
        assert other.events is events
    assert [(e.model, e.event_type) for e in events] == [
        ("a", "acquire"), ("a", "release"), ("b", "acquire"), ("b", "release"),
    ]  # fmt: skip


def test_two_processes_do_not_overlap(tmp_path: Path, caplog) -> None:
    leases = tmp_path / "leases"
    proc = start_holder(leases, "stdin")
    assert proc.stdin is not None
    with pytest.raises(LeaseTimeoutError):  # held by the other process: no second holder
        DeviceLease("model-b", "cpu", lease_dir=leases, max_wait_time=0.0).acquire()
    caplog.set_level(logging.INFO, logger="embed_collections.engine.lease")
    lease = DeviceLease("model-b", "cpu", lease_dir=leases, max_wait_time=60, check_interval=0.05)
    waiter = threading.Thread(target=lease.acquire)
    waiter.start()
    deadline = time.monotonic() + 60
    while "Waiting for lease on cpu for model model-b" not in caplog.text:
        assert time.monotonic() < deadline and waiter.is_alive()
        time.sleep(0.01)
    assert not lease.is_held  # it waits while the other holds
    proc.stdin.close()  # the holder releases and exits
    assert proc.wait(timeout=30) == 0
    waiter.join(timeout=60)
    assert lease.is_held and lease.events[0].wait_seconds > 0
    assert re.search(rf"held by pid {proc.pid} \(.+\) for model holder-model", caplog.text)
    lease.release()


def test_timeout_names_device_model_and_holder_then_kill_frees(tmp_path: Path) -> None:
    proc = start_holder(tmp_path, 30.0)
    try:
        start = time.monotonic()
        with pytest.raises(LeaseTimeoutError) as info:
            DeviceLease("model-b", "cpu", lease_dir=tmp_path, max_wait_time=0.5).acquire()
        assert time.monotonic() - start >= 0.5
        message = str(info.value)
        assert isinstance(info.value, EmbedCollectionsError)
        assert "\n" not in message
        assert "cpu" in message and "model-b" in message and "--lease-timeout" in message
        assert re.search(
            rf"held by pid {proc.pid} \(.+\) for model holder-model since \d{{4}}-", message
        )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    # flock goes away with the process: no stale lock after a crash.
    with DeviceLease("model-b", "cpu", lease_dir=tmp_path, max_wait_time=0.0) as lease:
        assert lease.is_held


def test_waiting_logs_every_check_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    proc = start_holder(tmp_path, 1.0)
    with (
        caplog.at_level(logging.INFO, logger="embed_collections.engine.lease"),
        DeviceLease("model-b", "cpu", lease_dir=tmp_path, check_interval=0.2, max_wait_time=10),
    ):
        pass
    proc.wait(timeout=10)
    waiting = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Waiting")]
    assert 2 <= len(waiting) <= 6
    assert waiting[0].startswith(
        f"Waiting for lease on cpu for model model-b (held by pid {proc.pid} ("
    )
    assert "for model holder-model since " in waiting[0]  # who, with what command, since when
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("GPU Lease: Acquired for model-b on cpu (waited ") for m in messages)
    assert "GPU Lease: Released for model-b on cpu" in messages


def test_devices_do_not_block_each_other(tmp_path: Path) -> None:
    with DeviceLease("a", "cpu", lease_dir=tmp_path):
        # A second holder of the same device waits even inside one process ...
        with pytest.raises(LeaseTimeoutError):
            DeviceLease("b", "cpu", lease_dir=tmp_path, max_wait_time=0.1).acquire()
        # ... while another device is free at once.
        with DeviceLease("c", "cpu:1", lease_dir=tmp_path, max_wait_time=0.0) as other:
            assert other.lock_path == tmp_path / "cpu_1.lock"
            assert other.events[0].event_type == "acquire"  # free at once: max wait 0


def test_lock_file_names_and_default_dir(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("EMBED_COLLECTIONS_CACHE_HOME", raising=False)
    lease = DeviceLease("m", "cuda:0/x", lease_dir=tmp_path)
    assert lease.lock_path == tmp_path / "cuda_0_x.lock"
    assert default_lease_dir().parts[-2:] == ("embed-collections", "leases")


def test_import_does_not_load_torch() -> None:
    code = "import sys, embed_collections.engine.lease; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.gpu
def test_cuda_memory_wait_and_peak(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    free, _total = torch.cuda.mem_get_info("cuda:0")
    with DeviceLease(
        "m", "cuda:0", lease_dir=tmp_path, required_memory_bytes=2**20, max_wait_time=5
    ) as lease:
        lease.hold(torch.ones(2**20, device="cuda:0"))  # 4 MiB of float32
    peak = lease.events[1].peak_memory_bytes
    assert peak is not None and peak >= 4 * 2**20
    with pytest.raises(LeaseTimeoutError, match="cuda:0.*required.*--lease-timeout"):
        DeviceLease(
            "m", "cuda:0", lease_dir=tmp_path, required_memory_bytes=free * 4, max_wait_time=0.3
        ).acquire()
    # The failed lease released the lock again.
    with DeviceLease("m", "cuda:0", lease_dir=tmp_path, max_wait_time=0.0):
        pass
