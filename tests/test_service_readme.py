"""The README's "CA service" block, run as written (free ports instead of 9443/8443, a
readiness wait after each server it starts in the background): bootstrap, tokens,
enroll, serve, a client, a renewal the client sees."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support.processes import ROOT, free_port


def readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## CA service", 1)[1]
    return section.split("```sh\n", 1)[1].split("```", 1)[0]


def test_readme_ca_service_flow(tmp_path: Path) -> None:
    ca_port, serve_port = free_port(), free_port()
    lines = []
    for line in (
        readme_block().replace("9443", str(ca_port)).replace("8443", str(serve_port)).splitlines()
    ):
        lines.append(line)
        port = re.search(r"--port (\d+) &", line)
        if port:  # the test's only addition: wait until it listens (no blind sleep)
            lines.append(
                f"until (exec 3<>/dev/tcp/127.0.0.1/{port.group(1)}) 2>/dev/null; "
                "do sleep 0.05; done"
            )
    script = "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n" + "\n".join(lines)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    serials = re.findall(r'"serial": "([0-9A-F]+)"', done.stdout)
    assert len(serials) == 2, done.stdout
    assert serials[0] != serials[1]  # the client saw the renewed server certificate
    assert (tmp_path / "web" / "server.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "alice" / "client.crt").exists()
    assert "Traceback" not in done.stderr
