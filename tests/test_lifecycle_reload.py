"""Hot reload of the server's TLS state: checked, swapped atomically, old kept on failure."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import shutil
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from mtlskit.errors import PKIError
from mtlskit.pki.ca import CA, SEED_CA_SUBJECT, cert_pem
from mtlskit.pki.crl import build_crl, crl_pem, make_crl, write_crl
from mtlskit.pki.seed import init_seed
from mtlskit.pki.store import write_atomic
from mtlskit.server.metrics import render, start_metrics_server
from mtlskit.server.reload import FileWatcher, checked_build
from mtlskit.server.stats import Stats
from mtlskit.server.tlsstate import ContextHolder
from tests.support.pki import aged
from tests.support.processes import free_port


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    folder = tmp_path / "certs"
    init_seed(folder)
    write_crl(make_crl(CA.load(folder)), folder / "ca.crl")
    return folder


def _holder(certs: Path) -> ContextHolder:
    return ContextHolder(
        certs / "server.crt",
        certs / "server.key",
        certs / "ca.crt",
        crl=certs / "ca.crl",
        build=checked_build,
    )


def _expired_ca_pem() -> bytes:
    from mtlskit.pki import profiles
    from mtlskit.pki.keys import generate_key
    from mtlskit.pki.names import parse_name

    key = generate_key()
    name = parse_name("CN=Old CA")
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=10))
    )
    for ext, critical in profiles.ca_extensions(key.public_key(), path_length=None, issuer=None):
        builder = builder.add_extension(ext, critical)
    return cert_pem(builder.sign(key, hashes.SHA256()))  # type: ignore[arg-type]


def _broken_replacements(certs: Path, tmp_path: Path) -> list[tuple[str, Path, bytes, str]]:
    """(name, file, bad content, expected error) for every kind of broken replacement."""
    ca = CA.load(certs)
    spare = tmp_path / "spare"
    spare.mkdir()
    expired = aged(ca, spare, "expired", lifetime_days=10, age_days=11)
    other = CA.create("CN=Other")
    return [
        ("garbage cert", certs / "server.crt", b"garbage", "not a PEM or DER certificate"),
        ("garbage key", certs / "server.key", b"garbage", "key"),
        (
            "key mismatch",
            certs / "server.key",
            (certs / "client.key").read_bytes(),
            "private key does not match certificate",
        ),
        ("expired cert", certs / "server.crt", cert_pem(expired), "server certificate expired"),
        ("garbage CA", certs / "ca.crt", b"garbage", "certificate"),
        (
            "CRL of another key",
            certs / "ca.crl",
            crl_pem(build_crl(CA.create(SEED_CA_SUBJECT), [], number=9)),
            "signed by another key",
        ),
        (
            "expired CRL",
            certs / "ca.crl",
            crl_pem(
                build_crl(
                    ca, [], number=9, days=1, now=dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
                )
            ),
            "CRL expired",
        ),
        (
            "CRL of another CA",
            certs / "ca.crl",
            crl_pem(build_crl(other, [], number=1)),
            "not by the CA",
        ),
        ("expired CA bundle", certs / "ca.crt", _expired_ca_pem(), "has expired"),
    ]


def test_broken_replacements_are_refused_and_the_old_state_kept(
    certs: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    holder = _holder(certs)
    for name, path, data, expected in _broken_replacements(certs, tmp_path):
        good = holder.current
        original = path.read_bytes()
        write_atomic(path, data)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="mtlskit.server"):
            assert holder.try_reload() is False, name
        assert holder.current is good, name
        assert len(caplog.records) == 1, name
        assert expected in caplog.records[0].getMessage(), (name, caplog.records[0].getMessage())
        assert "\n" not in caplog.records[0].getMessage()
        write_atomic(path, original)
        assert holder.try_reload() is True, name
    assert holder.stats.reloads_failed == 9


def test_watcher_reloads_once_files_settle(certs: Path) -> None:
    holder = _holder(certs)
    watcher = FileWatcher(holder, interval=0.05, settle=0.1)
    before = holder.current
    ca = CA.load(certs)
    new = ca.issue("server", "CN=localhost", sans=["localhost", "127.0.0.1"])
    new.save(certs, "server", force=True)
    assert watcher.due(now=100.0) is False  # changed: wait for it to settle
    assert watcher.due(now=100.05) is False
    assert watcher.due(now=100.2) is True
    assert watcher.due(now=100.3) is False  # once
    assert holder.try_reload()
    assert holder.current is not before
    assert x509.load_pem_x509_certificate(holder.current.server_cert_pem.encode()) == (
        new.certificate
    )


def test_watcher_task_picks_up_a_rotation(certs: Path) -> None:
    holder = _holder(certs)

    async def main() -> None:
        watcher = FileWatcher(holder, interval=0.05, settle=0.05)
        task = asyncio.create_task(watcher.run())
        first = holder.current
        write_crl(make_crl(CA.load(certs)), certs / "ca.crl")
        for _ in range(200):
            if holder.current is not first:
                break
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert holder.current is not first

    asyncio.run(main())


def test_metrics_text(certs: Path) -> None:
    stats = Stats()
    holder = _holder(certs)
    stats.handshakes_ok = 5
    stats.handshake_failed("cert_revoked")
    stats.open_connections = 2
    text = render(stats, holder)
    assert 'mtlskit_handshakes_total{outcome="ok",reason=""} 5' in text
    assert 'mtlskit_handshakes_total{outcome="failed",reason="cert_revoked"} 1' in text
    assert "mtlskit_open_connections 2" in text
    assert "# TYPE mtlskit_handshakes_total counter" in text
    server = x509.load_pem_x509_certificate((certs / "server.crt").read_bytes())
    line = next(
        x
        for x in text.splitlines()
        if x.startswith('mtlskit_certificate_expiry_timestamp_seconds{role="server"')
    )
    assert float(line.split()[-1]) == server.not_valid_after_utc.timestamp()
    assert 'role="ca",subject="CN=CA,O=IT Sec,ST=RB,C=TH"' in text
    left = next(x for x in text.splitlines() if x.startswith("mtlskit_crl_next_update_seconds "))
    assert 29 * 86400 < float(left.split()[-1]) <= 30 * 86400
    assert "mtlskit_tls_reload_last_ok 1" in text


def test_metrics_port_serves_prometheus_text(certs: Path) -> None:
    stats = Stats()
    holder = _holder(certs)
    port = free_port()

    async def main() -> tuple[str, str, int]:
        server = await start_metrics_server("127.0.0.1", port, stats, holder)
        try:
            loop = asyncio.get_running_loop()

            def fetch(path: str) -> tuple[str, str, int]:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                        return r.read().decode(), r.headers["Content-Type"], r.status
                except urllib.error.HTTPError as exc:
                    return "", "", exc.code

            body, ctype, code = await loop.run_in_executor(None, fetch, "/metrics")
            _, _, missing = await loop.run_in_executor(None, fetch, "/")
            assert missing == 404
            return body, ctype, code
        finally:
            server.close()
            await server.wait_closed()

    body, ctype, code = asyncio.run(main())
    assert code == 200 and ctype.startswith("text/plain; version=0.0.4")
    assert "mtlskit_crl_next_update_timestamp_seconds" in body


def test_renewed_files_are_picked_up(certs: Path, tmp_path: Path) -> None:
    """`mtlskit renew --new-key` replaces cert and key atomically: one reload, no error."""
    from mtlskit.pki.renew import renew_file

    holder = _holder(certs)
    watcher = FileWatcher(holder, settle=0.0)
    before = holder.current
    renew_file(CA.load(certs), certs / "server.crt", new_key=True, force=True)
    watcher.due(now=1.0)
    assert watcher.due(now=1.0)
    assert holder.try_reload() and holder.current is not before
    after = holder.current
    # Files gone (a botched deploy): refused, the renewed state keeps serving.
    shutil.rmtree(tmp_path / "certs")
    with pytest.raises(PKIError):
        holder.reload()
    assert holder.current is after
