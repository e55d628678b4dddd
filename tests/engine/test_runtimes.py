"""CPU runtime backends (onnxruntime, OpenVINO): parity with torch, int8, export reuse, refusals
and the `auto` choice, on the packaged all-MiniLM-L6-v2 and tiny generated models."""

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import need_module

from embed_collections.engine.backends import choice as preflight
from embed_collections.engine.backends import create_backend, kinds
from embed_collections.engine.backends import export as runtimes
from embed_collections.engine.backends.choice import decide_backends, resolve_backend
from embed_collections.engine.backends.runtime import RuntimeBackend, cosines
from embed_collections.engine.backends.transformer import SentenceTransformerBackend
from embed_collections.engine.cache import EmbeddingCache, text_digest
from embed_collections.engine.executors.local import embed_pending
from embed_collections.engine.models.folders import fingerprint_folder, model_fingerprint
from embed_collections.engine.models.resolve import resolve_model
from embed_collections.engine.options import EngineOptions
from embed_collections.errors import ModelError, UsageError

LONG = " ".join(
    f"Section {i}: Docling parses tables, figures and reading order." for i in range(40)
)
TEXTS = [
    "Docling converts PDF files to Markdown.",
    "def main():\n    for row in rows:\n        print(row['id'], row['text'])\n",
    "Qdrant stores vectors with payloads.",
    LONG,
    "short",
    "Ünïcödé, emoji 🚀 and CJK 向量检索 in one line.",
    "```python\nimport numpy as np\nx = np.zeros((3, 4))\n```",
    "A medium sentence about embeddings, chunking and search quality. " * 4,
]
RUNTIME_MODULES = {"onnx": "onnxruntime", "openvino": "openvino"}


def need(*backends):
    for backend in backends:
        need_module(RUNTIME_MODULES[backend.split("-")[0]])
    if any(b.endswith("-int8") for b in backends):
        need_module("onnxruntime")  # both int8 paths quantize with onnxruntime


