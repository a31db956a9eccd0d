"""PKI commands: init, ca, csr, sign, issue, inspect, verify, export.

Thin: each command parses options, calls :mod:`mtlskit.pki`, and prints. The
:mod:`mtlskit.pki` modules (cryptography) are imported inside the commands, so
``mtlskit <command> --help`` and a usage error answer without loading them (0.10 s
instead of 0.24 s).

Passphrases: ``--passphrase-file`` / ``--passphrase`` (prompt) are for the key a
command writes (or, for ``sign``, the CA key it uses); ``--ca-passphrase-file`` is
for the signing CA's key in commands that also write a key. An encrypted CA key
without a passphrase file is asked for on a terminal.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import click

from mtlskit.cli.common import ca_dir_option, db_option, has_terminal, read_passphrase
from mtlskit.errors import (
    AlreadyExistsError,
    ConfigError,
    MtlsError,
    PKIError,
    VerificationError,
)

if TYPE_CHECKING:
    from mtlskit.pki.ca import CA

KEY_TYPES = ("p256", "p384", "ed25519", "rsa2048", "rsa3072", "rsa4096")
PROFILES = ("server", "client", "server-client")
DATE_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]

F = TypeVar("F", bound=Callable[..., Any])

_file = click.Path(dir_okay=False, path_type=Path)
_folder = click.Path(file_okay=False, path_type=Path)


def _key_type_option(default: str = "p256") -> Callable[[F], F]:
    return click.option(
        "--key-type",
        type=click.Choice(KEY_TYPES),
        default=default,
        show_default=True,
        help="Key algorithm (rsa4096 is the seed's).",
    )


def _lifetime_options(f: F) -> F:
    f = click.option(
        "--not-after",
        type=click.DateTime(DATE_FORMATS),
        help="Expiry date (UTC), e.g. 2027-12-31. Instead of --days.",
    )(f)
    return click.option("--days", type=click.IntRange(min=1), help="Lifetime in days.")(f)


def _new_key_passphrase_options(f: F) -> F:
    f = click.option(
        "--passphrase",
        "ask_passphrase",
        is_flag=True,
        help="Ask for a passphrase (twice) to encrypt the new key.",
    )(f)
    return click.option(
        "--passphrase-file",
        type=_file,
        help="Encrypt the new key with the first line of this file.",
    )(f)


def _new_key_passphrase(path: Path | None, ask: bool) -> bytes | None:
    if path is not None and ask:
        raise ConfigError("give either --passphrase-file or --passphrase, not both")
    return read_passphrase(path, prompt=ask, confirm=True)


def _load_ca(ca_dir: Path, passphrase_file: Path | None, *, flag: str, db: str | None = None) -> CA:
    """Load ca.crt + ca.key; ask for the passphrase on a terminal when the key is encrypted."""
    from mtlskit.pki.ca import CA

    passphrase = read_passphrase(passphrase_file, prompt=False)
    key_path = ca_dir / "ca.key"
    if passphrase is None and has_terminal() and _is_encrypted(key_path):
        passphrase = str(
            click.prompt(f"Passphrase for {key_path}", hide_input=True, err=True)
        ).encode()
    try:
        return CA.load(ca_dir, passphrase=passphrase, db=db)
    except MtlsError as exc:
        if exc.hint and "--passphrase-file" in exc.hint and flag != "--passphrase-file":
            exc.hint = exc.hint.replace("--passphrase-file", flag)
        raise


def _is_encrypted(path: Path) -> bool:
    try:
        return b"ENCRYPTED" in path.read_bytes()[:200]
    except OSError:
        return False


def _utc(when: dt.datetime | None) -> dt.datetime | None:
    return when.replace(tzinfo=dt.UTC) if when is not None else None


def _wrote(paths: list[Path]) -> None:
    for path in paths:
        mode = path.stat().st_mode & 0o777
        click.echo(f"wrote {path} ({mode:04o})")


# -- init ---------------------------------------------------------------------------------


@click.command(help="Write the seed's CA, server and client key/CSR/certificate files.")
@click.option(
    "--dir",
    "folder",
    type=_folder,
    default=Path("certs"),
    show_default=True,
    help="Folder to write into.",
)
@_key_type_option()
@click.option("--force", is_flag=True, help="Overwrite existing files.")
@click.option(
    "--passphrase-file",
    type=_file,
    help="Encrypt ca.key with the first line of this file.",
)
@click.option("--passphrase", "ask_passphrase", is_flag=True, help="Ask for ca.key's passphrase.")
def init(
    folder: Path, key_type: str, force: bool, passphrase_file: Path | None, ask_passphrase: bool
) -> None:
    from mtlskit.pki.seed import init_seed

    passphrase = _new_key_passphrase(passphrase_file, ask_passphrase)
    paths = init_seed(folder, key_type=key_type, force=force, passphrase=passphrase)
    _wrote(paths)
    click.echo(f"next: mtlskit serve --certs {shlex.quote(str(folder))}")


# -- ca create ----------------------------------------------------------------------------


class _CAGroup(click.Group):
    """``ca create`` lives here; the CA service's subcommands (``ca serve``, ``ca token``
    …) in :mod:`mtlskit.cli.service_cmds`, imported only when one of them runs."""

    LAZY: ClassVar[dict[str, str]] = {
        "serve": "ca_serve",
        "fingerprint": "ca_fingerprint",
        "bootstrap": "ca_bootstrap",
        "token": "ca_token",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.LAZY:
            from mtlskit.cli import service_cmds

            cmd = getattr(service_cmds, self.LAZY[cmd_name], None)
            return cmd if isinstance(cmd, click.Command) else None
        return super().get_command(ctx, cmd_name)


@click.group(cls=_CAGroup, help="Certificate authorities, and the CA as a service.")
def ca() -> None:
    pass


@ca.command("create", help="Create a root CA, or an intermediate with --parent-dir.")
@click.option(
    "--dir", "folder", type=_folder, default=Path("certs"), show_default=True, help="Output."
)
@click.option(
    "--subject",
    help="e.g. '/C=TH/O=IT Sec/CN=CA' or 'CN=CA,O=IT Sec'. Default: a name of its own, "
    "from the folder and a random tag: 'CN=root CA 3F2A', 'CN=issuing Intermediate CA 91C0'.",
)
@_lifetime_options
@_key_type_option()
@click.option(
    "--path-length",
    type=click.IntRange(min=0),
    help="How many CAs may follow below this one (default: no limit for a root, 0 for an "
    "intermediate).",
)
@click.option("--parent-dir", type=_folder, help="Sign with the CA in this folder.")
@click.option(
    "--ca-passphrase-file", type=_file, help="Passphrase of the parent's encrypted ca.key."
)
@click.option("--force", is_flag=True, help="Overwrite existing files.")
@_new_key_passphrase_options
def ca_create(
    folder: Path,
    subject: str | None,
    days: int | None,
    not_after: dt.datetime | None,
    key_type: str,
    path_length: int | None,
    parent_dir: Path | None,
    ca_passphrase_file: Path | None,
    force: bool,
    passphrase_file: Path | None,
    ask_passphrase: bool,
) -> None:
    from mtlskit.pki.ca import CA, default_ca_subject
    from mtlskit.pki.names import parse_name

    passphrase = _new_key_passphrase(passphrase_file, ask_passphrase)
    parent = None
    if parent_dir is not None:
        if parent_dir.resolve() == folder.resolve():
            raise ConfigError(
                "--parent-dir and --dir are the same folder",
                hint="write the intermediate to its own folder",
            )
        parent = _load_ca(parent_dir, ca_passphrase_file, flag="--ca-passphrase-file")
        parent.check_lifetime(days=days, not_after=_utc(not_after))
        if path_length is None:
            path_length = 0
    if subject is not None:
        name = parse_name(subject, bare_cn=False)
    else:
        name = default_ca_subject(folder, intermediate=parent is not None)
    new = CA.create(
        name,
        key_type=key_type,
        days=days,
        not_after=_utc(not_after),
        path_length=path_length,
        parent=parent,
    )
    if parent is not None and new.certificate.subject == parent.certificate.subject:
        raise ConfigError(
            "the intermediate has the same subject as its parent",
            hint="give it its own --subject, e.g. 'CN=Intermediate CA'",
        )
    _wrote(new.save(folder, force=force, passphrase=passphrase))
    click.echo(f"next: mtlskit issue server NAME --ca-dir {shlex.quote(str(folder))} --san NAME")


# -- csr create ---------------------------------------------------------------------------


@click.group(help="Certificate signing requests.")
def csr() -> None:
    pass


@csr.command("create", help="Create a key + CSR: NAME.key and NAME.csr, or --key/--out.")
@click.argument("name", required=False)
@click.option("--dir", "folder", type=_folder, default=Path("."), help="Folder for NAME.*")
@click.option("--key", "key_path", type=_file, help="Key file (used if it exists, else made).")
@click.option("--out", "out_path", type=_file, help="CSR file to write.")
@click.option("--subject", help="Default: CN=NAME.")
@click.option("--san", "sans", multiple=True, help="DNS name, IP, email or URI; repeatable.")
@_key_type_option()
@click.option("--force", is_flag=True, help="Overwrite existing files.")
@_new_key_passphrase_options
def csr_create(
    name: str | None,
    folder: Path,
    key_path: Path | None,
    out_path: Path | None,
    subject: str | None,
    sans: tuple[str, ...],
    key_type: str,
    force: bool,
    passphrase_file: Path | None,
    ask_passphrase: bool,
) -> None:
    from mtlskit.pki.ca import create_csr, csr_pem
    from mtlskit.pki.keys import generate_key, load_private_key, private_key_pem
    from mtlskit.pki.names import parse_name, parse_sans
    from mtlskit.pki.store import CERT_MODE, KEY_MODE, read_file, write_many

    if name is None and (key_path is None or out_path is None):
        raise ConfigError("give NAME, or both --key and --out", hint="e.g. mtlskit csr create web")
    key_path = key_path or folder / f"{name}.key"
    out_path = out_path or folder / f"{name}.csr"
    if subject is None and name is None:
        raise ConfigError("give --subject (or NAME for CN=NAME)")
    parsed_name = parse_name(subject, bare_cn=False) if subject else parse_name(str(name))
    parsed_sans = parse_sans(sans)
    passphrase = _new_key_passphrase(passphrase_file, ask_passphrase)
    files = []
    reuse = key_path.exists() and not force
    if reuse:
        # Like `openssl req -new -key`: an existing key is used, never replaced.
        key = load_private_key(
            read_file(key_path, "private key"), file=key_path, passphrase=passphrase
        )
    else:
        key = generate_key(key_type)
        files.append((key_path, private_key_pem(key, passphrase), KEY_MODE))
    request = create_csr(key, parsed_name, parsed_sans)
    files.append((out_path, csr_pem(request), CERT_MODE))
    _wrote(write_many(files, force=force))
    if reuse:
        click.echo(f"used existing key {key_path}")
    # A server certificate needs a SAN: without one, the hint that works is a client's.
    profile = "server" if parsed_sans else "client"
    click.echo(
        f"next: mtlskit sign {shlex.quote(str(out_path))} --ca-dir certs --profile {profile}"
    )


# -- sign ---------------------------------------------------------------------------------


@click.command(help="Sign a CSR with the CA (like openssl x509 -req, with correct extensions).")
@click.argument("csr_file", metavar="CSR", type=_file)
@ca_dir_option
@click.option(
    "--profile", type=click.Choice(PROFILES), help="Extensions: server, client or server-client."
)
@click.option("--san", "sans", multiple=True, help="Replace the CSR's SANs; repeatable.")
@_lifetime_options
@click.option("-o", "--out", "out", type=_file, help="Certificate file (default: CSR.crt).")
@click.option("--force", is_flag=True, help="Overwrite an existing certificate.")
@click.option("--passphrase-file", type=_file, help="Passphrase of an encrypted ca.key.")
@db_option
def sign(
    csr_file: Path,
    ca_dir: Path,
    profile: str | None,
    sans: tuple[str, ...],
    days: int | None,
    not_after: dt.datetime | None,
    out: Path | None,
    force: bool,
    passphrase_file: Path | None,
    db: str | None,
) -> None:
    from mtlskit.pki.ca import cert_pem
    from mtlskit.pki.load import read_csr
    from mtlskit.pki.names import parse_sans
    from mtlskit.pki.store import CERT_MODE, write_many

    if profile is None:
        # Checked here: click's own message for a required choice spans several lines.
        raise ConfigError(
            "missing option --profile", hint="add --profile server, client or server-client"
        )
    request = read_csr(csr_file)
    if not request.is_signature_valid:
        raise PKIError(
            "the CSR's signature does not match its key",
            file=csr_file,
            hint="re-create it with mtlskit csr create",
        )
    extra = parse_sans(sans)
    out = out or csr_file.with_suffix(".crt")
    if out.exists() and not force:
        raise AlreadyExistsError("file exists", file=out, hint="pass --force or -o OTHER")
    authority = _load_ca(ca_dir, passphrase_file, flag="--passphrase-file", db=db)
    authority.check_lifetime(days=days, not_after=_utc(not_after))
    cert = authority.sign_csr(
        request, profile=profile, sans=extra or None, days=days, not_after=_utc(not_after)
    )
    data = b"".join(cert_pem(c) for c in (cert, *authority.leaf_chain))
    _wrote(write_many([(out, data, CERT_MODE)], force=force))


# -- issue --------------------------------------------------------------------------------


@click.command(help="Issue key + CSR + certificate in one go: OUT/NAME.key, .csr, .crt.")
@click.argument("role", type=click.Choice(PROFILES), metavar="server|client|server-client")
@click.argument("name")
@ca_dir_option
@click.option("--san", "sans", multiple=True, help="Repeatable; a server defaults to NAME.")
@click.option("--subject", help="Default: CN=NAME.")
@click.option("--dir", "folder", type=_folder, help="Output folder (default: the CA folder).")
@_key_type_option()
@_lifetime_options
@click.option("--force", is_flag=True, help="Overwrite existing files.")
@click.option("--ca-passphrase-file", type=_file, help="Passphrase of an encrypted ca.key.")
@_new_key_passphrase_options
@db_option
def issue(
    role: str,
    name: str,
    ca_dir: Path,
    sans: tuple[str, ...],
    subject: str | None,
    folder: Path | None,
    key_type: str,
    days: int | None,
    not_after: dt.datetime | None,
    force: bool,
    ca_passphrase_file: Path | None,
    passphrase_file: Path | None,
    ask_passphrase: bool,
    db: str | None,
) -> None:
    from mtlskit.pki.names import parse_name, parse_sans
    from mtlskit.pki.store import write_many

    if "/" in name or name in ("", ".", "..", "ca"):
        raise ConfigError(f"invalid NAME {name!r}", hint="use a plain name such as web or alice")
    parsed_name = parse_name(subject, bare_cn=False) if subject else parse_name(name)
    parsed_sans = parse_sans(sans)
    if not parsed_sans and role != "client":
        parsed_sans = parse_sans([name])
    passphrase = _new_key_passphrase(passphrase_file, ask_passphrase)
    out = folder or ca_dir
    if not force:
        for ext in ("key", "csr", "crt"):
            if (out / f"{name}.{ext}").exists():
                raise AlreadyExistsError(
                    "file exists", file=out / f"{name}.{ext}", hint="pass --force to overwrite it"
                )
    authority = _load_ca(ca_dir, ca_passphrase_file, flag="--ca-passphrase-file", db=db)
    authority.check_lifetime(days=days, not_after=_utc(not_after))
    leaf = authority.issue(
        role,
        parsed_name,
        sans=parsed_sans,
        key_type=key_type,
        days=days,
        not_after=_utc(not_after),
    )
    _wrote(write_many(leaf.files(out, name, passphrase), force=force))


# -- inspect ------------------------------------------------------------------------------


@click.command(help="Show certificates, CSRs, private keys, CRLs and PKCS#12 files.")
@click.argument("files", nargs=-1, required=True, type=_file)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--password-file",
    type=_file,
    help="Password of a PKCS#12 file or an encrypted key (first line).",
)
def inspect(files: tuple[Path, ...], as_json: bool, password_file: Path | None) -> None:
    from mtlskit.pki.inspect import describe, render_text

    password = read_passphrase(password_file, prompt=False)
    items = [item for path in files for item in describe(path, password=password)]
    if as_json:
        click.echo(json.dumps([i.to_dict() for i in items], indent=2))
    else:
        last, nth = None, 0
        for item in items:
            nth = nth + 1 if item.source == last else 1
            if last is not None:
                click.echo()
            # Each object of a file (a chain, a bundle) under its own header.
            click.echo(f"== {item.source}" + (f" ({nth})" if nth > 1 else ""))
            last = item.source
            click.echo(render_text(item))
    bad = [i for i in items if i.problems]
    if bad:
        raise VerificationError(bad[0].problems[0], file=bad[0].source, hint="re-create it")


# -- verify -------------------------------------------------------------------------------


@click.command(help="Verify a certificate against a CA; explain any failure in plain words.")
@click.argument("cert", type=_file)
@click.option(
    "--ca",
    "ca_file",
    type=_file,
    default=Path("certs/ca.crt"),
    show_default=True,
    help="Trusted CA certificate(s).",
)
@click.option("--chain", "chain_file", type=_file, help="Intermediate CA certificates.")
@click.option("--host", help="A name the certificate must hold in its SANs.")
@click.option("--purpose", type=click.Choice(["server", "client"]), help="Required use (EKU).")
@click.option("--key", "key_file", type=_file, help="Check that this private key matches.")
@click.option("--passphrase-file", type=_file, help="Passphrase of an encrypted --key.")
@click.option("--crl", "crl_file", type=_file, help="Refuse the certificate if this CRL lists it.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def verify(
    cert: Path,
    ca_file: Path,
    chain_file: Path | None,
    host: str | None,
    purpose: str | None,
    key_file: Path | None,
    passphrase_file: Path | None,
    crl_file: Path | None,
    as_json: bool,
) -> None:
    from mtlskit.pki.names import format_name
    from mtlskit.pki.verify import verify_files

    result = verify_files(
        cert,
        ca_file,
        chain_file=chain_file,
        host=host,
        purpose=purpose,
        key_file=key_file,
        passphrase=read_passphrase(passphrase_file, prompt=False),
        crl_file=crl_file,
    )
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(f"{cert}: {'OK' if result.ok else 'INVALID'}")
        for problem in result.problems:
            click.echo(f"  - {problem.message}")
        if result.chain:
            click.echo("  chain: " + "  <-  ".join(format_name(c.subject) for c in result.chain))
        click.echo(f"  checked by: {result.method}")
        for note in result.notes:
            click.echo(f"  note: {note}")
    result.raise_for_problems()


# -- export -------------------------------------------------------------------------------


@click.group(help="Export certificates and keys.")
def export() -> None:
    pass


@export.command("p12", help="Write a PKCS#12 (.p12) file with a certificate, key and CAs.")
@click.option("--cert", "cert_file", type=_file, required=True, help="Certificate (or bundle).")
@click.option("--key", "key_file", type=_file, required=True, help="Its private key.")
@click.option("--ca", "ca_file", type=_file, help="CA certificate(s) to include.")
@click.option("-o", "--out", type=_file, help="Output (default: CERT with .p12).")
@click.option("--password-file", type=_file, help="Protect with the first line of this file.")
@click.option("--no-password", is_flag=True, help="No password (the key is not encrypted).")
@click.option("--passphrase-file", type=_file, help="Passphrase of an encrypted --key.")
@click.option("--name", help="Friendly name (default: the certificate's CN).")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def export_p12(
    cert_file: Path,
    key_file: Path,
    ca_file: Path | None,
    out: Path | None,
    password_file: Path | None,
    no_password: bool,
    passphrase_file: Path | None,
    name: str | None,
    force: bool,
) -> None:
    from mtlskit.pki.export import export_pkcs12_files

    if password_file is not None and no_password:
        raise ConfigError("give either --password-file or --no-password, not both")
    out = out or cert_file.with_suffix(".p12")
    if out.exists() and not force:
        raise AlreadyExistsError("file exists", file=out, hint="pass --force or -o OTHER")
    password: bytes | None = None
    if not no_password:
        if password_file is None and not has_terminal():
            raise ConfigError(
                "no terminal to ask for the password",
                hint="use --password-file FILE, or --no-password for an unprotected file",
            )
        password = read_passphrase(
            password_file, prompt=True, confirm=True, file_option="--password-file"
        )
    path = export_pkcs12_files(
        cert_file,
        key_file,
        out,
        ca_file=ca_file,
        password=password,
        key_passphrase=read_passphrase(passphrase_file, prompt=False),
        name=name,
        force=force,
    )
    _wrote([path])
