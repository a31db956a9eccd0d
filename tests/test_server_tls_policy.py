"""What the server's TLS engines offer and refuse, the same on both (issue 10, items 9-10).

An SSLv2-format ClientHello, a TLS 1.0/1.1 one and bytes that cannot begin a ClientHello
are refused at once with an alert and a close (never a wait for the handshake timeout),
and logged as what they are; TLS 1.2 offers only ECDHE with AES-GCM or ChaCha20-Poly1305.
The default engine calls only what cryptography's bindings export, checks what they
return, reads OpenSSL's whole error queue, and keeps its buffers per thread.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mtlskit.errors import PKIError
from mtlskit.server import engine, openssl_engine
from mtlskit.server.engine import TLSFailure, TLSSession
from mtlskit.server.openssl_engine import AVAILABLE, OpenSSLSession, context_from
from mtlskit.tls import server_context
from tests.support.processes import ROOT, run_cli
from tests.support.server import (
    Served,
    client_ctx,
    engines,
    https,
    make_pki,
    read_until_closed,
    start_serve,
    stop_all,
    talk,
)

pytestmark = pytest.mark.skipif(not AVAILABLE, reason="cryptography lacks the SSL bindings")

ENGINES = ["openssl", "stdlib"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki") / "certs")


@pytest.fixture(scope="module", params=ENGINES)
def served(
    request: pytest.FixtureRequest, pki: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    procs: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "MTLSKIT_TLS_ENGINE": request.param}
    try:
        s = start_serve(procs, pki, tmp_path_factory.mktemp("log"), "--quiet", env=env)
        yield s
        assert s.stop() == 0
        assert "Traceback" not in s.log()
    finally:
        stop_all(procs)


def sslv2_client_hello(version: int = 0x0301) -> bytes:
    """A CLIENT-HELLO in SSLv2's record format, as SSLv3-era clients sent for compatibility."""
    ciphers = b"\x00\x00\x2f\x00\x00\x35\x00\x00\x0a"
    challenge = os.urandom(16)
    body = b"\x01" + version.to_bytes(2, "big") + len(ciphers).to_bytes(2, "big") + b"\x00\x00"
    body += len(challenge).to_bytes(2, "big") + ciphers + challenge
    return bytes([0x80 | len(body) >> 8, len(body) & 0xFF]) + body


