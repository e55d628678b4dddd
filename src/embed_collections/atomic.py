"""Write files so readers never see half of one: a temporary sibling, then an atomic rename."""

from __future__ import annotations

import json
import math
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
    """`write_bytes_atomic` for indented JSON (paths and other objects as strings; NaN and
    infinity as null, since a bare `NaN` or `Infinity` is not JSON and breaks every reader)."""
    text = json.dumps(finite_json(data), indent=2, ensure_ascii=False, default=str, allow_nan=False)
    write_text_atomic(path, text)


def finite_json(value: Any) -> Any:
    """`value` with every non-finite float (at any depth) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(item) for item in value]
    return value
