"""The README, executed: every ```sh block runs in order, as written, in one fresh
temporary folder (the venv's bin first on PATH), and every ```python block runs as
written after the blocks before it. A user who pastes the README top to bottom gets
what this test gets.

The README tells the test what it cannot see, with an HTML comment right before a
block (invisible when the README is rendered):

``<!-- readme-test: skip (why) -->``
    an illustrative block, not run (it needs root, another host, minutes of time);
``<!-- readme-test: start -->``
    each command of the block (or the whole Python block) is a server a user runs in
    another terminal: started in the background, waited for until its port accepts,
    and stopped (SIGTERM, exit 0) at ``<!-- readme-test: stop -->``;
``<!-- readme-test: file NAME -->``
    the block is a file to save as NAME (an app), not a command.

Servers a ```sh block starts itself (a line ending in ``&``) are waited for the same
way, right after that line, and stopped when the block ends if it did not stop them.

Ports: the README's fixed ports (:data:`PORTS`) become free ports of 127.0.0.1, the
same one for the same number everywhere; ``mtlskit serve`` without ``--port`` and
``mtlskit get`` without a URL are given the one standing for 8443, their default.
Nothing else is changed.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mtlskit.database import open_database
from tests.support.acme import need
from tests.support.processes import ROOT, free_port, wait_for_port

pytestmark = [pytest.mark.interop, pytest.mark.slow]

README = ROOT / "README.md"
PORTS = ("8443", "8444", "8445", "9443", "8080")  # the README's, in code blocks
BLOCK_TIMEOUT = 300  # seconds; the ACME walk-through with certbot and lego is the longest

_MARKER = re.compile(r"<!--\s*readme-test:\s*(\w+)\s*(.*?)\s*-->")
_FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass
class Block:
    lang: str
    code: str
    line: int  # where it starts in the README, for messages
    section: str  # the heading above it
    marker: str = ""  # skip, start, file, stop
    argument: str = ""


@dataclass
class Run:
    folder: Path
    ports: dict[str, str]
    env: dict[str, str]
    servers: list[tuple[subprocess.Popen[bytes], Path]] = field(default_factory=list)
    output: dict[str, str] = field(default_factory=dict)  # section -> what its blocks printed


def readme_blocks() -> list[Block]:
    """The fenced blocks of the README, each with its marker; ``stop`` markers stand
    alone (an empty block)."""
    blocks: list[Block] = []
    section, marker, argument = "", "", ""
    lines = README.read_text().splitlines()
    i = 0
    while i < len(lines):
        text = lines[i]
        if text.startswith("#"):
            section = text.lstrip("#").strip()
        found = _MARKER.fullmatch(text.strip())
        if found:
            marker, argument = found.group(1), found.group(2)
            if marker == "stop":
                blocks.append(Block("", "", i + 1, section, "stop"))
                marker = argument = ""
        fence = _FENCE.match(text)
        if fence:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            code = "\n".join(lines[i + 1 : end]) + "\n"
            blocks.append(Block(fence.group(1), code, i + 1, section, marker, argument))
            marker = argument = ""
            i = end
        i += 1
    return blocks


def test_readme_markers_are_known() -> None:
    """Every marker is one of the four, and sits right before a block (or is a stop)."""
    lines = README.read_text().splitlines()
    for i, text in enumerate(lines):
        found = _MARKER.search(text)
        if not found:
            continue
        assert found.group(1) in ("skip", "start", "stop", "file"), text
        if found.group(1) != "stop":
            assert lines[i + 1].startswith("```"), f"README line {i + 1}: no block after {text}"
    blocks = readme_blocks()
    assert sum(b.marker == "skip" for b in blocks) <= 5  # illustrative blocks: a minimum
    assert [b for b in blocks if b.lang in ("sh", "python") and not b.marker]  # most run


# -- ports -------------------------------------------------------------------------------


def with_ports(code: str, ports: dict[str, str]) -> str:
    code = re.sub(r"\b(" + "|".join(PORTS) + r")\b", lambda m: ports[m.group(1)], code)
    default = ports["8443"]
    lines = []
    for line in code.splitlines():
        # `mtlskit serve` and `mtlskit get` use 8443 unless told: tell them.
        if re.search(r"\bmtlskit serve\b", line) and "--port" not in line:
            line = line.replace("mtlskit serve", f"mtlskit serve --port {default}", 1)
        line = re.sub(
            r"\bmtlskit get(?=\s*($|#|-))", f"mtlskit get https://localhost:{default}", line
        )
        lines.append(line)
    return "\n".join(lines) + "\n"


def port_of(command: str) -> int:
    found = re.search(r"--port[ =](\d+)|--listen \S*:(\d+)|port=(\d+)", command)
    assert found, f"no port in {command!r}"
    return int(next(g for g in found.groups() if g))


# -- servers -----------------------------------------------------------------------------


def start_server(run: Run, argv: list[str], port: int, name: str) -> None:
    log = run.folder / f".readme-server-{len(run.servers)}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, cwd=run.folder, env=run.env, stdout=out, stderr=subprocess.STDOUT
        )
    run.servers.append((proc, log))
    try:
        wait_for_port(port, proc, timeout=30)
    except (RuntimeError, TimeoutError) as exc:
        pytest.fail(f"{name} did not listen on {port}: {exc}\n{log.read_text()}")


def stop_servers(run: Run) -> None:
    for proc, _ in run.servers:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc, log in run.servers:
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"a server did not stop on SIGTERM:\n{log.read_text()}")
        text = log.read_text()
        assert code == 0, f"a server exited with {code}:\n{text}"
        assert "listen on https://" in text and "Traceback" not in text, text
    run.servers.clear()


# -- blocks ------------------------------------------------------------------------------


def shell_script(code: str) -> str:
    """``set -euo pipefail``, the block, a readiness wait after each ``... &`` line, and
    the block's own background servers stopped at its end."""
    stop = "rc=$?; kill $(jobs -p) 2>/dev/null || true; wait || true; exit $rc"
    lines = ["set -euo pipefail", f"trap '{stop}' EXIT"]
    for line in code.replace("\\\n", " ").splitlines():
        lines.append(line)
        if re.search(r"&\s*(#.*)?$", line) and not line.rstrip().endswith("&&"):
            port = port_of(line)
            lines.append(
                f"until (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null; do "
                "kill -0 $! 2>/dev/null || { echo 'server exited' >&2; exit 1; }; "
                "sleep 0.05; done"
            )
    return "\n".join(lines) + "\n"


