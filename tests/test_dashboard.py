"""The Grafana dashboard's structure: what Grafana needs to import it, and that every panel
reads documented series through the dashboard's variables. Its queries run against a real
Prometheus in tests/test_prometheus.py."""

from __future__ import annotations

import json
import re
from itertools import combinations
from typing import Any

import pytest
import yaml
from prometheus_node import DASHBOARD, MONITORING, documented_series

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
VARIABLE = re.compile(r"\$\{?(\w+)")
SERIES = re.compile(r"\b((?:xpu_bridge_\w+)|up)\b(\{[^}]*\})?(?!\s*\()")
REQUIRED = {
    "xpu_bridge_devices": "devices by state per pool",
    "xpu_bridge_allocations_total": "Allocate rate",
    "xpu_bridge_allocate_duration_seconds_bucket": "Allocate latency quantiles",
    "xpu_bridge_opi_requests_total": "OPI request rate and errors by method",
    "xpu_bridge_opi_request_duration_seconds_bucket": "OPI latency by method",
    "xpu_bridge_releases_total": "releases",
    "xpu_bridge_release_held_back_total": "held-back releases",
    "xpu_bridge_host_agent_up": "agent up",
    "xpu_bridge_prewarmed_ports": "prewarm pool levels",
}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = dashboard["panels"]
    assert found, "the dashboard has no panels"
    return found


def exprs(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in panels(dashboard) for target in panel["targets"]]


def test_identity_and_schema(dashboard: dict[str, Any]) -> None:
    """uid and title are what links and the sidecar's updates key on."""
    assert dashboard["uid"] == "xpu-bridge"
    assert dashboard["title"] == "xpu-bridge"
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert "id" not in dashboard, "an id makes an import overwrite another dashboard"


def test_variables_pick_the_data_source_node_and_pool(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(variables) == {"datasource", "node", "resource"}
    source = variables["datasource"]
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    for name, series in (("node", "xpu_bridge_build_info"), ("resource", "xpu_bridge_devices")):
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["datasource"] == DATASOURCE
        assert re.fullmatch(rf"label_values\({series}(\{{.*\}})?, {name}\)", variable["query"])
        # The panels match with =~, so "All" must be a regex that matches every value.
        assert variable["includeAll"] and variable["multi"] and variable["allValue"] == ".*"
    assert 'node=~"$node"' in variables["resource"]["query"]


def test_panel_ids_are_unique(dashboard: dict[str, Any]) -> None:
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids))


def test_every_panel_and_target_uses_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    for panel in panels(dashboard):
        assert panel["type"] in {"timeseries", "stat"}, panel["title"]
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        assert panel["description"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", DATASOURCE) == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_panels_fit_the_grid_without_overlapping(dashboard: dict[str, Any]) -> None:
    boxes = []
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        x, y, w, h = grid["x"], grid["y"], grid["w"], grid["h"]
        assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= 24, panel["title"]
        boxes.append((panel["title"], x, y, w, h))
    for (a, ax, ay, aw, ah), (b, bx, by, bw, bh) in combinations(boxes, 2):
        apart = ax + aw <= bx or bx + bw <= ax or ay + ah <= by or by + bh <= ay
        assert apart, f"panels {a!r} and {b!r} overlap"


def test_queries_use_only_the_dashboard_variables(dashboard: dict[str, Any]) -> None:
    """Grafana's own $__rate_interval and ours; a fixed [5m] would not fit every scrape
    interval."""
    known = {"node", "resource", "__rate_interval"}
    for expr in exprs(dashboard):
        assert set(VARIABLE.findall(expr)) <= known, expr
        assert not re.search(r"\[\d+[smhd]\]", expr), f"a fixed range in {expr!r}"


def test_every_series_is_filtered_by_the_node_variable(dashboard: dict[str, Any]) -> None:
    """Selecting a node must narrow every panel, pools too where the series has them."""
    documented = documented_series()
    for expr in exprs(dashboard):
        found = SERIES.findall(expr)
        assert found, expr
        for name, matchers in found:
            assert 'node=~"$node"' in matchers, f"{name} unfiltered in {expr!r}"
            base = re.sub(r"_(bucket|count|sum)$", "", name)
            if "resource" in documented.get(base, frozenset()):
                assert 'resource=~"$resource"' in matchers, f"{name} in {expr!r}"


def test_panels_read_documented_series_and_cover_the_topics(dashboard: dict[str, Any]) -> None:
    documented = set(documented_series())
    read = {name for expr in exprs(dashboard) for name, _ in SERIES.findall(expr)}
    for name in read - {"up"}:
        assert re.sub(r"_(bucket|count|sum)$", "", name) in documented, name
    missing = {topic for name, topic in REQUIRED.items() if name not in read}
    assert not missing, f"no panel for {sorted(missing)}"


def test_configmap_generator_ships_it_to_the_grafana_sidecar() -> None:
    """The sidecar loads ConfigMaps labelled grafana_dashboard; kubectl apply keeps a copy
    in an annotation limited to 256 KiB."""
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    (generator,) = [
        g for g in kustomization["configMapGenerator"] if g["name"] == "xpu-bridge-dashboard"
    ]
    assert generator["files"] == [DASHBOARD.name]
    assert generator["options"]["labels"] == {"grafana_dashboard": "1"}
    assert len(DASHBOARD.read_bytes()) < 200 * 1024
