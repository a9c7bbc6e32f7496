"""A real Prometheus scrapes a real daemon on a simulated node: every series the README lists
arrives with its labels and the values the scenario made, promtool's linter accepts the
exposition, the rules evaluate on it, and every dashboard query answers."""

from __future__ import annotations

import json
import math
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_node import (
    DASHBOARD,
    JOB,
    NODE_NAME,
    PROMETHEUS,
    PROMTOOL,
    RULES,
    TARGET_LABELS,
    PrometheusError,
    ScrapedNode,
    documented_series,
    documented_values,
    scraped_node,
)
from simnode import BLUE, RED

from xpu_bridge.common.version import package_version
from xpu_bridge.ops.metrics import RELOAD_RESULTS

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None,
    reason="prometheus or promtool is not installed (Debian/Ubuntu: apt-get install prometheus; "
    ".ci/run does)",
)
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScrapedNode]:
    """One node, daemon, Prometheus and scenario for the whole module (about 15 s)."""
    with scraped_node(tmp_path_factory.mktemp("prometheus")) as node:
        yield node


def metadata_types(scraped: ScrapedNode) -> dict[str, str]:
    """Metric family -> type, as Prometheus read it from the daemon's # TYPE lines."""
    data: dict[str, list[dict[str, str]]] = scraped.prometheus.api("metadata")
    return {name: entries[0]["type"] for name, entries in data.items()}


def series_labels(scraped: ScrapedNode, name: str) -> list[set[str]]:
    """The label names of every series of `name` Prometheus holds."""
    found: list[dict[str, str]] = scraped.prometheus.api("series", **{"match[]": name})
    return [set(labels) - {"__name__"} for labels in found]


# --- the series ---------------------------------------------------------------------------


def test_every_documented_series_arrives_with_its_documented_labels(
    scraped: ScrapedNode,
) -> None:
    types = metadata_types(scraped)
    for name, labels in documented_series().items():
        assert name in types, f"README lists {name}; Prometheus got no such family"
        names = [name + suffix for suffix in HISTOGRAM_SUFFIXES]
        if types[name] != "histogram":
            names = [name]
        for series in names:
            expected = labels | TARGET_LABELS | ({"le"} if series.endswith("_bucket") else set())
            found = series_labels(scraped, series)
            assert found, f"no series {series} in Prometheus"
            for one in found:
                assert one == expected, (
                    f"{series} has labels {sorted(one)}, README {sorted(labels)}"
                )


def test_prometheus_holds_no_series_the_readme_does_not_list(scraped: ScrapedNode) -> None:
    """A new series needs its line in the README; `_created` (prometheus_client's creation
    time of a counter or histogram) goes with its family."""
    documented = documented_series()
    allowed = set(documented)
    for name in documented:
        allowed |= {name + suffix for suffix in HISTOGRAM_SUFFIXES}
        allowed.add(name.removesuffix("_total") + "_created")
    names: list[str] = scraped.prometheus.api("label/__name__/values")
    exported = {name for name in names if name.startswith("xpu_bridge_")}
    assert len(exported) >= len(documented)
    assert exported <= allowed, f"not in README's Series list: {sorted(exported - allowed)}"


def test_counters_and_histograms_are_typed_as_the_names_say(scraped: ScrapedNode) -> None:
    types = metadata_types(scraped)
    for name in documented_series():
        if name.endswith("_total"):
            assert types[name] == "counter", name
        elif name.endswith("_seconds") and "timestamp" not in name:
            assert types[name] == "histogram", name
        else:
            assert types[name] == "gauge", name


def test_allocations_count_every_allocate_by_result(scraped: ScrapedNode) -> None:
    prometheus = scraped.prometheus
    found = prometheus.values("xpu_bridge_allocations_total", "resource", "result")
    assert {key: value for key, value in found.items() if value} == scraped.allocations
    # Every documented result is there from the pool's registration on, at 0 until it happens.
    assert {result for _, result in found} == documented_values("xpu_bridge_allocations_total")
    by_pool: dict[str, int] = {}
    for (resource, _), count in scraped.allocations.items():
        by_pool[resource] = by_pool.get(resource, 0) + count
    durations = prometheus.values("xpu_bridge_allocate_duration_seconds_count", "resource")
    assert durations == {(resource,): float(n) for resource, n in by_pool.items()}
    largest = prometheus.values(
        'xpu_bridge_allocate_duration_seconds_bucket{le="+Inf"}', "resource"
    )
    assert largest == durations


