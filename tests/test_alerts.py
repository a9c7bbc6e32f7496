"""Alerts and monitoring manifests: promtool checks and unit-tests the rules, on real series."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from xpu_bridge.ops.metrics import DeviceCounts, Metrics, StateSnapshot

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "manifests" / "monitoring"
RULES = MONITORING / "xpu-bridge.rules.yaml"
PROMETHEUS_RULE = MONITORING / "prometheusrule.yaml"
RULE_TESTS = MONITORING / "tests" / "xpu-bridge.rules.test.yaml"
BASE = ROOT / "manifests" / "base"
README = ROOT / "README.md"
PROMTOOL = shutil.which("promtool")
KUBECTL = shutil.which("kubectl")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not installed (Debian/Ubuntu: apt-get install prometheus; .ci/run does)",
)

POOL = "opi.io/red"
EXTERNAL_SERIES = {
    "up": "Prometheus itself, one per scrape target",
    "kube_pod_status_ready": "kube-state-metrics",
    "kube_pod_info": "kube-state-metrics",
}
"""Series the rules read that the daemon does not export, and who does."""
TARGET_LABELS = {"job", "instance", "node"}
"""Labels the scrape adds to every series (servicemonitor.yaml)."""
FED_LABELS = {
    "resource",
    "method",
    "code",
    "reason",
    "sha256",
    "xpu_bridge_allocations_total:result",
}
"""Labels (`series:label`, or a label of every series) whose values only the test's own calls
below put in the registry: their names are checked, their values are not (that would only
compare the test with itself)."""
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                "and", "or", "unless", "offset"}  # fmt: skip
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
TOKEN = re.compile(
    r'"(?:[^"\\]|\\.)*"'  # a string
    r"|\[[^\]]*\]"  # a range or subquery
    r"|(?<![\w:.])(?P<name>[A-Za-z_:][\w:]*)\s*(?P<braces>\{[^}]*\})?(?P<call>\s*\()?"
    r"|(?P<bare>\{[^}]*\})"
)
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]]


def alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in rules() if "alert" in rule}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=120, cwd=ROOT, check=False
    )


def selectors(expr: str) -> tuple[list[tuple[str, list[tuple[str, str, str]]]], set[str]]:
    """The series selectors of a PromQL expression (metric name and its label matchers), and
    the labels its by/on/group_left clauses name. Enough PromQL for our rules; a selector
    without a metric name is refused, so nothing escapes the name check."""
    grouped: set[str] = set()

    def drop_grouping(match: re.Match[str]) -> str:
        grouped.update(label.strip() for label in match.group(2).split(",") if label.strip())
        return " "

    found: list[tuple[str, list[tuple[str, str, str]]]] = []
    for token in TOKEN.finditer(GROUPING.sub(drop_grouping, expr)):
        assert token.group("bare") is None, f"a selector without a metric name in {expr!r}"
        name = token.group("name")
        if name is None or name in PROMQL_WORDS:
            continue
        if token.group("call") and not token.group("braces"):
            continue  # a function or an aggregation
        matchers = MATCHER.findall(token.group("braces") or "")
        found.append((name, [(label, op, value) for label, op, value in matchers]))
    return found, grouped


async def _render(metrics: Metrics) -> str:
    """Inside a running loop, as the daemon's scrape is (the event-loop gauge reads it)."""
    return generate_latest(metrics.registry).decode()


def exported_series() -> dict[str, dict[str, set[str]]]:
    """Series name -> label -> values, as the daemon's own registry renders them, every family
    fed once through the calls the daemon makes."""
    metrics = Metrics()
    metrics.watch_state(
        lambda: StateSnapshot(
            devices=[DeviceCounts(POOL, free=6, allocated=1, unhealthy=1)],
            host_agent_up=True,
            releases={(POOL, "unheld"): 1},
            held_back={},
            repairs={POOL: 1},
            failing_creates=0,
            prewarmed={POOL: 1},
            prewarm_taken={POOL: 1},
        )
    )
    metrics.observe_allocate(POOL, "success", 0.2)
    metrics.observe_opi("CreateBridgePort", "OK", 0.1)
    metrics.registered(POOL)
    metrics.config_loaded("0" * 64)
    series: dict[str, dict[str, set[str]]] = {}
    for family in text_string_to_metric_families(asyncio.run(_render(metrics))):
        for sample in family.samples:
            labels = series.setdefault(sample.name, {})
            for label, value in sample.labels.items():
                labels.setdefault(label, set()).add(value)
    return series


def readme_block(marker: str) -> str:
    text = README.read_text(encoding="utf-8")
    assert marker in text, f"README.md lost the marker {marker!r}"
    block = re.search(r"```\w*\n(.*?)```", text[text.index(marker) :], re.S)
    assert block is not None
    return block.group(1)


# --- promtool ---------------------------------------------------------------------------


@needs_promtool
def test_promtool_accepts_the_rules_file() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


