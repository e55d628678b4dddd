"""Run options that imply or contradict each other."""

from __future__ import annotations

import pytest
from helpers import invoke

from embed_collections.errors import UsageError
from embed_collections.record.config import build_run_config


def test_ray_address_implies_the_ray_executor(tmp_path):
    config = build_run_config(tmp_path, tmp_path / "out", {"ray_address": "10.0.0.5:6379"})
    assert (config.executor, config.ray_address) == ("ray", "10.0.0.5:6379")
    assert build_run_config(tmp_path, tmp_path / "out", {}).executor == "local"


def test_ray_address_with_the_local_executor_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError) as raised:
        build_run_config(tmp_path, tmp_path, {"ray_address": "10.0.0.5:6379", "executor": "local"})
    assert str(raised.value) == (
        "--ray-address 10.0.0.5:6379 needs --executor ray (drop --executor local, or drop "
        "--ray-address to run in this process)"
    )
    result = invoke(["run", "--chunked-dir", tmp_path, "--output-dir", tmp_path / "out",
                     "--executor", "local", "--ray-address", "10.0.0.5:6379"])  # fmt: skip
    assert result.code == 2
    assert result.err.strip() == f"Error: {raised.value}"
