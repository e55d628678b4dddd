"""Ray's own start-up messages (its token-authentication notice) go to the run's log in the
run's format, not straight to stderr ahead of everything else."""

from __future__ import annotations

import io
import json
import logging

import pytest
from helpers import cli_run_args, run_cli, write_chunks

from embed_collections.engine.executors.ray_cluster import ray_logs_routed


def test_ray_records_go_through_our_logger_while_ray_starts(caplog):
    pytest.importorskip("ray")
    ray_logger = logging.getLogger("ray")
    raw = io.StringIO()
    ray_handler = logging.StreamHandler(raw)  # stands for the handler Ray installs on stderr
    ray_logger.addHandler(ray_handler)
    caplog.set_level(logging.INFO, logger="embed_collections")
    try:
        with ray_logs_routed():
            logging.getLogger("ray._private.authentication.authentication_token_setup").warning(
                "Token authentication is enabled for this Ray cluster."
            )
        assert ray_handler in ray_logger.handlers  # Ray's own handler is back afterwards
    finally:
        ray_logger.removeHandler(ray_handler)
    assert raw.getvalue() == ""
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "embed_collections.engine.executors.ray_cluster",
            "INFO",
            "Ray: Token authentication is enabled for this Ray cluster.",
        )
    ]


@pytest.mark.slow
def test_a_ray_run_starts_ray_inside_its_time_and_its_log(tiny_models, tmp_path):
    pytest.importorskip("ray")
    write_chunks(tmp_path / "Chunked" / "alpha" / "a_chunks.json", ["one text", "another text"])
    out = tmp_path / "out"
    args = cli_run_args(tmp_path / "Chunked", out, [tiny_models["tiny32"]], "--executor", "ray")
    result = run_cli([a for a in args if a != "-q"], tmp_path)
    assert result.code == 0, result.err
    lines = result.err.splitlines()
    assert lines[0].startswith("INFO - ")  # the run speaks first, in its own format
    assert not [line for line in lines if "authentication_token_setup.py" in line]
    summary = json.loads((out / "embedding_summary_v6.json").read_text(encoding="utf-8"))
    startup = summary["phases"]["ray start-up"]
    assert startup > 0.5 and summary["total_seconds"] >= sum(summary["phases"].values())
