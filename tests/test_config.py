"""Config validation: every error class gets a path-qualified one-line message."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from xpu_bridge.config import ConfigError, load_config, parse_config

VALID: dict[str, Any] = {
    "hostAgent": {"endpoint": "unix:///run/agent.sock", "rpcTimeoutSeconds": 2},
    "resourceList": [
        {
            "resourceName": "red",
            "selectors": [{"pfNames": ["ens1f0#0-7"]}],
            "bridgePort": {
                "type": "access",
                "logicalBridges": ["//network.opiproject.org/bridges/red"],
            },
        }
    ],
}


def problems_of(mutate) -> list[str]:
    raw = copy.deepcopy(VALID)
    mutate(raw)
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    return caught.value.problems


def test_valid_config_has_defaults() -> None:
    config = parse_config(VALID)
    assert config.resource_prefix == "opi.io"
    assert config.host_agent.attach_timeout_seconds == 10
    assert config.full_resource_name(config.resource_list[0]) == "opi.io/red"
    assert config.resource_list[0].device_type == "netDevice"
    (pf,) = config.resource_list[0].selectors[0].pf_name_selectors
    assert pf.name == "ens1f0" and pf.indexes == frozenset(range(8))


def _set(path: str, value: object):
    def mutate(raw: dict) -> None:
        keys = path.split(".")
        node = raw
        for key in keys[:-1]:
            node = node[int(key)] if key.isdigit() else node[key]
        if value is DELETE:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value

    return mutate


DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("hostAgent.bogus", 1, "hostAgent.bogus: unknown key"),
        ("extra", True, "extra: unknown key"),
        ("resourceList", DELETE, "resourceList: is required"),
        ("resourceList", [], "resourceList: List should have at least 1 item"),
        ("resourceList.0.resourceName", DELETE, "resourceList[0].resourceName: is required"),
        ("resourceList.0.resourceName", "re d", "resourceList[0].resourceName: must be letters"),
        ("resourceList.0.deviceType", "netdev", "resourceList[0].deviceType: Input should be"),
        ("resourceList.0.selectors", [{}], "resourceList[0].selectors[0]: a selector needs"),
        (
            "resourceList.0.selectors",
            [{"vendors": ["zz"]}],
            "resourceList[0].selectors[0].vendors: 'zz' is not a 4-digit hex ID",
        ),
        (
            "resourceList.0.selectors",
            [{"pciAddresses": ["3b:02.1"]}],
            "resourceList[0].selectors[0].pciAddresses: '3b:02.1' is not a PCI address",
        ),
        (
            "resourceList.0.selectors",
            [{"pfNames": ["ens1f0#7-3"]}],
            "resourceList[0].selectors[0].pfNames: bad range '7-3'",
        ),
        (
            "resourceList.0.selectors",
            [{"pfNames": ["ens1f0#x"]}],
            "resourceList[0].selectors[0].pfNames: bad range 'x'",
        ),
        (
            "resourceList.0.bridgePort.logicalBridges",
            ["a", "b"],
            "resourceList[0].bridgePort: an access port needs exactly one logical bridge",
        ),
        (
            "resourceList.0.bridgePort.logicalBridges",
            DELETE,
            "resourceList[0].bridgePort.logicalBridges: is required",
        ),
        ("resourceList.0.bridgePort.type", "hybrid", "resourceList[0].bridgePort.type: Input"),
        ("hostAgent.endpoint", "nowhere", "hostAgent.endpoint: must be unix:///path or host:port"),
        ("hostAgent.endpoint", "unix://rel.sock", "hostAgent.endpoint: a unix endpoint needs"),
        ("hostAgent.rpcTimeoutSeconds", 0, "hostAgent.rpcTimeoutSeconds: Input should be greater"),
        ("hostAgent.rpcTimeoutSeconds", "fast", "hostAgent.rpcTimeoutSeconds: Input should be a"),
        (
            "hostAgent.tls",
            {"caFile": "/ca.pem"},
            "hostAgent: tls applies to host:port endpoints only",
        ),
        ("portIdPrefix", "Node7", "portIdPrefix: must be lower-case"),
        ("portIdPrefix", "node7\n", "portIdPrefix: must be lower-case"),
        ("resourceList.0.resourceName", "red\n", "resourceList[0].resourceName: must be"),
        ("resourcePrefix", "kubernetes.io", "resourcePrefix: must be a DNS subdomain outside"),
    ],
)
def test_error_classes(path: str, value: object, expected: str) -> None:
    problems = problems_of(_set(path, value))
    assert any(p.startswith(expected) for p in problems), problems


def test_tls_cert_without_key() -> None:
    def mutate(raw: dict) -> None:
        raw["hostAgent"] = {
            "endpoint": "agent.example:50151",
            "tls": {"caFile": "/ca.pem", "certFile": "/c.pem"},
        }

    assert problems_of(mutate) == ["hostAgent.tls: certFile and keyFile must be given together"]


def test_duplicate_resource() -> None:
    problems = problems_of(lambda raw: raw["resourceList"].append(raw["resourceList"][0]))
    assert problems == ["(top level): resource opi.io/red is configured twice"]


def test_every_problem_reported_at_once() -> None:
    def mutate(raw: dict) -> None:
        raw["hostAgent"]["bogus"] = 1
        raw["resourceList"][0]["deviceType"] = "x"

    assert len(problems_of(mutate)) == 2


def test_top_level_must_be_mapping() -> None:
    with pytest.raises(ConfigError, match="must be a mapping"):
        parse_config(["a"])


def test_files(tmp_path: Path) -> None:
    as_json = tmp_path / "c.json"
    as_json.write_text(json.dumps(VALID))
    assert load_config(as_json).resource_list[0].resource_name == "red"
    broken = tmp_path / "c.yaml"
    broken.write_text("resourceList: [\n  - {a: 1\n")
    with pytest.raises(ConfigError, match=r"not valid YAML/JSON at line \d+"):
        load_config(broken)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xpu_bridge.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_config_cli_reports_each_problem(tmp_path: Path) -> None:
    raw = copy.deepcopy(VALID)
    raw["hostAgent"]["bogus"] = 1
    raw["resourceList"][0]["bridgePort"]["type"] = "hybrid"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, result.stderr
    assert "hostAgent.bogus: unknown key" in lines[0]
    assert "resourceList[0].bridgePort.type" in lines[1]
    assert "Traceback" not in result.stderr


def test_check_config_cli_summary(tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(yaml.safe_dump(VALID))
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("opi.io/red: netDevice, access port on //network")


def test_cli_usage_error_is_one_line() -> None:
    result = run_cli("run")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "--config" in result.stderr


def test_api_version_v1_is_the_default_and_may_be_given() -> None:
    assert parse_config(VALID).api_version == "xpu-bridge/v1"
    assert parse_config({"apiVersion": "xpu-bridge/v1", **VALID}).api_version == "xpu-bridge/v1"


@pytest.mark.parametrize("version", ["xpu-bridge/v2", "v1", "", 1])
def test_another_api_version_is_one_line_naming_the_supported_one(version: object) -> None:
    raw = {**copy.deepcopy(VALID), "apiVersion": version, "resourceList": "not even a list"}
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    (problem,) = caught.value.problems  # nothing else is checked in a document of another version
    assert problem.startswith(f"apiVersion: {version!r} is not supported")
    assert "xpu-bridge/v1" in problem


def test_the_shipped_configmap_declares_its_api_version() -> None:
    manifest = yaml.safe_load(
        (Path(__file__).parents[1] / "manifests/02-configmap.yaml").read_text()
    )
    document = yaml.safe_load(manifest["data"]["config.yaml"])
    assert document["apiVersion"] == "xpu-bridge/v1"
    assert parse_config(document).api_version == "xpu-bridge/v1"


def test_check_config_cli_refuses_another_api_version_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "v2.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "xpu-bridge/v2", **VALID}))
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"xpu-bridge: config {path}: apiVersion: 'xpu-bridge/v2' is not supported; this "
        "xpu-bridge reads xpu-bridge/v1 (leaving it out means xpu-bridge/v1)"
    )


def test_api_version_by_its_python_name_is_checked_too() -> None:
    with pytest.raises(ConfigError, match=r"apiVersion: 'xpu-bridge/v9' is not supported"):
        parse_config({"api_version": "xpu-bridge/v9", **VALID})
