"""Render a bench run (the JSON of bench/run.py) as a Markdown table and a PNG chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SERVERS = ("mtlskit", "go", "nginx")
LABEL = {"mtlskit": "mtlskit serve", "go": "Go seed server", "nginx": "nginx"}
MODE_LABEL = {
    "keepalive": "keep-alive GET",
    "handshake": "full mTLS handshake",
    "resume": "resumed handshake",
}
KEY_LABEL = {"p256": "P-256", "rsa4096": "RSA-4096"}


def _num(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "–"
    return f"{v:,.{digits}f}"


def _ratio(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}×"


def _row(rows: list[dict[str, Any]], server: str, keys: str, mode: str) -> dict[str, Any]:
    for r in rows:
        if r.get("server") == server and r.get("keys") == keys and r.get("mode") == mode:
            return r
    return {}


def markdown(data: dict[str, Any]) -> str:
    rows = data["throughput"]
    keys_list = data["settings"]["keys"]
    ratios = {(r["keys"], r["mode"]): r for r in data["ratios"]}
    s = data["settings"]
    v = data["versions"]
    out = [
        "### mtlskit serve vs the Go seed server vs nginx",
        "",
        f"`{data['command']}` — {data['started']}, median of {s.get('rounds', 1)} interleaved "
        f"rounds of {s['duration_s']:g} s, "
        f"{s['connections']} connections; server on CPU {s['server_cpus']}, "
        f"mtls-loadgen on CPU {s['load_cpus']}. Requests per second, and per second of "
        "server CPU (utime+stime from /proc); ratios are per server CPU-second.",
        "",
        "| certs | workload | mtlskit req/s | mtlskit req/CPU-s | Go req/s | Go req/CPU-s "
        "| nginx req/s | nginx req/CPU-s | mtlskit/Go | mtlskit/nginx |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for keys in keys_list:
        for mode in MODE_LABEL:
            cells = [KEY_LABEL[keys], MODE_LABEL[mode]]
            for server in SERVERS:
                r = _row(rows, server, keys, mode)
                rate = _num(r.get("rate"))
                if mode == "resume" and r.get("ok"):
                    share = r.get("resumed", 0) / r["ok"]
                    if share < 0.5:
                        rate += f" ({share:.0%} resumed)"
                if r.get("errors"):
                    rate += f" ({r['errors']} errors)"
                cells += [rate, _num(r.get("per_cpu_s"))]
            ratio = ratios.get((keys, mode), {})
            cells += [_ratio(ratio.get("mtlskit_vs_go")), _ratio(ratio.get("mtlskit_vs_nginx"))]
            out.append("| " + " | ".join(cells) + " |")

    b = data["bounds"]["openssl_speed"]
    c = data["bounds"].get("cryptography", {})
    out += [
        "",
        f"Bounds, `{b.get('command', 'openssl speed')}` ({b.get('openssl', '?')}): "
        f"RSA-4096 sign {_num(b.get('rsa4096_sign_per_s'), 1)}/s "
        f"({_num(b.get('rsa4096_sign_per_s_cpu1_busy'), 1)}/s while CPU 1 signs too), "
        f"ECDSA P-256 sign {_num(b.get('ecdsap256_sign_per_s'))}/s. "
        f"Through the cryptography wheel ({c.get('openssl', '?')}): "
        f"RSA-4096 sign {_num(c.get('rsa4096_sign_per_s'), 1)}/s, "
        f"ECDSA P-256 sign {_num(c.get('ecdsap256_sign_per_s'))}/s.",
    ]

    if any(r.get("server") == "mtlskit-stdlib" for r in rows):
        # The bundled OpenSSL (4.x) engine over the stdlib ssl (system OpenSSL) one.
        fast, slow = "mtlskit", "mtlskit-stdlib"
        note = "default; `MTLSKIT_TLS_ENGINE=stdlib` selects the stdlib `ssl` module"
        out += [
            "",
            f"TLS engine of `mtlskit serve`, same run ({note}):",
            "",
            "| certs | workload | bundled OpenSSL req/CPU-s | stdlib ssl req/CPU-s | ratio |",
            "|---|---|--:|--:|--:|",
        ]
        for keys in keys_list:
            for mode in MODE_LABEL:
                a = _row(rows, fast, keys, mode).get("per_cpu_s")
                b = _row(rows, slow, keys, mode).get("per_cpu_s")
                ratio = a / b if a and b else None
                out.append(
                    f"| {KEY_LABEL[keys]} | {MODE_LABEL[mode]} | {_num(a)} | {_num(b)} "
                    f"| {_ratio(ratio)} |"
                )

    if any(r.get("server") == "mtlskit-before" for r in rows):
        out += [
            "",
            "Before and after, same run (`--before`: mtlskit from an earlier source tree), "
            "requests per server CPU-second and each over Go:",
            "",
            "| certs | workload | before | after | after/before | before/Go | after/Go |",
            "|---|---|--:|--:|--:|--:|--:|",
        ]
        for keys in keys_list:
            for mode in MODE_LABEL:
                a = _row(rows, "mtlskit", keys, mode).get("per_cpu_s")
                b = _row(rows, "mtlskit-before", keys, mode).get("per_cpu_s")
                g = _row(rows, "go", keys, mode).get("per_cpu_s")
                out.append(
                    f"| {KEY_LABEL[keys]} | {MODE_LABEL[mode]} | {_num(b)} | {_num(a)} "
                    f"| {_ratio(a / b if a and b else None)} "
                    f"| {_ratio(b / g if b and g else None)} "
                    f"| {_ratio(a / g if a and g else None)} |"
                )

    if data.get("targets"):
        out += ["", "| target | measured | goal | met |", "|---|--:|--:|:-:|"]
        for t in data["targets"]:
            met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
            val = "–" if t["value"] is None else f"{t['value']:.2f}"
            out.append(f"| {t['target']} | {val} | {t['goal']} | {met} |")

    if data.get("workers"):
        out += [
            "",
            "Both cores (server and load generator share CPUs 0,1), P-256; scaling = rate with "
            "2 workers (Go: GOMAXPROCS=2) over 1, same conditions:",
            "",
            "| server | workload | req/s | req/CPU-s | server CPU | scaling |",
            "|---|---|--:|--:|--:|--:|",
        ]
        for r in data["workers"]:
            if "rate" not in r:
                out.append(f"| {r['server']} | error: {r.get('error', '?')} | | | | |")
                continue
            scale = _ratio(r.get("scaling")) if r.get("workers") == 2 else ""
            out.append(
                f"| {r['server']} | {MODE_LABEL[r['mode']]} | {_num(r.get('rate'))} "
                f"| {_num(r.get('per_cpu_s'))} | {r.get('server_cpu_util', 0):.2f} | {scale} |"
            )

    if data.get("idle"):
        out += [
            "",
            "Idle mTLS connections held open (P-256, each after one GET), server VmRSS:",
            "",
            "| server | connections open | still open | RSS before | RSS held | per connection |",
            "|---|--:|--:|--:|--:|--:|",
        ]
        for r in data["idle"]:
            if r.get("error"):
                out.append(
                    f"| {LABEL.get(r['server'], r['server'])} | error: {r['error']} | | | | |"
                )
                continue
            out.append(
                f"| {LABEL.get(r['server'], r['server'])} | {_num(r.get('open'))} "
                f"| {_num(r.get('alive'))} | {_num(r.get('rss_base_mib'), 1)} MiB "
                f"| {_num(r.get('rss_held_mib'), 1)} MiB | {_num(r.get('rss_per_conn_kib'), 1)} KiB |"
            )

    if data.get("skipped"):
        out += [""] + [f"Skipped {k}: {why}" for k, why in data["skipped"].items()]
    errors = [r for r in rows if r.get("error")]
    if errors:
        out += [""] + [
            f"Error {r['server']} {r.get('keys', '')} {r.get('mode', '')}: {r['error']}"
            for r in errors
        ]
    out += [
        "",
        f"Python {v['python']} ({v['python_ssl']}), {v['go']}, {v['nginx']}, "
        f"{v['openssl']}; {v['cpu']}, Linux {v['kernel']}.",
        "",
    ]
    return "\n".join(out)


def chart(data: dict[str, Any], path: Path) -> bool:
    """Bars of requests per server CPU-second, one panel per certificate type x workload."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = data["throughput"]
    keys_list = data["settings"]["keys"]
    bounds = data["bounds"]["openssl_speed"]
    colors = {
        "mtlskit": "#3572A5",
        "mtlskit-stdlib": "#9db8d6",
        "go": "#00ADD8",
        "nginx": "#009639",
    }
    labels = {
        **LABEL,
        "mtlskit-stdlib": "mtlskit\n(stdlib ssl)",
    }
    servers = [*SERVERS]
    servers[1:1] = sorted({str(r["server"]) for r in rows} & {"mtlskit-stdlib"})
    fig, axes = plt.subplots(
        len(keys_list), 3, figsize=(3.2 * len(servers), 3.4 * len(keys_list)), squeeze=False
    )
    for i, keys in enumerate(keys_list):
        for j, mode in enumerate(MODE_LABEL):
            ax = axes[i][j]
            values = [_row(rows, s, keys, mode).get("per_cpu_s") or 0 for s in servers]
            bars = ax.bar([labels[s] for s in servers], values, color=[colors[s] for s in servers])
            for bar, value in zip(bars, values, strict=True):
                ax.annotate(
                    f"{value:,.0f}" if value else "n/a",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )
            top = max([*values, 1])
            # One RSA-4096 signature per full handshake: openssl speed's sign rate bounds it.
            bound = bounds.get("rsa4096_sign_per_s")
            if keys == "rsa4096" and mode == "handshake" and bound:
                ax.axhline(bound, color="#c44", linestyle="--", linewidth=1)
                ax.annotate(
                    f"openssl speed rsa4096 sign/s: {bound:,.0f}",
                    (len(servers) - 0.6, bound),
                    color="#c44",
                    fontsize=7,
                    ha="right",
                    va="bottom",
                )
                top = max(top, bound)
            ax.set_title(f"{KEY_LABEL[keys]}: {MODE_LABEL[mode]}", fontsize=10)
            ax.tick_params(axis="x", labelsize=7)
            ax.set_ylim(0, top * 1.18)
            if j == 0:
                ax.set_ylabel("requests per server CPU-second", fontsize=8)
    fig.suptitle(
        "mtlskit serve vs Go seed server vs nginx (server on 1 core, mTLS, same run)",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
