"""Revocation with a 100,000-entry CRL made by the CA: refused in the handshake, same log line.

The default engine checks the client's serial in a set built from the CRL file at
load and reload (server/revocation.py); the stdlib engine keeps OpenSSL's check.
Both must refuse a revoked client in the handshake (the client reads the alert
"certificate revoked") with the same log line, serve the others, and follow the
CRL file on reload. The rate with and without such a CRL is a benchmark
(bench/revocation.py), not a test.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from mtlskit.errors import PKIError
from mtlskit.pki.ca import CA
from mtlskit.pki.crl import build_crl, write_crl
from mtlskit.pki.seed import init_seed
from mtlskit.server.engine import TLSSession
from mtlskit.server.revocation import Revocation, RevokedSerials
from mtlskit.tls import client_context
from tests.support.processes import run_cli
from tests.support.server import Served, engines, https, start_serve, stop_all, talk

ENTRIES = 100_000


@dataclass(frozen=True)
class Revoked:
    """A revocation as the inventory lists it (mtlskit.pki.crl.RevokedRecord)."""

    serial_int: int
    not_after: dt.datetime
    revoked_at: dt.datetime | None = None
    status: str = "revoked"
    reason: str | None = None


def big_crl(certs: Path, path: Path, *also_revoked: str, entries: int = ENTRIES) -> Path:
    """The CA's CRL (mtlskit.pki.crl.build_crl, signed by certs/ca.key) listing the
    inventory's revocations plus enough other serials to make ``entries``."""
    for name in also_revoked:
        r = run_cli("revoke", certs / f"{name}.crt", "--ca-dir", certs)
        assert r.returncode == 0, r.stderr
    ca = CA.load(certs)
    assert ca.inventory is not None
    records: list[Revoked] = [
        Revoked(rec.serial_int, rec.not_after, rec.revoked_at) for rec in ca.inventory.revoked()
    ]
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=365)
    records += [Revoked(x509.random_serial_number(), later) for _ in range(entries - len(records))]
    write_crl(build_crl(ca, records, number=ca.inventory.next_crl_number()), path)
    return path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pki") / "certs"
    init_seed(folder)
    ca = CA.load(folder)
    for name in ("mallory", "bob"):
        ca.issue("client", f"CN={name}").save(folder, name)
    big_crl(folder, folder / "ca.crl", "mallory")
    return folder


@pytest.fixture(scope="module", params=["openssl", "stdlib"])
def served(
    request: pytest.FixtureRequest, certs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    procs: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "MTLSKIT_TLS_ENGINE": request.param}
    crl = tmp_path_factory.mktemp("crl") / "ca.crl"
    shutil.copy(certs / "ca.crl", crl)
    try:
        s = start_serve(
            procs, certs, tmp_path_factory.mktemp("log"), "--crl", str(crl), "--quiet", env=env
        )
        yield s
        assert s.stop() == 0
        assert "Traceback" not in s.log()
    finally:
        stop_all(procs)


def ctx(certs: Path, name: str, tls12: bool = False) -> ssl.SSLContext:
    c = client_context(certs / "ca.crt", certs / f"{name}.crt", certs / f"{name}.key")
    if tls12:
        c.maximum_version = ssl.TLSVersion.TLSv1_2
    return c


def refusal(port: int, context: ssl.SSLContext) -> tuple[str, int]:
    """The alert a refused client reads, and its local port (the server's log names it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        local = raw.getsockname()[1]
        try:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                return f"read {tls.recv(4096)[:20]!r}", local
        except ssl.SSLError as exc:
            return str(exc.reason), local


@pytest.mark.parametrize("tls12", [False, True], ids=["tls13", "tls12"])
def test_a_revoked_client_is_refused_in_the_handshake(
    served: Served, certs: Path, tls12: bool
) -> None:
    assert https(served.port, ctx(certs, "client", tls12))[2] == b"hello world \n"
    alert, port = refusal(served.port, ctx(certs, "mallory", tls12))
    assert alert == "SSLV3_ALERT_CERTIFICATE_REVOKED"
    # The same line as OpenSSL's own CRL check gave (and the stdlib engine gives).
    served.wait_log(
        f"TLS handshake error from 127.0.0.1:{port}: certificate revoked (cert_revoked)"
    )
    assert https(served.port, ctx(certs, "bob", tls12))[2] == b"hello world \n"


def test_the_crl_file_stays_the_source_of_truth(
    procs: list[subprocess.Popen[bytes]], certs: Path, tmp_path: Path
) -> None:
    """A reload follows the file: a newly revoked client is refused, a CRL of another
    key is refused (the previous set keeps serving)."""
    folder = tmp_path / "certs"
    shutil.copytree(certs, folder)
    crl = tmp_path / "live.crl"
    shutil.copy(folder / "ca.crl", crl)
    s = start_serve(procs, folder, tmp_path, "--crl", str(crl), "--watch-interval", "0")
    assert https(s.port, ctx(folder, "bob"))[2] == b"hello world \n"

    big_crl(folder, tmp_path / "next.crl", "bob")
    os.replace(tmp_path / "next.crl", crl)
    s.proc.send_signal(signal.SIGHUP)
    s.wait_log("reloaded certificates")
    assert refusal(s.port, ctx(folder, "bob"))[0] == "SSLV3_ALERT_CERTIFICATE_REVOKED"

    other = tmp_path / "other"
    init_seed(other)  # another CA with the same name: its CRL is signed by another key
    write_crl(build_crl(CA.load(other), [], number=1), crl)
    s.proc.send_signal(signal.SIGHUP)
    s.wait_log("but is signed by another key")
    assert refusal(s.port, ctx(folder, "bob"))[0] == "SSLV3_ALERT_CERTIFICATE_REVOKED"
    assert https(s.port, ctx(folder, "client"))[2] == b"hello world \n"
    assert s.stop() == 0


def test_engines_agree_on_a_client_of_a_ca_without_crl(certs: Path, tmp_path: Path) -> None:
    """A CA bundle of two CAs and the CRL of one: OpenSSL's check finds no CRL for the
    other CA's clients and refuses them ("unable to get certificate CRL"); so does the set."""
    folder = tmp_path / "certs"
    shutil.copytree(certs, folder)
    other = CA.create("/CN=Other CA", key_type="p256", days=30)
    other.issue("client", "CN=stranger").save(folder, "stranger")
    bundle = folder / "ca.crt"
    bundle.write_bytes(bundle.read_bytes() + other.cert_pem)
    small = big_crl(folder, tmp_path / "small.crl", entries=10)
    made: dict[str, Callable[[], TLSSession]] = engines(folder, crl=small)
    for engine, make in made.items():
        assert talk(make(), ctx(folder, "stranger")) == ("refused", "crl"), engine
        assert talk(make(), ctx(folder, "client"))[0] == "ok", engine
        assert talk(make(), ctx(folder, "mallory")) == ("refused", "cert_revoked"), engine


