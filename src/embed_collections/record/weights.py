"""The weights file `eval --tune-weights` writes and `run --weights-file` reads."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from embed_collections.atomic import write_json_atomic
from embed_collections.engine import canonical_name
from embed_collections.errors import UsageError

log = logging.getLogger(__name__)

WEIGHTS_FORMAT = 1


def write_weights_file(path: Path, models: list[str], weights: list[float], source: dict) -> None:
    """Write the learned weights as `{"format", "models": [{"model", "weight"}], "source"}`."""
    write_json_atomic(
        path,
        {
            "format": WEIGHTS_FORMAT,
            "models": [{"model": m, "weight": round(w, 6)} for m, w in zip(models, weights)],
            "source": source,
        },
    )


@dataclass(frozen=True)
class WeightsFile:
    """Model name -> weight, read and checked from a weights file."""

    path: Path
    weights: dict[str, float] = field(default_factory=dict)


def read_weights_file(path: Path) -> WeightsFile:
    """Read a weights file; a UsageError naming the file for anything malformed."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        message = f"Weights file {path} does not exist (write one with eval --tune-weights)"
        raise UsageError(message) from None
    except (OSError, ValueError) as error:
        raise UsageError(f"Weights file {path} is not readable JSON ({error})") from error
    entries = data.get("models") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise UsageError(f'Weights file {path} has no "models" list of {{"model", "weight"}}')
    weights: dict[str, float] = {}
    for entry in entries:
        name = entry.get("model") if isinstance(entry, dict) else None
        value = entry.get("weight") if isinstance(entry, dict) else None
        if not isinstance(name, str) or isinstance(value, bool):
            raise UsageError(f'Weights file {path}: every entry needs "model" and "weight"')
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise UsageError(
                f'Weights file {path}: weight of "{name}" is {value!r}; weights must be finite '
                "numbers >= 0"
            )
        if name in weights:
            raise UsageError(f'Weights file {path} lists "{name}" twice')
        weights[name] = float(value)
    if not any(weights.values()):
        raise UsageError(f"Weights file {path}: all weights are 0; give at least one model weight")
    return WeightsFile(Path(path), weights)


def apply_weights_file(
    path: Path, models: Sequence[str] | None, explicit_weights: Sequence[float] | None
) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """The run's models and weights from a weights file: names must match the run's models
    (aliases expanded; None: the file's models); members weighted 0 are left out of the run
    (they would add nothing)."""
    if explicit_weights:
        raise UsageError("Give --weights or --weights-file, not both")
    read = read_weights_file(path)
    models = list(read.weights) if models is None else models
    run = {canonical_name(m): m for m in models}
    listed = {canonical_name(m): m for m in read.weights}
    if set(run) != set(listed):
        raise UsageError(
            f"Weights file {path} is for models {', '.join(read.weights)}, but this run has "
            f"{', '.join(models)} (use the same --models, or tune again)"
        )
    kept = [(m, read.weights[listed[canonical_name(m)]]) for m in models]
    dropped = [m for m, w in kept if w == 0]
    if dropped:
        log.info("Weights file %s gives %s weight 0: left out of the run", path, ", ".join(dropped))
    kept = [(m, w) for m, w in kept if w > 0]
    return tuple(m for m, _ in kept), tuple(w for _, w in kept)
