"""`--wave-size auto`: the size from a memory figure, the figure from /proc and cgroup files, and a
run that honours it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from helpers import read_points, read_summary, write_chunks

from embed_collections.engine.options import EngineOptions
from embed_collections.record.config import RunConfig, build_run_config
from embed_collections.runner import wavesize
from embed_collections.runner.pipeline import run
from embed_collections.runner.wavesize import (
    BYTES_PER_CHUNK,
    GIB,
    MIN_WAVE_SIZE,
    Memory,
    auto_wave_size,
    available_memory,
    decide_wave_size,
)

COLLECTION_CHUNKS = 1_000


def test_the_auto_size_is_a_quarter_of_the_available_memory_in_chunks():
    assert BYTES_PER_CHUNK == 4096
    assert auto_wave_size(16 * GIB) == 1_048_000  # 4 GiB / 4 KiB, rounded down to thousands
    assert auto_wave_size(8 * GIB) == 524_000
    assert auto_wave_size(4 * 4096 * 2_000) == 2_000
    assert auto_wave_size(0) == MIN_WAVE_SIZE  # a machine that reports nothing free still works
    size, note = decide_wave_size(None, Memory(8 * GIB, 16 * GIB, "meminfo"))
    assert size == 524_000 and note["wave_size_from"] == "memory (meminfo)"
    assert note["memory_available_bytes"] == 8 * GIB
    assert decide_wave_size(600, Memory(8 * GIB, 16 * GIB, "meminfo"))[0] == 600  # the user wins


def write_proc(root: Path, available_kb: int, cgroup: str) -> Path:
    (root / "self").mkdir(parents=True)
    (root / "meminfo").write_text(
        f"MemTotal:       33554432 kB\nMemFree:         1000000 kB\n"
        f"MemAvailable:   {available_kb} kB\nBuffers:          1000 kB\n"
    )
    (root / "self" / "cgroup").write_text(cgroup)
    return root


def test_available_memory_is_the_lower_of_the_machine_and_its_cgroup(tmp_path):
    proc = write_proc(tmp_path / "proc", 16 * 2**20, "0::/kubepods/pod1/box\n")
    cgroup = tmp_path / "cgroup"
    box = cgroup / "kubepods" / "pod1" / "box"
    box.mkdir(parents=True)
    (box / "memory.max").write_text("max\n")  # no limit on the container itself ...
    (box.parent / "memory.max").write_text(f"{2 * GIB}\n")  # ... but on its pod
    (box.parent / "memory.current").write_text(f"{GIB // 2}\n")
    memory = available_memory(proc, cgroup)
    assert memory == Memory(GIB + GIB // 2, 2 * GIB, "cgroup")
    (box.parent / "memory.max").write_text("max\n")
    assert available_memory(proc, cgroup) == Memory(16 * GIB, 32 * GIB, "meminfo")
    v1 = write_proc(tmp_path / "proc1", 16 * 2**20, "4:memory:/job\n0::/\n")
    (cgroup / "memory" / "job").mkdir(parents=True)
    (cgroup / "memory" / "job" / "memory.limit_in_bytes").write_text(f"{4 * GIB}\n")
    (cgroup / "memory" / "job" / "memory.usage_in_bytes").write_text(f"{GIB}\n")
    assert available_memory(v1, cgroup) == Memory(3 * GIB, 4 * GIB, "cgroup")
    (cgroup / "memory" / "job" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert available_memory(v1, cgroup).source == "meminfo"  # v1's "no limit"
    bare = tmp_path / "bare"
    bare.mkdir()
    assert available_memory(bare, tmp_path / "none").source == "sysconf"


def test_wave_size_option_takes_auto_or_a_number():
    assert build_run_config("c", "o", {"wave_size": "auto"}).wave_size is None
    assert build_run_config("c", "o", {}).wave_size is None
    assert build_run_config("c", "o", {"wave_size": 600}).wave_size == 600
    with pytest.raises(Exception, match="wave_size 0 is not a number of chunks"):
        build_run_config("c", "o", {"wave_size": 0})


def test_a_run_cuts_its_waves_by_the_auto_size(tiny_models, tmp_path, monkeypatch):
    corpus = tmp_path / "Chunked"
    for n in range(5):  # 5 collections of 1,000 chunks: waves of 2,000 make 3 waves
        texts = [f"collection {n} note {i}" for i in range(COLLECTION_CHUNKS)]
        write_chunks(corpus / f"c{n}" / f"c{n}_chunks.json", texts)
    figure = Memory(4 * BYTES_PER_CHUNK * 2_000, 16 * GIB, "cgroup")
    monkeypatch.setattr(wavesize, "available_memory", lambda: figure)
    engine = EngineOptions(device="cpu", backend="torch", show_progress=False).resolved()
    config = RunConfig(
        chunked_dir=corpus,
        output_dir=tmp_path / "out",
        models=(str(tiny_models["tiny32"]),),
        engine=engine,
        build_index=False,
    )
    summary = run(config)
    assert summary.exit_code == 0
    extra = read_summary(config.output_dir)
    assert (extra["wave_size"], extra["waves"]) == (2_000, 3)
    assert extra["wave_size_from"] == "memory (cgroup)"
    assert extra["memory_available_bytes"] == figure.available
    log = (config.output_dir / "embedding_v6.log").read_text(encoding="utf-8")
    assert log.count("Waves of about 2,000 chunks (7 MiB of this machine's 31 MiB available)") == 1
    assert len(read_points(config.store_path, "c4")) == COLLECTION_CHUNKS
    chosen = run(replace(config, output_dir=tmp_path / "mine", wave_size=1_000))
    assert (chosen.extra.wave_size, chosen.extra.waves) == (1_000, 5)
    assert chosen.extra.wave_size_from == "--wave-size"
