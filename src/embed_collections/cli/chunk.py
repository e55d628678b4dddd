"""`chunk`: cut a folder of documents into chunk files sized to the ensemble."""

from __future__ import annotations

from pathlib import Path

import click

from embed_collections.cli.options import (
    ListOptionCommand,
    chunking_options,
    quiet_option,
    split_list,
    verbose_option,
)
from embed_collections.cli.render import echo_json, render_table, setup_logging


@click.command(cls=ListOptionCommand)
@click.argument("source_dir", type=click.Path(path_type=Path))
@click.argument("chunked_dir", type=click.Path(path_type=Path))
@click.option(
    "--models",
    multiple=True,
    help="The models the chunks must fit (as `run --models`) [the original three models].",
)
@chunking_options
@click.option("--max-seq-length", type=click.IntRange(min=1), help="As `run --max-seq-length`.")
@click.option(
    "--document-prefix", multiple=True, metavar="MODEL=PREFIX", help="As `run --document-prefix`."
)
@click.option("--trust-remote-code", is_flag=True, help="Allow models that run their own code.")
@click.option(
    "--model-cache-dir", type=click.Path(path_type=Path), help="Where models are looked for."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@verbose_option
@quiet_option
def chunk(source_dir, chunked_dir, models, as_json, verbose, quiet, **options):
    """Cut the documents under SOURCE_DIR into *_chunks.json files under CHUNKED_DIR, the
    folder tree mirrored (each folder a collection for `run`), every chunk within every
    model's window by that model's own tokenizer.

    Markdown, MDX, reStructuredText, HTML, notebooks, text and source code; PDF, DOCX, PPTX
    and XLSX with the documents extra. Unreadable, binary or undecodable files are skipped
    and listed (exit code 3).

    \b
    Example:
      embed-collections chunk ./docs ./Chunked --models minilm bge-small --chunk-size 200
    """
    import embed_collections as ec

    setup_logging(verbose, quiet)
    report = ec.chunk(source_dir, chunked_dir, split_list(models) or None, **options)
    if as_json:
        echo_json(report.to_dict())
    else:
        tokens = report.tokens
        rows = [
            ["documents", report.files],
            ["chunks", report.chunks],
            ["tokens per chunk", _describe(tokens)],
            ["files written", report.written],
            ["files unchanged", report.unchanged],
            ["files removed", report.removed],
            ["navigation left out", report.navigation_dropped],
            ["skipped", len(report.skipped)],
            ["seconds", report.seconds],
        ]
        click.echo(render_table(["chunking", str(chunked_dir)], rows))
    return 3 if report.skipped else 0


def _describe(tokens: dict[str, float]) -> str:
    if not tokens:
        return "-"
    return f"median {tokens['median']:g}, max {tokens['max']:g}"
