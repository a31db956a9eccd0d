"""bench/proxy.py --quick: the proxy bench still runs end to end (speeds not asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.processes import go_binary, run_bench


@pytest.mark.slow
@pytest.mark.interop
def test_quick_proxy_bench_measures_every_proxy(tmp_path: Path) -> None:
    go_binary("mtls-loadgen")
    run_bench("proxy.py", tmp_path, timeout=300)
    data = json.loads((tmp_path / "proxy-latest.json").read_text())
    proxies = data["proxies"]
    assert set(proxies) == {"mtlskit-l4", "mtlskit-l7", "stunnel", "nginx-stream", "nginx-http"}
    for name, entry in proxies.items():
        assert "error" not in entry and "bulk_error" not in entry, (name, entry)
        for mode in ("keepalive", "handshake"):
            assert entry[mode]["ok"] > 0 and entry[mode]["errors"] == 0, (name, mode, entry)
        assert entry["idle"]["open"] == data["idle_connections"], (name, entry["idle"])
    for name in ("mtlskit-l4", "stunnel", "nginx-stream"):
        assert proxies[name]["bulk"]["complete"], proxies[name]["bulk"]
    assert "| new mTLS conn per CPU-s |" in (tmp_path / "proxy-latest.md").read_text()
