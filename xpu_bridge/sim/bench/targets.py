"""The targets of issue 11, each judged pass/miss from the measured values (never assumed)."""

from __future__ import annotations

from typing import Literal

from xpu_bridge.sim.bench.docs import (
    AllocateCase,
    ChurnCase,
    HelpCase,
    PrewarmCase,
    ScaleCase,
    ScalePoint,
    Target,
    Verdict,
)

STARTUP_SIZE = 4096
GROWTH_BASE, GROWTH_TOP = 1024, 16384


def target(
    name: str,
    description: str,
    value: float | None,
    limit: float,
    unit: str,
    note: str = "",
    compare: Literal["<=", ">="] = "<=",
) -> Target:
    met = value is not None and (value <= limit if compare == "<=" else value >= limit)
    verdict: Verdict = "not measured" if value is None else "pass" if met else "miss"
    return Target(
        name=name,
        description=description,
        value=None if value is None else round(value, 4),
        compare=compare,
        limit=limit,
        unit=unit,
        verdict=verdict,
        note=note,
    )


def all_targets(
    allocate: AllocateCase,
    scale: ScaleCase,
    churn: ChurnCase,
    cli_help: HelpCase,
    prewarm: PrewarmCase,
) -> list[Target]:
    runs = {run["name"]: run for run in allocate["runs"]}
    up, down = runs["up_on_create"], runs["down_then_up"]
    return [
        target(
            "allocate_p50_up_on_create",
            "Allocate p50 / bare RTT p50, agent answers UP on Create",
            up["ratio_p50"],
            2.5,
            "x",
        ),
        target(
            "allocate_p50_down_then_up",
            "Allocate p50 / bare RTT p50, agent answers DOWN then UP",
            down["ratio_p50"],
            3.5,
            "x",
        ),
        target(
            "allocate_p99_up_on_create",
            "Allocate p99 / bare RTT p99, agent answers UP on Create",
            up["ratio_p99"],
            6.0,
            "x",
        ),
        target(
            "allocate_p99_down_then_up",
            "Allocate p99 / bare RTT p99, agent answers DOWN then UP",
            down["ratio_p99"],
            6.0,
            "x",
        ),
        *_scale_targets(scale),
        target(
            "churn_pods_per_s",
            "churn: pods admitted (and deleted) per second, agent at 1 ms",
            churn["pods_per_s"],
            200.0,
            "pods/s",
            compare=">=",
        ),
        _health_target(scale),
        target(
            "cli_help", "`xpu-bridge --help` wall time (median)", cli_help["median_s"], 0.3, "s"
        ),
        target(
            "prewarm_p99",
            "prewarm >= demand, 500 ms agent: Allocate p99 / the 0 ms case's p99",
            prewarm["ratio_p99"],
            3.0,
            "x",
            note=prewarm["reason"] if prewarm["status"] != "measured" else "",
        ),
    ]


def _point(scale: ScaleCase, devices: int) -> ScalePoint | None:
    return next((p for p in scale["points"] if p["devices"] == devices), None)


def _scale_targets(scale: ScaleCase) -> list[Target]:
    at = _point(scale, STARTUP_SIZE)
    missing = f"{STARTUP_SIZE} devices not in this run's sizes"
    top = _point(scale, GROWTH_TOP)
    base = _point(scale, GROWTH_BASE)
    note = ""
    if top is None and scale["points"]:
        # A --quick run or --sizes without 16,384: judge growth up to the largest size run.
        top = max(scale["points"], key=lambda p: p["devices"])
        note = f"largest size run is {top['devices']}, not {GROWTH_TOP}"
    growth = growth_encode = None
    if top is not None and base is not None and top is not base:
        growth = top["startup_per_device_us"] / base["startup_per_device_us"]
        growth_encode = top["encode_per_device_us"] / base["encode_per_device_us"]
    top_n = top["devices"] if top else GROWTH_TOP
    return [
        target(
            "startup_4096",
            f"start-up to all pools registered with full lists, {STARTUP_SIZE} devices",
            at["startup_s"] if at else None,
            1.0,
            "s",
            "" if at else missing,
        ),
        target(
            "rss_4096",
            f"daemon RSS at steady state, {STARTUP_SIZE} devices",
            at["rss_mib"] if at else None,
            64.0,
            "MiB",
            "" if at else missing,
        ),
        target(
            "growth_startup",
            f"start-up time per device at {top_n} / at {GROWTH_BASE} devices",
            growth,
            1.5,
            "x",
            note,
        ),
        target(
            "growth_encode",
            f"ListAndWatch encode time per device at {top_n} / at {GROWTH_BASE} devices",
            growth_encode,
            1.5,
            "x",
            note,
        ),
    ]


def _health_target(scale: ScaleCase) -> Target:
    """The worst health change over every size and kind, from the daemon's detection."""
    worst: tuple[float, str] | None = None
    from_cause = False
    for point in scale["points"]:
        for change in point["health"]:
            value = change["detect_to_visible_ms"]
            if value is None:
                value, from_cause = change["cause_to_visible_ms"], True
            if worst is None or value > worst[0]:
                worst = (value, f"{change['kind']} at {point['devices']} devices")
    note = "" if worst is None else f"worst: {worst[1]}"
    if from_cause:
        note += "; some measured from the cause (detection not observable)"
    return target(
        "health_visible",
        "health change visible to the kubelet after the daemon detected it (worst case)",
        None if worst is None else worst[0],
        100.0,
        "ms",
        note,
    )