def refused_at_once(port: int, data: bytes) -> tuple[bytes, float]:
    """Send ``data``; what the server answers until it closes, and how long that took."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        started = time.monotonic()
        s.sendall(data)
        answer = b""
        while True:
            try:
                chunk = s.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            answer += chunk
        return answer, time.monotonic() - started


def test_sslv2_client_hello_is_refused_at_once_with_an_alert(served: Served) -> None:
    answer, took = refused_at_once(served.port, sslv2_client_hello())
    assert took < 2, "refused at once, not at the handshake timeout"
    assert answer == b"\x15\x03\x01\x00\x02\x02\x46"  # fatal protocol_version
    served.wait_log("an SSLv2-format ClientHello (TLS 1.2 or 1.3 is required) (old_protocol)")


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x16\x03\x01\x40\x00\x02\x00", id="server-hello-type"),
        pytest.param(b"\x16\x03\x01\x00\x00", id="empty-record"),
        pytest.param(b"\x16\x03\x01\xff\xff\x01", id="record-too-long"),
        pytest.param(b"\x16\x05\x01\x00\x10\x01", id="bad-record-version"),
        pytest.param(b"\x17\x03\x03\x00\x10" + b"x" * 16, id="application-data-first"),
    ],
)
def test_what_cannot_begin_a_client_hello_is_refused_at_once(served: Served, data: bytes) -> None:
    answer, took = refused_at_once(served.port, data)
    assert took < 2
    assert answer[:1] == b"\x15" and answer[-2:-1] == b"\x02", answer  # a fatal alert
    served.wait_log("(not_tls)")


def test_plain_http_is_closed_without_waiting(served: Served) -> None:
    answer, took = refused_at_once(served.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    # issue 11: a plain-HTTP 400 that says why (as nginx), then the close
    assert took < 2 and answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer
    served.wait_log("plain HTTP sent to the TLS port (not_tls)")


SECLEVEL_0 = ("-cipher", "DEFAULT@SECLEVEL=0")  # the system OpenSSL's client may then try


@pytest.mark.interop
@pytest.mark.parametrize(("flag", "name"), [("-tls1", "TLS 1.0"), ("-tls1_1", "TLS 1.1")])
def test_old_tls_versions_are_logged_as_such(served: Served, flag: str, name: str) -> None:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed: run scripts/setup.sh --test")
    r = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{served.port}", flag, *SECLEVEL_0],
        input=b"",
        capture_output=True,
        timeout=20,
    )
    assert r.returncode != 0
    assert b"alert protocol version" in r.stdout + r.stderr
    served.wait_log(
        f"the client offered {name} at most (TLS 1.2 or 1.3 is required) (old_protocol)"
    )
    assert f"offered {name} at most" in served.log()


def test_a_client_with_nagle_on_gets_no_delayed_ack_stall(served: Served, pki: Path) -> None:
    """TLS 1.3: the server keeps its session tickets for the first response, so it ACKs
    the client's last handshake flight at once. Else a client that leaves Nagle's
    algorithm on (http.client, urllib, a bare ssl socket) holds its request for the
    ACK, which Linux delays by 40 ms: every new connection took 44 ms instead of 2."""
    ctx = client_ctx(pki)
    took = []
    for _ in range(7):
        start = time.monotonic()
        with socket.create_connection(("127.0.0.1", served.port), timeout=5) as raw:
            assert raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                assert tls.version() == "TLSv1.3"
                tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert read_until_closed(tls).startswith(b"HTTP/1.1 200 ")
        took.append(time.monotonic() - start)
    assert statistics.median(took) < 0.035, took


def test_check_client_hello_reads_only_the_first_bytes() -> None:
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
    for n in range(len(hello) + 1):
        assert engine.check_client_hello(hello[:n]) is None  # a modern ClientHello, bytewise
    old = engine.check_client_hello(hello[:9] + b"\x03\x02")
    assert old is not None and old.reason == "old_protocol" and "TLS 1.1" in old.detail
    assert old.alert == b"\x15\x03\x01\x00\x02\x02\x46"
    assert engine.check_client_hello(b"\x80") is not None


# -- TLS 1.2 cipher suites ------------------------------------------------------------------

AEAD = ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384"]
AEAD += ["ECDHE-ECDSA-CHACHA20-POLY1305"]
LEGACY = ["ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA384", "ECDHE-ECDSA-AES128-SHA"]
LEGACY += ["ECDHE-ECDSA-AES256-SHA", "AES128-GCM-SHA256", "AES256-SHA256"]


def tls12_client(pki: Path, cipher: str) -> ssl.SSLContext:
    ctx = client_ctx(pki, tls_max=ssl.TLSVersion.TLSv1_2)
    ctx.set_ciphers(cipher)
    return ctx


@pytest.mark.parametrize("cipher", AEAD)
def test_tls12_negotiates_forward_secret_aead_suites(pki: Path, cipher: str) -> None:
    for name, make in engines(pki).items():
        session = make()
        assert talk(session, tls12_client(pki, cipher))[0] == "ok", name
        assert session.cipher() == cipher, name


@pytest.mark.parametrize("cipher", LEGACY)
def test_tls12_refuses_cbc_and_static_rsa_suites(pki: Path, cipher: str) -> None:
    for name, make in engines(pki).items():
        assert talk(make(), tls12_client(pki, cipher)) == ("refused", "protocol"), name


# -- the engine's start-up line, its choice ------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_start_up_names_the_engine_and_its_openssl(
    engine: str, pki: Path, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    env = {**os.environ, "MTLSKIT_TLS_ENGINE": engine}
    s = start_serve(procs, pki, tmp_path, "--quiet", env=env)
    if engine == "openssl":
        line = s.wait_log(f"TLS engine: {openssl_engine.openssl_version()} (bundled with")
    else:
        line = s.wait_log("TLS engine: Python's ssl module, ")
        assert f"{ssl.OPENSSL_VERSION} (MTLSKIT_TLS_ENGINE=stdlib)" in line
    assert s.log().count("TLS engine:") == 1
    assert https(s.port, client_ctx(pki))[0] == 200
    assert s.stop() == 0


def test_an_unknown_engine_is_a_usage_error(pki: Path) -> None:
    r = run_cli("serve", "--certs", pki, env={"MTLSKIT_TLS_ENGINE": "openssl3"})
    assert r.returncode == 2
    assert r.stderr.startswith("error: MTLSKIT_TLS_ENGINE='openssl3' is not a TLS engine")
    assert r.stderr.count("\n") == 1


def test_no_package_binary_is_read() -> None:
    """Supported ground: no module of the server looks inside a dependency's library."""
    server = ROOT / "src" / "mtlskit" / "server"
    assert not (server / "openssl_extras.py").exists()
    for path in server.glob("*.py"):
        text = path.read_text()
        assert "_rust" not in text and "mmap" not in text and "dlsym" not in text, path


