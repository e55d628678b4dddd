"""What the commands share for output: logging to stderr, JSON and tables on stdout."""

from __future__ import annotations

import json
import logging
import sys

import click

log = logging.getLogger("embed_collections")


def setup_logging(verbose: bool, quiet: bool) -> None:
    """Logs and warnings to stderr in the V6.1 log's `LEVEL - message` shape; stdout stays data."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s - %(message)s"))
    handler.setLevel(level)
    log.handlers[:] = [handler]
    log.setLevel(min(level, logging.INFO))  # the run's file log keeps INFO even with --quiet
    log.propagate = False
    for noisy in ("httpx", "sentence_transformers", "transformers", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def echo_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def render_table(headers: list[str], rows: list[list[object]]) -> str:
    """A plain aligned text table for stdout."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
