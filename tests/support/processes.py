"""Real processes and ports for the tests: the CLI as a subprocess, free ports on
127.0.0.1, readiness by polling, the Go peers, the throwaway PostgreSQL."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / "bin"


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run_bench(
    script: str, out: Path, *, python: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``bench/SCRIPT --quick --out OUT`` from the project root, which must succeed (its
    stderr tail is the failure message); ``python``: another interpreter than ours."""
    r = subprocess.run(
        [python or sys.executable, ROOT / "bench" / script, "--quick", "--out", out],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def run_cli(
    *args: str | os.PathLike[str],
    cwd: Path | None = None,
    input: str | None = None,
    timeout: float = 60,
    env: dict[str, str] | None = None,
) -> Result:
    """Run `python -m mtlskit ARGS` as a real process."""
    proc = subprocess.run(
        [sys.executable, "-m", "mtlskit", *map(str, args)],
        cwd=cwd,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 15
) -> None:
    """Poll until something accepts on 127.0.0.1:port (never sleep blindly)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@dataclass
class Running:
    """A process the tests started (the CLI, usually), the port it listens on and the
    file its stdout and stderr go to."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 10) -> str:
        """Poll the log until ``text`` shows up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.log()
            if text in out:
                return out
            time.sleep(0.02)
        raise AssertionError(f"{text!r} not in the log:\n{self.log()}")

    def stop(self, sig: int = 15, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


def start_cli(
    procs: list[subprocess.Popen[bytes]],
    args: list[str | os.PathLike[str]],
    *,
    port: int,
    log_path: Path,
    cwd: Path = ROOT,
    env: dict[str, str] | None = None,
    append: bool = False,
    wait: bool = True,
) -> subprocess.Popen[bytes]:
    """Start `python -m mtlskit ARGS` (``env``: its whole environment; None inherits
    ours), its output written to ``log_path`` (or ``append``-ed: a restart); with
    ``wait``, polled until it listens on ``port`` (a process that exits first, or never
    listens, fails the test with its log)."""
    with log_path.open("ab" if append else "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mtlskit", *map(str, args)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
        )
    procs.append(proc)
    if wait:
        try:
            wait_for_port(port, proc)
        except (RuntimeError, TimeoutError) as exc:
            log_text = log_path.read_text(errors="replace")
            raise AssertionError(f"mtlskit {args[0]}: {exc}:\n{log_text}") from None
    return proc


def go_binary(name: str) -> Path:
    """A Go peer from bin/ (scripts/setup.sh builds them); built here if missing or older
    than its source (a flag added to the load generator)."""
    path = BIN / name
    src = {
        "seed-server": (ROOT / "interop/go-seed", "./server"),
        "seed-client": (ROOT / "interop/go-seed", "./client"),
        "mtls-loadgen": (ROOT / "bench/loadgen", "."),
    }[name]
    sources = (src[0] / src[1]).glob("*.go")
    built = path.stat().st_mtime if path.exists() else 0.0
    if any(f.stat().st_mtime > built for f in sources):
        if shutil.which("go") is None:
            pytest.fail("go is not installed: run scripts/setup.sh --test")
        BIN.mkdir(exist_ok=True)
        env = {**os.environ, "GOCACHE": str(ROOT / ".gocache"), "GOTOOLCHAIN": "local"}
        subprocess.run(["go", "build", "-o", str(path), src[1]], cwd=src[0], env=env, check=True)
    return path


SEED_OPENSSL = ROOT / "scripts" / "seed-openssl.sh"


POSTGRES_SH = ROOT / "scripts" / "postgres.sh"


@dataclass
class PostgresCluster:
    """A PostgreSQL server for the session: scripts/postgres.sh's throwaway cluster, or
    the server MTLSKIT_TEST_POSTGRES names (then ``dir`` is None: not ours to stop)."""

    url: str  # the postgres database, for CREATE DATABASE
    dir: Path | None

    def database_url(self, name: str) -> str:
        return self.url.rsplit("/", 1)[0] + "/" + name

    def _run(self, action: str) -> None:
        assert self.dir is not None, "an outside PostgreSQL is not stopped by the tests"
        r = subprocess.run(
            ["bash", str(POSTGRES_SH), action, str(self.dir)], capture_output=True, text=True
        )
        assert r.returncode == 0, r.stderr

    def stop(self) -> None:
        self._run("stop")

    def start(self) -> None:
        self._run("start")  # same folder, same port: the URLs stay valid
