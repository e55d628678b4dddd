"""`search` and `eval`: query a run's collections, score an ensemble on a BEIR set."""

from __future__ import annotations

from pathlib import Path

import click

from embed_collections.cli.options import (
    ListOptionCommand,
    engine_options,
    ensemble_options,
    parse_weights,
    quiet_option,
    split_list,
    verbose_option,
)
from embed_collections.cli.render import echo_json, render_table, setup_logging


@click.command(cls=ListOptionCommand)
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

    COLLECTION is one name, several separated by commas, or `all`.

    \b
    Example:
      embed-collections search Docling "How do I convert a PDF?" --output-dir ./output --top-k 5
      embed-collections search Docling "convert a PDF" --weights 0.8,0.2  # a --combine named run
    """
    import embed_collections as ec

    setup_logging(verbose, quiet or not verbose)
    with ec.open(output_dir, qdrant_api_key) as opened:
        names = None if collection == "all" else split_list((collection,))
        hits = opened.search(
            query, names, top_k, mode, fusion, rrf_k, weights=parse_weights(weights)
        )
    if as_json:
        echo_json(
            [
                {"rank": i, "score": h.score, "id": h.point_id, "collection": h.collection}
                | {"text": h.text, "chunk_id": h.chunk_id, "doc_id": h.doc_id}
                | {"source_file": h.source_file, "metadata": h.metadata}
                for i, h in enumerate(hits, 1)
            ]
        )
        return
    rows = [
        [i, f"{h.score:.4f}", h.chunk_id, h.source_file, " ".join(h.text.split())[:80]]
        for i, h in enumerate(hits, 1)
    ]
    click.echo(render_table(["rank", "score", "chunk_id", "source_file", "text"], rows))


@click.command("eval", cls=ListOptionCommand)
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
      embed-collections eval --beir ./scifact --models minilm,bge-small --weights 0.7,0.3 --json
      embed-collections eval --beir ./scifact --models minilm,bge-small --tune-weights \\
          --tune-split train --split test
    """
    from embed_collections.query.evaluation import RESULTS_FILE, evaluate_beir
    from embed_collections.record.config import (
        RUN_OPTIONS,
        build_run_config,
        default_paths,
        detect_environment,
    )

    setup_logging(options["verbose"], options["quiet"])
    output_dir = options["output_dir"] or default_paths(detect_environment())[1] / "eval"
    options["models"] = split_list(options["models"])
    options["weights"] = parse_weights(options["weights"])
    chosen = {key: options[key] for key in RUN_OPTIONS if key in options}
    config = build_run_config(output_dir / "beir", output_dir, chosen)  # type: ignore[arg-type]
    if options["tune_weights"]:
        render_tuning(options, config)
        refresh_report(output_dir)
        return
    report = evaluate_beir(
        options["beir_dir"],
        config,
        modes=split_list(options["modes"]) or None,
        split=options["split"],
        fusion=options["fusion"],
        rrf_k=options["rrf_k"],
    )
    refresh_report(output_dir)
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


def refresh_report(output_dir: Path) -> None:
    """Re-write the eval run's report.html with the results just written (never fatal)."""
    from embed_collections.cli.render import log
    from embed_collections.errors import EmbedCollectionsError
    from embed_collections.report.html import write_report

    try:
        write_report(output_dir)
    except (EmbedCollectionsError, OSError) as error:
        log.warning("The report could not be written: %s", error)


def render_tuning(options: dict, config) -> None:
    """Run `eval --tune-weights` and print its table (or JSON)."""
    from embed_collections.query.tune_beir import tune_beir

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
