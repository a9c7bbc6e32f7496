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
from pydantic import ValidationError, model_validator

from xpu_bridge.config import (
    ConfigError,
    StrictModel,
    load_config,
    loading,
    parse_config,
    validation_problems,
)
from xpu_bridge.config.base import field_error

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
            DELETE,
            "resourceList[0].bridgePort.logicalBridges: is required",
        ),
        ("resourceList.0.bridgePort.type", "hybrid", "resourceList[0].bridgePort.type: Input"),
        ("hostAgent.endpoint", "nowhere", "hostAgent.endpoint: must be unix:///path or host:port"),
        ("hostAgent.endpoint", "unix://rel.sock", "hostAgent.endpoint: a unix endpoint needs"),
        ("hostAgent.rpcTimeoutSeconds", 0, "hostAgent.rpcTimeoutSeconds: Input should be greater"),
        ("hostAgent.rpcTimeoutSeconds", "fast", "hostAgent.rpcTimeoutSeconds: Input should be a"),
        ("portIdPrefix", "Node7", "portIdPrefix: must be lower-case"),
        ("portIdPrefix", "node7\n", "portIdPrefix: must be lower-case"),
        ("resourceList.0.resourceName", "red\n", "resourceList[0].resourceName: must be"),
        ("resourcePrefix", "kubernetes.io", "resourcePrefix: must be a DNS subdomain outside"),
    ],
)
def test_error_classes(path: str, value: object, expected: str) -> None:
    problems = problems_of(_set(path, value))
    assert any(p.startswith(expected) for p in problems), problems


RED = VALID["resourceList"][0]
TCP = "agent.example:50151"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(
            {"hostAgent": {"endpoint": TCP, "tls": {"caFile": "/ca", "certFile": "/c"}}},
            "hostAgent.tls.keyFile: certFile and keyFile must be given together",
            id="tls cert without key",
        ),
        pytest.param(
            {"hostAgent": {"endpoint": TCP, "tls": {"caFile": "/ca", "keyFile": "/k"}}},
            "hostAgent.tls.certFile: certFile and keyFile must be given together",
            id="tls key without cert",
        ),
        pytest.param(
            {"hostAgent": {"tls": {"caFile": "/ca"}}},
            "hostAgent.tls: tls applies to host:port endpoints only, not unix sockets",
            id="tls on a unix socket",
        ),
        pytest.param(
            {"hostAgent": {"api": "dpu-vendor-plugin", "endpoint": TCP}},
            "hostAgent.endpoint: a dpu-vendor-plugin listens on a unix socket: set endpoint to "
            "unix:///var/run/dpu-daemon/vendor-plugin/vendor-plugin.sock (or leave it out)",
            id="vendor plugin over tcp",
        ),
        pytest.param(
            {"hostAgent": {"rpcTimeoutSeconds": 5, "attachTimeoutSeconds": 4}},
            "hostAgent.attachTimeoutSeconds: attachTimeoutSeconds must be at least "
            "rpcTimeoutSeconds",
            id="attach shorter than one rpc",
        ),
        pytest.param(
            {
                "resourceList": [
                    RED,
                    {**RED, "resourceName": "blue", "bridgePort": {"vlan": 7, **RED["bridgePort"]}},
                ]
            },
            "resourceList[1].bridgePort.vlan: give logicalBridges or vlan, not both",
            id="vlan and bridges",
        ),
        pytest.param(
            {"resourceList": [{**RED, "bridgePort": {"vlan": 7, "type": "trunk"}}]},
            "resourceList[0].bridgePort.type: a VLAN port is an access port: leave out type or "
            "set access",
            id="trunk vlan",
        ),
        pytest.param(
            {"resourceList": [{**RED, "bridgePort": {"logicalBridges": ["a", "b"]}}]},
            "resourceList[0].bridgePort.logicalBridges: an access port needs exactly one "
            "logical bridge",
            id="access port on two bridges",
        ),
        pytest.param(
            {
                "resourceList": [
                    {**RED, "bridgePort": {"type": "trunk", "logicalBridges": ["a", "b", "a"]}}
                ]
            },
            "resourceList[0].bridgePort.logicalBridges[2]: logicalBridges lists a bridge twice",
            id="trunk lists a bridge twice",
        ),
        pytest.param(
            {"pfs": [{"pfName": "ens1f0", "numVfs": 4}, {"numVfs": 4}]},
            "pfs[1].pfName: name the PF by pfName or by pciAddress (one of them)",
            id="PF without a name",
        ),
        pytest.param(
            {"pfs": [{"pfName": "ens1f0", "pciAddress": "0000:3b:00.0", "numVfs": 4}]},
            "pfs[0].pfName: name the PF by pfName or by pciAddress (one of them)",
            id="PF named twice",
        ),
        pytest.param(
            {"resourceList": [{**RED, "selectors": [{"vendors": ["8086"]}, {}]}]},
            "resourceList[0].selectors[1]: a selector needs at least one field "
            "(vendors, devices, ...)",
            id="empty selector, itself the leaf",
        ),
        pytest.param(
            {"resourceList": [RED, {**RED, "resourceName": "blue"}, RED]},
            "resourceList[2].resourceName: resource opi.io/red is configured twice "
            "(also resourceList[0])",
            id="resource twice",
        ),
        pytest.param(
            {"resourceList": [RED, {**RED, "resourcePrefix": "opi.io"}]},
            "resourceList[1].resourceName: resource opi.io/red is configured twice "
            "(also resourceList[0])",
            id="resource twice, once by its own prefix",
        ),
    ],
)
def test_checks_across_fields_name_the_field_at_fault(raw: dict[str, Any], expected: str) -> None:
    assert problems_of(lambda document: document.update(copy.deepcopy(raw))) == [expected]


