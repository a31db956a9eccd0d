"""Small helpers shared by the CLI modules, and the options several commands take,
each declared once: a listener's files, access rules, reload, handshake timeout and
metrics (``serve``, ``proxy server``, ``proxy client``), a client's files (``get``,
``proxy client``; the agent's CA).

logging is imported by the functions that log: ``mtlskit get`` starts without it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, cast

import click

from mtlskit.errors import ConfigError

__all__ = [
    "CLIENT_TLS_OPTIONS",
    "HANDSHAKE_TIMEOUT_OPTION",
    "METRICS_OPTIONS",
    "SERVER_TLS_OPTIONS",
    "SESSION_TICKETS_OPTIONS",
    "ca_dir_option",
    "ca_to_trust_option",
    "client_tls_options",
    "db_option",
    "has_terminal",
    "read_passphrase",
    "session_tickets_choice",
    "setup_logging",
    "warn_session_cache",
    "watch_interval_option",
]

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
    from mtlskit.logs import log_to_stderr

    log_to_stderr()


def SESSION_TICKETS_OPTIONS(f: Any) -> Any:
    """--session-tickets, and the deprecated --session-cache (serve and proxy server)."""
    f = click.option(
        "--session-cache",
        type=click.IntRange(min=0),
        default=None,
        hidden=True,
        help="Deprecated: 0 is --session-tickets stateless; the size is OpenSSL's own.",
    )(f)
    return click.option(
        "--session-tickets",
        type=click.Choice(["stateful", "stateless"]),
        default=None,
        help="TLS 1.3 resumption: sessions kept in the worker (faster, up to 20480) or "
        "carried encrypted by the client (no server memory)  [default: stateful]",
    )(f)


def session_tickets_choice(
    tickets: str | None, cache: int | None
) -> Literal["stateful", "stateless"]:
    """--session-tickets, or what the deprecated --session-cache N meant (0: stateless)."""
    if cache is not None:
        implied = "stateless" if cache == 0 else "stateful"
        if tickets is not None and tickets != implied:
            raise ConfigError(
                f"--session-cache {cache} contradicts --session-tickets {tickets}",
                hint="use --session-tickets alone (--session-cache is deprecated)",
            )
        tickets = implied
    return cast(Literal["stateful", "stateless"], tickets or "stateful")


def warn_session_cache(cache: int | None, tickets: str) -> None:
    """One log line when the deprecated --session-cache was given (after setup_logging)."""
    if cache is not None:
        import logging

        logging.getLogger("mtlskit").warning(
            "--session-cache is deprecated: use --session-tickets %s (the number of sessions "
            "kept is OpenSSL's own, 20480)",
            tickets,
        )


_FILE = click.Path(dir_okay=False, path_type=Path)
_FOLDER = click.Path(file_okay=False, path_type=Path)

Decorator = Callable[[Any], Any]


def _all(*options: Decorator) -> Decorator:
    """The options as one decorator, listed in --help in this order."""

    def apply(f: Any) -> Any:
        for option in reversed(options):
            f = option(f)
        return f

    return apply


def watch_interval_option(reloaded: str) -> Decorator:
    """--watch-interval; ``reloaded`` names the files a change of which reloads."""
    return click.option(
        "--watch-interval",
        type=float,
        default=1.0,
        show_default=True,
        metavar="S",
        help=f"Reload {reloaded} when they change (0: only on SIGHUP).",
    )


HANDSHAKE_TIMEOUT_OPTION = click.option(
    "--handshake-timeout",
    type=float,
    default=10.0,
    show_default=True,
    metavar="S",
    help="From accepting a connection to the end of its TLS handshake (then closed).",
)

METRICS_OPTIONS = _all(
    click.option(
        "--metrics-port", type=int, metavar="PORT", help="Serve Prometheus /metrics here."
    ),
    click.option("--metrics-host", default="127.0.0.1", show_default=True, help="Metrics address."),
)

# What every mTLS listener takes (serve, proxy server): its files, the access rules,
# reload, the handshake timeout and the metrics port.
SERVER_TLS_OPTIONS = _all(
    click.option(
        "--certs",
        type=_FOLDER,
        default=Path("certs"),
        show_default=True,
        help="Folder with ca.crt, server.crt and server.key.",
    ),
    click.option("--ca", type=_FILE, help="CA file for client certificates [certs/ca.crt]."),
    click.option("--cert", type=_FILE, help="Certificate [certs/server.crt]."),
    click.option("--key", type=_FILE, help="Key [certs/server.key]."),
    click.option(
        "--crl",
        type=_FILE,
        help="Refuse clients this CRL revokes (make it with mtlskit crl; reloaded on change).",
    ),
    click.option(
        "--allow-cn",
        multiple=True,
        metavar="PATTERN",
        help="Allow clients whose subject CN matches this glob (repeatable).",
    ),
    click.option(
        "--allow-san",
        multiple=True,
        metavar="PATTERN",
        help="Allow clients with a SAN matching DNS:glob, URI:glob or email:glob (repeatable).",
    ),
    watch_interval_option("certificate, key, CA and CRL"),
    HANDSHAKE_TIMEOUT_OPTION,
    METRICS_OPTIONS,
)


def ca_to_trust_option(flag: str = "--ca", default: str = "certs/ca.crt") -> Decorator:
    """The CA a client verifies the server's certificate against (``default``: where it
    is without the option)."""
    return click.option(
        flag, "ca", type=_FILE, help=f"CA to verify the server against [{default}]."
    )


def client_tls_options(*, ca_flag: str = "--ca", key_default: str | None = None) -> Decorator:
    """A client's files, for every command that presents a client certificate: the
    seed's layout in --certs, each file overridden by --ca (``get`` spells it
    ``--cacert``, as curl), --cert, --key. ``key_default``: where the key comes from
    without --key, when that is not always certs/client.key."""
    return _all(
        click.option(
            "--certs",
            type=_FOLDER,
            default=Path("certs"),
            show_default=True,
            help="Folder with ca.crt, client.crt and client.key.",
        ),
        ca_to_trust_option(ca_flag),
        click.option("--cert", type=_FILE, help="Client certificate [certs/client.crt]."),
        click.option(
            "--key", type=_FILE, help=f"Client key [{key_default or 'certs/client.key'}]."
        ),
    )


CLIENT_TLS_OPTIONS = client_tls_options()