def test_rate_sees_the_first_allocate_of_a_pool(scraped: ScrapedNode) -> None:
    """The Allocate series start at 0 when the pool registers, so increase() counts the
    first Allocate: a series born at 1 would show 0 on the dashboard and in the alerts."""
    increase = scraped.prometheus.values(
        f"increase(xpu_bridge_allocate_duration_seconds_count[{scraped.window()}])", "resource"
    )
    for (resource, result), count in scraped.allocations.items():
        if result == "success":
            assert increase[(resource,)] > 0, f"{resource}: {count} Allocates, increase 0"


def test_devices_by_state_add_up_to_the_pools(scraped: ScrapedNode) -> None:
    found = scraped.prometheus.values("xpu_bridge_devices", "resource", "state")
    expected: dict[tuple[str, ...], float] = {}
    for resource, capacity in scraped.capacity.items():
        held = scraped.held[resource]
        expected |= {
            (resource, "allocated"): held,
            (resource, "free"): capacity - held,
            (resource, "unhealthy"): 0,
        }
    assert found == expected


def test_release_and_repair_are_counted(scraped: ScrapedNode) -> None:
    prometheus = scraped.prometheus
    releases = prometheus.values("xpu_bridge_releases_total", "resource", "reason")
    assert releases == {(RED, "unheld"): 1}
    assert {reason for _, reason in releases} <= documented_values("xpu_bridge_releases_total")
    assert prometheus.values("xpu_bridge_repairs_total", "resource") == {(RED,): 1}
    held_back = prometheus.values("xpu_bridge_release_held_back_total", "guard")
    assert set(held_back) == {
        ("pod_resources_unreadable",),
        ("startup",),
        ("kubelet_restart",),
        ("mass_release",),
    }


def test_the_agent_outage_shows_and_ends(scraped: ScrapedNode) -> None:
    prometheus = scraped.prometheus
    window = scraped.window()
    assert prometheus.value(f"min_over_time(xpu_bridge_host_agent_up[{window}])") == 0
    assert prometheus.value("xpu_bridge_host_agent_up") == 1
    assert prometheus.value(f"min_over_time(xpu_bridge_ready[{window}])") == 0
    assert prometheus.value("xpu_bridge_ready") == 1
    unhealthy = prometheus.values(
        f'max_over_time(xpu_bridge_devices{{state="unhealthy"}}[{window}])', "resource"
    )
    assert unhealthy == {(r,): float(n) for r, n in scraped.capacity.items()}
    # The daemon saw the agent refuse its calls, by method and gRPC code.
    codes = prometheus.values('xpu_bridge_opi_requests_total{code!="OK"}', "method", "code")
    assert any(code == "UNAVAILABLE" for _, code in codes), codes


def test_opi_requests_are_counted_by_method(scraped: ScrapedNode) -> None:
    prometheus = scraped.prometheus
    ok = prometheus.values('sum by (method) (xpu_bridge_opi_requests_total{code="OK"})', "method")
    for method in ("CreateBridgePort", "DeleteBridgePort", "ListBridgePorts", "GetBridgePort"):
        assert ok.get((method,), 0) > 0, f"no {method} counted OK: {sorted(ok)}"
    counts = prometheus.values("xpu_bridge_opi_request_duration_seconds_count", "method")
    totals = prometheus.values("sum by (method) (xpu_bridge_opi_requests_total)", "method")
    assert set(counts) == set(totals)


def test_gauges_of_the_running_daemon(scraped: ScrapedNode) -> None:
    prometheus = scraped.prometheus
    assert prometheus.values("xpu_bridge_build_info", "version", "node") == {
        (package_version(), NODE_NAME): 1
    }
    assert prometheus.values("xpu_bridge_config_info", "sha256") == {(scraped.config_sha256,): 1}
    loaded = prometheus.value("xpu_bridge_config_last_reload_success_timestamp_seconds")
    assert loaded is not None and scraped.started - 300 < loaded < scraped.started
    reloads = prometheus.values("xpu_bridge_config_reloads_total", "result")
    assert reloads == {(result,): 0 for result in RELOAD_RESULTS}
    assert prometheus.value("xpu_bridge_host_agent_failing_creates") == 0
    tasks = prometheus.value("xpu_bridge_event_loop_tasks")
    assert tasks is not None and tasks >= 1
    registrations = prometheus.values("xpu_bridge_kubelet_registrations_total", "resource")
    assert registrations == {(resource,): 1 for resource in scraped.capacity}


