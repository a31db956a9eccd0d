"""The README's ACME block, run as written: certbot and lego obtain, renew and revoke
from `mtlskit ca serve`; the lego certificate serves `mtlskit serve` and `mtlskit get`
checks it. Free ports replace 9443/8080/8444/8443, and a readiness wait follows each
server started in the background (no blind sleep)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mtlskit.database import open_database
from tests.support.acme import need
from tests.support.processes import ROOT, free_port

pytestmark = [pytest.mark.interop, pytest.mark.slow]


def readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("### ACME", 1)[1]
    return section.split("```sh\n", 1)[1].split("```", 1)[0]


def test_readme_acme_block(tmp_path: Path) -> None:
    need("certbot", "lego")
    block = readme_block()
    for port in ("9443", "8080", "8444", "8443"):
        block = block.replace(port, str(free_port()))
    lines: list[str] = []
    for line in block.replace("\\\n", " ").splitlines():
        lines.append(line)
        port = re.search(r"--port (\d+)\b.*&\s*$", line)
        if port:
            lines.append(
                f"until (exec 3<>/dev/tcp/127.0.0.1/{port.group(1)}) 2>/dev/null; "
                "do sleep 0.05; done"
            )
    script = "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n" + "\n".join(lines)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Hello" in done.stdout or "hello" in done.stdout, done.stdout
    assert "Traceback" not in done.stderr
    db = open_database(tmp_path / "ca" / "ca.db")
    try:
        with db.transaction() as tx:
            rows = tx.all("SELECT status FROM certs WHERE sans LIKE '%app.internal%'")
    finally:
        db.close()
    # certbot and lego each obtained and renewed; each revoked its latest certificate.
    assert sorted(r["status"] for r in rows) == ["revoked", "revoked", "valid", "valid"]
