"""The ``es-analytics`` command line: one click command per task, each a thin layer over a library call.

Every command works on the lake given by ``--lake PATH`` or the environment variable ``ES_ANALYTICS_LAKE``.
Errors print one line on stderr and exit with status 1 (2 for usage errors); results go to stdout as a
table, CSV or JSON (``--format``). ``lake.sql`` runs in safe mode here: no reads of files outside the lake.

The reference in ``docs/cli.md`` is generated from the ``--help`` texts (:func:`reference_markdown`) and a
test keeps it up to date: ``python -m es_analytics.cli --write-docs docs/cli.md``.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import click

from ._commands import COMMANDS
from ._demo import demo, lab
from ._report import report

__all__ = ["cli", "main", "reference_markdown"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="es_analytics", prog_name="es-analytics")
def cli() -> None:
    """es-analytics: event-sourcing analytics over an event lake (Parquet + DuckDB).

    Every command takes --lake PATH (or $ES_ANALYTICS_LAKE); `es-analytics COMMAND --help` says more.
    Times (TIME) are ISO 8601 with a zone (2025-06-01T12:00:00Z, 2025-06-01T14:00:00+02:00), a date
    (midnight UTC) or `now`; times without a zone are refused, not guessed. Errors go to stderr with exit
    status 1 (2 for a wrong command line).

    \b
    Example:
      es-analytics demo --lake data/sample-lake
    """


def _examples_last(command: click.Command) -> None:
    """Move the ``Example:`` block of a help text after the options, so every help ends with it."""
    head, sep, tail = inspect.cleandoc(command.help or "").partition("\b\nExample:")
    if sep:
        command.help = head.rstrip()
        command.epilog = "\b\nExample:" + tail.rstrip()
    for sub in getattr(command, "commands", {}).values():
        _examples_last(sub)


for _command in (*COMMANDS, report, demo, lab):
    cli.add_command(_command)
_examples_last(cli)


def reference_markdown() -> str:
    """The command reference (``docs/cli.md``): every command's ``--help``, in the order of ``--help``."""
    out = ["# Command line reference", "",
           "Generated from `es-analytics --help` by `python -m es_analytics.cli --write-docs docs/cli.md`;",
           "`tests/test_docs.py` checks it is up to date.", ""]

    def block(command: click.Command, ctx: click.Context) -> None:
        out.extend([f"## `{ctx.command_path}`", "", "```text", command.get_help(ctx).rstrip(), "```", ""])

    settings = {"terminal_width": 100, "max_content_width": 100}
    root = cli.make_context("es-analytics", [], resilient_parsing=True, **settings)  # type: ignore[arg-type]
    block(cli, root)
    for name in cli.list_commands(root):
        command = cli.get_command(root, name)
        assert command is not None
        ctx = command.make_context(name, [], parent=root, resilient_parsing=True, **settings)
        block(command, ctx)
        for sub in getattr(command, "commands", {}):
            child = command.commands[sub]  # type: ignore[attr-defined]
            block(child, child.make_context(sub, [], parent=ctx, resilient_parsing=True, **settings))
    return "\n".join(out)


def main() -> None:
    """Entry point of the ``es-analytics`` script."""
    if len(sys.argv) == 3 and sys.argv[1] == "--write-docs":
        Path(sys.argv[2]).write_text(reference_markdown(), encoding="utf-8")
        return
    cli(prog_name="es-analytics")