@pytest.fixture(scope="module", autouse=True)
def shared_exports(tmp_path_factory):
    """One export cache for the module (MiniLM is exported once), never the user's own."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(runtimes.EXPORT_DIR_ENV, str(tmp_path_factory.mktemp("exports")))
        yield


@pytest.fixture
def fresh_exports(tmp_path, monkeypatch):
    monkeypatch.setenv(runtimes.EXPORT_DIR_ENV, str(tmp_path / "exports"))
    return tmp_path / "exports"


@pytest.fixture(scope="module")
def minilm():
    return resolve_model("sentence-transformers/all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def torch_vectors(minilm):
    backend = SentenceTransformerBackend(minilm, "float32")
    backend.load("cpu")
    return backend.embed(TEXTS), backend.token_counts(TEXTS)


@pytest.mark.parametrize("name", ["onnx", "openvino"])
def test_runtime_matches_torch(name, minilm, torch_vectors):
    need(name)
    backend = create_backend(minilm, name)
    backend.load("cpu")
    reference, counts = torch_vectors
    assert counts[TEXTS.index(LONG)] > 256  # truncation to max_seq_length is exercised
    assert backend.token_counts(TEXTS) == counts
    assert (backend.dim, backend.max_seq_length) == (384, 256)
    vectors = backend.embed(TEXTS)  # the counting pass's ids: each text tokenised once
    assert not backend.tokenised  # taken by the batch
    np.testing.assert_array_equal(backend.embed(TEXTS), vectors)  # the same, tokenised here
    assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), 384)
    assert min(cosines(vectors, reference)) >= 0.9999
    np.testing.assert_allclose(vectors, reference, atol=2e-4)  # unnormalised, like torch's


@pytest.mark.parametrize("name", ["onnx-int8", "openvino-int8"])
def test_int8_is_close_and_reports_its_agreement(name, minilm, torch_vectors, caplog):
    need(name)
    backend = RuntimeBackend(minilm, name)
    backend.load("cpu")
    with caplog.at_level(logging.WARNING, logger="embed_collections"):
        vectors = backend.embed(TEXTS)
        backend.unload()
    values = cosines(vectors, torch_vectors[0])
    assert min(values) >= 0.95, f"{name}: mean {np.mean(values):.4f}, min {min(values):.4f}"
    assert f"{name} agrees with" in caplog.text and f"over {len(TEXTS)} texts" in caplog.text


def test_export_is_built_once_and_reused(tiny_models, fresh_exports, monkeypatch):
    need("onnx", "openvino")
    spec = resolve_model(str(tiny_models["tiny32"]))
    calls = []
    original = runtimes.export_onnx
    monkeypatch.setattr(runtimes, "export_onnx", lambda *a: calls.append(1) or original(*a))
    first = RuntimeBackend(spec, "onnx")
    first.load("cpu")
    model = fresh_exports / fingerprint_folder(spec.path) / "onnx" / "model.onnx"
    stamp = model.stat().st_mtime_ns
    for name in ("onnx", "openvino"):  # openvino converts the same export, no second trace
        RuntimeBackend(spec, name).load("cpu")
    assert calls == [1] and model.stat().st_mtime_ns == stamp
    assert not [p for p in model.parent.parent.iterdir() if p.name.startswith(".")]  # no staging


def copy_model(source, target, pooling=None, modules=None):
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("_bert"))
    if pooling:
        config = json.loads((target / "1_Pooling" / "config.json").read_text())
        config["pooling_mode"] = pooling
        (target / "1_Pooling" / "config.json").write_text(json.dumps(config))
    if modules:
        (target / "modules.json").write_text(json.dumps(modules))
    return resolve_model(str(target))


def test_unsupported_layouts_are_refused_and_auto_uses_torch(tiny_models, tmp_path, fresh_exports):
    need("onnx")
    modules = json.loads((tiny_models["tiny32"] / "modules.json").read_text())
    extra = {
        "idx": 2,
        "name": "2",
        "path": "2_LayerNorm",
        "type": "sentence_transformers.LayerNorm",
    }
    layer_norm = copy_model(tiny_models["tiny32"], tmp_path / "ln", modules=[*modules, extra])
    with pytest.raises(ModelError, match=r"has modules Transformer \+ Pooling \+ LayerNorm; the "):
        RuntimeBackend(layer_norm, "onnx").load("cpu")
    weighted = copy_model(tiny_models["tiny32"], tmp_path / "wm", pooling="weightedmean")
    with pytest.raises(ModelError, match="pools with weightedmean.*use --backend torch"):
        RuntimeBackend(weighted, "onnx").load("cpu")
    assert resolve_backend(layer_norm, "auto", "cpu") == "torch"
    record = json.loads(
        (fresh_exports / fingerprint_folder(layer_norm.path) / "check-onnx.json").read_text()
    )
    assert not record["passed"] and "LayerNorm" in record["reason"]


def build_dense_model(tiny_models, folder, pooling):
    """Transformer + Pooling + Dense(Tanh) + Normalize: the numpy side's every step."""
    import torch
    from sentence_transformers import SentenceTransformer, models

    torch.manual_seed(3)
    transformer = models.Transformer(str(tiny_models["tiny32"] / "_bert"), max_seq_length=64)
    dense = models.Dense(32, 16, activation_function=torch.nn.Tanh())
    modules = [transformer, models.Pooling(32, pooling_mode=pooling), dense, models.Normalize()]
    SentenceTransformer(modules=modules, device="cpu").save(str(folder))
    return resolve_model(str(folder))


@pytest.mark.parametrize("pooling", ["cls", "max", "mean_sqrt_len_tokens"])
def test_dense_normalize_and_other_poolings_match_torch(pooling, tiny_models, tmp_path):
    need("onnx")
    spec = build_dense_model(tiny_models, tmp_path / pooling, pooling)
    reference = SentenceTransformerBackend(spec, "float32")
    reference.load("cpu")
    backend = RuntimeBackend(spec, "onnx")
    backend.load("cpu")
    assert (backend.dim, backend.max_seq_length) == (16, 64)
    assert min(cosines(backend.embed(TEXTS), reference.embed(TEXTS))) >= 0.9999


