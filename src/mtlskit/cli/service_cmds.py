"""The CA as a service: ``ca serve``, ``ca fingerprint``, ``ca bootstrap``, ``ca token``,
``enroll``, ``agent``. Thin: parse options into a config, call the library, print."""

from __future__ import annotations

from pathlib import Path

import click

from mtlskit.cli.common import (
    ca_dir_option,
    ca_to_trust_option,
    read_passphrase,
    setup_logging,
)

__all__ = ["ca_bootstrap", "ca_fingerprint", "ca_serve"]

_file = click.Path(dir_okay=False, path_type=Path)
_folder = click.Path(file_okay=False, path_type=Path)


# -- ca serve ------------------------------------------------------------------------------


@click.command(
    "serve",
    help="Serve the CA over HTTPS: roots, CRL, one-time-token enrollment, renewal over "
    "mTLS, ACME. Client certificates are optional (anonymous routes).",
)
@ca_dir_option
@click.option(
    "--db", metavar="URL", help="postgresql://… for several replicas [CA_DIR/ca.db, SQLite]."
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=9443, show_default=True)
@click.option(
    "--url",
    metavar="URL",
    help="Public base URL, e.g. https://ca.internal:9443; issued certificates then carry "
    "URL/crl as their CRL distribution point [https://localhost:PORT].",
)
@click.option("--passphrase-file", type=_file, help="Unlock an encrypted ca.key at start.")
@click.option(
    "--lifetime",
    default="24h",
    show_default=True,
    metavar="DURATION",
    help="Lifetime of enrolled, renewed and ACME certificates (e.g. 1h, 24h, 7d).",
)
@click.option("--max-body", type=int, default=64 * 1024, show_default=True, metavar="BYTES")
@click.option(
    "--acme-allow",
    multiple=True,
    metavar="RULE",
    help="Names ACME may issue: 'DNS:*.internal', 'IP:10.0.0.0/8' (repeatable; none: no ACME).",
)
@click.option(
    "--acme-eab",
    multiple=True,
    metavar="KID:KEY",
    help="Require External Account Binding with this key id and base64url HMAC key.",
)
@click.option("--acme-http-port", type=int, default=80, show_default=True)
@click.option("--acme-tls-port", type=int, default=443, show_default=True)
@click.option(
    "--acme-resolve",
    multiple=True,
    metavar="NAME:ADDR",
    help="Validate NAME at ADDR instead of its DNS address (repeatable).",
)
@click.option(
    "--rate-limit",
    type=int,
    default=60,
    show_default=True,
    metavar="N",
    help="Requests per minute per account, token and address (429 beyond).",
)
@click.option("--metrics-port", type=int, metavar="PORT", help="Serve Prometheus /metrics here.")
@click.option(
    "--log-requests",
    is_flag=True,
    help="Log a line per request (off: the audit log records every issuance and revocation).",
)
def ca_serve(
    ca_dir: Path,
    db: str | None,
    host: str,
    port: int,
    url: str | None,
    passphrase_file: Path | None,
    lifetime: str,
    max_body: int,
    acme_allow: tuple[str, ...],
    acme_eab: tuple[str, ...],
    acme_http_port: int,
    acme_tls_port: int,
    acme_resolve: tuple[str, ...],
    rate_limit: int,
    metrics_port: int | None,
    log_requests: bool,
) -> None:
    from mtlskit.service import ServiceConfig, run_service
    from mtlskit.service.config import parse_duration, parse_eab, parse_resolve

    config = ServiceConfig(
        ca_dir=ca_dir,
        db=db,
        host=host,
        port=port,
        url=url,
        passphrase_file=passphrase_file,
        lifetime=parse_duration(lifetime, flag="--lifetime"),
        max_body=max_body,
        acme_allow=acme_allow,
        acme_eab=tuple(parse_eab(e) for e in acme_eab),
        acme_http_port=acme_http_port,
        acme_tls_port=acme_tls_port,
        acme_resolve=tuple(parse_resolve(r) for r in acme_resolve),
        rate_limit=rate_limit,
        metrics_port=metrics_port,
        log_requests=log_requests,
    )
    passphrase = read_passphrase(passphrase_file, prompt=False)
    setup_logging()
    run_service(config, passphrase=passphrase)


# -- ca fingerprint / bootstrap ------------------------------------------------------------


@click.command("fingerprint", help="Print the SHA-256 of the root CA certificate (for bootstrap).")
@ca_dir_option
def ca_fingerprint(ca_dir: Path) -> None:
    from mtlskit.pki.load import read_certificates
    from mtlskit.pki.store import SeedLayout
    from mtlskit.service.state import fingerprint

    certs = read_certificates(SeedLayout(ca_dir).ca_cert())
    # ca.crt is the CA, then its chain up to the root (for an intermediate CA).
    root = certs[-1]
    click.echo(fingerprint(root))


@click.command(
    "bootstrap",
    help="Fetch the root CA certificate from a CA service and write DIR/ca.crt, only if its "
    "SHA-256 matches --fingerprint (from mtlskit ca fingerprint on the CA).",
)
@click.argument("url")
@click.option("--fingerprint", "fp", required=True, metavar="SHA256", help="The root's SHA-256.")
@click.option(
    "--dir", "folder", type=_folder, default=Path("certs"), show_default=True, help="Output."
)
@click.option("--force", is_flag=True, help="Replace a ca.crt that holds another root.")
def ca_bootstrap(url: str, fp: str, folder: Path, force: bool) -> None:
    from mtlskit.caclient import bootstrap

    path = bootstrap(url, fp, folder, force=force)
    click.echo(f"wrote {path} (root SHA-256 {fp.lower().replace(':', '')})")