def test_revoked_serials_check_the_crl_dates_as_openssl_does(certs: Path) -> None:
    revoked = RevokedSerials.from_files(certs / "ca.crl", certs / "ca.crt")
    assert len(revoked.serials) == ENTRIES
    assert revoked.issuer_name_unique
    mallory = x509.load_pem_x509_certificate((certs / "mallory.crt").read_bytes())
    serial = mallory.serial_number
    now = dt.datetime.now(dt.UTC).timestamp()
    assert revoked.check(serial, True, now) is Revocation.REVOKED
    assert revoked.check(serial + 1, True, now) is Revocation.GOOD
    assert revoked.check(serial, False, now) is Revocation.NO_CRL
    assert revoked.next_update is not None
    later = revoked.next_update + 1
    assert revoked.check(serial + 1, True, later) is Revocation.CRL_EXPIRED
    early = revoked.last_update - 1
    assert revoked.check(1, True, early) is Revocation.CRL_NOT_YET_VALID


def hierarchy(folder: Path) -> Path:
    """A root, an issuing CA under it and a second CA of the issuing CA's name (a key
    rollover), all in the bundle; clients of each; the issuing CA's CRL revokes "bad"."""
    root = CA.create("/CN=Root", key_type="p256", days=30)
    issuing = CA.create("/CN=Issuing", key_type="p256", days=30, parent=root)
    rolled = CA.create("/CN=Issuing", key_type="p256", days=30)
    root.issue("server", "/CN=localhost", sans=["DNS:localhost"], key_type="p256").save(
        folder, "server"
    )
    for ca, names in ((issuing, ("good", "bad")), (root, ("direct",)), (rolled, ("rolled",))):
        for name in names:
            ca.issue("client", f"/CN={name}", key_type="p256").save(folder, name)
    (folder / "ca.crt").write_bytes(root.cert_pem + issuing.cert_pem + rolled.cert_pem)
    bad = x509.load_pem_x509_certificate((folder / "bad.crt").read_bytes())
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
    write_crl(build_crl(issuing, [Revoked(bad.serial_number, later)], number=1), folder / "ca.crl")
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    expired = build_crl(issuing, [], number=2, days=1, now=past)
    write_crl(expired, folder / "expired.crl")
    return folder


def test_engines_agree_on_chains_rollovers_and_dates(tmp_path: Path) -> None:
    folder = hierarchy(tmp_path / "certs")
    assert not RevokedSerials.from_files(folder / "ca.crl", folder / "ca.crt").issuer_name_unique
    for engine, make in engines(folder, crl=folder / "ca.crl").items():
        assert talk(make(), ctx(folder, "good"))[0] == "ok", engine
        assert talk(make(), ctx(folder, "bad")) == ("refused", "cert_revoked"), engine
        assert talk(make(), ctx(folder, "direct")) == ("refused", "crl"), engine  # root: no CRL
        # The other CA of the same name: OpenSSL finds this CRL by name and cannot
        # verify it with that CA's key; the set is for the CA that signed it only.
        assert talk(make(), ctx(folder, "rolled"))[0] == "refused", engine
    for engine, make in engines(folder, crl=folder / "expired.crl").items():
        assert talk(make(), ctx(folder, "good")) == ("refused", "crl"), engine


def test_a_crl_that_is_not_one_is_refused_at_load(certs: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.crl"
    garbage.write_text("not a CRL\n")
    with pytest.raises(PKIError, match="not a PEM or DER CRL"):
        RevokedSerials.from_files(garbage, certs / "ca.crt")
    r = run_cli("serve", "--certs", certs, "--port", "0", "--crl", garbage)
    assert r.returncode == 1
    assert re.fullmatch(r"error: not a PEM or DER CRL \(.*garbage\.crl\): .*\n", r.stderr)
