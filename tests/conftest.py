"""Shared fixtures: real files, real processes, free ports on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "bin"


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


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


@pytest.fixture
def cli() -> Callable[..., Result]:
    return run_cli


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


def go_binary(name: str) -> Path:
    """A Go peer from bin/ (scripts/setup.sh builds them); built here if missing."""
    path = BIN / name
    if not path.exists():
        if shutil.which("go") is None:
            pytest.fail("go is not installed: run scripts/setup.sh --test")
        src = {
            "seed-server": (ROOT / "interop/go-seed", "./server"),
            "seed-client": (ROOT / "interop/go-seed", "./client"),
            "mtls-loadgen": (ROOT / "bench/loadgen", "."),
        }[name]
        BIN.mkdir(exist_ok=True)
        env = {**os.environ, "GOCACHE": str(ROOT / ".gocache"), "GOTOOLCHAIN": "local"}
        subprocess.run(["go", "build", "-o", str(path), src[1]], cwd=src[0], env=env, check=True)
    return path


@pytest.fixture(scope="session")
def seed_certs_p256(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seed-layout folder made by `mtlskit init` (P-256), shared read-only by tests."""
    folder = tmp_path_factory.mktemp("certs-p256") / "certs"
    from mtlskit.pki.seed import init_seed

    init_seed(folder)
    return folder


SEED_OPENSSL = ROOT / "scripts" / "seed-openssl.sh"


@pytest.fixture(scope="session")
def seed_certs_openssl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seed's exact openssl commands (RSA-4096, X.509 v1 client certificate)."""
    folder = tmp_path_factory.mktemp("certs-openssl") / "certs"
    folder.mkdir()
    subprocess.run(["bash", str(SEED_OPENSSL)], cwd=folder, check=True, capture_output=True)
    return folder


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes started by a test; all stopped at the end, whatever happens."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.terminate()
    for p in started:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


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


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    outside = os.environ.get("MTLSKIT_TEST_POSTGRES")
    if outside:
        yield PostgresCluster(outside, None)
        return
    # Under /tmp, not pytest's tmp_path: the postgres user must reach the folder.
    folder = Path(tempfile.mkdtemp(prefix="mtlskit-pg-"))
    r = subprocess.run(
        ["bash", str(POSTGRES_SH), "start", str(folder)], capture_output=True, text=True
    )
    if r.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.fail(f"cannot start PostgreSQL ({r.stderr.strip()}): run scripts/setup.sh --test")
    cluster = PostgresCluster(r.stdout.strip(), folder)
    try:
        yield cluster
    finally:
        subprocess.run(["bash", str(POSTGRES_SH), "stop", str(folder)], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test (its URL)."""
    import psycopg

    name = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(postgres_cluster.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield postgres_cluster.database_url(name)
    with (
        contextlib.suppress(psycopg.Error),
        psycopg.connect(postgres_cluster.url, autocommit=True) as conn,
    ):
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
