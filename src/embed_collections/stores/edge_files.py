"""The embedded store's own files beside each Qdrant Edge shard: the layout sidecar, the loaded
marker with the stats of every shard file, and the room opening a shard needs.

None of this touches the engine: these are small JSON files and `stat` calls, so the run's
process can read them itself while the shards live in the store's child process, and an
unchanged collection is recognised without opening its shard (opening 222 shards costs seconds).

The marker of a complete load records each shard file's size, mtime, ctime and inode. Any write
to a file changes its mtime and ctime (also one through a memory map, and `touch -d` or
`os.utime` restoring an old mtime sets the ctime to now), so equal stats mean the files are the
ones the load left. Before the marker is written, the filesystem's clock is made to pass every
recorded time, so that a later write cannot land in the same clock tick and keep its stats.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from embed_collections.atomic import write_json_atomic
from embed_collections.errors import DiskFullError, StoreError
from embed_collections.stores.base import VectorLayout

LAYOUT_SUFFIX = ".layout.json"
MARKER_SUFFIX = ".loaded.json"
CLOCK_FILE = ".clock"  # touched to read the filesystem's clock
NAME_MAX = 255  # bytes in one file name on Linux filesystems
OPEN_MARGIN = 4 * 1024 * 1024  # the WAL and small files written while a shard is open
CLOCK_WAIT_S = 1.0  # how long to wait for the filesystem's clock to tick past a shard's files


def shard_dir(root: Path, collection: str) -> Path:
    """The folder of `collection`'s shard (StoreError for a name that cannot be a folder)."""
    if not collection or collection in {".", ".."} or "/" in collection or "\\" in collection:
        raise StoreError(f'Collection name "{collection}" cannot be used as a folder name')
    longest = len(f"{collection}{MARKER_SUFFIX}".encode())
    if longest > NAME_MAX:
        raise StoreError(
            f'Collection name "{collection[:40]}..." is {len(collection.encode())} bytes; '
            f"the embedded store keeps files named after it and allows at most "
            f"{NAME_MAX - len(MARKER_SUFFIX)} bytes (rename its folder)"
        )
    return root / collection


def layout_file(root: Path, collection: str) -> Path:
    return shard_dir(root, collection).with_name(f"{collection}{LAYOUT_SUFFIX}")


def marker_file(root: Path, collection: str) -> Path:
    return shard_dir(root, collection).with_name(f"{collection}{MARKER_SUFFIX}")


def read_layout(root: Path, collection: str) -> VectorLayout | None:
    """The layout recorded when the collection was created, or None if it does not exist."""
    sidecar = layout_file(root, collection)
    if not (sidecar.is_file() and shard_dir(root, collection).is_dir()):
        return None
    try:
        return VectorLayout.from_json(json.loads(sidecar.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StoreError(
            f"Layout file {sidecar} is unreadable: {exc} (use --recreate to replace it)"
        ) from exc


def read_marker(root: Path, collection: str) -> dict[str, Any] | None:
    """What the last complete load recorded ({"signature", "count", "digest", "files"}), or
    None."""
    try:
        data = json.loads(marker_file(root, collection).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("count"), int):
        return None
    return data


def file_stats(shard: Path) -> list[list[Any]]:
    """[relative path, size, mtime_ns, ctime_ns, inode] of every file under `shard`, sorted."""
    stats: list[list[Any]] = []
    pending = [shard]
    while pending:
        folder = pending.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
                    continue
                info = entry.stat(follow_symlinks=False)
                name = os.path.relpath(entry.path, shard)
                stats.append([name, info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino])
    stats.sort()
    return stats


def clock_passed(root: Path, newest_ns: int, wait_s: float = CLOCK_WAIT_S) -> bool:
    """Whether the filesystem's clock (a touched file's time) is past `newest_ns`, waiting up to
    `wait_s` for it to tick (timestamps are as coarse as the kernel's tick, ~4 ms)."""
    probe = root / CLOCK_FILE
    deadline = time.monotonic() + wait_s
    try:
        probe.touch()
        while True:
            os.utime(probe)
            if probe.stat().st_mtime_ns > newest_ns:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)
    except OSError:
        return False


def write_marker(root: Path, collection: str, signature: str, count: int, digest: str) -> None:
    """Record a complete load of the (closed) shard, with its files' stats when the clock could
    be made to pass them (without them, the next run reads the shard back to verify it)."""
    stats = file_stats(shard_dir(root, collection))
    newest = max((max(s[2], s[3]) for s in stats), default=0)
    marker = {"signature": signature, "count": count, "digest": digest}
    if stats and clock_passed(root, newest):
        marker["files"] = stats
    write_json_atomic(marker_file(root, collection), marker)


def unchanged_since_marked(root: Path, collection: str, marker: dict[str, Any]) -> bool:
    """Whether every file of the shard has the stats `marker` recorded, and no file came or
    went (False when the marker has none)."""
    recorded = marker.get("files")
    if not recorded:
        return False
    try:
        stats = file_stats(shard_dir(root, collection))
    except OSError:
        return False
    return stats == recorded


def check_room(shard: Path) -> None:
    """DiskFullError unless the disk can hold what opening `shard` allocates.

    The engine fills the holes of a segment's vector files when it opens one (each is a fixed
    32 MB file, sparse until then): on tmpfs or a nearly full disk that write is SIGBUS. So the
    holes, plus a margin, must be free before the shard is opened.
    """
    holes = 0
    for path in shard.glob("segments/*/vector_storage/**/chunk_*.mmap"):
        try:
            info = path.stat()
        except OSError:
            continue
        holes += max(0, info.st_size - info.st_blocks * 512)
    if not holes:
        return
    free = shutil.disk_usage(shard).free
    if free < holes + OPEN_MARGIN:
        mb = 1024 * 1024
        raise DiskFullError(
            f"Opening Qdrant Edge shard {shard} needs about {(holes + OPEN_MARGIN) // mb} MB "
            f"free but its filesystem has {free // mb} MB (the engine fills its vector files "
            "when it opens them); free space there or move --qdrant-path to a larger disk; "
            "finished work is kept and running the same command again resumes it"
        )
