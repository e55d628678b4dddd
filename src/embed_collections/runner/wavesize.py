"""`--wave-size auto`: how many chunks a wave may hold, from the memory this process can use.

A wave's chunks stay in the driver's memory while every model embeds them and the wave is stored.
The budget is a quarter of the memory available (MemAvailable from /proc/meminfo, else the free
pages `os.sysconf` reports; a container's cgroup limit when that is lower, as on Kaggle), which
leaves the rest to the models, the store, the cache and the page cache. One chunk of a wave costs
about 3.7 KB of resident memory with ~710-character texts (`bench/wave_memory.py`: its
`LoadedCollection`, the wave's digest -> text dict and digest sets, two models' missing sets);
BYTES_PER_CHUNK rounds that up.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("embed_collections.runner.pipeline")

BYTES_PER_CHUNK = 4096  # measured 3,651 B per chunk of ~710 characters (bench/wave_memory.py)
MEMORY_SHARE = 4  # a wave may take 1/MEMORY_SHARE of the memory available
MIN_WAVE_SIZE = 1_000
ROUND_TO = 1_000
GIB = 2**30
UNLIMITED = 2**60  # cgroup v1 writes "no limit" as a number near 2**63


@dataclass(frozen=True)
class Memory:
    """What this process may still use (`available`) out of `total`, and who says so."""

    available: int
    total: int
    source: str  # "meminfo", "cgroup" or "sysconf"


def auto_wave_size(available: int, bytes_per_chunk: int = BYTES_PER_CHUNK) -> int:
    """The chunks a wave may hold when `available` bytes of memory are free."""
    chunks = available // MEMORY_SHARE // bytes_per_chunk
    return max(MIN_WAVE_SIZE, chunks // ROUND_TO * ROUND_TO)


def available_memory(
    proc: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")
) -> Memory:
    """The memory this process may still use: the machine's, or its cgroup's when lower."""
    machine = meminfo(proc / "meminfo") or sysconf_memory()
    limit = cgroup_memory(proc / "self" / "cgroup", cgroup_root)
    if limit is not None and limit.available < machine.available:
        return limit
    return machine


def meminfo(path: Path) -> Memory | None:
    """MemAvailable and MemTotal from a /proc/meminfo file, or None without them."""
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except OSError:
        return None
    values = {}
    for line in lines:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key] = int(parts[0]) * 1024  # kB
    if "MemAvailable" not in values or "MemTotal" not in values:
        return None
    return Memory(values["MemAvailable"], values["MemTotal"], "meminfo")


def sysconf_memory() -> Memory:
    """Free and total physical pages as `os.sysconf` reports them (no /proc/meminfo)."""
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        free = os.sysconf("SC_AVPHYS_PAGES") * page
        total = os.sysconf("SC_PHYS_PAGES") * page
    except (ValueError, OSError, AttributeError):
        free = total = 4 * GIB  # an unknown machine: assume a small one
    return Memory(free, total, "sysconf")


def cgroup_memory(own: Path, root: Path) -> Memory | None:
    """The lowest memory headroom (limit - usage) of this process's cgroup and its parents
    (cgroup v2), or of cgroup v1's memory controller; None where nothing is limited."""
    found: list[Memory] = []
    for folder in cgroup_folders(own, root):
        for limit_name, usage_name in (
            ("memory.max", "memory.current"),
            ("memory.limit_in_bytes", "memory.usage_in_bytes"),
        ):
            limit, usage = read_number(folder / limit_name), read_number(folder / usage_name)
            if limit is not None and limit < UNLIMITED:
                found.append(Memory(max(0, limit - (usage or 0)), limit, "cgroup"))
    return min(found, key=lambda m: m.available, default=None)


def cgroup_folders(own: Path, root: Path) -> list[Path]:
    """The cgroup folders that may limit this process: its own and every parent up to the root,
    for cgroup v2 (`root`) and v1's memory controller (`root/memory`)."""
    folders = [root, root / "memory"]
    try:
        lines = own.read_text(encoding="utf-8").splitlines()
    except OSError:
        return folders
    for line in lines:
        number, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if number == "0" and not controllers:
            base = root
        elif "memory" in controllers.split(","):
            base = root / "memory"
        else:
            continue
        folder = base / path.lstrip("/")
        while folder != base and folder.is_relative_to(base):
            folders.append(folder)
            folder = folder.parent
    return folders


def read_number(path: Path) -> int | None:
    """An integer file of the cgroup filesystem ("max" and missing files are None)."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def size_text(size: int) -> str:
    """Bytes as GiB (one decimal), or MiB below one GiB."""
    return f"{size / GIB:.1f} GiB" if size >= GIB else f"{size // 2**20} MiB"


def decide_wave_size(wave_size: int | None, memory: Memory | None = None) -> tuple[int, dict]:
    """The run's wave size (the user's, or chosen from the memory) and what the summary says
    about it."""
    if wave_size:
        return wave_size, {"wave_size": wave_size, "wave_size_from": "--wave-size"}
    memory = memory or available_memory()
    size = auto_wave_size(memory.available)
    budget = size * BYTES_PER_CHUNK
    log.info(
        "Waves of about %s chunks (%s of this machine's %s available)",
        f"{size:,}",
        size_text(budget),
        size_text(memory.available),
    )
    return size, {
        "wave_size": size,
        "wave_size_from": f"memory ({memory.source})",
        "memory_available_bytes": memory.available,
        "memory_total_bytes": memory.total,
        "wave_budget_bytes": budget,
    }
