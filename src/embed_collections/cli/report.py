"""`report` and `status`: a finished run as a page (report.html) or at a glance in the terminal."""

from __future__ import annotations

from pathlib import Path

import click

from embed_collections.cli.options import quiet_option, verbose_option
from embed_collections.cli.render import echo_json, setup_logging

OUTPUT_ARGUMENT = click.argument(
    "output_dir", required=False, type=click.Path(path_type=Path, file_okay=False)
)


def default_output(output_dir: Path | None) -> Path:
    """The given output directory, else the environment's default (./output, Kaggle's)."""
    from embed_collections.record.config import default_paths, detect_environment

    return output_dir or default_paths(detect_environment())[1]


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
    from embed_collections.report.html import write_report

    setup_logging(verbose, quiet)
    path = write_report(default_output(output_dir), out)
    click.echo(str(path))


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
    from embed_collections.report.data import load_run
    from embed_collections.report.status import overview, render_status

    view = load_run(default_output(output_dir))
    facts = overview(view)
    if as_json:
        echo_json(facts)
    else:
        click.echo(render_status(view))
    return 3 if facts["failed"] else 0
