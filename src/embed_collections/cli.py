"""The command line: parse, call the library, render. Errors become one-line messages here."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click

from embed_collections.cli_options import (
    ListOptionCommand,
    discovery_options,
    engine_options,
    ensemble_options,
    ensemble_settings,
    parse_weights,
    quiet_option,
    server_options,
    split_list,
    verbose_option,
)
from embed_collections.errors import EmbedCollectionsError

log = logging.getLogger("embed_collections")


def setup_logging(verbose: bool, quiet: bool) -> None:
    """Logs and warnings to stderr in the seed's `LEVEL - message` shape; stdout stays data."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s - %(message)s"))
    handler.setLevel(level)
    log.handlers[:] = [handler]
    log.setLevel(min(level, logging.INFO))  # the run's file log keeps INFO even with --quiet
    log.propagate = False
    for noisy in ("httpx", "sentence_transformers", "transformers", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="embed-collections")
def cli() -> None:
    """Embed trees of pre-chunked documents with a model ensemble into Qdrant collections.

    \b
    Example:
      embed-collections discover ./Chunked
      embed-collections run --chunked-dir ./Chunked --output-dir ./output
      embed-collections search Docling "install with pip" --output-dir ./output
    """


def main(args: list[str] | None = None) -> None:
    """Console entry point: run the CLI and map expected failures to messages and exit codes."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if args is None else args)
    verbose = "--verbose" in argv or "-v" in argv
    try:
        code = cli.main(argv, prog_name="embed-collections", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except EmbedCollectionsError as error:
        if verbose:
            log.exception("Failed")
        click.echo(f"Error: {error}", err=True)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted; finished batches are cached, re-run to resume.", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


def echo_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def render_table(headers: list[str], rows: list[list[object]]) -> str:
    """A plain aligned text table for stdout."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


