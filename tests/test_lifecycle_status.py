"""mtlskit status: days left per certificate and CRL, colour on a terminal, exit codes."""

from __future__ import annotations

import datetime as dt
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from mtlskit.errors import ConfigError
from mtlskit.pki.ca import CA, SEED_CA_SUBJECT
from mtlskit.pki.crl import build_crl, make_crl, write_crl
from mtlskit.pki.seed import init_seed
from mtlskit.pki.status import folder_status, parse_duration
from tests.support.pki import aged
from tests.support.processes import run_cli


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    folder = tmp_path / "certs"
    init_seed(folder)
    write_crl(make_crl(CA.load(folder)), folder / "ca.crl")
    return folder


def test_status_table_and_json(certs: Path) -> None:
    r = run_cli("status", certs)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:5] == ["FILE", "KIND", "NOT", "AFTER", "DAYS"]
    assert {line.split()[0] for line in lines[1:]} == {
        "ca.crl",
        "ca.crt",
        "server.crt",
        "client.crt",
    }
    assert "\x1b[" not in r.stdout
    j = run_cli("status", certs, "--json")
    data = json.loads(j.stdout)
    assert data["attention"] is False
    kinds = {item["file"]: item["kind"] for item in data["items"]}
    assert kinds == {
        "ca.crl": "CRL",
        "ca.crt": "CA",
        "server.crt": "server",
        "client.crt": "client",
    }
    crl = next(i for i in data["items"] if i["kind"] == "CRL")
    assert 29.9 < crl["days_left"] <= 30


def test_status_exit_1_when_something_expires_within_warn(certs: Path) -> None:
    assert run_cli("status", certs, "--warn", "400d").returncode == 1
    ca = CA.load(certs)
    aged(ca, certs, "old", lifetime_days=30, age_days=31)
    r = run_cli("status", certs, "--json")
    assert r.returncode == 1
    old = next(i for i in json.loads(r.stdout)["items"] if i["file"] == "old.crt")
    assert old["state"] == "expired" and old["days_left"] < 0


def test_status_flags_revoked_and_bad_crls(certs: Path) -> None:
    assert run_cli("revoke", certs / "client.crt", "--ca-dir", certs).returncode == 0
    assert run_cli("crl", "--ca-dir", certs).returncode == 0
    items = {i.file: i for i in folder_status(certs, warn=parse_duration("30d"))}
    assert items["client.crt"].state == "revoked"
    assert items["server.crt"].state == "ok"
    write_crl(build_crl(CA.create(SEED_CA_SUBJECT), [], number=1), certs / "ca.crl")
    r = run_cli("status", certs, "--json")
    assert r.returncode == 1
    crl = next(i for i in json.loads(r.stdout)["items"] if i["kind"] == "CRL")
    assert crl["state"] == "bad" and "another key" in crl["note"]
    # An expired CRL makes OpenSSL refuse every client: as urgent as an expired CA.
    old = build_crl(
        CA.load(certs), [], number=5, days=1, now=dt.datetime.now(dt.UTC) - dt.timedelta(3)
    )
    write_crl(old, certs / "ca.crl")
    items = {i.file: i for i in folder_status(certs, warn=parse_duration("1d"))}
    assert items["ca.crl"].state == "expired"


def test_status_colours_only_on_a_terminal(certs: Path) -> None:
    ca = CA.load(certs)
    aged(ca, certs, "soon", lifetime_days=30, age_days=25)
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mtlskit", "status", str(certs)],
        stdout=child,
        stderr=child,
        env={**os.environ, "TERM": "xterm"},
    )
    os.close(child)
    out = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(main)
    assert proc.wait(timeout=30) == 1
    assert b"\x1b[33m" in out  # yellow: expiring
    assert b"soon.crt" in out


def test_status_bad_input(tmp_path: Path) -> None:
    r = run_cli("status", tmp_path / "nope")
    assert r.returncode == 1 and r.stderr.startswith("error: folder not found")
    r = run_cli("status", tmp_path, "--warn", "a while")
    assert r.returncode == 2 and r.stderr.startswith("error: --warn 'a while' is not a duration")
    (tmp_path / "junk.crt").write_text("not a certificate")
    r = run_cli("status", tmp_path, "--json")
    assert r.returncode == 1
    assert json.loads(r.stdout)["items"][0]["state"] == "bad"


def test_parse_duration() -> None:
    assert parse_duration("30d") == dt.timedelta(days=30)
    assert parse_duration("12h") == dt.timedelta(hours=12)
    assert parse_duration("2w") == dt.timedelta(weeks=2)
    assert parse_duration("1h30m") == dt.timedelta(minutes=90)
    with pytest.raises(ConfigError, match="has no unit"):
        parse_duration("7")  # days? hours? refused, not guessed


def test_status_of_the_seeds_openssl_folder(seed_certs_openssl: Path) -> None:
    r = run_cli("status", seed_certs_openssl, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    kinds = {i["file"]: i["kind"] for i in json.loads(r.stdout)["items"]}
    # The v1 root counts as a CA; certificates without extendedKeyUsage may do anything.
    assert kinds == {"ca.crt": "CA", "server.crt": "server-client", "client.crt": "client"}
