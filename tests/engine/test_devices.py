"""`--device` lists: expansion, and one-line usage errors naming the available devices."""

from __future__ import annotations

import pytest

from embed_collections.engine.devices import parse_devices, physical_key
from embed_collections.errors import UsageError


@pytest.mark.parametrize(
    ("text", "gpus", "devices"),
    [
        ("", 0, ["cpu"]),
        ("", 2, ["cuda:0", "cuda:1"]),
        ("cuda", 2, ["cuda:0", "cuda:1"]),
        ("cuda:0,cuda:2", 3, ["cuda:0", "cuda:2"]),
        ("cpu", 2, ["cpu"]),
        ("cpu:0, cpu:1", 0, ["cpu:0", "cpu:1"]),
    ],
)
def test_device_lists_expand(text, gpus, devices):
    assert parse_devices(text, gpus=gpus) == devices


@pytest.mark.parametrize(
    ("text", "gpus", "message"),
    [
        ("cuda", 0, '--device "cuda": CUDA is not available on this machine (available: cpu)'),
        ("cuda:7", 2, "this machine has 2 visible GPU(s) (available: cpu, cuda:0, cuda:1)"),
        ("cuda:0,cuda:0", 1, "--device lists cuda:0 twice; name each device once"),
        ("cpu,cuda:0", 1, "mixes cpu and cuda; use one kind (available: cpu, cuda:0)"),
        ("tpu", 0, '--device "tpu" is not a device'),
    ],
)
def test_bad_device_lists_are_one_line_usage_errors(text, gpus, message):
    with pytest.raises(UsageError) as caught:
        parse_devices(text, gpus=gpus)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_cpu_lease_keys_keep_their_names():
    assert physical_key("cpu") == "cpu"
    assert physical_key("cpu:1") == "cpu_1"


def test_cuda_without_cuda_is_exit_2_from_the_cli(tmp_path):
    from helpers import run_cli

    from embed_collections.engine.devices import cuda_device_count

    if cuda_device_count():
        pytest.skip("this machine has CUDA")
    result = run_cli(["run", "--chunked-dir", tmp_path, "--device", "cuda"], tmp_path)
    assert result.code == 2, result.err
    assert result.err.strip().splitlines() == [
        'Error: --device "cuda": CUDA is not available on this machine (available: cpu); '
        "use --device cpu"
    ]
