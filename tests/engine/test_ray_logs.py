"""Ray's own start-up messages (its token-authentication notice) go to the run's log in the
run's format, not straight to stderr ahead of everything else."""

from __future__ import annotations

import io
import logging

import pytest

from embed_collections.engine.ray_executor import ray_logs_routed


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
            "embed_collections.engine.ray_executor",
            "INFO",
            "Ray: Token authentication is enabled for this Ray cluster.",
        )
    ]
