"""`mtlskit demo`: the README's main-job command, as a real process (it starts `mtlskit serve`)."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.support.client import one_line_error
from tests.support.processes import run_cli


def test_demo_prints_hello_world() -> None:
    r = run_cli("demo", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert "hello world " in lines
    for step in ("1/4 PKI", "2/4 server", "3/4 client", "4/4 stopped the server (SIGTERM, exit 0)"):
        assert any(line.startswith(step) for line in lines), (step, r.stdout)
    assert any("new request" in line and "CN=client" in line for line in lines), r.stdout
    assert r.stderr == ""
    # Its temporary folder is gone.
    folder = next(line for line in lines if line.startswith("1/4 PKI")).split()[-1]
    assert not Path(folder).exists()


def test_demo_dir_is_kept_and_reused(tmp_path: Path) -> None:
    folder = tmp_path / "pki"
    first = run_cli("demo", "--dir", folder, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "mtlskit init --dir" in first.stdout
    ca = (folder / "ca.crt").read_bytes()
    assert (folder / "client.key").stat().st_mode & 0o777 == 0o600

    again = run_cli("demo", "--dir", folder, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"1/4 PKI: using {folder}" in again.stdout
    assert "hello world " in again.stdout.splitlines()
    assert (folder / "ca.crt").read_bytes() == ca


def test_demo_reports_a_server_that_cannot_start(seed_certs_p256: Path, tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    shutil.copytree(seed_certs_p256, folder)
    (folder / "server.key").write_bytes((folder / "client.key").read_bytes())  # wrong key
    r = run_cli("demo", "--dir", folder, timeout=120)
    assert r.returncode == 1
    line = one_line_error(r.stderr)
    assert line.startswith("error: the server exited with ")
    assert "before listening" in line
    assert "hello world" not in r.stdout
