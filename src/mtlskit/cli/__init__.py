"""The command line: the ONLY place that prints or exits.

Commands live in sibling modules and load lazily, so ``mtlskit --help`` does not
import cryptography or ssl. Every :class:`~mtlskit.errors.MtlsError` becomes one
line ``error: <what> (<file>): <next step>`` and its exit code (2 usage, 1 failure).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

import click

from mtlskit import __version__
from mtlskit.errors import MtlsError

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
    "get": "Make an mTLS request, like the seed's Go client.",
    "demo": "The seed's whole flow: PKI, server, client, hello world.",
    "list": "List the certificates a CA issued.",
    "revoke": "Revoke a certificate.",
    "crl": "Write a signed certificate revocation list.",
    "renew": "Renew a certificate the CA issued.",
    "status": "Show certificates and the days they have left.",
}


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


def _usage_line(exc: click.UsageError) -> str:
    where = exc.ctx.command_path if exc.ctx else "mtlskit"
    return f"error: {exc.format_message()}: see '{where} --help'"


def run(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and turn every error into one line and an exit code."""
    code: Any
    try:
        code = main.main(args=argv, prog_name="mtlskit", standalone_mode=False)
    except MtlsError as exc:
        click.echo(f"error: {exc.one_line()}", err=True)
        code = exc.exit_code
    except click.UsageError as exc:
        click.echo(_usage_line(exc), err=True)
        code = 2
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        code = exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        click.echo("error: interrupted", err=True)
        code = 130
    except BrokenPipeError:
        code = 0
    sys.exit(code if isinstance(code, int) else 0)
