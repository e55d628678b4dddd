"""Processes the run starts end with it: worker processes with their parent, Ray actors on the
driver's machine with the driver, even mid-batch."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import sys
import threading
import time

CHECK_SECONDS = 1.0  # how often a watching thread looks for the process it depends on
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int) -> None:
    """End this worker when its parent dies, even mid-batch: the kernel's parent-death signal on
    Linux, and everywhere a thread that notices the parent is gone (the pipe also breaks)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # a libc without prctl
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(CHECK_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def die_with_driver(host: str, pid: int) -> None:
    """An actor on the driver's machine exits when the driver process is gone (Ray kills the
    actors of a driver it sees die; this covers a driver killed with its local Ray)."""
    if not pid or host != socket.gethostname():
        return

    def watch() -> None:
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:  # alive, another user's
                pass
            time.sleep(CHECK_SECONDS)

    threading.Thread(target=watch, name="watch-driver", daemon=True).start()