@needs_promtool
def test_promtool_unit_tests_of_every_alert_pass() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_unit_tests_fail_when_an_alert_fires_otherwise(tmp_path: Path) -> None:
    """The unit tests hold the thresholds: a rule that fires a minute early breaks them."""
    (tmp_path / "tests").mkdir()
    shutil.copy(RULE_TESTS, tmp_path / "tests")
    early = RULES.read_text(encoding="utf-8").replace(
        "expr: xpu_bridge_host_agent_up == 0\n        for: 5m",
        "expr: xpu_bridge_host_agent_up == 0\n        for: 4m",
    )
    assert early != RULES.read_text(encoding="utf-8")
    (tmp_path / RULES.name).write_text(early, encoding="utf-8")
    result = promtool("test", "rules", str(tmp_path / "tests" / RULE_TESTS.name))
    assert result.returncode != 0
    assert "alertname: XpuBridgeHostAgentDown" in result.stdout + result.stderr


def test_unit_tests_show_every_alert_firing_and_not_firing() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in load_yaml(RULE_TESTS)["tests"]:
        for case in test.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert firing == set(alerts()), "alerts without a history where they fire"
    assert quiet == set(alerts()), "alerts without a history just short of firing"


def test_fired_alerts_name_their_node_and_pool() -> None:
    """As rendered in the unit tests: the summary names the node (or the pod and its node),
    and the pool whenever the alert is about one; the description says what to check."""
    checked = 0
    for test in load_yaml(RULE_TESTS)["tests"]:
        for case in test.get("alert_rule_test", []):
            for alert in case.get("exp_alerts") or []:
                labels, annotations = alert["exp_labels"], alert["exp_annotations"]
                assert set(annotations) == {"summary", "description"}
                assert labels["node"] in annotations["summary"]
                if "resource" in labels:
                    assert labels["resource"] in annotations["summary"]
                if "instance" in labels:
                    assert labels["instance"] in annotations["description"]
                assert re.search(r"\bFirst\b", annotations["description"])
                checked += 1
    assert checked >= len(alerts())


# --- the rules themselves ---------------------------------------------------------------


def test_every_alert_has_a_severity_summary_and_description() -> None:
    assert len(alerts()) == len(rules()), "recording rules need a test of their own"
    for name, rule in alerts().items():
        assert re.fullmatch(r"XpuBridge[A-Z]\w+", name)
        assert set(rule["labels"]) == {"severity"}, name
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert set(rule["annotations"]) == {"summary", "description"}, name
        assert "$labels.node" in rule["annotations"]["summary"], name


def test_rules_read_only_series_the_daemon_exports() -> None:
    """A renamed series or label in xpu_bridge/ops/metrics.py breaks this test, not the alert."""
    exported = exported_series()
    used: set[str] = set()
    for rule in rules():
        found, grouped = selectors(rule["expr"])
        assert found, f"no series in {rule['expr']!r}"
        names = {name for name, _ in found}
        used |= names
        labels_here = set(TARGET_LABELS)
        for name, matchers in found:
            if name in EXTERNAL_SERIES:
                labels_here |= {label for label, _, _ in matchers}
                continue
            assert name in exported, f"{rule.get('alert')}: the daemon exports no {name}"
            labels_here |= set(exported[name])
            for label, op, value in matchers:
                if label in TARGET_LABELS:
                    continue
                assert label in exported[name], f"{name} has no label {label}"
                if {label, f"{name}:{label}"} & FED_LABELS:
                    continue
                values = value.split("|") if op in ("=~", "!~") else [value]
                for one in values:
                    assert re.fullmatch(r"[\w.]+", one), f"{name}: {value!r} is not a list"
                    assert one in exported[name][label], f"{name}{{{label}}} is never {one!r}"
        if names & set(EXTERNAL_SERIES):
            labels_here |= {"namespace", "pod"}
        assert grouped <= labels_here, f"{rule.get('alert')}: by/on labels {grouped - labels_here}"
    assert used & set(exported) >= {
        "xpu_bridge_host_agent_up",
        "xpu_bridge_allocations_total",
        "xpu_bridge_allocate_duration_seconds_bucket",
        "xpu_bridge_release_held_back_total",
        "xpu_bridge_devices",
        "xpu_bridge_config_reloads_total",
    }


def test_series_check_sees_a_misspelt_name_or_value() -> None:
    exported = exported_series()
    found, _ = selectors('xpu_bridge_devices{state="unhealty"} > 0 unless xpu_bridge_agent_up')
    assert found == [
        ("xpu_bridge_devices", [("state", "=", "unhealty")]),
        ("xpu_bridge_agent_up", []),
    ]
    assert "unhealty" not in exported["xpu_bridge_devices"]["state"]
    assert "xpu_bridge_agent_up" not in exported
    assert exported["xpu_bridge_devices"]["state"] == {"free", "allocated", "unhealthy"}
    assert {"invalid", "failed", "restart_required"} <= exported["xpu_bridge_config_reloads_total"][
        "result"
    ]


# --- the operator's objects -------------------------------------------------------------