def test_a_check_across_fields_keeps_its_message_as_written() -> None:
    class Probe(StrictModel):
        x: int = 0

        @model_validator(mode="after")
        def _check(self) -> Probe:
            raise field_error(("x", self.x), "uses {field}, {problem} and {vf} as written")

    class Outer(StrictModel):
        probes: list[Probe]

    with pytest.raises(ValidationError) as caught:
        Outer.model_validate({"probes": [{}, {"x": 3}]})
    assert validation_problems(caught.value) == [
        "probes[0].x[0]: uses {field}, {problem} and {vf} as written",
        "probes[1].x[3]: uses {field}, {problem} and {vf} as written",
    ]


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
    with pytest.raises(ConfigError, match=r"^not valid YAML at line \d+: "):
        load_config(broken)
    as_yaml = tmp_path / "c.yaml"
    as_yaml.write_text(yaml.safe_dump(VALID))
    assert load_config(as_yaml) == load_config(as_json)
    broken_json = tmp_path / "broken.json"
    broken_json.write_text('{"resourceList": [}')
    with pytest.raises(ConfigError, match=r"^not valid JSON: Expecting value: line 1 column 19"):
        load_config(broken_json)
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
    result = run_cli("check-config", "--config-only", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].startswith("opi.io/red: netDevice, access port on //")


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
        (Path(__file__).parents[1] / "manifests/base/02-configmap.yaml").read_text()
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


TWO_POOLS_YAML = """\
resourceList:
  - &red
    resourceName: red
    selectors: [{pfNames: [ens1f0]}]
    bridgePort: {logicalBridges: ["//b/red"]}
  - <<: *red
    resourceName: blue
"""


