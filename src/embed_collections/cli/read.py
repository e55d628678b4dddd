"""`read`: a chunk with its neighbours, its section, or a whole document, in document order."""

from __future__ import annotations

from pathlib import Path

import click

from embed_collections.cli.options import query_options, quiet_option, verbose_option
from embed_collections.cli.render import echo_json, setup_logging


@click.command()
@click.argument("collection")
@click.argument("chunk_id", required=False)
@click.option(
    "--output-dir",
    "--output_dir",
    "output_dir",
    type=click.Path(path_type=Path),
    help="Output directory of the run to read [./output].",
)
@click.option("--before", type=click.IntRange(0, 1000), default=0, help="Chunks before CHUNK_ID.")
@click.option("--after", type=click.IntRange(0, 1000), default=0, help="Chunks after CHUNK_ID.")
@click.option("--section", is_flag=True, help="Every chunk of CHUNK_ID's section, in order.")
@click.option("--document-id", help="Read this whole document (a hit's doc_id).")
@click.option("--source-file", help="Read this chunk file's documents (a hit's source_file).")
@click.option(
    "--max-tokens",
    type=click.IntRange(1, 100_000),
    help="Cut a document at this many tokens (the first model's tokenizer).",
)
@query_options
@click.option("--json", "as_json", is_flag=True, help="Print the pieces as JSON.")
@verbose_option
@quiet_option
def read(
    collection,
    chunk_id,
    output_dir,
    before,
    after,
    section,
    document_id,
    source_file,
    max_tokens,
    qdrant_url,
    qdrant_path,
    qdrant_api_key,
    trust_remote_code,
    device,
    as_json,
    verbose,
    quiet,
):
    """Read text from COLLECTION in document order, overlapping text said once: the chunk
    CHUNK_ID with its neighbours or its section, or a whole document.

    Each piece is printed under a line saying where it is from (collection, source file,
    section, chunk numbers, character offsets).

    \b
    Example:
      embed-collections read Docling b030c1430e50-0003 --before 1 --after 2
      embed-collections read Docling b030c1430e50-0003 --section
      embed-collections read Docling --document-id b030c1430e50 --max-tokens 2000
    """
    import embed_collections as ec

    setup_logging(verbose, quiet or not verbose)
    with ec.open(
        output_dir,
        qdrant_url=qdrant_url,
        qdrant_path=qdrant_path,
        qdrant_api_key=qdrant_api_key,
        device=device,
        trust_remote_code=trust_remote_code,
    ) as opened:
        block = opened.read(
            collection, chunk_id, before, after, section, document_id, source_file, max_tokens
        )
    if as_json:
        echo_json(block.to_json())
        return
    click.echo(block.text)
    if block.truncated:
        click.echo(f"(cut at {max_tokens} tokens)", err=True)
    for note in block.notes:
        click.echo(f"Note: {note}", err=True)
