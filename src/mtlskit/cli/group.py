"""The click group of the command line, loaded only when a command needs click.

``mtlskit get`` with the options :mod:`mtlskit.cli.fastget` understands never
imports this module; every other command line does.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import click

from mtlskit import __version__
from mtlskit.cli import COMMANDS, HELP, echo_error

__all__ = ["LazyGroup", "click_error", "main", "run_click"]


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when they run."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if self._available(name)]

    def _available(self, name: str) -> bool:
        module = COMMANDS[name].split(":")[0]
        return importlib.util.find_spec(module) is not None

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None or not self._available(cmd_name):
            return None
        module, attr = target.split(":")
        cmd = getattr(importlib.import_module(module), attr, None)
        return cmd if isinstance(cmd, click.Command) else None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, HELP.get(name, "")) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mtlskit")
def main() -> None:
    """mtlskit: mutual TLS for Python services, batteries included.

    Start with `mtlskit init`, then `mtlskit serve` and `mtlskit get`.
    """


def run_click(argv: list[str] | None) -> Any:
    """Run the click group; what the command returns (errors are raised)."""
    return main.main(args=argv, prog_name="mtlskit", standalone_mode=False)


def _usage_line(exc: click.UsageError) -> str:
    where = exc.ctx.command_path if exc.ctx else "mtlskit"
    return f"error: {exc.format_message()}: see '{where} --help'"


def click_error(exc: Exception) -> int | None:
    """Print one of click's errors as one line; its exit code (None: not click's)."""
    if isinstance(exc, click.UsageError):
        echo_error(_usage_line(exc))
        return 2
    if isinstance(exc, click.ClickException):
        echo_error(f"error: {exc.format_message()}")
        return exc.exit_code
    if isinstance(exc, click.Abort):
        echo_error("error: interrupted")
        return 130
    return None
