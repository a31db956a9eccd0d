"""The command line: the ONLY place that prints or exits.

:func:`run` hands the command line to the click group in :mod:`mtlskit.cli.group`,
whose commands live in sibling modules (:data:`COMMANDS`) and are imported only
when they run, so ``mtlskit --help`` does not import cryptography or ssl. The
group itself (and click) is imported inside :func:`run`: it reads COMMANDS from
this module, which therefore imports nothing at the top. Every
:class:`~mtlskit.errors.MtlsError` becomes one line ``error: <what> (<file>): <next
step>``, each setting it names spelled as the command's option, and its exit code
(2 usage, 1 failure).
"""

from __future__ import annotations

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
    "enroll": "mtlskit.cli.service_cmds:enroll",
    "agent": "mtlskit.cli.service_cmds:agent",
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
    "enroll": "Get a certificate from a CA service with a one-time token.",
    "agent": "Keep a certificate fresh: renew it from a CA service over mTLS.",
}


def __getattr__(name: str) -> object:
    # The click group imports COMMANDS from here: it loads on first use, not at import.
    if name in ("main", "LazyGroup"):
        from mtlskit.cli import group

        return getattr(group, name)
    raise AttributeError(f"module 'mtlskit.cli' has no attribute {name!r}")


def run(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI; every error becomes one line and an exit code."""
    from mtlskit.cli.group import run as run_group

    run_group(argv)