def test_auto_takes_the_fastest_measured_backend_and_remembers_it(minilm, monkeypatch, caplog):
    need("onnx")
    installed = [r for r in kinds.AUTO_ORDER if runtimes.runtime_installed(r)]
    with caplog.at_level(logging.INFO, logger="embed_collections"):
        choice = resolve_backend(minilm, "auto", "cpu", sample=TEXTS)
    folder = runtimes.export_root() / fingerprint_folder(minilm.path)
    record = json.loads((folder / f"check-{installed[0]}.json").read_text())
    assert record["passed"] and record["min_cosine"] >= 0.9999
    measured = json.loads((folder / preflight.CHOICE_FILE).read_text())
    assert measured["candidates"] == ["torch", *installed]  # every runtime that agrees
    assert choice == measured["choice"] == max(measured["rates"], key=measured["rates"].get)
    assert measured["machine"] == preflight.machine_key()
    rates = f"torch {measured['rates']['torch']:g} texts/s"  # logged, measured now or earlier
    assert (
        f"auto measured {rates}" in caplog.text
        or f"earlier on this machine ({rates}" in caplog.text
    )

    def must_not_run(*args):
        raise AssertionError("measured or checked again")

    monkeypatch.setattr(preflight, "measure_agreement", must_not_run)
    monkeypatch.setattr(preflight, "measure_rate", must_not_run)
    assert resolve_backend(minilm, "auto", "cpu", sample=TEXTS) == choice  # remembered
    assert measured["batch_tokens"] == preflight.CPU_BATCH_TOKENS
    measured["batch_tokens"] = 8192  # measured at another default budget: timed again
    (folder / preflight.CHOICE_FILE).write_text(json.dumps(measured))
    with pytest.raises(AssertionError, match="measured or checked again"):
        resolve_backend(minilm, "auto", "cpu", sample=TEXTS)
    assert resolve_backend(minilm, "auto", "cuda") == "torch"
    assert resolve_backend(minilm, "auto", "cpu", dtype="bfloat16") == "torch"


