"""The command line: parse, call the library, render. Errors become one-line messages here."""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

import click

from embed_collections.cli.chunk import chunk
from embed_collections.cli.commands import discover, run, upload
from embed_collections.cli.query import eval_command, search
from embed_collections.cli.read import read
from embed_collections.cli.render import log
from embed_collections.cli.report import report, status
from embed_collections.cli.serve import serve
from embed_collections.errors import EmbedCollectionsError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="embed-collections")
def cli() -> None:
    """Embed trees of pre-chunked documents with a model ensemble into Qdrant collections.

    \b
    Example:
      embed-collections discover ./Chunked
      embed-collections run --chunked-dir ./Chunked --output-dir ./output
      embed-collections search Docling "install with pip" --output-dir ./output
      embed-collections status ./output
    """


for command in (chunk, discover, run, search, read, eval_command, upload, serve, report, status):
    cli.add_command(command)


received: list[int] = []  # the stop signals this process got, first one first


def stop_on_signal(signum: int, frame: FrameType | None) -> None:
    """SIGTERM (and SIGINT) stop the run the way Ctrl-C does: the current batch is abandoned,
    the summary written with `interrupted`, and the exit code is 128 + the signal."""
    received.append(signum)
    if len(received) != 2:  # a second signal lets the summary be written; a third stops at once
        raise KeyboardInterrupt


def main(args: list[str] | None = None) -> None:
    """Console entry point: run the CLI and map expected failures to messages and exit codes."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for stop in (signal.SIGTERM, signal.SIGINT):
        try:
            signal.signal(stop, stop_on_signal)
        except ValueError:  # not the main thread (an embedding host): keep its handlers
            break
    argv = list(sys.argv[1:] if args is None else args)
    verbose = "--verbose" in argv or "-v" in argv
    try:
        code = cli.main(argv, prog_name="embed-collections", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        signum = received[0] if received else signal.SIGINT
        click.echo(
            f"Interrupted ({signal.Signals(signum).name}): finished collections are stored and "
            "embedded batches cached; re-run the same command to resume.",
            err=True,
        )
        sys.exit(128 + signum)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except EmbedCollectionsError as error:
        if verbose:
            log.exception("Failed")
        click.echo(f"Error: {error}", err=True)
        sys.exit(error.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
