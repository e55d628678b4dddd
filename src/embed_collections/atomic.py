"""Write files so readers never see half of one: a temporary sibling, then an atomic rename."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to a hidden sibling and rename it over `path` (old or new, never half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # the pid: concurrent writers
    try:
        temp.write_bytes(data)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """`write_bytes_atomic` for UTF-8 text."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, data: Any) -> None:
    """`write_bytes_atomic` for indented JSON (paths and other objects as strings)."""
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, default=str))
