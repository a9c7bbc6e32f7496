"""PNG plots of a bench document (matplotlib, the optional `bench` extra): Allocate latency
CDFs against the bare RTT, and start-up, encode time and RSS against the device count."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from xpu_bridge.sim.bench.docs import BenchDocument, HealthChange

DPI = 80


def draw(doc: BenchDocument, directory: Path) -> list[Path]:
    """Write the plots into `directory`; needs matplotlib (imported here, untyped: Any)."""
    matplotlib: Any = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")

    directory.mkdir(parents=True, exist_ok=True)
    written = [_allocate(plt, doc, directory / "allocate_cdf.png")]
    written.append(_scale(plt, doc, directory / "scale.png"))
    return written


def _health_ms(change: HealthChange) -> float:
    detected = change["detect_to_visible_ms"]
    return change["cause_to_visible_ms"] if detected is None else detected


def _cdf(values: list[float]) -> tuple[list[float], list[float]]:
    ordered = sorted(values)
    return ordered, [(i + 1) / len(ordered) for i in range(len(ordered))]


def _allocate(plt: Any, doc: BenchDocument, path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for run in doc["allocate"]["runs"]:
        xs, ys = _cdf(run["allocate_samples_ms"])
        axes.plot(xs, ys, label=f"Allocate, {run['agent']}")
    first = doc["allocate"]["runs"][0]
    xs, ys = _cdf(first["rtt_samples_ms"])
    axes.plot(xs, ys, "k--", label="bare unary RTT (GetDevicePluginOptions)")
    axes.set_xscale("log")
    axes.set_xlabel("ms (log scale)")
    axes.set_ylabel("fraction of calls")
    axes.set_title("Allocate latency, single device, sequential")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path


def _scale(plt: Any, doc: BenchDocument, path: Path) -> Path:
    points = doc["scale"]["points"]
    sizes = [p["devices"] for p in points]
    figure, grid = plt.subplots(2, 2, figsize=(9, 6.5))
    at_4096 = "target (at 4,096 devices)"
    panels = [
        ("start-up to full ListAndWatch (s)", [p["startup_s"] for p in points], 1.0, at_4096),
        ("ListAndWatch encode (ms)", [p["encode_ms"] for p in points], None, ""),
        ("daemon RSS at steady state (MiB)", [p["rss_mib"] for p in points], 64.0, at_4096),
        (
            "health change: daemon's detection to kubelet (ms)",
            [max(_health_ms(h) for h in p["health"]) for p in points],
            100.0,
            "target",
        ),
    ]
    for axes, (title, values, limit, label) in zip(grid.flat, panels, strict=True):
        axes.plot(sizes, values, "o-")
        if limit is not None:
            axes.axhline(limit, color="red", linestyle=":", label=label)
            axes.legend(fontsize=8)
        axes.set_xscale("log", base=2)
        axes.set_xticks(sizes, [f"{s:,}" for s in sizes])
        axes.set_title(title, fontsize=10)
        axes.set_xlabel("devices")
        axes.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path
