"""Shared fixtures: real files, real processes, free ports on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mtlskit.pki.seed import init_seed
from tests.support.processes import (
    POSTGRES_SH,
    SEED_OPENSSL,
    PostgresCluster,
    Result,
    run_cli,
)

# Fixtures that live beside their helpers (registered here, never imported by tests).
pytest_plugins = ["tests.support.client", "tests.support.acme"]


@pytest.fixture
def cli() -> Callable[..., Result]:
    return run_cli


@pytest.fixture(scope="session")
def seed_certs_p256(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seed-layout folder made by `mtlskit init` (P-256), shared read-only by tests."""
    folder = tmp_path_factory.mktemp("certs-p256") / "certs"
    init_seed(folder)
    return folder


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
