"""The click group of the command line, and the one place errors become lines and exit codes."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable

import click

from mtlskit import __version__
from mtlskit.cli import COMMANDS, HELP
from mtlskit.errors import MtlsError

__all__ = ["LazyGroup", "main", "run"]


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


def run(argv: list[str] | None = None) -> None:
    """Run the command line; print every error as one line; exit with its code."""
    args = sys.argv[1:] if argv is None else argv
    code: object
    try:
        code = main.main(args=args, prog_name="mtlskit", standalone_mode=False)
    except MtlsError as exc:
        _echo_error(f"error: {exc.one_line(_option_spelling(args))}")
        code = exc.exit_code
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else _command_path(args)
        # click's sentences end with a full stop; ours go on with ": next step".
        _echo_error(f"error: {exc.format_message().rstrip('.')}: see '{where} --help'")
        code = 2
    except click.ClickException as exc:
        _echo_error(f"error: {exc.format_message()}")
        code = exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        _echo_error("error: interrupted")
        code = 130
    except BrokenPipeError:
        code = 0
    sys.exit(code if isinstance(code, int) else 0)


def _echo_error(text: str) -> None:
    # click.echo drops colour codes when stderr is not a terminal (a server's reason
    # phrase may carry some) and copes with an ASCII-only stderr.
    click.echo(text, err=True)


def _command(args: list[str]) -> tuple[click.Command, list[str]]:
    """The (sub)command ``args`` run, and the names that lead to it."""
    command: click.Command = main
    names = ["mtlskit"]
    for arg in args:
        if not isinstance(command, click.Group):
            break
        if arg.startswith("-"):
            continue
        sub = command.get_command(click.Context(command), arg)
        if sub is None:
            break
        command = sub
        names.append(arg)
    return command, names


def _command_path(args: list[str]) -> str:
    return " ".join(_command(args)[1])


def _option_spelling(args: list[str]) -> Callable[[str], str | None]:
    """How the command in ``args`` spells a setting: its option whose parameter has the
    setting's name (``ca`` -> ``--cacert``), or None if it has none."""
    command = _command(args)[0]
    options = {p.name: max(p.opts, key=len) for p in command.params if isinstance(p, click.Option)}
    return options.get
