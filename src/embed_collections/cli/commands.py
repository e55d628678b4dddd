"""`discover`, `run` and `upload`: find collections, embed and load them, load an export."""

from __future__ import annotations

from pathlib import Path

import click

from embed_collections.cli.options import (
    ListOptionCommand,
    chunking_options,
    discovery_options,
    engine_options,
    ensemble_options,
    parse_weights,
    quiet_option,
    server_options,
    split_list,
    storage_options,
    verbose_option,
)
from embed_collections.cli.render import echo_json, render_table, setup_logging
from embed_collections.engine import DEFAULT_EXECUTOR, EXECUTORS


class WaveSize(click.ParamType):
    """`--wave-size`: a number of chunks (1 or more), or `auto`."""

    name = "N|auto"

    def convert(self, value, param, ctx):
        if value == "auto" or isinstance(value, int):
            return value
        if str(value).isdigit() and int(value) >= 1:
            return int(value)
        self.fail(f"{value!r} is not a number of chunks (1 or more) or 'auto'", param, ctx)


@click.command()
@click.argument("chunked_dir", required=False, type=click.Path(path_type=Path))
@discovery_options
@click.option(
    "--stats", is_flag=True, help="Also load every collection and count chunks and problems."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@verbose_option
@quiet_option
def discover(chunked_dir, pattern, max_depth, stats, as_json, verbose, quiet):
    """List the collections under CHUNKED_DIR (default ./Chunked, or /kaggle/input on Kaggle),
    then a total line (warnings only on stderr; --verbose shows the scan).

    \b
    Example:
      embed-collections discover ./Chunked --stats
    """
    import embed_collections as ec
    from embed_collections.corpus.chunks import load_collection
    from embed_collections.corpus.discovery import find_chunk_files
    from embed_collections.record.config import default_paths, detect_environment

    setup_logging(verbose, quiet=not verbose)  # the table is the answer: no per-collection INFO
    root = chunked_dir or default_paths(detect_environment())[0]
    found = ec.discover(root, pattern, max_depth)
    rows = []
    for name, directory in found.items():
        row = {
            "name": name,
            "chunk_files": len(find_chunk_files(directory, pattern)),
            "path": str(directory),
        }
        if stats:
            loaded = load_collection(name, directory, pattern, root)
            row.update(
                chunks=len(loaded.chunks),
                skipped_records=loaded.stats.skipped_records,
                duplicate_ids=loaded.stats.duplicate_ids,
                file_errors=list(loaded.stats.file_errors),
            )
        rows.append(row)
    if as_json:
        echo_json(rows)
        return
    headers = (
        ["name", "chunk_files"] + (["chunks", "skipped", "file_errors"] if stats else []) + ["path"]
    )
    table = [
        [r["name"], r["chunk_files"]]
        + ([r["chunks"], r["skipped_records"], len(r["file_errors"])] if stats else [])
        + [r["path"]]
        for r in rows
    ]
    click.echo(render_table(headers, table))
    files = sum(r["chunk_files"] for r in rows)
    total = f"\n{len(rows)} collections, {files} chunk files"
    if stats:
        total += f", {sum(r['chunks'] for r in rows)} chunks"
    click.echo(f"{total} under {root}")


@click.command(cls=ListOptionCommand)
@click.option(
    "--chunked-dir",
    "--chunked_dir",
    "chunked_dir",
    type=click.Path(path_type=Path),
    help="Root of the chunk tree [./Chunked; /kaggle/input on Kaggle].",
)
@click.option(
    "--output-dir",
    "--output_dir",
    "output_dir",
    type=click.Path(path_type=Path),
    help="Log, summary, cache and embedded store [./output; /kaggle/working on Kaggle].",
)
@click.option(
    "--collections", multiple=True, help="Only these collections (space or comma separated)."
)
@ensemble_options
@engine_options
@click.option(
    "--exclusive-ensemble",
    "--exclusive_ensemble",
    is_flag=True,
    help="Accepted for the original script; exclusive (one model at a time) is the only mode.",
)
@click.option(
    "--executor",
    type=click.Choice(list(EXECUTORS)),
    default=DEFAULT_EXECUTOR,
    show_default=True,
    help="Where models run: this process, or actors on a Ray cluster (extra: [ray]).",
)
@click.option(
    "--ray-address",
    envvar="RAY_ADDRESS",
    help="Ray cluster to join; implies --executor ray (env RAY_ADDRESS, read with --executor "
    "ray) [start one on this machine].",
)
@server_options
@click.option(
    "--qdrant-host", "--qdrant_host", "qdrant_host", help="Server host (original spelling)."
)
@click.option(
    "--qdrant-port",
    "--qdrant_port",
    "qdrant_port",
    type=click.IntRange(1, 65535),
    help="Server port.",
)
@click.option(
    "--qdrant-path", type=click.Path(path_type=Path), help="Embedded store root [OUTPUT/qdrant]."
)
@click.option("--no-upload", is_flag=True, help="Embed (and export) but do not write to Qdrant.")
@storage_options
@click.option("--no-index", is_flag=True, help="Skip building the HNSW index after loading.")
@click.option("--keep-stale", is_flag=True, help="Keep points whose chunks left the input.")
@click.option(
    "--keep-missing",
    is_flag=True,
    help="Keep collections whose folder left the chunked tree (for a store loaded from several "
    "trees); by default a complete run over the whole tree deletes them.",
)
@click.option("--recreate", is_flag=True, help="Replace collections built with another layout.")
@click.option(
    "--verify-full",
    is_flag=True,
    help="Read every unchanged collection back and compare it, even when its files are as the "
    "last complete load left them.",
)
@click.option(
    "--sparse",
    metavar="bm25|MODEL",
    help="Also store sparse vectors: bm25, or a learned sparse model (a sentence-transformers "
    "SparseEncoder, SPLADE-style: folder, cache entry or hub id).",
)
@click.option(
    "--sparse-language",
    default="english",
    show_default=True,
    help="BM25 stop-words and Snowball stemmer language (english, german, french, ...).",
)
@click.option("--export", is_flag=True, help="Write per-collection embeddings files.")
@click.option(
    "--create-zip",
    "--create_zip",
    "create_zip",
    is_flag=True,
    help="Also pack the export into embeddings_<time>.zip (implies --export).",
)
@click.option(
    "--zip-compression",
    "--zip_compression",
    "zip_compression",
    type=click.Choice(["deflated", "stored"]),
    default="deflated",
    show_default=True,
)
@discovery_options
@click.option(
    "--wave-size",
    type=WaveSize(),
    metavar="N|auto",
    default="auto",
    show_default=True,
    help="Chunks loaded at once; bounds memory on huge corpora. auto: as many as a quarter "
    "of the memory available holds (about 4 KB per chunk).",
)
@click.option(
    "--no-wait",
    is_flag=True,
    help="Fail at once when another run holds the output directory (default: wait for it).",
)
@click.option(
    "--docs",
    type=click.Path(path_type=Path),
    help="Chunk this folder of documents first (as `chunk`), into --chunked-dir "
    "[OUTPUT/chunked], then run on the chunks.",
)
@chunking_options
@click.option(
    "--watch",
    is_flag=True,
    help="Keep running: re-chunk and re-run when files under --docs (or --chunked-dir) change.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary JSON on stdout.")
@verbose_option
@quiet_option
def run(**options):
    """Embed every collection with the ensemble and load it into Qdrant.

    \b
    Example:
      embed-collections run --chunked-dir ./Chunked --output-dir ./output \\
          --models minilm bge-small --weights 0.7 0.3 --sparse bm25
    Exit codes: 0 all collections succeeded, 3 some failed (summary written),
    1 nothing could be done, 2 usage error.
    """
    import embed_collections as ec
    from embed_collections.record.config import RUN_OPTIONS, default_paths, detect_environment
    from embed_collections.record.files import REPORT_FILE, SUMMARY_FILE

    setup_logging(options["verbose"], options["quiet"])
    for key in ("collections", "models"):
        options[key] = split_list(options[key])
    options["weights"] = parse_weights(options["weights"])
    context = click.get_current_context()
    if context.get_parameter_source("executor") is click.core.ParameterSource.DEFAULT:
        options["executor"] = None  # --ray-address alone implies --executor ray
        if context.get_parameter_source("ray_address") is click.core.ParameterSource.ENVIRONMENT:
            options["ray_address"] = None  # RAY_ADDRESS serves --executor ray, implies nothing
    chosen = {key: options[key] for key in RUN_OPTIONS}
    if options["watch"]:
        return ec.watch(
            options["chunked_dir"], options["output_dir"], on_update=render_update, **chosen
        )
    summary = ec.run(options["chunked_dir"], options["output_dir"], **chosen)
    output_dir = options["output_dir"] or default_paths(detect_environment())[1]
    chunking = summary.extra.chunking
    if chunking and not options["as_json"]:
        click.echo(describe_chunking(chunking))
    if options["as_json"]:
        echo_json(summary.to_json())
    else:
        rows = [
            [
                name,
                r.total_embeddings_generated,
                max(r.embedded_now.values(), default=0),
                r.points_in_store if r.points_in_store is not None else "-",
                "failed" if name in summary.failed_collections else r.status,
            ]
            for name, r in summary.results.items()
        ]
        rows += [
            [name, 0, 0, "-", "failed"]
            for name in summary.failed_collections
            if name not in summary.results
        ]
        headers = ["collection", "chunks", "embedded now", "points", "status"]
        click.echo(render_table(headers, rows))
        click.echo(f"\nSummary: {output_dir / SUMMARY_FILE}")
        if (output_dir / REPORT_FILE).exists():
            click.echo(f"Report: {output_dir / REPORT_FILE}")
    return summary.exit_code


@click.command(cls=ListOptionCommand)
@click.argument("path", type=click.Path(path_type=Path))
@server_options
@click.option(
    "--qdrant-path",
    type=click.Path(path_type=Path),
    help="Embedded store root, laid out as `run` lays it out (e.g. OUTPUT/qdrant).",
)
@click.option(
    "--collections", multiple=True, help="Only these collections (space or comma separated)."
)
@click.option(
    "--recreate", is_flag=True, help="Replace existing collections instead of reusing them."
)
@storage_options
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@verbose_option
@quiet_option
def upload(
    path,
    qdrant_url,
    qdrant_api_key,
    qdrant_path,
    collections,
    recreate,
    as_json,
    verbose,
    quiet,
    **storage,
):
    """Load an export directory or zip archive (from `run --export`) into Qdrant.

    Every file is checked against MANIFEST.txt before anything is written; unsafe archive
    entries are refused. A zip is read in place, nothing is extracted. Point ids are those of
    the run, so loading twice leaves the same points. Collections keep the run's storage
    options (--quantization, ...) unless given here.

    \b
    Example:
      embed-collections upload ./output/embeddings_2025-10-23_14-30-45.zip --qdrant-path ./qdrant
      embed-collections upload ./output --qdrant-url http://localhost:6333 --collections Docling
    """
    import embed_collections as ec

    setup_logging(verbose, quiet)
    source = click.get_current_context().get_parameter_source("qdrant_url")
    if qdrant_path and source is click.core.ParameterSource.ENVIRONMENT:
        qdrant_url = None  # an explicit --qdrant-path beats a QDRANT_URL left in the environment
    counts = ec.upload(
        path,
        qdrant_url=qdrant_url,
        qdrant_path=qdrant_path,
        qdrant_api_key=qdrant_api_key,
        collections=split_list(collections) or None,
        recreate=recreate,
        **storage,
    )
    if as_json:
        echo_json(counts)
        return
    click.echo(render_table(["collection", "points"], [[name, n] for name, n in counts.items()]))


def describe_chunking(chunking: dict) -> str:
    """One line on what `--docs` chunked."""
    tokens = chunking.get("tokens") or {}
    sizes = (
        f", tokens per chunk median {tokens['median']:g} max {tokens['max']:g}" if tokens else ""
    )
    return (
        f"Chunked {chunking['files']} documents into {chunking['chunks']} chunks{sizes} "
        f"({chunking['written']} files written, {chunking['removed']} removed, "
        f"{len(chunking['skipped'])} skipped)"
    )


def render_update(update: dict) -> None:
    """One line per `--watch` update, on stderr (stdout stays data)."""
    click.echo(update["message"], err=True)
