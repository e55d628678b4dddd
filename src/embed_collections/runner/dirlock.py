"""One writer per output directory: an exclusive `flock` on a file inside it.

Two runs on one output directory would both embed everything, interleave the log and overwrite
each other's summary; the second one waits (naming the holder) or, with `--no-wait`, stops.
The kernel drops the lock when the holder exits, even after `kill -9`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from embed_collections.errors import EmbedCollectionsError
from embed_collections.record.files import LOCK_FILE

log = logging.getLogger("embed_collections.runner.dirlock")

POLL_SECONDS = 0.5
REPORT_SECONDS = 30.0


class OutputInUseError(EmbedCollectionsError):
    """Another run holds the output directory."""


def _holder(path: Path) -> str:
    try:
        pid = path.read_text(encoding="utf-8").strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid else "another process"


@contextmanager
def output_lock(output_dir: Path, wait: bool = True) -> Iterator[None]:
    """Hold the output directory's lock for the block; wait for it, or fail at once."""
    path = Path(output_dir) / LOCK_FILE
    try:
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held for the whole block)
    except OSError as error:
        raise EmbedCollectionsError(
            f"Output directory {output_dir} is not writable: {error.strerror or error} "
            "(fix its permissions or choose another --output-dir)"
        ) from error
    try:
        reported = 0.0
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _holder(path)
                if not wait:
                    raise OutputInUseError(
                        f"Output directory {output_dir} is in use by another run ({holder}); "
                        "wait for it to finish, drop --no-wait to queue behind it, or use "
                        "another --output-dir"
                    ) from None
                now = time.monotonic()
                if now - reported >= REPORT_SECONDS:
                    log.warning(
                        "Output directory %s is in use by another run (%s); waiting for it "
                        "(pass --no-wait to stop instead)",
                        output_dir,
                        holder,
                    )
                    reported = now
                time.sleep(POLL_SECONDS)
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()
