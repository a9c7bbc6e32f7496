"""The table `xpu-bridge bench` prints: every case's figures, then each target with its verdict."""

from __future__ import annotations

from xpu_bridge.sim.bench.docs import BenchDocument, HealthChange, Target


def _rows(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


def _value(t: Target) -> str:
    return "-" if t["value"] is None else f"{t['value']:g} {t['unit']}"


def _health(change: HealthChange) -> str:
    detected = change["detect_to_visible_ms"]
    cause = change["cause_to_visible_ms"]
    return f"{cause:.0f}" if detected is None else f"{detected:.1f} ({cause:.0f})"


def render(doc: BenchDocument) -> str:
    machine = doc["machine"]
    lines = [
        f"xpu-bridge bench ({'quick' if doc['quick'] else 'full'} run, {doc['started']}): "
        f"Python {machine['python']}, {machine['cpus']} CPUs, {doc['seconds']:.0f} s",
        "",
        f"Allocate ({doc['allocate']['devices']}), ms:",
    ]
    lines += _rows(
        ["agent", "rounds", "p50", "p99", "RTT p50", "RTT p99", "p50/RTT", "p99/RTT"],
        [
            [
                run["agent"],
                f"{run['rounds']} x{run['repeats']}",
                f"{run['allocate_ms']['p50']:.3f}",
                f"{run['allocate_ms']['p99']:.3f}",
                f"{run['rtt_ms']['p50']:.3f}",
                f"{run['rtt_ms']['p99']:.3f}",
                _ratio(run["ratio_p50"], run["ratio_p50_runs"]),
                _ratio(run["ratio_p99"], run["ratio_p99_runs"]),
            ]
            for run in doc["allocate"]["runs"]
        ],
    )
    scale = doc["scale"]
    lines += [
        "",
        "Scale (3/4 VFs, 1/4 SFs, 2 pools; health: ms from the daemon's detection to the "
        f"kubelet, in brackets from the cause; unhealthyAfterSeconds {scale['unhealthy_after_s']:g}"
        f", release.intervalSeconds {scale['release_interval_s']:g}):",
    ]
    lines += _rows(
        ["devices", "start-up s", "us/device", "encode ms", "RSS MiB", "port ERROR", "agent down"],
        [
            [
                f"{p['devices']:,}",
                f"{p['startup_s']:.3f}",
                f"{p['startup_per_device_us']:.0f}",
                f"{p['encode_ms']:.2f}",
                f"{p['rss_mib']:.1f}",
                *(_health(h) for h in p["health"]),
            ]
            for p in scale["points"]
        ],
    )
    churn, cli_help, prewarm = doc["churn"], doc["cli_help"], doc["prewarm"]
    lines += [
        "",
        f"Churn: {churn['pods_admitted']} pods in {churn['duration_s']:.1f} s = "
        f"{churn['pods_per_s']:.1f} pods/s ({churn['pods_failed']} refused), admit p50 "
        f"{churn['admit_ms']['p50']:.2f} ms p99 {churn['admit_ms']['p99']:.2f} ms; release lag "
        f"p50 {churn['release_lag_ms']['p50']:.0f} ms p99 {churn['release_lag_ms']['p99']:.0f} ms "
        f"over {churn['releases_measured']} releases ({churn['reused_before_release']} VFs "
        f"reused before release, {churn['not_released']} not released)",
        f"CLI: `{cli_help['command']}` median {cli_help['median_s'] * 1000:.0f} ms "
        f"over {cli_help['runs']} runs",
        "Prewarm: "
        + (
            f"Allocate p99 {prewarm['allocate_ms']['p99']:.2f} ms, {prewarm['ratio_p99']}x"
            if prewarm["allocate_ms"] is not None
            else f"not measured: {prewarm['reason']}"
        ),
        "",
        "Targets:",
    ]
    lines += _rows(
        ["target", "value", "target", "verdict", "note"],
        [
            [
                t["name"],
                _value(t),
                f"{t['compare']} {t['limit']:g} {t['unit']}",
                t["verdict"],
                t["note"],
            ]
            for t in doc["targets"]
        ],
    )
    return "\n".join(lines)


def _ratio(median: float, runs: list[float]) -> str:
    """The median ratio, and the spread of the runs' ratios when there were several."""
    if len(runs) < 2:
        return f"{median:.2f}x"
    return f"{median:.2f}x ({min(runs):.2f}-{max(runs):.2f})"
