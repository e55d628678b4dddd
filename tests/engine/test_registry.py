"""A new backend is one entry of the real table (`engine.BACKENDS`): registered here as a test
backend, it runs a whole `run` and `search` end to end, as the anchors' suites register a small
model through their real plugin path."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import read_points, write_chunks

import embed_collections as ec
from embed_collections.engine import BACKENDS, Backend

LETTERS = "abcdefghijklmnopqrstuvwxyz"


class LetterBackend(Backend):
    """Vectors of letter counts: no model weights at all, only the base class's defaults for
    the optional abilities (tokenize, forward, the float32 re-run, held ids)."""

    max_seq_length = 10_000

    def __init__(self, spec, backend, dtype, threads):
        self.name, self.dim, self.loaded = spec.name, len(LETTERS), False

    def load(self, device: str) -> None:
        self.loaded = True

    def token_counts(self, texts: list[str]) -> list[int]:
        return [len(text.split()) for text in texts]

    def embed(self, texts: list[str]) -> np.ndarray:
        assert self.loaded
        return np.array([letter_counts(text) for text in texts], dtype=np.float32)


def letter_counts(text: str) -> list[float]:
    return [float(text.lower().count(letter)) + 0.5 for letter in LETTERS]


@pytest.fixture
def letters_backend(monkeypatch):
    monkeypatch.setitem(BACKENDS, "letters", LetterBackend)


def test_a_registered_backend_runs_end_to_end(letters_backend, tmp_path, tiny_models):
    texts = ["aaaa apples", "zebra zoo zz", "banana bread"]
    write_chunks(tmp_path / "Chunked" / "Fruit" / "f_chunks.json", texts)
    out = tmp_path / "out"
    summary = ec.run(
        tmp_path / "Chunked", out, models=[str(tiny_models["tiny32"])], backend="letters",
        device="cpu", lease_dir=tmp_path / "leases", quiet=True,
    )  # fmt: skip
    assert summary.ok and summary.collections["Fruit"].points_in_store == 3
    telemetry = next(iter(summary.extra.models.values()))
    assert (telemetry["backend"], telemetry["chunks_embedded"]) == ("letters", 3)
    stored = {
        payload["text"]: vector for vector, payload in read_points(out / "qdrant", "Fruit").values()
    }
    for text in texts:  # the store holds the backend's own vectors, normalised by `concat`
        expected = np.array(letter_counts(text))
        np.testing.assert_allclose(stored[text], expected / np.linalg.norm(expected), rtol=1e-5)
    with ec.open(out) as opened:
        assert opened.search("zzz", top_k=1)[0].text == "zebra zoo zz"


def test_an_unregistered_backend_is_a_usage_error_naming_it(tmp_path, tiny_models):
    write_chunks(tmp_path / "Chunked" / "Fruit" / "f_chunks.json", ["apples"])
    with pytest.raises(ec.UsageError, match="Unknown backend letters"):
        ec.run(
            tmp_path / "Chunked", tmp_path / "out", models=[str(tiny_models["tiny32"])],
            backend="letters", device="cpu", lease_dir=tmp_path / "leases", quiet=True,
        )  # fmt: skip