# -- ca token / enroll ---------------------------------------------------------------------


@click.command(
    "token",
    help="Print a one-time enrollment token for NAME (the certificate's CN). It is stored "
    "only as a hash and spent by the first mtlskit enroll.",
)
@click.argument("name")
@click.option(
    "--profile",
    type=click.Choice(["client", "server", "server-client"]),
    default="client",
    show_default=True,
)
@click.option("--san", "sans", multiple=True, help="Allowed SAN (repeatable); a server: NAME.")
@click.option("--ttl", default="10m", show_default=True, help="How long the token is valid.")
@ca_dir_option
@click.option("--db", metavar="URL", help="postgresql://… [CA_DIR/ca.db].")
def ca_token(
    name: str, profile: str, sans: tuple[str, ...], ttl: str, ca_dir: Path, db: str | None
) -> None:
    from mtlskit.service.config import parse_duration
    from mtlskit.service.state import open_service_database
    from mtlskit.service.tokens import create_token

    duration = parse_duration(ttl, flag="--ttl")
    database = open_service_database(ca_dir, db)
    try:
        token, record = create_token(database, name, profile=profile, sans=sans, ttl=duration)
    finally:
        database.close()
    click.echo(token)
    allowed = ", ".join(record.sans) or "no SANs"
    click.echo(
        f"one-time token for CN={record.name} ({record.profile}; {allowed}), valid until "
        f"{record.expires_at:%Y-%m-%d %H:%M:%S} UTC",
        err=True,
    )


@click.command(
    help="Get a certificate from a CA service with a one-time token: the key is made here "
    "(0600) and never leaves; writes NAME.key, NAME.crt (chain) and ca.crt in --dir."
)
@click.argument("url")
@click.option("--token", required=True, help="From mtlskit ca token on the CA.")
@click.option(
    "--dir", "folder", type=_folder, default=Path("certs"), show_default=True, help="Output."
)
@click.option(
    "--key-type",
    type=click.Choice(["p256", "p384", "ed25519", "rsa2048", "rsa3072", "rsa4096"]),
    default="p256",
    show_default=True,
)
@click.option("--name", help="File names NAME.key/NAME.crt [client, or server for servers].")
@click.option(
    "--fingerprint",
    "fp",
    metavar="SHA256",
    help="The root's SHA-256 (bootstraps DIR/ca.crt); else DIR/ca.crt must exist.",
)
@click.option("--force", is_flag=True, help="Replace existing NAME.key/NAME.crt.")
def enroll(
    url: str,
    token: str,
    folder: Path,
    key_type: str,
    name: str | None,
    fp: str | None,
    force: bool,
) -> None:
    from mtlskit.caclient import enroll as do_enroll

    paths, issued = do_enroll(
        url, token, folder, key_type=key_type, name=name, fingerprint=fp, force=force
    )
    for path in paths:
        click.echo(f"wrote {path} ({path.stat().st_mode & 0o777:04o})")
    leaf = issued.certificate
    click.echo(
        f"enrolled {leaf.subject.rfc4514_string()} ({issued.profile}, serial {issued.serial}), "
        f"valid until {leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
    )


# -- agent ---------------------------------------------------------------------------------

AGENT_NOT_DUE = 3


@click.command(
    help="Keep a certificate fresh: renew it from the CA service over mTLS at 2/3 of its "
    "lifetime (with jitter), with a new key each time, written atomically; then run the "
    "hook. --once: exit 0 renewed, 3 not due, 1 error (for cron)."
)
@click.option("--ca-url", required=True, metavar="URL", help="The CA service, https://HOST:PORT.")
@click.option("--cert", type=_file, required=True, help="Certificate to keep fresh.")
@click.option("--key", type=_file, required=True, help="Its private key (replaced each time).")
@ca_to_trust_option(default="ca.crt next to --cert")
@click.option("--exec", "exec_cmd", metavar="CMD", help="Run this shell command after renewal.")
@click.option("--signal", "signal_pid", type=int, metavar="PID", help="Send SIGHUP to PID after.")
@click.option("--once", is_flag=True, help="Renew if due, then exit (0 renewed, 3 not due).")
@click.option("--force", is_flag=True, help="Renew now even when not due.")
@click.option(
    "--backoff", type=float, default=5.0, show_default=True, metavar="S", help="First retry delay."
)
@click.option("--max-backoff", type=float, default=300.0, show_default=True, metavar="S")
@click.option(
    "--retries",
    type=click.IntRange(min=0),
    metavar="N",
    help="Retries while the CA is unreachable [--once: 3; else forever].",
)
def agent(
    ca_url: str,
    cert: Path,
    key: Path,
    ca: Path | None,
    exec_cmd: str | None,
    signal_pid: int | None,
    once: bool,
    force: bool,
    backoff: float,
    max_backoff: float,
    retries: int | None,
) -> int:
    import signal

    from mtlskit.agent import Agent, AgentConfig, Outcome

    config = AgentConfig(
        ca_url=ca_url,
        cert=cert,
        key=key,
        ca=ca,
        exec_cmd=exec_cmd,
        signal_pid=signal_pid,
        backoff=backoff,
        max_backoff=max_backoff,
        retries=retries if retries is not None else (3 if once else None),
        force=force,
    )
    setup_logging()
    runner = Agent(config)
    if once:
        outcome = runner.run_once()
        return 0 if outcome is Outcome.RENEWED else AGENT_NOT_DUE

    def stop(signum: int, frame: object) -> None:
        runner.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    runner.run()
    return 0
