"""The shared progress display: it moves from the first unit of work, and the store's ETA comes
from the store's own rate, not from the run's start."""

from __future__ import annotations

import io
import logging
import sys

from embed_collections.progress import Progress


def test_lines_show_the_first_batch_at_once(caplog):
    caplog.set_level(logging.INFO, logger="embed_collections.progress")
    with Progress(1000, "tiny32", "chunk", terminal=False) as progress:
        progress.update(32)  # 3%: before, nothing until 10% or 30 s
    assert [r.getMessage().split(",")[0] for r in caplog.records] == ["tiny32: 32/1000 chunks (3%)"]


def test_bar_draws_the_first_batch_at_once(monkeypatch):
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    progress = Progress(1000, "tiny32", "chunk", terminal=True)
    drawn_before = stderr.getvalue()
    progress.update(32)  # within tqdm's 0.1 s minimum interval of the bar's creation
    assert "32/1000" in stderr.getvalue()[len(drawn_before) :]
    progress.close()


def test_eta_comes_from_the_work_own_time_not_the_run_start():
    progress = Progress(5, "store", "collection", terminal=False, rate_unit="point")
    progress.started -= 170.0  # the run spent 170 s embedding before the store's first collection
    progress.update(1, 10, seconds=0.5)
    line = progress.line(progress.started + 170.5)
    assert line == "store: 1/5 collections (20%), 20.0 points/s, ETA 2s"