@pytest.fixture(params=["c", "pure"])
def yaml_loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> type:
    """Each YAML test under the loader in use (libyaml's) and under the fallback."""
    loader = loading.YAML_LOADER if request.param == "c" else loading.PureYamlLoader
    monkeypatch.setattr(loading, "YAML_LOADER", loader)
    return loader


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "hostAgent: {}\nresourceList: []\nhostAgent:\n  api: opi-evpn-bridge\n",
            "not valid YAML at line 3: key 'hostAgent' appears twice (first at line 1)",
            id="top level",
        ),
        pytest.param(
            TWO_POOLS_YAML.replace("    resourceName: blue", "    resourceName: blue\n" * 2),
            "not valid YAML at line 8: key 'resourceName' appears twice (first at line 7)",
            id="in a list item",
        ),
        pytest.param(
            "hostAgent:\n  endpoint: a:1\n  tls:\n    caFile: /ca\n    certFile: /c\n"
            "    caFile: /ca2\n",
            "not valid YAML at line 6: key 'caFile' appears twice (first at line 4)",
            id="two levels down",
        ),
        pytest.param(
            'resourceList: [{resourceName: red, "resourceName": blue}]\n',
            "not valid YAML at line 1: key 'resourceName' appears twice (first at line 1)",
            id="flow mapping, quoted and plain",
        ),
    ],
)
def test_a_repeated_yaml_key_is_an_error(
    yaml_loader: type, tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == [expected]


def test_yaml_keys_a_merge_overrides_and_sibling_mappings_are_not_repeats(
    yaml_loader: type, tmp_path: Path
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(TWO_POOLS_YAML)
    config = load_config(path)
    assert [pool.resource_name for pool in config.resource_list] == ["red", "blue"]
    assert config.resource_list[1].bridge_port.logical_bridges == ["//b/red"]


def test_the_c_yaml_loader_is_used_when_pyyaml_has_libyaml() -> None:
    if not yaml.__with_libyaml__:
        pytest.skip("this PyYAML is built without libyaml")
    assert issubclass(loading.YAML_LOADER, yaml.CSafeLoader)
    assert not issubclass(loading.YAML_LOADER, yaml.SafeLoader)


def test_the_pure_python_yaml_loader_is_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yaml, "__with_libyaml__", False)
    assert loading.yaml_loader() is loading.PureYamlLoader
    assert issubclass(loading.PureYamlLoader, yaml.SafeLoader)


PRETTY_JSON = json.dumps({**VALID, "rescanIntervalSeconds": 10}, indent=2)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            PRETTY_JSON.replace('  "rescanIntervalSeconds": 10', '  "hostAgent": {},\n  "x": 1'),
            "not valid JSON at line 24: key 'hostAgent' appears twice (first at line 2)",
            id="top level",
        ),
        pytest.param(
            PRETTY_JSON.replace('"type": "access",', '"type": "access", "type": "trunk",'),
            "not valid JSON at line 17: key 'type' appears twice (first at line 17)",
            id="in a list item",
        ),
        pytest.param(
            '{"s": "}{,:\\"[", "n": [1, -2.5e3, true, null, {}, [[]]],\n'
            ' "a": {"k": [{"k": 1}], "k2": 2},\n "\\u0061": 3}',
            "not valid JSON at line 3: key 'a' appears twice (first at line 2)",
            id="after strings, numbers and nesting, by an escape",
        ),
    ],
)
def test_a_repeated_json_key_is_an_error(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "c.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == [expected]


def test_json_keys_of_sibling_objects_are_not_repeats(tmp_path: Path) -> None:
    raw = {**VALID, "resourceList": [RED, {**RED, "resourceName": "blue"}]}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(raw, indent=1))
    assert [pool.resource_name for pool in load_config(path).resource_list] == ["red", "blue"]


def test_a_repeated_json_key_the_walk_misses_is_still_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loading, "_find_repeated_json_key", lambda text: None)
    path = tmp_path / "c.json"
    path.write_text('{"a": {"b": 1, "b": 2}}')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == ["not valid JSON: key 'b' appears twice in one object"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "vendors: [8086]",
            "resourceList[0].selectors[0].vendors[0]: 8086 is a number, not a hex ID: quote "
            'each ID, e.g. ["8086", "0154"] (YAML reads unquoted digits as a number, and a '
            "leading 0 as octal)",
            id="decimal",
        ),
        pytest.param(
            'vendors: ["8086"], devices: ["1889", 0154]',
            "resourceList[0].selectors[0].devices[1]: 108 is a number, not a hex ID: quote "
            'each ID, e.g. ["8086", "0154"] (YAML reads unquoted digits as a number, and a '
            "leading 0 as octal)",
            id="octal",
        ),
    ],
)
def test_an_unquoted_hex_id_says_to_quote_it(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "resourceList:\n- resourceName: red\n"
        f"  selectors: [{{{text}}}]\n  bridgePort: {{logicalBridges: [a]}}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == [expected]