def run_block(run: Run, block: Block) -> None:
    code = with_ports(block.code, run.ports)
    where = f"README line {block.line} ({block.section})"
    if block.marker == "file":
        (run.folder / block.argument).write_text(code)
        return
    if block.marker == "start":
        if block.lang == "python":
            start_server(run, [sys.executable, "-c", code], port_of(code), where)
        else:
            for line in code.splitlines():
                command = line.split("#", 1)[0].strip()
                if command:
                    start_server(run, shlex.split(command), port_of(command), where)
        return
    argv = (
        ["bash", "-c", shell_script(code)] if block.lang == "sh" else [sys.executable, "-c", code]
    )
    started = time.monotonic()
    done = subprocess.run(
        argv, cwd=run.folder, env=run.env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT
    )
    shown = f"{where}, {time.monotonic() - started:.1f} s:\n{code}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    assert done.returncode == 0, shown
    assert "Traceback" not in done.stderr, shown
    run.output[block.section] = run.output.get(block.section, "") + done.stdout + done.stderr


def test_readme_runs_top_to_bottom(tmp_path: Path) -> None:
    need("curl", "openssl", "certbot", "lego")
    folder = tmp_path / "user"
    folder.mkdir()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "HOME": str(tmp_path),  # certbot and friends keep nothing outside the test
    }
    env.pop("MTLSKIT_TLS_ENGINE", None)
    run = Run(folder, {port: str(free_port()) for port in PORTS}, env)
    try:
        for block in readme_blocks():
            if block.marker == "stop":
                stop_servers(run)
            elif block.lang in ("sh", "python") and block.marker != "skip":
                run_block(run, block)
        stop_servers(run)
    finally:
        for proc, _ in run.servers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    check_what_it_made(run)


def check_what_it_made(run: Run) -> None:
    """What the walk-throughs promise, beyond exit code 0."""
    folder, out = run.folder, run.output
    assert (folder / "rsa" / "ca.key").stat().st_mode & 0o777 == 0o600
    assert (
        "hello world" in out["mtlskit get"] and "CN=client,O=Dev,ST=RB,C=TH" in out["mtlskit get"]
    )
    assert (folder / "out" / "hello.txt").read_bytes() == b"hello world \n"
    assert "CN=client,O=Dev,ST=RB,C=TH" in out["Python API"]
    assert out["Day two: inventory, revocation, rotation, status"].count("refused: exit") == 2
    # the CA service: the client saw the renewed server certificate
    service = out["CA service: enroll, renew, keep fresh"]
    serials = re.findall(r'"serial": "([0-9A-F]+)"', service)
    assert len(serials) == 2 and serials[0] != serials[1], service
    assert (folder / "web" / "server.key").stat().st_mode & 0o777 == 0o600
    assert (folder / "alice" / "client.crt").exists()
    # ACME: certbot and lego each obtained and renewed; each revoked its latest one
    assert "hello world" in out["ACME: certbot, lego and other ACME clients"]
    db = open_database(folder / "acme-ca" / "ca.db")
    try:
        with db.transaction() as tx:
            rows = tx.all("SELECT status FROM certs WHERE sans LIKE '%app.internal%'")
    finally:
        db.close()
    assert sorted(r["status"] for r in rows) == ["revoked", "revoked", "valid", "valid"]
