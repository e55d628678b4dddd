"""`report` and `status`: a finished run as a page (report.html) or at a glance in the terminal."""

from __future__ import annotations

from pathlib import Path

import click

from embed_collections.cli.options import quiet_option, verbose_option
from embed_collections.cli.render import echo_json, setup_logging

OUTPUT_ARGUMENT = click.argument(
    "output_dir", required=False, type=click.Path(path_type=Path, file_okay=False)
)


@click.command()
@OUTPUT_ARGUMENT
@click.option(
    "-o", "--out", type=click.Path(path_type=Path, dir_okay=False),
    help="Write the page here [OUTPUT_DIR/report.html].",
)  # fmt: skip
@verbose_option
@quiet_option
def report(output_dir, out, verbose, quiet):
    """Write report.html for the run in OUTPUT_DIR [./output]: one self-contained page.

    Collections (failed first, with errors), token lengths and truncation per model, throughput,
    where the time went, lease waits, and the eval results when OUTPUT_DIR holds them. `run`
    writes it too; this re-writes it, e.g. after `eval`.

    \b
    Example:
      embed-collections report ./output
      embed-collections report ./output -o /tmp/run.html
    """
    import embed_collections as ec

    setup_logging(verbose, quiet)
    click.echo(str(ec.write_report(output_dir, out)))


@click.command()
@OUTPUT_ARGUMENT
@click.option("--json", "as_json", is_flag=True, help="Print the facts as JSON.")
def status(output_dir, as_json):
    """The run in OUTPUT_DIR [./output] at a glance: collections, failures, truncation, models.

    \b
    Example:
      embed-collections status ./output
      embed-collections status ./output --json
    Exit codes: 0 every collection stored, 3 some failed, 1 no run found.
    """
    import embed_collections as ec

    found = ec.status(output_dir)
    if as_json:
        echo_json(found.to_json())
    else:
        click.echo(str(found))
    return found.exit_code