@cli.command()
@click.argument("chunked_dir", required=False, type=click.Path(path_type=Path))
@discovery_options
@click.option(
    "--stats", is_flag=True, help="Also load every collection and count chunks and problems."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@verbose_option
@quiet_option
def discover(chunked_dir, pattern, max_depth, stats, as_json, verbose, quiet):
    """List the collections under CHUNKED_DIR (default ./Chunked, or /kaggle/input on Kaggle).

    \b
    Example:
      embed-collections discover ./Chunked --stats
    """
    from embed_collections.chunks import load_collection
    from embed_collections.config import default_paths, detect_environment
    from embed_collections.discovery import discover_collections, find_chunk_files

    setup_logging(verbose, quiet)
    root = chunked_dir or default_paths(detect_environment())[0]
    found = discover_collections(root, pattern, max_depth)
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


@cli.command(cls=ListOptionCommand)
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
    help="Accepted for the seed's scripts; exclusive (one model at a time) is the only mode.",
)
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="Where models run: this process, or actors on a Ray cluster (extra: [ray]).",
)
@click.option(
    "--ray-address",
    envvar="RAY_ADDRESS",
    help="Ray cluster to join with --executor ray (env RAY_ADDRESS) [start one on this machine].",
)
@server_options
@click.option("--qdrant-host", "--qdrant_host", "qdrant_host", help="Server host (seed spelling).")
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
@click.option("--no-index", is_flag=True, help="Skip building the HNSW index after loading.")
@click.option("--keep-stale", is_flag=True, help="Keep points whose chunks left the input.")
@click.option("--recreate", is_flag=True, help="Replace collections built with another layout.")
@click.option("--sparse", type=click.Choice(["bm25"]), help="Also store BM25 sparse vectors.")
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
    type=click.IntRange(min=1),
    default=50_000,
    show_default=True,
    help="Chunks loaded at once; bounds memory on huge corpora.",
)
@click.option(
    "--no-wait",
    is_flag=True,
    help="Fail at once when another run holds the output directory (default: wait for it).",
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
    from embed_collections.config import SUMMARY_FILE, RunConfig, default_paths, detect_environment
    from embed_collections.pipeline import run as run_pipeline

    setup_logging(options["verbose"], options["quiet"])
    environment = detect_environment()
    default_chunked, default_output = default_paths(environment)
    url = options["qdrant_url"]
    if not url and (options["qdrant_host"] or options["qdrant_port"]):
        url = f"http://{options['qdrant_host'] or 'localhost'}:{options['qdrant_port'] or 6333}"
    settings = ensemble_settings(options)
    config = RunConfig(
        chunked_dir=options["chunked_dir"] or default_chunked,
        output_dir=options["output_dir"] or default_output,
        environment=environment,
        collections=tuple(split_list(options["collections"])),
        **settings,
        executor=options["executor"],
        ray_address=options["ray_address"],
        qdrant_url=url,
        qdrant_api_key=options["qdrant_api_key"],
        qdrant_path=options["qdrant_path"],
        upload=not options["no_upload"],
        build_index=not options["no_index"],
        keep_stale=options["keep_stale"],
        recreate=options["recreate"],
        sparse=options["sparse"],
        sparse_language=options["sparse_language"],
        export=options["export"] or options["create_zip"],
        create_zip=options["create_zip"],
        zip_compression=options["zip_compression"],
        pattern=options["pattern"],
        max_depth=options["max_depth"],
        wave_size=options["wave_size"],
        wait=not options["no_wait"],
    )
    summary = run_pipeline(config)
    if options["as_json"]:
        echo_json(summary.to_json())
    else:
        rows = [
            [
                name,
                r.total_embeddings_generated,
                r.points_in_store if r.points_in_store is not None else "-",
                "failed" if name in summary.failed_collections else "ok",
            ]
            for name, r in summary.results.items()
        ]
        rows += [
            [name, 0, "-", "failed"]
            for name in summary.failed_collections
            if name not in summary.results
        ]
        click.echo(render_table(["collection", "chunks", "points", "status"], rows))
        click.echo(f"\nSummary: {config.output_dir / SUMMARY_FILE}")
    return summary.exit_code


@cli.command(cls=ListOptionCommand)
@click.argument("collection")
@click.argument("query")
@click.option(
    "--output-dir",
    "--output_dir",
    "output_dir",
    type=click.Path(path_type=Path),
    help="Output directory of the run to search [./output].",
)
@click.option(
    "--top-k", type=click.IntRange(min=1), default=10, show_default=True, help="Number of hits."
)
@click.option(
    "--mode",
    type=click.Choice(["dense", "sparse", "hybrid"]),
    help="Which vectors to search [hybrid when the run stored sparse vectors].",
)
@click.option("--fusion", type=click.Choice(["rrf", "dbsf"]), default="rrf", show_default=True)
@click.option(
    "--rrf-k", default=60, show_default=True, help="RRF constant k: score = sum 1/(k + rank)."
)
@click.option("--qdrant-api-key", envvar="QDRANT_API_KEY", help="API key (env QDRANT_API_KEY).")
@click.option(
    "--weights",
    multiple=True,
    help="Query-time weight per model for a --combine named run [the run's weights].",
)
@click.option("--json", "as_json", is_flag=True, help="Print hits as JSON.")
@verbose_option
@quiet_option
def search(
    collection,
    query,
    output_dir,
    top_k,
    mode,
    fusion,
    rrf_k,
    qdrant_api_key,
    weights,
    as_json,
    verbose,
    quiet,
):
    """Search COLLECTION of an earlier run for QUERY, embedded the way the run embedded documents.

    \b
    Example:
      embed-collections search Docling "How do I convert a PDF?" --output-dir ./output --top-k 5
      embed-collections search Docling "convert a PDF" --weights 0.8,0.2  # a --combine named run
    """
    from embed_collections.config import default_paths, detect_environment
    from embed_collections.search import search_collection

    setup_logging(verbose, quiet or not verbose)
    output_dir = output_dir or default_paths(detect_environment())[1]
    hits = search_collection(
        output_dir,
        collection,
        query,
        top_k,
        mode,
        fusion,
        rrf_k,
        qdrant_api_key,
        weights=parse_weights(weights),
    )
    if as_json:
        echo_json(
            [{"rank": i, "score": h.score, "id": h.id, **h.payload} for i, h in enumerate(hits, 1)]
        )
        return
    rows = [
        [
            i,
            f"{h.score:.4f}",
            h.payload.get("chunk_id", ""),
            h.payload.get("source_file", ""),
            " ".join(str(h.payload.get("text", "")).split())[:80],
        ]
        for i, h in enumerate(hits, 1)
    ]
    click.echo(render_table(["rank", "score", "chunk_id", "source_file", "text"], rows))


@cli.command("eval", cls=ListOptionCommand)
@click.option(
    "--beir",
    "beir_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="BEIR folder: corpus.jsonl, queries.jsonl and qrels/<split>.tsv.",
)
@click.option(
    "--split", default="test", show_default=True, help="Which qrels/<split>.tsv to score."
)
@ensemble_options
@engine_options
@click.option("--sparse", type=click.Choice(["bm25"]), help="Also index BM25 sparse vectors.")
@click.option(
    "--sparse-language", default="english", show_default=True, help="BM25 language (as for run)."
)
@click.option(
    "--modes",
    multiple=True,
    help="Search modes to score: dense, sparse, hybrid (comma separated) "
    "[dense; all three with --sparse].",
)
@click.option(
    "--fusion",
    type=click.Choice(["rrf", "dbsf"]),
    default="rrf",
    show_default=True,
    help="How hybrid mode fuses the dense and sparse rankings.",
)
@click.option("--rrf-k", default=60, show_default=True, help="RRF constant k.")
@click.option(
    "--output-dir",
    "--output_dir",
    "output_dir",
    type=click.Path(path_type=Path),
    help="Corpus chunk file, store, cache and eval_results.json [./output/eval].",
)
@click.option(
    "--recreate",
    is_flag=True,
    help="Rebuild the corpus collection when an earlier eval used other models.",
)
@click.option(
    "--tune-weights",
    is_flag=True,
    help="Learn per-model weights on --tune-split (exact search, cross-validated) and score "
    "members and ensemble on --split.",
)
@click.option(
    "--tune-split", default="train", show_default=True, help="qrels split to learn weights on."
)
@click.option(
    "--weights-out",
    type=click.Path(path_type=Path),
    help="Where --tune-weights writes the weights file [OUTPUT/weights.json].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results JSON on stdout.")
@verbose_option
@quiet_option
def eval_command(**options):
    """Score the ensemble on a BEIR data set: nDCG@10, Recall@100 and MRR@10 per search mode.

    The corpus is embedded through the same cache as `run` (a repeated eval embeds nothing),
    every judged query is searched in each mode, and the results are written to
    OUTPUT/eval_results.json.

    \b
    With --tune-weights, weights are learned on --tune-split instead (see README, "Choosing
    ensemble weights") and written to a file that `run --weights-file` reads.

    \b
    Example:
      embed-collections eval --beir ./scifact --models minilm --sparse bm25
      embed-collections eval --beir ./scifact --models minilm,static --weights 0.9,0.1 --json
      embed-collections eval --beir ./scifact --models minilm,./static --tune-weights \\
          --tune-split train --split test
    """
    from embed_collections.config import RunConfig, default_paths, detect_environment
    from embed_collections.evaluation import RESULTS_FILE, evaluate_beir

    setup_logging(options["verbose"], options["quiet"])
    environment = detect_environment()
    output_dir = options["output_dir"] or default_paths(environment)[1] / "eval"
    config = RunConfig(
        chunked_dir=output_dir / "beir",
        output_dir=output_dir,
        environment=environment,
        **ensemble_settings(options),
        recreate=options["recreate"],
        sparse=options["sparse"],
        sparse_language=options["sparse_language"],
    )
    if options["tune_weights"]:
        return render_tuning(options, config)
    report = evaluate_beir(
        options["beir_dir"],
        config,
        modes=split_list(options["modes"]) or None,
        split=options["split"],
        fusion=options["fusion"],
        rrf_k=options["rrf_k"],
    )
    data = report.to_json()
    if options["as_json"]:
        echo_json(data)
        return
    rows = [
        [
            mode,
            f"{r['ndcg@10']:.4f}",
            f"{r['recall@100']:.4f}",
            f"{r['mrr@10']:.4f}",
            f"{r['search_seconds']:.2f}",
            r["queries_per_second"] or "-",
        ]
        for mode, r in data["modes"].items()
    ]
    headers = ["mode", "nDCG@10", "Recall@100", "MRR@10", "search_s", "queries/s"]
    click.echo(render_table(headers, rows))
    click.echo(
        f"\n{data['dataset']} ({options['split']}): {data['query_count']} queries, "
        f"{data['corpus_size']} documents; indexing {data['index_seconds']:.1f} s "
        f"({data['cache_misses']} embedded, {data['cache_hits']} cached), "
        f"query embedding {data['query_embedding_seconds']:.1f} s"
    )
    click.echo(f"Results: {output_dir / RESULTS_FILE}")


def render_tuning(options: dict, config) -> None:
    """Run `eval --tune-weights` and print its table (or JSON)."""
    from embed_collections.tuning import tune_beir

    report = tune_beir(
        options["beir_dir"],
        config,
        tune_split=options["tune_split"],
        split=options["split"],
        weights_out=options["weights_out"],
    )
    data = report.to_json()
    if options["as_json"]:
        echo_json(data)
        return
    metrics = ("ndcg@10", "recall@100", "mrr@10")
    rows: list[list[object]] = [
        [f"{m['model']} alone", "-", *(f"{m[k]:.4f}" for k in metrics)] for m in data["members"]
    ]
    weights = ", ".join(f"{w:g}" for w in data["weights"])
    rows.append(["ensemble", weights, *(f"{data['ensemble'][k]:.4f}" for k in metrics)])
    click.echo(render_table(["model", "weights", "nDCG@10", "Recall@100", "MRR@10"], rows))
    tuning = data["tuning"]
    click.echo(
        f"\nWeights learned on {tuning['split']} ({tuning['queries']} queries, "
        f"{tuning['folds']}-fold cross-validation); scores on {data['split']} "
        f"({data['eval_queries']} queries, {data['corpus_size']} documents, exact search)."
    )
    click.echo(tuning["message"])
    click.echo(f"Weights: {data['weights_file']} (use with run --weights-file)")


@cli.command(cls=ListOptionCommand)
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
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@verbose_option
@quiet_option
def upload(
    path, qdrant_url, qdrant_api_key, qdrant_path, collections, recreate, as_json, verbose, quiet
):
    """Load an export directory or zip archive (from `run --export`) into Qdrant.

    Every file is checked against MANIFEST.txt before anything is written; unsafe archive
    entries are refused. A zip is read in place, nothing is extracted. Point ids are those of
    the run, so loading twice leaves the same points.

    \b
    Example:
      embed-collections upload ./output/embeddings_2025-10-23_14-30-45.zip --qdrant-path ./qdrant
      embed-collections upload ./output --qdrant-url http://localhost:6333 --collections Docling
    """
    from embed_collections.errors import UsageError
    from embed_collections.stores.open import open_store
    from embed_collections.upload import upload_export

    setup_logging(verbose, quiet)
    source = click.get_current_context().get_parameter_source("qdrant_url")
    if qdrant_path and source is click.core.ParameterSource.ENVIRONMENT:
        qdrant_url = None  # an explicit --qdrant-path beats a QDRANT_URL left in the environment
    if bool(qdrant_url) == bool(qdrant_path):
        raise UsageError(
            "Give one target store: --qdrant-path DIR (embedded) or --qdrant-url URL (a server)"
        )
    store = open_store(qdrant_url, qdrant_path, qdrant_api_key)
    try:
        counts = upload_export(path, store, split_list(collections) or None, recreate)
    finally:
        store.close()
    if as_json:
        echo_json(counts)
        return
    click.echo(render_table(["collection", "points"], [[name, n] for name, n in counts.items()]))
