"""bench/run.py --quick: the benchmark harness still runs end to end (speeds not asserted)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tests.support.processes import go_binary, run_bench

MODES = {"keepalive", "handshake", "resume"}


@pytest.mark.slow
@pytest.mark.interop
def test_quick_bench_writes_json_table_and_chart(tmp_path: Path) -> None:
    go_binary("mtls-loadgen")
    go_binary("seed-server")
    # As the README runs it: `python3 bench/run.py`, an interpreter without mtlskit;
    # the bench must find (or make) the project's .venv and continue there.
    python = getattr(sys, "_base_executable", sys.executable)
    run_bench("run.py", tmp_path, python=python, timeout=240)
    data = json.loads((tmp_path / "latest.json").read_text())

    for field in ("command", "settings", "versions", "bounds", "throughput", "ratios", "targets"):
        assert field in data, field
    speed = data["bounds"]["openssl_speed"]
    assert speed["rsa4096_sign_per_s"] > 0
    assert speed["ecdsap256_sign_per_s"] > 0

    measured = [row for row in data["throughput"] if "error" not in row]
    # The Go seed server is always there; mtlskit and nginx when available.
    go_rows = [row for row in measured if row["server"] == "go"]
    assert {row["mode"] for row in go_rows} == MODES
    for row in measured:
        for field in ("rate", "ok", "errors", "server_cpu_s", "per_cpu_s", "p50_ms", "resumed"):
            assert field in row, (row["server"], row["mode"], field)
        assert row["ok"] > 0, row
    assert "mtlskit" not in data["skipped"], data["skipped"]
    assert {row["mode"] for row in measured if row["server"] == "mtlskit"} == MODES
    assert all(r["mtlskit_vs_go"] is not None for r in data["ratios"])

    for t in data["targets"]:
        assert set(t) == {"target", "value", "goal", "met"}
    idle = {row["server"]: row for row in data["idle"]}
    assert idle["go"]["open"] > 0 and idle["go"]["rss_per_conn_kib"] is not None

    table = (tmp_path / "latest.md").read_text()
    assert "| P-256 | full mTLS handshake |" in table
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.interop
@pytest.mark.parametrize("bench", ["revocation", "workers"])
def test_quick_scale_benches_write_their_json(tmp_path: Path, bench: str) -> None:
    """bench/revocation.py and bench/workers.py --quick: they run end to end (no speeds)."""
    go_binary("mtls-loadgen")
    out = tmp_path / f"{bench}.json"
    r = run_bench(f"{bench}.py", out, timeout=300)
    rows = json.loads(out.read_text())["rows"]
    assert rows and all(row["errors"] == 0 for row in rows), rows
    assert "|" in r.stdout  # the table


@pytest.mark.slow
@pytest.mark.interop
def test_quick_ca_service_bench(tmp_path: Path) -> None:
    """bench/ca_service.py --quick: enrollments on SQLite and PostgreSQL, ACME against
    pebble, one JSON and one table (speeds not asserted)."""
    out = tmp_path / "ca_service.json"
    r = run_bench("ca_service.py", out, timeout=300)
    data = json.loads(out.read_text())
    rows = data["rows"]
    enroll = {row["db"]: row for row in rows if row["bench"] == "enroll"}
    assert set(enroll) == {"sqlite", "postgresql"}
    for row in enroll.values():
        assert row["enrollments"] > 0 and row["errors"] == 0 and row["per_cpu_s"] > 0, row
    assert enroll["postgresql"]["db_cpu_s"] >= 0
    acme = {row["server"]: row for row in rows if row["bench"] == "acme"}
    assert set(acme) == {"current", "pebble"}
    assert all(row["orders"] > 0 for row in acme.values()), acme
    assert {s["what"] for s in data["summary"]} == {
        "enrollments per server CPU-s (sqlite)",
        "enrollments per server CPU-s (postgresql)",
        "ACME orders per server CPU-s vs pebble",
    }
    assert "| enrollments per server CPU-s (sqlite) | current |" in r.stdout


@pytest.mark.slow
@pytest.mark.interop
def test_quick_asgi_bench_runs_all_three_servers(tmp_path: Path) -> None:
    """bench/asgi.py --quick: mtlskit serve, uvicorn and granian, each with client
    certificates required, answer every request (the bench extras install both)."""
    go_binary("mtls-loadgen")
    r = run_bench("asgi.py", tmp_path, timeout=240)
    data = json.loads((tmp_path / "asgi.json").read_text())
    rows = {(row["server"], row.get("mode")): row for row in data["rows"]}
    for server in ("mtlskit", "uvicorn", "granian"):
        for mode in ("keepalive", "handshake"):
            row = rows.get((server, mode))
            assert row is not None, (server, mode, rows.get((server, None)), r.stderr[-3000:])
            assert row["errors"] == 0 and row["per_cpu_s"], (server, mode, row)
    assert "| keepalive |" in (tmp_path / "asgi.md").read_text()
