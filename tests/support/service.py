"""Helpers for the CA service tests (no tests here): start `mtlskit ca serve`, talk to it."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

from mtlskit.caclient import request
from mtlskit.client import Response
from mtlskit.tls import client_context
from tests.support.processes import Running, free_port, run_cli, start_cli


@dataclass
class Service(Running):
    """A running `mtlskit ca serve` process."""

    ca_dir: Path

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

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


def start_service(
    procs: list[subprocess.Popen[bytes]],
    ca_dir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> Service:
    port = port or free_port()
    log_path = ca_dir.parent / f"ca-serve-{port}.log"
    proc = start_cli(
        procs,
        ["ca", "serve", "--ca-dir", ca_dir, "--port", str(port), *args],
        port=port,
        log_path=log_path,
        env={**os.environ, **(env or {})},
        append=True,  # a restart on the same port keeps the earlier lines
    )
    service = Service(proc, port, log_path, ca_dir)
    service.wait_log("listen on")  # signal handlers are installed by then
    return service


def error_of(resp: Response) -> str:
    return str(json.loads(resp.body)["error"])
