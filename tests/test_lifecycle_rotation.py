"""Rotation under load: `mtlskit serve` reloads certificate, CA bundle and CRL, drops nothing.

The Go load generator keeps requests flowing (keep-alive and a new handshake per
request) while the test rotates the server certificate and key, the CA bundle and
the CRL 20 times, and slips in broken replacements (garbage, a key that does not
match, an expired certificate, a CRL of another key). The only failures allowed are
those of the client that is revoked on purpose half-way.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from mtlskit.pki.ca import CA, SEED_CA_SUBJECT, cert_pem
from mtlskit.pki.crl import build_crl, crl_pem, make_crl, write_crl
from mtlskit.pki.inventory import Inventory, serial_hex
from mtlskit.pki.seed import SEED_SERVER_SANS, SEED_SERVER_SUBJECT, init_seed
from mtlskit.pki.store import write_atomic
from mtlskit.tls import client_context
from tests.support.pki import aged
from tests.support.processes import free_port, go_binary, run_cli, wait_for_port

ROUNDS = 20


def _metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def _reloads(port: int) -> tuple[int, int]:
    m = _metrics(port)
    return (
        int(m['mtlskit_tls_reloads_total{result="ok"}']),
        int(m['mtlskit_tls_reloads_total{result="failed"}']),
    )


def _wait_reloads(port: int, ok: int, failed: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = _reloads(port)
        if got[0] >= ok and got[1] >= failed:
            return
        time.sleep(0.05)
    raise TimeoutError(f"reloads {_reloads(port)}, waited for ok>={ok} failed>={failed}")


def _served_serial(port: int, client: Path) -> int:
    ctx = client_context(client / "ca.crt", client / "client.crt", client / "client.key")
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number


class Rig:
    """pki/ (the CA and its inventory), srv/ (what the server reads), client dirs."""

    def __init__(self, root: Path) -> None:
        self.pki = root / "pki"
        init_seed(self.pki)
        self.ca = CA.load(self.pki)
        self.ca.issue("client", "CN=mallory").save(self.pki, "mallory")
        self.srv = root / "srv"
        self.srv.mkdir()
        for name in ("ca.crt", "server.crt", "server.key"):
            shutil.copy(self.pki / name, self.srv / name)
        write_crl(make_crl(self.ca), self.srv / "ca.crl")
        self.good = self._client_dir(root / "good", "client")
        self.mallory = self._client_dir(root / "mallory", "mallory")
        self.spare = root / "spare"
        self.spare.mkdir()

    def _client_dir(self, folder: Path, name: str) -> Path:
        folder.mkdir()
        shutil.copy(self.pki / "ca.crt", folder / "ca.crt")
        shutil.copy(self.pki / f"{name}.crt", folder / "client.crt")
        shutil.copy(self.pki / f"{name}.key", folder / "client.key")
        return folder

    def rotate(self, i: int, *, revoke_mallory: bool = False) -> int:
        """New server certificate and key, a new CA bundle, a new CRL: one reload.

        Everything is made first, then the four files are written back to back: the
        server loads a change once its files have been quiet for a moment (its settle
        time), and a slow step between two writes (the inventory's fsync on a loaded
        machine) could otherwise make it load a half-written rotation too."""
        leaf = self.ca.issue("server", SEED_SERVER_SUBJECT, sans=SEED_SERVER_SANS, days=30)
        extra = CA.create(f"CN=Extra CA {i}", days=30)
        if revoke_mallory:
            mallory = x509.load_pem_x509_certificate((self.pki / "mallory.crt").read_bytes())
            Inventory.open(self.pki, self.ca.certificate).revoke(
                serial_hex(mallory.serial_number), "keyCompromise"
            )
        crl = make_crl(self.ca)
        leaf.save(self.srv, "server", force=True)  # key and certificate, atomically each
        write_atomic(self.srv / "ca.crt", self.ca.cert_pem + cert_pem(extra.certificate))
        write_crl(crl, self.srv / "ca.crl")
        return leaf.certificate.serial_number

    def broken(self) -> list[tuple[str, list[tuple[Path, bytes]]]]:
        """Broken replacements, each as the files it writes."""
        expired = aged(self.ca, self.spare, "expired", lifetime_days=10, age_days=11)
        return [
            ("garbage certificate", [(self.srv / "server.crt", b"garbage\n")]),
            ("key of another certificate", [(self.srv / "server.key", self._client_key())]),
            (
                "expired certificate",
                [
                    (self.srv / "server.key", (self.spare / "expired.key").read_bytes()),
                    (self.srv / "server.crt", cert_pem(expired)),
                ],
            ),
            (
                "CRL of another key",
                [
                    (
                        self.srv / "ca.crl",
                        crl_pem(build_crl(CA.create(SEED_CA_SUBJECT), [], number=1)),
                    )
                ],
            ),
        ]

    def _client_key(self) -> bytes:
        return (self.pki / "client.key").read_bytes()


def _loadgen(
    rig_client: Path, port: int, mode: str, seconds: float, conns: int
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            str(go_binary("mtls-loadgen")),
            "-addr",
            f"127.0.0.1:{port}",
            "-certs",
            str(rig_client),
            "-mode",
            mode,
            "-c",
            str(conns),
            "-d",
            f"{seconds}s",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(proc: subprocess.Popen[str]) -> dict[str, object]:
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    result: dict[str, object] = json.loads(out)
    return result


class LoadSlot:
    """Continuous load: back-to-back load generator runs of BATCH seconds, in a thread."""

    BATCH = 3

    def __init__(self, client: Path, port: int, mode: str, conns: int = 2) -> None:
        self.client, self.port, self.mode, self.conns = client, port, mode, conns
        self.batches: list[dict[str, Any]] = []
        self.spans: list[tuple[float, float]] = []  # each run's start and end (monotonic)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.is_set():
            began = time.monotonic()
            proc = _loadgen(self.client, self.port, self.mode, self.BATCH, self.conns)
            self.batches.append(_result(proc))
            self.spans.append((began, time.monotonic()))

    def covered(self, start: float, end: float) -> bool:
        """The runs span [start, end]: none began over a second after the one before
        ended (the time to start a load generator), nor after ``start``."""
        spans, slack = self.spans, 1.0
        gaps = [b[0] - a[1] for a, b in itertools.pairwise(spans)]
        return (
            bool(spans)
            and spans[0][0] <= start + slack
            and spans[-1][1] >= end
            and max(gaps, default=0) < slack
        )

    def stop(self) -> None:
        self.done.set()
        self.thread.join(timeout=self.BATCH + 30)

    @property
    def ok(self) -> int:
        return sum(int(b["ok"]) for b in self.batches)

    @property
    def errors(self) -> int:
        return sum(int(b["errors"]) for b in self.batches)

    @property
    def seconds(self) -> float:
        return sum(float(b["seconds"]) for b in self.batches)

    def summary(self) -> str:
        p99 = max(float(b["p99_ms"]) for b in self.batches)
        return (
            f"{self.ok} ok, {self.errors} errors in {self.seconds:.1f} s "
            f"({len(self.batches)} runs, {self.ok / self.seconds:.0f}/s, worst p99 {p99} ms)"
        )


def _serve(rig: Rig, port: int, metrics: int, *extra: str) -> subprocess.Popen[str]:
    args = [
        *("serve", "--certs", str(rig.srv), "--crl", str(rig.srv / "ca.crl")),
        *("--host", "127.0.0.1", "--port", str(port), "--quiet"),
        *("--metrics-port", str(metrics), *extra),
    ]
    with (rig.srv.parent / "serve.log").open("w") as log:  # the child keeps its own copy
        return subprocess.Popen(
            [sys.executable, "-m", "mtlskit", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )


@pytest.mark.slow
def test_rotation_under_load_drops_nothing(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    rig = Rig(tmp_path)
    port, metrics = free_port(), free_port()
    server = _serve(rig, port, metrics, "--watch-interval", "0.3")  # settles for 0.2 s
    procs.append(server)  # type: ignore[arg-type]
    wait_for_port(port, server)  # type: ignore[arg-type]
    wait_for_port(metrics, server)  # type: ignore[arg-type]

    before = _loadgen(rig.mallory, port, "handshake", 1, 1)
    assert _result(before)["ok"], "mallory is served before being revoked"

    keepalive = LoadSlot(rig.good, port, "keepalive")
    handshake = LoadSlot(rig.good, port, "handshake")
    started = time.monotonic()
    ok, failed = _reloads(metrics)
    broken = rig.broken()
    refused_log: list[str] = []
    mallory_after: dict[str, object] | None = None
    for i in range(ROUNDS):
        serial = rig.rotate(i, revoke_mallory=(i == ROUNDS // 2))
        ok += 1
        _wait_reloads(metrics, ok, failed)
        assert _served_serial(port, rig.good) == serial, f"round {i}: new handshakes use it"
        if i == ROUNDS // 2:
            mallory_after = _result(_loadgen(rig.mallory, port, "handshake", 1, 1))
        if i % 5 == 2 and broken:
            # A broken replacement: refused with one log line, the old state keeps serving.
            name, files = broken.pop(0)
            saved = [(path, path.read_bytes()) for path, _ in files]
            for path, data in files:
                write_atomic(path, data)
            failed += 1
            _wait_reloads(metrics, ok, failed)
            assert _served_serial(port, rig.good) == serial, name
            refused_log.append(name)
            for path, data in saved:
                write_atomic(path, data)
            ok += 1
            _wait_reloads(metrics, ok, failed)
    rotating = time.monotonic() - started
    print(f"\n{ROUNDS} rotations (+4 broken) in {rotating:.1f} s under load")
    for slot in (keepalive, handshake):
        slot.stop()
        print(f"  {slot.mode}: {slot.summary()}")
        assert slot.errors == 0, slot.batches
        assert slot.covered(started, started + rotating), slot.spans  # every rotation
    assert keepalive.ok > 100 and handshake.ok > 20

    assert mallory_after is not None
    assert mallory_after["ok"] == 0 and int(mallory_after["errors"]) > 0  # type: ignore[call-overload]
    assert refused_log == [
        "garbage certificate",
        "key of another certificate",
        "expired certificate",
        "CRL of another key",
    ]

    m = _metrics(metrics)
    assert m['mtlskit_handshakes_total{outcome="failed",reason="cert_revoked"}'] >= 1
    assert m["mtlskit_tls_reload_last_ok"] == 1

    server.send_signal(signal.SIGTERM)
    server.wait(timeout=15)
    log = (tmp_path / "serve.log").read_text()
    refusals = [line for line in log.splitlines() if "reload refused" in line]
    assert len(refusals) == 4, log
    for reason, line in zip(
        [
            "not a PEM or DER certificate",
            "private key does not match certificate",
            "server certificate expired",
            "but is signed by another key",
        ],
        refusals,
        strict=True,
    ):
        assert reason in line, line
    assert "Traceback" not in log


def test_sighup_reloads_at_once(tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    rig = Rig(tmp_path)
    port, metrics = free_port(), free_port()
    server = _serve(rig, port, metrics, "--watch-interval", "0")  # SIGHUP only
    procs.append(server)  # type: ignore[arg-type]
    wait_for_port(port, server)  # type: ignore[arg-type]
    first = _served_serial(port, rig.good)
    serial = rig.rotate(0)
    assert _served_serial(port, rig.good) == first  # not watching: nothing yet
    server.send_signal(signal.SIGHUP)
    _wait_reloads(metrics, 1, 0)
    assert _served_serial(port, rig.good) == serial


def test_metrics_port_and_crl_errors_are_one_line(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    rig = Rig(tmp_path)
    write_atomic(rig.srv / "ca.crl", crl_pem(build_crl(CA.create(SEED_CA_SUBJECT), [], number=1)))
    r = run_cli(
        "serve", "--certs", rig.srv, "--crl", rig.srv / "ca.crl", "--port", str(free_port())
    )
    assert r.returncode == 1
    assert re.match(r"error: CRL names .* but is signed by another key .*\(.*ca\.crl\): ", r.stderr)
    assert r.stderr.count("\n") == 1


def _two_free_ports() -> int:
    """A port P with P+1 free too (worker i serves metrics on P+i)."""
    for _ in range(100):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no two consecutive free ports")


def test_each_worker_serves_its_metrics(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    rig = Rig(tmp_path)
    port, metrics = free_port(), _two_free_ports()
    server = _serve(rig, port, metrics, "--workers", "2")
    procs.append(server)  # type: ignore[arg-type]
    wait_for_port(port, server)  # type: ignore[arg-type]
    for p in (metrics, metrics + 1):
        wait_for_port(p, server)  # type: ignore[arg-type]
        assert "mtlskit_crl_next_update_timestamp_seconds" in "".join(_metrics(p))


def test_metrics_port_in_use_is_one_line(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        r = run_cli(
            "serve", "--certs", rig.srv, "--port", str(free_port()), "--metrics-port", str(taken)
        )
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        f"error: cannot listen for metrics on 127.0.0.1:{taken}: the port is in use: "
        "choose another --metrics-port"
    ]
