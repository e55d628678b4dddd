"""`search` and `eval`: query a run's collections, score an ensemble on a BEIR set."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from embed_collections.cli.options import (
    ListOptionCommand,
    engine_options,
    ensemble_options,
    parse_weights,
    query_options,
    quiet_option,
    rerank_options,
    split_list,
    storage_options,
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
    "--top-k",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Number of hits (at most 1000).",
)
@click.option(
    "--mode",
    type=click.Choice(["dense", "sparse", "hybrid"]),
    help="Which vectors to search [hybrid when the run stored sparse vectors].",
)
@click.option(
    "--where",
    multiple=True,
    metavar="FIELD=VALUE",
    help="Only chunks whose payload FIELD equals VALUE (repeatable, all must match), e.g. "
    "source_file=guide.md or metadata.lang=en; whole numbers and true/false match as such.",
)
@click.option("--fusion", type=click.Choice(["rrf", "dbsf"]), default="rrf", show_default=True)
@click.option(
    "--rrf-k", default=60, show_default=True, help="RRF constant k: score = sum 1/(k + rank)."
)
@query_options
@rerank_options
@click.option(
    "--weights",
    multiple=True,
    help="Query-time weight per model for a --combine named run [the run's weights].",
)
@click.option(
    "--diversity",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="0 ranks by relevance only; up to 1 prefers hits unlike those above (MMR).",
)
@click.option(
    "--max-tokens",
    type=click.IntRange(1, 100_000),
    help="Print a context block of this many tokens: the best hits with their sections and "
    "neighbours, by document, each piece under a citation line.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the mode and hits as JSON.")
@verbose_option
@quiet_option
def search(
    collection,
    query,
    output_dir,
    top_k,
    mode,
    where,
    fusion,
    rrf_k,
    qdrant_url,
    qdrant_path,
    qdrant_api_key,
    trust_remote_code,
    device,
    rerank,
    rerank_top_n,
    rerank_max_length,
    weights,
    diversity,
    max_tokens,
    as_json,
    verbose,
    quiet,
):
    """Search COLLECTION of an earlier run for QUERY, embedded the way the run embedded documents.

    COLLECTION is one name, several separated by commas, or `all`. Each hit's score is the
    dense cosine of query and chunk (comparable across collections); in hybrid and sparse mode
    hits keep their collection's own ranking, shown as `rank`.

    \b
    Example:
      embed-collections search Docling "How do I convert a PDF?" --output-dir ./output --top-k 5
      embed-collections search all "install with pip" --where source_file=README_chunks.json
      embed-collections search Docling,pydantic "validate a field" --mode dense --json
      embed-collections search Docling "convert a PDF" --weights 0.8,0.2  # a --combine named run
      embed-collections search all "convert a PDF" --max-tokens 2000  # a context block to paste
      embed-collections search all "convert a PDF" --rerank ./ms-marco-MiniLM-L6 --rerank-top-n 20
    """
    import embed_collections as ec
    from embed_collections.query.rerank import load_reranker

    setup_logging(verbose, quiet or not verbose)
    reranker = None
    if rerank:
        reranker = load_reranker(rerank, None, trust_remote_code, device, rerank_max_length)
    with ec.open(
        output_dir,
        qdrant_url=qdrant_url,
        qdrant_path=qdrant_path,
        qdrant_api_key=qdrant_api_key,
        device=device,
        trust_remote_code=trust_remote_code,
        rerank=reranker,
    ) as opened:
        chosen = opened.resolve_mode(mode)
        sparse = opened.record.sparse
        sparse_name = sparse.model if sparse is not None and sparse.model else "BM25"
        hits = opened.search(
            query,
            collection,
            top_k,
            chosen,
            fusion,
            rrf_k,
            weights=parse_weights(weights),
            where=parse_where(where),
            diversity=diversity,
            rerank_top_n=rerank_top_n,
        )
        if max_tokens is not None:
            from embed_collections.query.context import DEFAULT_NEIGHBOURS

            block = opened.context_of(hits, max_tokens, DEFAULT_NEIGHBOURS, chosen)
            if as_json:
                echo_json(block.to_json())
            else:
                click.echo(block.text)
            return
    described = describe_mode(chosen, fusion, rrf_k, sparse_name)
    if rerank:
        described += f", reranked (top {rerank_top_n}) by {rerank}"
    if as_json:
        echo_json({"mode": chosen, "ranking": described, "hits": [h.to_json() for h in hits]})
        return
    click.echo(f"Mode: {described}; score = cosine of query and chunk")
    if not hits:
        click.echo("No hits.")
        return
    reranked = ["rerank"] if rerank else []
    headers = ["#", *reranked, "score", *(["rank"] if chosen != "dense" else [])]
    headers += ["collection", "source"]
    rows: list[list[object]] = [
        [
            i,
            *([f"{h.rerank_score:.3f}"] if rerank else []),
            f"{h.score:.3f}",
            *([h.rank] if chosen != "dense" else []),
            h.collection,
            shorten(h.source_file or h.doc_id, 40),
        ]
        for i, h in enumerate(hits, 1)
    ]
    fixed = render_table(headers, rows).splitlines()[0]
    room = max(20, shutil.get_terminal_size((100, 24)).columns - len(fixed) - 3)
    for row, hit in zip(rows, hits):
        row.append(shorten(" ".join(hit.text.split()), room))
    click.echo(render_table([*headers, "text"], rows))


def describe_mode(mode: str, fusion: str, rrf_k: int, sparse: str = "BM25") -> str:
    """The mode as a person reads it: `hybrid (dense + BM25, RRF k=60)`; `sparse` names the
    run's sparse member (a learned model's name)."""
    if mode == "hybrid":
        fused = f"RRF k={rrf_k}" if fusion == "rrf" else "DBSF"
        return f"hybrid (dense + {sparse}, {fused})"
    return f"sparse ({sparse})" if mode == "sparse" else "dense"


def shorten(text: str, width: int) -> str:
    """`text` cut to `width` characters, with an ellipsis when cut."""
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def parse_where(values: tuple[str, ...]) -> list[tuple[str, str | int | bool]]:
    """`--where FIELD=VALUE` options as filter pairs; whole numbers and true/false are typed."""
    pairs: list[tuple[str, str | int | bool]] = []
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(
                f'"{item}" is not FIELD=VALUE (e.g. --where source_file=guide.md)',
                param_hint="--where",
            )
        value: str | int | bool = raw
        if raw in ("true", "false"):
            value = raw == "true"
        elif raw.lstrip("-").isdigit():
            value = int(raw)
        pairs.append((key.strip(), value))
    return pairs


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
@click.option(
    "--sparse",
    metavar="bm25|MODEL",
    help="Also index sparse vectors: bm25 or a SparseEncoder (SPLADE) model, as for run.",
)
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
    "--rerank",
    metavar="MODEL",
    help="Also score every mode reranked by this cross-encoder (MODE+rerank@N rows).",
)
@click.option(
    "--rerank-top-n",
    multiple=True,
    help="First-stage candidates the reranker scores, one or several (comma separated) [50].",
)
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
@storage_options
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
      embed-collections eval --beir ./scifact --models minilm --sparse bm25 \\
          --rerank ./ms-marco-MiniLM-L6-v2 --rerank-top-n 20,50
      embed-collections eval --beir ./scifact --models minilm,bge-small --weights 0.7,0.3 --json
      embed-collections eval --beir ./scifact --models minilm,bge-small --tune-weights \\
          --tune-split train --split test
    """
    import embed_collections as ec
    from embed_collections.record.config import RUN_OPTIONS, default_paths, detect_environment
    from embed_collections.record.files import EVAL_FILE

    setup_logging(options["verbose"], options["quiet"])
    options["models"] = split_list(options["models"])
    options["weights"] = parse_weights(options["weights"])
    chosen = {key: options[key] for key in RUN_OPTIONS if key in options}
    output_dir = options["output_dir"] or default_paths(detect_environment())[1] / "eval"
    if options["tune_weights"]:
        render_tuning(options, chosen)
        return
    report = ec.evaluate(
        options["beir_dir"],
        output_dir,
        split=options["split"],
        modes=split_list(options["modes"]) or None,
        fusion=options["fusion"],
        rrf_k=options["rrf_k"],
        rerank=options["rerank"],
        rerank_top_n=parse_top_ns(options["rerank_top_n"]),
        **chosen,
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
            "-" if r["ms_per_query"] is None else f"{r['ms_per_query']:.1f}",
        ]
        for mode, r in data["modes"].items()
    ]
    headers = ["mode", "nDCG@10", "Recall@100", "MRR@10", "search_s", "queries/s", "ms/query"]
    click.echo(render_table(headers, rows))
    click.echo(
        f"\n{data['dataset']} ({options['split']}): {data['query_count']} queries, "
        f"{data['corpus_size']} documents; indexing {data['index_seconds']:.1f} s "
        f"({data['cache_misses']} embedded, {data['cache_hits']} cached), "
        f"query embedding {data['query_embedding_seconds']:.1f} s"
    )
    storage = data["storage"]
    if storage:
        disk = data["disk_bytes_per_point"]
        click.echo(
            f"Storage: {storage['quantization']} quantization, {storage['vector_dtype']} "
            f"originals {'on disk' if storage['on_disk'] else 'in RAM'}; vector RAM "
            f"{data['vector_ram_bytes_per_point']:.0f} B/point, disk "
            f"{'-' if disk is None else f'{disk:.0f}'} B/point"
        )
    click.echo(f"Results: {output_dir / EVAL_FILE}")


def parse_top_ns(values: tuple[str, ...]) -> list[int] | None:
    """`--rerank-top-n 20,50` (or repeated) as whole numbers; a usage error names a bad one."""
    numbers = []
    for item in split_list(values):
        if not item.strip().isdigit():
            raise click.BadParameter(
                f'"{item}" is not a whole number (e.g. --rerank-top-n 20,50)',
                param_hint="--rerank-top-n",
            )
        numbers.append(int(item))
    return numbers or None


def render_tuning(options: dict, chosen: dict) -> None:
    """Run `eval --tune-weights` and print its table (or JSON)."""
    import embed_collections as ec

    report = ec.tune_weights(
        options["beir_dir"],
        options["output_dir"],
        tune_split=options["tune_split"],
        split=options["split"],
        weights_out=options["weights_out"],
        **chosen,
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