def perturb_onnx(path: Path) -> None:
    """Add noise to every weight matrix of an exported model: a runtime that disagrees."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    rng = np.random.default_rng(0)
    for tensor in model.graph.initializer:
        array = numpy_helper.to_array(tensor)
        if array.dtype == np.float32 and array.size > 100:
            noisy = array + rng.normal(0, 0.5, array.shape).astype(np.float32)
            tensor.CopyFrom(numpy_helper.from_array(noisy, tensor.name))
    onnx.save(model, str(path))


def test_auto_falls_back_when_a_runtime_disagrees_with_torch(tiny_models, fresh_exports, caplog):
    need("onnx")
    spec = resolve_model(str(tiny_models["tiny32"]))
    onnx_file = runtimes.ensure_exported(spec, "onnx") / "model.onnx"
    clean = onnx_file.read_bytes()
    perturb_onnx(onnx_file)
    openvino = runtimes.runtime_installed("openvino")
    if openvino:
        runtimes.ensure_exported(spec, "openvino")  # converted from the perturbed weights
    with caplog.at_level(logging.WARNING, logger="embed_collections"):
        assert resolve_backend(spec, "auto", "cpu") == "torch"
    assert re.search(
        r"onnx differs from torch \(min cosine -?0\.\d+\); auto uses torch", caplog.text
    )
    if openvino:  # openvino still disagrees: only what agrees is measured, the fastest chosen
        onnx_file.write_bytes(clean)
        (fresh_exports / fingerprint_folder(spec.path) / "check-onnx.json").unlink()
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="embed_collections"):
            chosen = resolve_backend(spec, "auto", "cpu")
        measured = re.search(r"auto measured (.*): (\w+) is fastest", caplog.text)
        assert measured, caplog.text
        assert "onnx" in measured.group(1) and "openvino" not in measured.group(1)
        assert chosen == measured.group(2)


def test_backend_requests_are_checked():
    need("onnx")
    assert resolve_backend(None, "onnx", "cpu", "int8") == "onnx-int8"
    assert resolve_backend(None, "auto", "cpu", "int8") == "onnx-int8"
    assert resolve_backend(None, "torch", "cuda") == "torch"
    for request, message in [
        (("torch", "cpu", "int8"), "--quantize int8 needs CPU, float32"),
        (("auto", "cuda", "int8"), "--quantize int8 needs CPU, float32"),
        (("onnx", "cuda:0", ""), "--backend onnx runs on CPU only"),
        (("openvino", "cpu", "", "float16"), "--backend openvino runs float32 only"),
        (("onnx", "cpu", "int4"), "--quantize int4 is not supported"),
        (("tensorrt", "cpu", ""), "Unknown backend tensorrt"),
    ]:
        with pytest.raises(UsageError, match=message):
            resolve_backend(None, *request)
    with pytest.raises(ModelError, match="not available"):
        create_backend(None, "onnx-fp8")
    with pytest.raises(ModelError, match="runs on CPU only"):
        RuntimeBackend(resolve_model("minilm"), "onnx").load("cuda")


def test_preflight_decides_auto_per_model_and_fingerprints_it(tiny_models, tmp_path, caplog):
    need("onnx")
    spec = resolve_model(str(tiny_models["tiny48"]))
    settings = dict(device="cpu", show_progress=False, lease_dir=tmp_path / "leases")
    requested = EngineOptions(**settings).resolved()
    with caplog.at_level(logging.INFO, logger="embed_collections"):
        [decided] = decide_backends([spec], requested)
    assert decided in ("torch", *kinds.RUNTIMES)
    assert f"backend {decided} (auto" in caplog.text and "fastest measured" in caplog.text
    auto = EngineOptions(**settings, backend=decided).resolved()
    torch_only = EngineOptions(**settings, backend="torch").resolved()
    if decided != "torch":
        assert model_fingerprint(spec, decided, "float32") != model_fingerprint(
            spec, "torch", "float32"
        )
    by_digest = {text_digest(t): t for t in TEXTS}
    with EmbeddingCache(tmp_path / "cache.sqlite") as cache:
        vectors = {}
        for options in (auto, torch_only):
            fingerprint = model_fingerprint(spec, options.backend, options.dtype)
            telemetry = embed_pending(spec, fingerprint, by_digest, cache, options, [])
            assert telemetry.chunks_embedded == len(TEXTS)
            vectors[telemetry.backend] = cache.get_vectors(fingerprint, list(by_digest), 48)
    assert set(vectors) == {decided, "torch"}
    assert min(cosines(*vectors.values())) >= 0.9999


def test_run_help_lists_the_backends_and_quantize():
    from embed_collections.cli.main import cli

    result = CliRunner().invoke(cli, ["run", "--help"])
    assert result.exit_code == 0
    assert "[auto|torch|onnx|openvino]" in result.output and "--quantize [int8]" in result.output


# OpenVINO with the openvino backend, in a fresh process outside CI with an empty home: left
# alone, `import openvino` sends usage telemetry from a thread pool (a run once hung at exit).
OPENVINO_USE = """
import sys, threading
from embed_collections.engine.models.resolve import resolve_model
from embed_collections.engine.backends import create_backend
backend = create_backend(resolve_model(sys.argv[1]), "openvino", "float32")
backend.load("cpu")
backend.embed(["hello world"])
print(sorted(t.name for t in threading.enumerate()))
"""


def test_the_openvino_backend_sends_no_telemetry(tiny_models, tmp_path):
    need("openvino")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}
    done = subprocess.run(
        [sys.executable, "-c", OPENVINO_USE, str(tiny_models["tiny32"])],
        env={**env, "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "['MainThread']"
    assert not (tmp_path / "intel").exists()  # no consent folder or client id written


def test_torch_tokenises_each_text_once_as_the_model_would(minilm, torch_vectors):
    """The counting pass keeps each text's ids; the batch built from them is the model's own."""
    backend = SentenceTransformerBackend(minilm, "float32")
    backend.load("cpu")
    assert backend.counter is not None  # its fast tokenizer reproduces its preprocessing
    reference, counts = torch_vectors
    assert backend.token_counts(TEXTS) == counts
    assert set(backend.tokenised) == set(TEXTS)
    kept = backend.tokenize(TEXTS)  # from the counting pass's ids
    assert not backend.tokenised  # taken by the batch
    own = backend.preprocess(TEXTS)
    assert kept.features.keys() == own.keys()
    tensors = {name for name, value in own.items() if hasattr(value, "equal")}
    assert tensors >= {"input_ids", "attention_mask"}
    assert all(own[name].equal(kept.features[name]) for name in tensors)
    assert all(own[name] == kept.features[name] for name in own.keys() - tensors)  # modality
    np.testing.assert_array_equal(backend.forward(kept), reference)


def test_a_tokenizer_that_would_batch_differently_is_not_used_once(minilm):
    backend = SentenceTransformerBackend(minilm, "float32")
    backend.load("cpu")
    backend.max_seq_length = 16  # a window the model's own preprocessing does not cut at
    assert backend.verified_counter() is None


@pytest.mark.parametrize("name", ["torch", "onnx"])
def test_the_workers_parent_tokenises_with_the_workers_own_tokenizer(name, minilm):
    """The ids the parent sends with a unit are taken by an equal tokenizer, refused otherwise."""
    from embed_collections.engine.executors.workers import count_tokens_in_parent

    if name != "torch":
        need(name)
    backend = create_backend(minilm, name)
    backend.load("cpu")
    counts, ids, tag = count_tokens_in_parent(minilm, TEXTS, name)
    assert tag == backend.counter.tag and len(ids) == len(TEXTS)
    backend.hold(TEXTS, ids, "another tokenizer")
    assert not backend.tokenised
    backend.hold(TEXTS, ids, tag)
    assert set(backend.tokenised) == set(TEXTS)
    held = backend.embed(TEXTS)
    assert not backend.tokenised
    np.testing.assert_array_equal(held, backend.embed(TEXTS))  # tokenised here this time
    assert counts == backend.token_counts(TEXTS)
