"""Small helpers shared by the CLI modules."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from mtlskit.errors import ConfigError
from mtlskit.logs import log_to_stderr

__all__ = ["ca_dir_option", "db_option", "has_terminal", "read_passphrase", "setup_logging"]

ca_dir_option = click.option(
    "--ca-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("certs"),
    show_default=True,
    help="Folder with ca.crt and ca.key.",
)

db_option = click.option(
    "--db",
    metavar="URL",
    help="The CA's database: postgresql://USER@HOST/DB or a SQLite file [default: CA_DIR/ca.db].",
)


def read_passphrase(
    path: Path | None,
    *,
    prompt: bool,
    confirm: bool = False,
    file_option: str = "--passphrase-file",
) -> bytes | None:
    """A passphrase from a file (first line), from an interactive prompt, or none.

    A prompt needs a terminal: without one (a pipe, cron, CI) it is a usage error that
    names ``file_option``, never getpass's warning and an echoing fallback."""
    if path is not None:
        try:
            text = path.read_text().splitlines()
        except OSError as exc:
            raise ConfigError(
                f"cannot read passphrase file: {exc.strerror}", file=path, hint="check the path"
            ) from exc
        if not text or not text[0]:
            raise ConfigError(
                "passphrase file is empty", file=path, hint="write the passphrase in it"
            )
        return text[0].encode()
    if prompt:
        if not has_terminal():
            raise ConfigError("no terminal to ask for the passphrase", hint=f"use {file_option}")
        value = click.prompt("Passphrase", hide_input=True, confirmation_prompt=confirm, err=True)
        return str(value).encode()
    return None


def has_terminal() -> bool:
    """Whether a passphrase can be asked for: getpass reads the controlling terminal
    (``/dev/tty``), else stdin when it is one; without either it would fall back to
    reading stdin with echo on and a GetPassWarning."""
    if sys.stdin.isatty():
        return True
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return False
    os.close(fd)
    return True


def setup_logging() -> None:
    """Log lines like Go's log package: ``2021/12/05 23:36:03 listen on …`` on stderr."""
    log_to_stderr()
