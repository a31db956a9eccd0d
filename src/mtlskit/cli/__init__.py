"""The command line: the ONLY place that prints or exits.

``mtlskit get`` with the options it usually takes runs without click
(:mod:`mtlskit.cli.fastget`: click and http.client were most of its start-up).
Every other command line goes to the click group in :mod:`mtlskit.cli.group`,
whose commands live in sibling modules and load lazily, so ``mtlskit --help``
does not import cryptography or ssl. Every :class:`~mtlskit.errors.MtlsError`
becomes one line ``error: <what> (<file>): <next step>`` and its exit code
(2 usage, 1 failure), on either path.
"""

from __future__ import annotations

import codecs
import sys

from mtlskit.errors import MtlsError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads the name)
if TYPE_CHECKING:
    from mtlskit.cli.group import main

__all__ = ["main", "run"]

# name -> "module:attribute"; each module registers one click command or group.
COMMANDS: dict[str, str] = {
    "init": "mtlskit.cli.pki_cmds:init",
    "ca": "mtlskit.cli.pki_cmds:ca",
    "csr": "mtlskit.cli.pki_cmds:csr",
    "sign": "mtlskit.cli.pki_cmds:sign",
    "issue": "mtlskit.cli.pki_cmds:issue",
    "inspect": "mtlskit.cli.pki_cmds:inspect",
    "verify": "mtlskit.cli.pki_cmds:verify",
    "export": "mtlskit.cli.pki_cmds:export",
    "serve": "mtlskit.cli.net_cmds:serve",
    "proxy": "mtlskit.cli.proxy_cmds:proxy",
    "get": "mtlskit.cli.client_cmds:get",
    "demo": "mtlskit.cli.client_cmds:demo",
    "list": "mtlskit.cli.life_cmds:list_",
    "revoke": "mtlskit.cli.life_cmds:revoke",
    "crl": "mtlskit.cli.life_cmds:crl",
    "renew": "mtlskit.cli.life_cmds:renew",
    "status": "mtlskit.cli.life_cmds:status",
}

HELP = {
    "init": "Write the seed's CA, server and client certificates into ./certs.",
    "ca": "Create a root or intermediate CA.",
    "csr": "Create a private key and a certificate signing request.",
    "sign": "Sign a CSR with a CA, with extensions from a profile.",
    "issue": "Issue a key + CSR + certificate for a server or client.",
    "inspect": "Show certificates, CSRs, keys, CRLs and PKCS#12 files.",
    "verify": "Verify a certificate and explain any failure in plain words.",
    "export": "Export a certificate and key (PKCS#12).",
    "serve": "Run the mTLS server (hello world, or an ASGI app).",
    "proxy": "mTLS proxy: in front of any service (server), out of any client (client).",
    "get": "Make an mTLS request, like the seed's Go client.",
    "demo": "The seed's whole flow: PKI, server, client, hello world.",
    "list": "List the certificates a CA issued.",
    "revoke": "Revoke a certificate.",
    "crl": "Write a signed certificate revocation list.",
    "renew": "Renew a certificate the CA issued.",
    "status": "Show certificates and the days they have left.",
}


def __getattr__(name: str) -> object:
    # The click group loads click: only when asked for (`from mtlskit.cli import main`).
    if name in ("main", "LazyGroup"):
        from mtlskit.cli import group

        return getattr(group, name)
    raise AttributeError(f"module 'mtlskit.cli' has no attribute {name!r}")


def echo_error(text: str) -> None:
    """Print a line on stderr exactly as ``click.echo(text, err=True)`` does, without
    importing click unless the line needs it (ANSI codes to strip when stderr is not
    a terminal, or an ASCII stderr that click replaces with UTF-8)."""
    stream = sys.stderr
    encoding = getattr(stream, "encoding", None)
    try:
        ascii_stream = encoding is None or codecs.lookup(encoding).name == "ascii"
    except LookupError:
        ascii_stream = False
    if stream is None or ascii_stream or "\x1b" in text:
        import click

        click.echo(text, err=True)
        return
    stream.write(text + "\n")
    stream.flush()


def _dispatch(argv: list[str] | None) -> object:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["get"]:
        from mtlskit.cli import fastget

        plan = fastget.plan(args[1:])
        if plan is not None:
            return fastget.get(plan)
    from mtlskit.cli.group import run_click

    return run_click(argv)


def run(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and turn every error into one line and an exit code."""
    code: object
    try:
        code = _dispatch(argv)
    except MtlsError as exc:
        echo_error(f"error: {exc.one_line()}")
        code = exc.exit_code
    except KeyboardInterrupt:
        echo_error("error: interrupted")
        code = 130
    except BrokenPipeError:
        code = 0
    except Exception as exc:
        if "click" not in sys.modules:  # only the click path raises click's errors
            raise
        from mtlskit.cli.group import click_error

        code = click_error(exc)
        if code is None:
            raise
    sys.exit(code if isinstance(code, int) else 0)