# -- return codes, the error queue, buffers ---------------------------------------------------


def test_a_failure_reads_the_whole_error_queue(pki: Path) -> None:
    lib = openssl_engine.lib
    for reason in (115, lib.SSL_R_UNEXPECTED_EOF_WHILE_READING):  # 115: BAD_PACKET_LENGTH
        lib.ERR_put_error(20, 0, reason, b"test", 1)  # ERR_LIB_SSL
    with pytest.raises(PKIError) as exc:
        openssl_engine._check(False, "cannot test")
    assert exc.value.what == "cannot test: bad packet length; unexpected eof while reading"
    assert lib.ERR_get_error() == 0  # emptied


def test_a_mismatched_key_names_openssls_reasons(pki: Path, tmp_path: Path) -> None:
    files = (pki / "server.crt", pki / "alice.key", pki / "ca.crt")
    policy = server_context(pki / "server.crt", pki / "server.key", pki / "ca.crt")
    with pytest.raises(PKIError) as exc:
        context_from(policy, *files)
    assert exc.value.what == "cannot load private key: key values mismatch"
    assert openssl_engine.lib.ERR_get_error() == 0


class _NoSSL:
    """The bindings' lib, except that SSL_new fails as it does out of memory."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lib, name)

    def SSL_new(self, ctx: Any) -> Any:
        return openssl_engine.ffi.NULL


def test_ssl_new_failing_is_a_tls_failure(pki: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = (pki / "server.crt", pki / "server.key", pki / "ca.crt")
    twin = context_from(server_context(*files), *files)
    monkeypatch.setattr(openssl_engine, "lib", _NoSSL(openssl_engine.lib))
    with pytest.raises(TLSFailure) as exc:
        OpenSSLSession(twin)
    assert exc.value.reason == "internal" and exc.value.detail.startswith("SSL_new failed")


def _echo(
    session: TLSSession,
    client: ssl.SSLObject,
    into: ssl.MemoryBIO,
    out: ssl.MemoryBIO,
    rounds: int,
    errors: list[str],
) -> None:
    for i in range(rounds):
        payload = os.urandom(16) * 1000  # one record, distinct per round and thread
        client.write(payload)
        session.feed(out.read())
        got = session.read()
        session.write(got)
        into.write(session.output())
        back = b""
        while len(back) < len(payload):
            back += client.read(65536)
        if back != payload:
            errors.append(f"round {i}: corrupted")
            return


def _connected(pki: Path) -> tuple[TLSSession, ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    session = engines(pki)["openssl"]()
    into, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx(pki).wrap_bio(into, out, server_hostname="localhost")
    while True:
        try:
            client.do_handshake()
            break
        except ssl.SSLWantReadError:
            session.feed(out.read())
            session.do_handshake()
            into.write(session.output())
    session.feed(out.read())
    assert session.do_handshake()
    return session, client, into, out


def test_sessions_in_two_threads_do_not_share_a_buffer(pki: Path) -> None:
    """Two event loops in two threads, each making and driving its own connections (as
    asyncio does): cffi lets go of the GIL in each OpenSSL call, so one module-level
    buffer would be filled by one thread while the other copies it out."""
    errors: list[str] = []

    def loop() -> None:
        _echo(*_connected(pki), 3000, errors)

    threads = [threading.Thread(target=loop) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
