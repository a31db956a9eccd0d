"""Helpers for the CA service tests (no tests here): start `mtlskit ca serve`, talk to it."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mtlskit.caclient import request
from mtlskit.client import Response
from mtlskit.tls import client_context
from tests.support.processes import ROOT, free_port, run_cli, wait_for_port


@dataclass
class Service:
    """A running `mtlskit ca serve` process."""

    proc: subprocess.Popen[bytes]
    port: int
    ca_dir: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.log()
            if text in out:
                return out
            time.sleep(0.02)
        raise AssertionError(f"{text!r} not in the log:\n{self.log()}")

    def fingerprint(self) -> str:
        res = run_cli("ca", "fingerprint", "--ca-dir", self.ca_dir)
        assert res.returncode == 0, res.stderr
        return res.stdout.strip()

    def context(self, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
        """A client context trusting the CA (and presenting ``cert`` when given)."""
        return client_context(self.ca_dir / "ca.crt", cert, key)

    def get(self, path: str, ctx: ssl.SSLContext | None = None) -> Response:
        return request(self.url, path, ctx or self.context())

    def post(self, path: str, body: object, ctx: ssl.SSLContext | None = None) -> Response:
        return request(self.url, path, ctx or self.context(), method="POST", body=body)

    def stop(self, timeout: float = 15) -> int:
        self.proc.terminate()
        return self.proc.wait(timeout=timeout)


def start_service(
    procs: list[subprocess.Popen[bytes]],
    ca_dir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> Service:
    port = port or free_port()
    log_path = ca_dir.parent / f"ca-serve-{port}.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mtlskit",
                "ca",
                "serve",
                "--ca-dir",
                str(ca_dir),
                "--port",
                str(port),
                *args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
    procs.append(proc)
    service = Service(proc, port, ca_dir, log_path)
    try:
        wait_for_port(port, proc)
    except (RuntimeError, TimeoutError):
        raise AssertionError(f"ca serve did not start:\n{service.log()}") from None
    service.wait_log("listen on")  # signal handlers are installed by then
    return service


def error_of(resp: Response) -> str:
    return str(json.loads(resp.body)["error"])
