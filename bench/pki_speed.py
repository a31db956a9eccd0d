"""How long `mtlskit init` takes, against the seed's openssl commands, in the same run.

    .venv/bin/python bench/pki_speed.py [--runs 5] [--json]

Wall time of whole processes, as a user sees them: `python -m mtlskit init` with
the default key type (ECDSA P-256; target < 0.5 s) and with `--key-type rsa4096`,
and the seed's seven openssl commands (RSA-4096, from interop/README.md).
Also `mtlskit --help` (lazy imports keep it fast). RSA key generation time varies
a lot from run to run (it searches for primes), so medians over several runs are
printed with min and max. A benchmark, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

SEED_OPENSSL = Path(__file__).resolve().parent.parent / "scripts" / "seed-openssl.sh"


def timed(run: Callable[[Path], None]) -> tuple[float, float]:
    """(wall, cpu) seconds; cpu is user+sys of the child processes, which other work on a
    shared machine does not inflate the way it inflates wall time."""
    with tempfile.TemporaryDirectory(prefix="pki-speed-") as tmp:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        run(Path(tmp))
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def mtlskit(*args: str) -> Callable[[Path], None]:
    def run(tmp: Path) -> None:
        cmd = [sys.executable, "-m", "mtlskit", *args]
        cmd = [a.replace("{dir}", str(tmp / "certs")) for a in cmd]
        subprocess.run(cmd, check=True, capture_output=True)

    return run


def seed_openssl(tmp: Path) -> None:
    subprocess.run(["bash", str(SEED_OPENSSL)], cwd=tmp, check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per case (default 5)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    opts = parser.parse_args()

    cases: list[tuple[str, Callable[[Path], None]]] = [
        ("mtlskit --help", mtlskit("--help")),
        ("mtlskit init (p256, default)", mtlskit("init", "--dir", "{dir}")),
        (
            "mtlskit init --key-type rsa4096",
            mtlskit("init", "--dir", "{dir}", "--key-type", "rsa4096"),
        ),
        ("seed openssl commands (rsa4096)", seed_openssl),
    ]
    results = []
    # Interleave the cases run by run so a busy moment on the shared machine hits all of them.
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in cases}
    load_before = os.getloadavg()[0]
    for _ in range(opts.runs):
        for name, run in cases:
            samples[name].append(timed(run))
    for name, _ in cases:
        wall = [w for w, _ in samples[name]]
        cpu = [c for _, c in samples[name]]
        results.append(
            {"case": name, "median_s": statistics.median(wall), "min_s": min(wall),
             "max_s": max(wall), "cpu_median_s": statistics.median(cpu), "runs": len(wall)}
        )  # fmt: skip
    if opts.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"{'case':34} {'median':>8} {'min':>8} {'max':>8} {'cpu':>8}   ({opts.runs} runs, seconds)"
    )
    for r in results:
        print(
            f"{r['case']:34} {r['median_s']:8.3f} {r['min_s']:8.3f} {r['max_s']:8.3f}"
            f" {r['cpu_median_s']:8.3f}"
        )
    print(
        f"load average before: {load_before:.2f}, after: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)"
    )
    by = {r["case"]: r["median_s"] for r in results}
    rsa, seed = by["mtlskit init --key-type rsa4096"], by["seed openssl commands (rsa4096)"]
    p256 = by["mtlskit init (p256, default)"]
    print(
        f"\ninit p256: {p256:.3f} s ({'under' if p256 < 0.5 else 'OVER'} the 0.5 s target); "
        f"init rsa4096 / seed openssl = {rsa / seed:.2f}x"
    )


if __name__ == "__main__":
    main()