def test_prewarm_pool_levels(scraped: ScrapedNode) -> None:
    prometheus = scraped.prometheus
    levels = prometheus.values("xpu_bridge_prewarmed_ports", "resource")
    assert levels == {(r,): (1 if r == BLUE else 0) for r in scraped.capacity}
    taken = prometheus.values("xpu_bridge_allocations_prewarmed_total", "resource")
    assert taken == {(r,): (1 if r == BLUE else 0) for r in scraped.capacity}


# --- promtool and the rules ---------------------------------------------------------------


def promtool_check_metrics(exposition: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_promtool_lints_the_exposition_clean(scraped: ScrapedNode) -> None:
    exposition = scraped.daemon_metrics()
    assert "xpu_bridge_releases_total" in exposition  # the scenario's families are there
    result = promtool_check_metrics(exposition)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_promtool_lint_would_see_a_misnamed_counter() -> None:
    """The lint above can fail: a counter without _total is reported."""
    result = promtool_check_metrics(
        "# HELP x_requests Requests.\n# TYPE x_requests counter\nx_requests 1\n"
    )
    assert result.returncode != 0
    assert "_total" in result.stdout + result.stderr


def test_every_rule_evaluates_on_the_real_series(scraped: ScrapedNode) -> None:
    groups = scraped.prometheus.api("rules")["groups"]
    loaded = [rule for group in groups if group["file"] == str(RULES) for rule in group["rules"]]
    assert len(loaded) == RULES.read_text(encoding="utf-8").count("- alert:")
    for rule in loaded:
        assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"


def test_host_agent_down_went_pending_in_the_outage(scraped: ScrapedNode) -> None:
    expr = (
        f'max_over_time(ALERTS{{alertname="XpuBridgeHostAgentDown", alertstate="pending"}}'
        f"[{scraped.window()}])"
    )
    pending = scraped.prometheus.query(expr)
    assert [sample["metric"]["node"] for sample in pending] == [NODE_NAME]
    assert scraped.prometheus.query('ALERTS{alertname="XpuBridgeHostAgentDown"}') == []


# --- the dashboard ------------------------------------------------------------------------


def dashboard_targets() -> list[tuple[str, str]]:
    """(panel title and refId, expr) of every panel target of dashboard.json."""
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [
        (f"{panel['title']} {target['refId']}", target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def instantiate(expr: str, window: str) -> str:
    """The query as Grafana sends it with every node and pool selected."""
    expr = expr.replace("$__rate_interval", window).replace("$__interval", window)
    expr = expr.replace("$node", ".*").replace("$resource", ".*")
    assert "$" not in expr, f"a variable the test does not know in {expr!r}"
    return expr


def test_every_dashboard_query_parses_and_answers(scraped: ScrapedNode) -> None:
    targets = dashboard_targets()
    assert len(targets) >= 15
    window = scraped.window()
    failures = []
    for where, expr in targets:
        query = instantiate(expr, window)
        try:
            result = scraped.prometheus.query(query)
        except PrometheusError as error:
            failures.append(f"{where}: {query}: {error}")
            continue
        values = [float(sample["value"][1]) for sample in result]
        if not any(math.isfinite(value) for value in values):
            failures.append(f"{where}: {query}: no value ({values})")
    assert not failures, "\n".join(failures)


def test_dashboard_query_check_sees_a_broken_query(scraped: ScrapedNode) -> None:
    """What the check above rejects: a query that does not parse, one that answers nothing."""
    with pytest.raises(PrometheusError, match="parse error"):
        scraped.prometheus.query("sum by (resource (xpu_bridge_devices)")
    assert scraped.prometheus.query('xpu_bridge_devices{state="unhealty"}') == []


def test_dashboard_variables_find_the_node_and_its_pools(scraped: ScrapedNode) -> None:
    """Grafana's label_values(series, label) is the label's values over that series."""
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    variables = {v["name"]: v for v in dashboard["templating"]["list"] if v["type"] == "query"}
    expected = {"node": {NODE_NAME}, "resource": set(scraped.capacity)}
    assert set(variables) == set(expected)
    for name, variable in variables.items():
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"])
        assert match is not None, variable["query"]
        series, label = match.group(1), match.group(2)
        values = scraped.prometheus.api(
            f"label/{label}/values", **{"match[]": instantiate(series, "1m")}
        )
        assert set(values) == expected[name], name
    assert scraped.prometheus.value(f'count(up{{job="{JOB}"}})') == 1
