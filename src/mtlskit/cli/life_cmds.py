"""Day-two commands: list, revoke, crl, renew, status.

Each reads the CA's inventory: ``CA_DIR/ca.db``, or the database ``--db`` names
(a ``postgresql://`` URL or a SQLite file). Exit codes: 0 done; 1 failure (a
database that cannot be reached included); 2 usage; ``renew`` 3 = not due yet
(cron-friendly); ``status`` 1 = something expires within ``--warn`` (or has
expired, or a file is bad).

The :mod:`mtlskit.pki` modules (cryptography, sqlite3) are imported inside the
commands, so ``mtlskit <command> --help`` and a usage error answer without loading them.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mtlskit.cli.common import ca_dir_option, db_option, read_passphrase
from mtlskit.errors import PKIError

if TYPE_CHECKING:
    from cryptography import x509

    from mtlskit.pki.inventory import Record
    from mtlskit.pki.status import StatusRow

RENEW_NOT_DUE = 3

passphrase_option = click.option(
    "--passphrase-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="First line: the passphrase of an encrypted ca.key.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")

_COLOURS = {"ok": "green", "expiring": "yellow", "expired": "red", "revoked": "red", "bad": "red"}


def _ca_certificate(ca_dir: Path) -> x509.Certificate:
    """The CA certificate of ``ca_dir`` (its key is not needed to read the inventory)."""
    from mtlskit.pki.ca import check_is_ca
    from mtlskit.pki.load import load_certificates
    from mtlskit.pki.store import SeedLayout, read_file

    path = SeedLayout(ca_dir).ca_cert()
    if not ca_dir.is_dir():
        raise PKIError(
            "CA folder not found", file=ca_dir, hint="point --ca-dir at the folder with ca.crt"
        )
    cert = load_certificates(read_file(path, "CA certificate"), file=path)[0]
    check_is_ca(cert, file=path)
    return cert


def _days(days: float) -> str:
    return f"{days:.1f}" if abs(days) < 10 else f"{days:.0f}"


def _table(headers: list[str], rows: list[list[str]], states: list[str] | None = None) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + "  {}"
    click.echo(fmt.format(*headers).rstrip())
    for i, row in enumerate(rows):
        line = fmt.format(*row).rstrip()
        # click.echo drops the colour codes when the output is not a terminal.
        colour = _COLOURS.get(states[i]) if states else None
        click.echo(
            click.style(line, fg=colour) if colour and states and states[i] != "ok" else line
        )


# -- list ----------------------------------------------------------------------------------


@click.command(
    "list",
    help="List the certificates the CA issued (from its inventory, ca.db).",
)
@ca_dir_option
@click.option(
    "--expiring",
    metavar="DURATION",
    help="Only valid certificates that expire within DURATION (e.g. 30d), or have.",
)
@click.option(
    "--adopt",
    is_flag=True,
    help="Create the inventory if missing, recording the certificates in the CA "
    "folder that the CA signed and the revocations of its ca.crl.",
)
@db_option
@json_option
def list_(ca_dir: Path, expiring: str | None, adopt: bool, db: str | None, as_json: bool) -> None:
    from mtlskit.pki.inventory import Inventory, create_inventory
    from mtlskit.pki.status import parse_duration

    window = parse_duration(expiring, flag="--expiring") if expiring is not None else None
    ca_cert = _ca_certificate(ca_dir)
    inv = Inventory.at(ca_dir, ca_cert, db=db)
    if adopt and not inv.exists():
        inv = create_inventory(ca_dir, ca_cert, db=db)
        click.echo(f"created {inv.location} with {inv.count()} certificates", err=True)
    records = inv.records(expiring_within=window)
    now = dt.datetime.now(dt.UTC)
    if as_json:
        click.echo(json.dumps([r.as_json(now) for r in records], indent=2))
        return
    if not records:
        click.echo("no certificates" + (f" expiring within {expiring}" if expiring else ""))
        return
    _table(
        ["SERIAL", "STATUS", "PROFILE", "NOT AFTER", "DAYS", "SUBJECT", "SANS"],
        [_list_row(r, now) for r in records],
        [_list_state(r, now) for r in records],
    )


def _list_state(r: Record, now: dt.datetime) -> str:
    if r.status == "revoked":
        return "revoked"
    if r.superseded:
        return "superseded"
    return "expired" if r.days_left(now) < 0 else "ok"


def _list_row(r: Record, now: dt.datetime) -> list[str]:
    status = r.shown_status
    if r.status == "revoked":
        status = f"revoked ({r.reason or 'unspecified'})"
    elif r.days_left(now) < 0:
        status = "expired"
    return [
        r.serial,
        status,
        r.profile,
        f"{r.not_after:%Y-%m-%d %H:%M}",
        _days(r.days_left(now)),
        r.subject or "(known from ca.crl only)",
        ",".join(r.sans),
    ]


# -- revoke --------------------------------------------------------------------------------


@click.command(help="Revoke a certificate by serial (hex) or by its file; then run mtlskit crl.")
@click.argument("target", metavar="SERIAL|CERTFILE")
@ca_dir_option
@click.option(
    "--reason",
    default="unspecified",
    show_default=True,
    help="RFC 5280 reason: keyCompromise, cACompromise, affiliationChanged, superseded, "
    "cessationOfOperation, certificateHold, privilegeWithdrawn, aACompromise, unspecified.",
)
@db_option
@json_option
def revoke(target: str, ca_dir: Path, reason: str, db: str | None, as_json: bool) -> None:
    from mtlskit.pki.crl import parse_reason
    from mtlskit.pki.inventory import Inventory, check_issued_by, parse_serial, serial_hex
    from mtlskit.pki.load import read_certificates

    flag = parse_reason(reason)
    ca_cert = _ca_certificate(ca_dir)
    path = Path(target)
    if path.exists():
        cert = read_certificates(path)[0]
        check_issued_by(cert, ca_cert, file=path, hint="pass --ca-dir of the CA that signed it")
        serial = serial_hex(cert.serial_number)
    elif any(c in target for c in "./\\"):  # a path, not a hex serial
        raise PKIError(
            "certificate not found",
            file=target,
            hint="check the path, or give a serial as mtlskit list shows it",
        )
    else:
        serial = parse_serial(target)
    inv = Inventory.open(ca_dir, ca_cert, db=db)
    rec = inv.revoke(serial, flag.value)
    if as_json:
        click.echo(json.dumps(rec.as_json(), indent=2))
        return
    click.echo(
        f"revoked {rec.serial} ({rec.subject or 'subject unknown'}): {flag.value}; "
        "servers refuse it once they load a CRL made from now on"
    )
    more = f" --db {shlex.quote(inv.location)}" if db is not None else ""
    click.echo(f"next: mtlskit crl --ca-dir {shlex.quote(str(ca_dir))}{more}")


# -- crl -----------------------------------------------------------------------------------


@click.command(help="Write a signed CRL of the CA's revoked certificates (default CA_DIR/ca.crl).")
@ca_dir_option
@click.option(
    "-o",
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write it [default: CA_DIR/ca.crl].",
)
@click.option(
    "--days",
    type=int,
    default=None,
    help="Days until nextUpdate; re-make it before then [default: 30].",
)
@passphrase_option
@db_option
def crl(
    ca_dir: Path, out: Path | None, days: int | None, passphrase_file: Path | None, db: str | None
) -> None:
    from cryptography import x509

    from mtlskit.pki.ca import CA
    from mtlskit.pki.crl import CRL_NAME, DEFAULT_CRL_DAYS, make_crl, write_crl

    ca = CA.load(ca_dir, passphrase=read_passphrase(passphrase_file, prompt=False), db=db)
    crl_ = make_crl(ca, days=DEFAULT_CRL_DAYS if days is None else days)
    path = write_crl(crl_, out or ca_dir / CRL_NAME)
    number = crl_.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    when = crl_.next_update_utc
    click.echo(
        f"wrote {path} (CRL number {number}, {len(crl_)} revoked, "
        f"next update {when:%Y-%m-%d %H:%M} UTC)"
    )


# -- renew ---------------------------------------------------------------------------------


@click.command(
    help="Renew a certificate the CA issued, in place: same subject, SANs and profile, "
    "new serial. Only past 2/3 of its lifetime unless --force. "
    "Exit 0: renewed; 3: not due yet; 1: error."
)
@click.argument("cert", type=click.Path(dir_okay=False, path_type=Path))
@ca_dir_option
@click.option("--new-key", is_flag=True, help="Also make a new key (same type), written 0600.")
@click.option(
    "--key",
    "key_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where --new-key writes [default: CERT with .key].",
)
@click.option("--force", is_flag=True, help="Renew even when not due yet.")
@passphrase_option
@db_option
@json_option
def renew(
    cert: Path,
    ca_dir: Path,
    new_key: bool,
    key_file: Path | None,
    force: bool,
    passphrase_file: Path | None,
    db: str | None,
    as_json: bool,
) -> int:
    from mtlskit.pki.ca import CA
    from mtlskit.pki.inventory import format_time, serial_hex
    from mtlskit.pki.renew import renew_file

    ca = CA.load(ca_dir, passphrase=read_passphrase(passphrase_file, prompt=False), db=db)
    result = renew_file(ca, cert, new_key=new_key, key_file=key_file, force=force)
    old = result.old
    if as_json:
        click.echo(
            json.dumps(
                {
                    "renewed": result.renewed,
                    "file": str(cert),
                    "due": format_time(result.due),
                    "old_serial": serial_hex(old.serial_number),
                    "new_serial": serial_hex(result.new.serial_number) if result.new else None,
                    "not_after": format_time(
                        (result.new or old).not_valid_after_utc.replace(microsecond=0)
                    ),
                    "key_file": str(result.key_file) if result.key_file else None,
                },
                indent=2,
            )
        )
    elif result.new is None:
        left = (result.due - dt.datetime.now(dt.UTC)).total_seconds() / 86400
        click.echo(
            f"not due: {cert} renews after {result.due:%Y-%m-%d %H:%M} UTC "
            f"(2/3 of its lifetime, in {_days(left)} days); --force renews now"
        )
    else:
        new = result.new
        click.echo(
            f"renewed {cert}: serial {serial_hex(old.serial_number)} -> "
            f"{serial_hex(new.serial_number)}, valid until {new.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
            + (f", new key {result.key_file}" if result.key_file else "")
        )
    return 0 if result.renewed else RENEW_NOT_DUE


# -- status --------------------------------------------------------------------------------


@click.command(
    help="Show the certificates and CRLs in DIR with the days they have left. "
    "When DIR is a CA folder with an inventory (DIR/ca.db, or --db), a certificate "
    "revoked there but not yet in a CRL shows as revoked. "
    "Exit 1 when something expires within --warn (or has, or cannot be read)."
)
@click.argument(
    "folder",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("certs"),
    required=False,
)
@click.option("--warn", default="30d", show_default=True, metavar="DURATION", help="e.g. 30d, 12h.")
@click.option(
    "--db",
    metavar="URL",
    help="The inventory of the CA whose ca.crt is in DIR: postgresql://… or a SQLite "
    "file [default: DIR/ca.db when there is one].",
)
@json_option
def status(folder: Path, warn: str, db: str | None, as_json: bool) -> int:
    from mtlskit.pki.inventory import DB_NAME, Inventory
    from mtlskit.pki.status import folder_status, needs_attention, parse_duration

    window = parse_duration(warn, flag="--warn")
    inventory = None
    if db is not None or (folder / DB_NAME).is_file():
        inventory = Inventory.open(folder, _ca_certificate(folder), db=db)
    rows = folder_status(folder, warn=window, inventory=inventory)
    attention = needs_attention(rows)
    if as_json:
        click.echo(
            json.dumps(
                {"warn": warn, "attention": attention, "items": [r.as_json() for r in rows]},
                indent=2,
            )
        )
    elif not rows:
        click.echo(f"no certificates or CRLs in {folder}")
    else:
        _table(
            ["FILE", "KIND", "NOT AFTER", "DAYS", "STATE", "SUBJECT / NOTE"],
            [_status_row(r) for r in rows],
            [r.state for r in rows],
        )
    return 1 if attention else 0


def _status_row(r: StatusRow) -> list[str]:
    return [
        r.file,
        r.kind,
        f"{r.not_after:%Y-%m-%d %H:%M}" if r.not_after else "-",
        _days(r.days_left) if r.days_left is not None else "-",
        r.state,
        r.subject + (f"  [{r.note}]" if r.note else ""),
    ]