def test_prometheusrule_carries_the_rules_file() -> None:
    rule = load_yaml(PROMETHEUS_RULE)
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["kind"] == "PrometheusRule"
    assert rule["metadata"]["namespace"] == "xpu-bridge"
    assert rule["metadata"]["labels"]["app.kubernetes.io/name"] == "xpu-bridge"
    assert rule["spec"]["groups"] == load_yaml(RULES)["groups"], (
        "prometheusrule.yaml's spec.groups differ from xpu-bridge.rules.yaml's groups"
    )


def _daemonset() -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        doc
        for path in sorted(BASE.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if doc and doc.get("kind") == "DaemonSet"
    ]
    assert len(found) == 1, f"expected one DaemonSet in {BASE}"
    return found[0]


def test_service_and_servicemonitor_scrape_the_daemonset_as_job_xpu_bridge() -> None:
    daemonset = _daemonset()
    pod = daemonset["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    (port,) = [p for p in container["ports"] if p["name"] == "metrics"]
    service = load_yaml(MONITORING / "service.yaml")
    monitor = load_yaml(MONITORING / "servicemonitor.yaml")

    assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
    assert service["metadata"]["namespace"] == daemonset["metadata"]["namespace"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (service_port,) = service["spec"]["ports"]
    assert service_port["name"] == "metrics"
    assert service_port["port"] == port["containerPort"] == 9109
    assert service_port["targetPort"] == port["name"]

    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["kind"] == "ServiceMonitor"
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= (
        service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert {
        "sourceLabels": ["__meta_kubernetes_pod_node_name"],
        "targetLabel": "node",
        "action": "replace",
    } in endpoint["relabelings"]
    # Without a jobLabel the operator names the job after the Service: what XpuBridgeDown reads.
    assert "jobLabel" not in monitor["spec"]
    assert 'up{job="' + service["metadata"]["name"] + '"}' in alerts()["XpuBridgeDown"]["expr"]


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed: no kustomize to render")
def test_kustomize_renders_the_monitoring_objects() -> None:
    result = subprocess.run(
        [str(KUBECTL), "kustomize", str(MONITORING)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(result.stdout)}
    assert set(docs) == {
        ("Service", "xpu-bridge"),
        ("ServiceMonitor", "xpu-bridge"),
        ("PrometheusRule", "xpu-bridge"),
        ("ConfigMap", "xpu-bridge-dashboard"),
    }
    assert {d["metadata"]["namespace"] for d in docs.values()} == {"xpu-bridge"}
    assert docs[("PrometheusRule", "xpu-bridge")]["spec"] == load_yaml(PROMETHEUS_RULE)["spec"]
    dashboard = docs[("ConfigMap", "xpu-bridge-dashboard")]
    assert dashboard["metadata"]["labels"] == {"grafana_dashboard": "1"}
    assert dashboard["data"] == {
        "dashboard.json": (MONITORING / "dashboard.json").read_text(encoding="utf-8")
    }


# --- README -----------------------------------------------------------------------------


def test_readme_lists_every_alert() -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### Alerts") :]
    section = section[: section.index("\n### ", 1)]
    listed = re.findall(r"^\| `(XpuBridge\w+)` \|", section, re.M)
    assert listed == list(alerts())


def _check_config(config: Path) -> None:
    result = promtool("check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


@needs_promtool
def test_readme_prometheus_config_in_the_cluster_loads_the_rules(tmp_path: Path) -> None:
    text = readme_block("<!-- prometheus.yml in the cluster")
    (job,) = yaml.safe_load(text)["scrape_configs"]
    assert job["job_name"] == "xpu-bridge"
    assert job["kubernetes_sd_configs"] == [
        {"role": "pod", "namespaces": {"names": ["xpu-bridge"]}}
    ]
    assert {
        "source_labels": ["__meta_kubernetes_pod_node_name"],
        "target_label": "node",
    } in job["relabel_configs"]
    shutil.copy(RULES, tmp_path)
    config = tmp_path / "prometheus.yml"
    config.write_text(text, encoding="utf-8")
    first = promtool("check", "config", str(config))
    if "field kubernetes_sd_configs not found" in first.stdout + first.stderr:
        # A promtool built without Kubernetes discovery (Debian's): check the rest of it.
        job["static_configs"] = [{"targets": ["10.0.0.7:9109"]}]
        del job["kubernetes_sd_configs"]
        config.write_text(
            yaml.safe_dump({"rule_files": [RULES.name], "scrape_configs": [job]}), encoding="utf-8"
        )
    _check_config(config)


@needs_promtool
def test_readme_prometheus_config_outside_the_cluster_loads_the_rules(tmp_path: Path) -> None:
    text = readme_block("<!-- prometheus.yml outside the cluster")
    (job,) = yaml.safe_load(text)["scrape_configs"]
    assert job["job_name"] == "xpu-bridge"
    assert all("node" in static["labels"] for static in job["static_configs"])
    shutil.copy(RULES, tmp_path)
    (tmp_path / "prometheus.yml").write_text(text, encoding="utf-8")
    _check_config(tmp_path / "prometheus.yml")
