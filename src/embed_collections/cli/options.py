"""Command-line options shared by several commands, and argparse-style lists."""

from __future__ import annotations

import math
import re
from pathlib import Path

import click

from embed_collections.corpus.discovery import CHUNK_FILE_PATTERN, MAX_DISCOVERY_DEPTH
from embed_collections.engine import AUTO_BACKEND, BACKEND_CHOICES

# Options that take several values. The original script spelled them argparse-style
# (`--ensemble_models a b c`); click wants one value per option, so such runs are rewritten to
# `--ensemble_models a,b,c` before parsing.
LIST_OPTIONS = {
    "--collections",
    "--models",
    "--ensemble-models",
    "--ensemble_models",
    "--weights",
    "--ensemble-weights",
    "--ensemble_weights",
}


NUMBER = re.compile(r"-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def is_option(arg: str) -> bool:
    """An option flag such as `-q` or `--sparse`; negative numbers (weights) are values."""
    return arg.startswith("-") and not NUMBER.fullmatch(arg)


def join_list_options(args: list[str]) -> list[str]:
    """Rewrite `--opt a b c` into `--opt a,b,c` for the list options."""
    out: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        out.append(arg)
        index += 1
        if arg in LIST_OPTIONS:
            values = []
            while index < len(args) and not is_option(args[index]):
                values.append(args[index])
                index += 1
            out.append(",".join(values))
    return out


def split_list(values: tuple[str, ...] | None) -> list[str]:
    """Flatten repeated and comma-separated option values."""
    return [part.strip() for value in values or () for part in value.split(",") if part.strip()]


def parse_weights(values: tuple[str, ...] | None) -> list[float] | None:
    items = split_list(values)
    if not items:
        return None
    try:
        weights = [float(item) for item in items]
    except ValueError as error:
        raise click.BadParameter(f"weights must be numbers ({error})") from error
    if not all(math.isfinite(w) for w in weights):
        raise click.BadParameter(
            f"weights must be finite numbers, got {', '.join(items)}", param_hint="'--weights'"
        )
    return weights


class ListOptionCommand(click.Command):
    """A command that accepts the original script's space-separated list options."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, join_list_options(args))


verbose_option = click.option("--verbose", "-v", is_flag=True, help="Debug logging and tracebacks.")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="Only warnings and errors.")


def stack(*decorators):
    """Apply several click decorators as one, in the order written."""

    def apply(function):
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


# Where collections are found (`discover`, `run`).
discovery_options = stack(
    click.option(
        "--pattern", default=CHUNK_FILE_PATTERN, show_default=True, help="Chunk file glob."
    ),
    click.option(
        "--max-depth",
        default=MAX_DISCOVERY_DEPTH,
        show_default=True,
        help="Deepest level searched.",
    ),
)
# A Qdrant server and its key (`run`, `upload`).
server_options = stack(
    click.option("--qdrant-url", envvar="QDRANT_URL", help="Qdrant server URL (env QDRANT_URL)."),
    click.option("--qdrant-api-key", envvar="QDRANT_API_KEY", help="API key (env QDRANT_API_KEY)."),
)

# How collections keep their vectors (`run`, `upload`, `eval`); see docs/scale.md.
storage_options = stack(
    click.option(
        "--quantization",
        type=click.Choice(["none", "int8", "binary", "binary-1.5bit", "binary-2bit"]),
        help="Keep a quantized copy of the vectors in RAM and the originals on disk; searches "
        "rescore with the originals [none].",
    ),
    click.option(
        "--vector-dtype",
        type=click.Choice(["float32", "float16"]),
        help="Type of the stored original vectors [float32].",
    ),
    click.option(
        "--on-disk",
        is_flag=True,
        default=None,
        help="Keep the original vectors memory-mapped on disk, not in RAM (implied by "
        "--quantization).",
    ),
    click.option(
        "--oversampling",
        type=click.FloatRange(min=1.0),
        help="With --quantization: candidates scored on the quantized copy per hit asked for, "
        "then rescored [3].",
    ),
)


# Options shared by every command that embeds (`run`, `eval`): which models, and how they run.
ensemble_options = stack(
    click.option(
        "--models",
        "--ensemble-models",
        "--ensemble_models",
        "models",
        multiple=True,
        help="Ensemble members: hub ids, model folders or aliases [the original three models].",
    ),
    click.option(
        "--weights",
        "--ensemble-weights",
        "--ensemble_weights",
        "weights",
        multiple=True,
        help="One positive weight per model [equal].",
    ),
    click.option(
        "--weights-file",
        type=click.Path(path_type=Path),
        help="Weights per model from a JSON file (as eval --tune-weights writes it).",
    ),
    click.option(
        "--combine",
        type=click.Choice(["concat", "average", "named"]),
        default="concat",
        show_default=True,
        help="concat: weighted similarity fusion; named: one vector per model.",
    ),
    click.option(
        "--max-seq-length",
        type=click.IntRange(min=1),
        help="Truncate texts to this many tokens.",
    ),
    click.option(
        "--truncate-dim",
        type=click.IntRange(min=1),
        help="Cut Matryoshka models' vectors to this size.",
    ),
    click.option(
        "--document-prefix",
        multiple=True,
        metavar="MODEL=PREFIX",
        help="Text put before every chunk a model embeds [the prompt the model declares, "
        "else its known one]; repeat per model.",
    ),
    click.option(
        "--query-prefix",
        multiple=True,
        metavar="MODEL=PREFIX",
        help="Text put before every query of a model (search, serve, eval) [as above].",
    ),
    click.option("--trust-remote-code", is_flag=True, help="Allow models that run their own code."),
    click.option(
        "--model-cache-dir",
        "--model_cache_dir",
        "model_cache_dir",
        type=click.Path(path_type=Path),
        help="Where models are looked for and downloaded.",
    ),
    click.option(
        "--cache-dir",
        type=click.Path(path_type=Path),
        help="Embedding cache [OUTPUT/cache]; share one between runs to reuse vectors.",
    ),
)
engine_options = stack(
    click.option(
        "--device",
        default="",
        help="cpu, cuda (every visible GPU), cuda:0,cuda:2, or cpu:0,cpu:1 (two CPU workers) "
        "[cuda if available].",
    ),
    click.option(
        "--dtype",
        type=click.Choice(["", "float32", "float16", "bfloat16"]),
        default="",
        help="Model precision [bfloat16 on GPUs with it, float16 on older GPUs, float32 on CPU].",
    ),
    click.option(
        "--backend",
        type=click.Choice(list(BACKEND_CHOICES)),
        default=AUTO_BACKEND,
        show_default=True,
        help="auto: torch on CUDA; on CPU openvino, else onnx, if installed and checked once per "
        "model to match torch (cosine >= 0.9999), else torch.",
    ),
    click.option(
        "--quantize",
        type=click.Choice(["int8"]),
        help="CPU, onnx/openvino only: dynamic int8, logs its cosine to fp32 (pays on CPUs with "
        "VNNI or AMX).",
    ),
    click.option(
        "--batch-size",
        "--batch_size",
        "batch_size",
        type=click.IntRange(min=0),
        default=0,
        help="At most this many texts per forward pass [no cap below the token budget].",
    ),
    click.option(
        "--max-batch-tokens",
        type=click.IntRange(min=1),
        default=None,
        help="Padded tokens per forward pass [2048 on CPU, 65536 on CUDA].",
    ),
    click.option(
        "--lease-dir",
        type=click.Path(path_type=Path),
        help="Device lease lock files. Default: machine-wide for GPUs; on CPU beside the "
        "embedding cache, so only runs sharing a cache take turns (give several runs one "
        "--lease-dir to make them queue on CPU too).",
    ),
    click.option(
        "--lease-timeout",
        type=float,
        default=600.0,
        show_default=True,
        help="Seconds to wait for the device lease.",
    ),
    click.option(
        "--check-interval",
        type=float,
        default=30.0,
        show_default=True,
        help="Seconds between 'still waiting' messages.",
    ),
    click.option(
        "--stall-timeout",
        type=float,
        default=900.0,
        show_default=True,
        help="Seconds a device worker may go without progress before its model fails.",
    ),
)


# The second stage of `search`, `serve` and `eval`.
rerank_options = stack(
    click.option(
        "--rerank",
        metavar="MODEL",
        help="Rerank the first stage's candidates with this cross-encoder (a folder, a model "
        "cache entry, an installed package's model or a hub id).",
    ),
    click.option(
        "--rerank-top-n",
        type=int,
        default=50,
        show_default=True,
        help="First-stage candidates the reranker scores (1 to 1000, at least --top-k).",
    ),
    click.option(
        "--rerank-max-length",
        type=int,
        help="Tokens the reranker reads of each (query, text) pair [the model's limit].",
    ),
)

# How `search` and `serve` reach a run's store and models.
query_options = stack(
    click.option(
        "--qdrant-url",
        envvar="QDRANT_URL",
        help="Search this Qdrant server instead of the run's store (env QDRANT_URL).",
    ),
    click.option(
        "--qdrant-path",
        type=click.Path(path_type=Path),
        help="Search this embedded store folder instead of the run's store.",
    ),
    click.option("--qdrant-api-key", envvar="QDRANT_API_KEY", help="API key (env QDRANT_API_KEY)."),
    click.option(
        "--trust-remote-code",
        is_flag=True,
        help="Let models run their own code (never taken from the run's record).",
    ),
    click.option(
        "--device", default="", help="Device for the query models [cuda if present, else cpu]."
    ),
)


# How documents are cut into chunks (`chunk`, `run --docs`).
chunking_options = stack(
    click.option(
        "--chunk-size",
        type=click.IntRange(min=8),
        help="Target tokens per chunk; every chunk also fits every model's window with its "
        "document prefix [256, or the tightest window].",
    ),
    click.option(
        "--chunk-overlap",
        type=click.IntRange(min=0),
        help="Tokens a chunk repeats from the one before it, when a section is cut [0].",
    ),
    click.option(
        "--keep-navigation",
        is_flag=True,
        default=None,
        help="Keep chunks that are mostly links (site menus, tables of contents); by default "
        "they are left out and counted.",
    ),
)
