"""The model-major schedule: one model at a time, under the device lease, embeds every pending text.

Pending means unique texts whose vector for this model is not cached yet. Texts are sorted by
token count across the whole pending set (string length still wastes about a fifth of the compute
on padding) and batched; an out-of-memory error halves the batch and retries it.
"""

from __future__ import annotations

import logging

from embed_collections.backends import is_out_of_memory
from embed_collections.cache import EmbeddingCache
from embed_collections.engine_options import EngineOptions
from embed_collections.errors import ModelError
from embed_collections.lease import DeviceLease, LeaseEvent
from embed_collections.models import ModelSpec
from embed_collections.progress import Progress
from embed_collections.runtimes import create_backend
from embed_collections.telemetry import ModelTelemetry, Timer

log = logging.getLogger(__name__)

TOKENIZE_CHUNK = 4096  # texts tokenised per call, to bound memory on huge pending sets
STATIC_BATCH = 4096  # texts per call of a static model: no padding, so size costs no compute


def weights_size(spec: ModelSpec) -> int:
    """Bytes of weight files, to ask the lease for enough free GPU memory."""
    patterns = ("*.safetensors", "*.bin", "*.pt", "*.onnx")
    return sum(f.stat().st_size for p in patterns for f in spec.path.rglob(p))


def embed_pending(
    spec: ModelSpec,
    fingerprint: str,
    texts: dict[bytes, str],
    cache: EmbeddingCache,
    options: EngineOptions,
    events: list[LeaseEvent],
) -> ModelTelemetry:
    """Embed the texts (digest -> text) this model has not cached yet; the model loads only if any.

    Vectors are written to the cache batch by batch, so a crash keeps everything finished.
    """
    telemetry = ModelTelemetry(
        model=spec.name,
        fingerprint=fingerprint,
        device=options.device,
        backend="torch" if options.backend == "auto" else options.backend,  # decided in preflight
        dtype=options.dtype,
        dim=cache.model_dim(fingerprint) or spec.dim or 0,
        max_seq_length=cache.model_info(fingerprint).get("max_seq_length")
        or spec.settings.max_seq_length
        or 0,
    )
    missing = cache.missing(fingerprint, texts)
    telemetry.cache_hits = len(texts) - len(missing)
    telemetry.cache_misses = len(missing)
    if not missing:
        log.info("%s: all %d texts cached, model not loaded", spec.name, len(texts))
        return telemetry
    required = int(weights_size(spec) * (0.5 if options.dtype == "float16" else 1.0) * 1.5)
    with DeviceLease(
        spec.name,
        options.device,
        lease_dir=options.lease_dir,
        max_wait_time=options.lease_timeout,
        check_interval=options.check_interval,
        required_memory_bytes=required if options.device.startswith("cuda") else None,
        events=events,
    ) as lease:
        telemetry.lease_wait_seconds = events[-1].wait_seconds if events else 0.0
        with Timer() as load_timer:
            backend = create_backend(spec, telemetry.backend, options.dtype)
            backend.load(options.device)
            lease.hold(backend)
        telemetry.loads = 1
        telemetry.load_seconds = load_timer.seconds
        telemetry.dim = backend.dim
        telemetry.max_seq_length = backend.max_seq_length
        info = {
            "model": spec.name,
            "path": str(spec.path),
            "max_seq_length": backend.max_seq_length,
        }
        cache.register_model(fingerprint, backend.dim, info)
        log.info(
            "%s: embedding %d texts (%d cached) on %s, loaded in %.1fs",
            spec.name,
            len(missing),
            telemetry.cache_hits,
            options.device,
            load_timer.seconds,
        )
        with Timer() as embed_timer:
            run_batches(backend, spec, fingerprint, missing, texts, cache, options, telemetry)
        telemetry.embed_seconds = embed_timer.seconds
        backend.unload()
    if events and events[-1].event_type == "release":
        telemetry.peak_memory_bytes = events[-1].peak_memory_bytes
    return telemetry


def run_batches(
    backend,
    spec: ModelSpec,
    fingerprint: str,
    missing: list[bytes],
    texts: dict[bytes, str],
    cache: EmbeddingCache,
    options: EngineOptions,
    telemetry: ModelTelemetry,
) -> None:
    """Sort the pending texts by token count, then embed and cache them batch by batch."""
    prefix = spec.settings.document_prefix
    inputs = [prefix + texts[d] for d in missing]
    if hasattr(backend, "embed_with_counts"):
        run_static_batches(backend, spec, fingerprint, missing, inputs, cache, telemetry)
        return
    counts: list[int] = []
    for start in range(0, len(inputs), TOKENIZE_CHUNK):
        counts.extend(backend.token_counts(inputs[start : start + TOKENIZE_CHUNK]))
    limit = backend.max_seq_length
    order = sorted(range(len(inputs)), key=lambda i: -counts[i])  # longest first: OOM shows early
    batch_size = options.batch_size
    done = 0
    with Progress(len(order), spec.slug, "chunk", options.show_progress) as bar:
        while done < len(order):
            rows = order[done : done + batch_size]
            try:
                vectors = backend.embed([inputs[i] for i in rows])
            except Exception as error:
                if not is_out_of_memory(error):
                    raise
                if batch_size == 1:
                    raise ModelError(
                        f'Model "{spec.name}" runs out of memory on {options.device} even one text '
                        "at a time (lower --max-seq-length or use a smaller model)"
                    ) from error
                batch_size = max(1, batch_size // 2)
                telemetry.oom_retries += 1
                log.warning(
                    "%s: out of memory on %s; retrying the batch with batch size %d",
                    spec.name,
                    options.device,
                    batch_size,
                )
                release_accelerator_memory()
                continue
            cache.put_vectors(
                fingerprint, [missing[i] for i in rows], vectors, [counts[i] for i in rows]
            )
            used = [min(counts[i], limit) for i in rows]
            telemetry.chunks_embedded += len(rows)
            telemetry.tokens_embedded += sum(used)
            telemetry.padded_tokens += max(used) * len(rows)
            telemetry.truncated_chunks += sum(1 for i in rows if counts[i] > limit)
            telemetry.truncated_tokens += sum(max(0, counts[i] - limit) for i in rows)
            telemetry.batches += 1
            done += len(rows)
            bar.update(len(rows))


def run_static_batches(
    backend,
    spec: ModelSpec,
    fingerprint: str,
    missing: list[bytes],
    inputs: list[str],
    cache: EmbeddingCache,
    telemetry: ModelTelemetry,
) -> None:
    """A static model's fast path: no sorting or padding, large batches, one tokenisation."""
    limit = backend.max_seq_length  # 0: no limit, the usual case for static models
    for start in range(0, len(inputs), STATIC_BATCH):
        vectors, counts = backend.embed_with_counts(inputs[start : start + STATIC_BATCH])
        cache.put_vectors(fingerprint, missing[start : start + len(counts)], vectors, counts)
        used = [min(c, limit) if limit else c for c in counts]
        telemetry.chunks_embedded += len(counts)
        telemetry.tokens_embedded += sum(used)
        telemetry.padded_tokens += sum(used)  # a token bag pads nothing
        if limit:
            telemetry.truncated_chunks += sum(1 for c in counts if c > limit)
            telemetry.truncated_tokens += sum(max(0, c - limit) for c in counts)
        telemetry.batches += 1
    log.info("%s: static model, %d texts in %d batches", spec.name, len(inputs), telemetry.batches)


def release_accelerator_memory() -> None:
    """Free cached CUDA blocks after an OOM so the smaller retry has room."""
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass
