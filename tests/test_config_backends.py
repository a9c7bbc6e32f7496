"""Config for the second backend: hostAgent.api, VLAN pools, name templates, mode, pfs; and
how the host agent is reached (plaintext only on loopback unless hostAgent.insecure)."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from xpu_bridge.config import ConfigError, parse_config

VSP: dict[str, Any] = {
    "hostAgent": {"api": "dpu-vendor-plugin"},
    "resourceList": [
        {"resourceName": "red", "selectors": [{"pfNames": ["ens1f0"]}], "bridgePort": {"vlan": 10}}
    ],
}
OPI_BRIDGE = {"logicalBridges": ["//network.opiproject.org/bridges/red"]}


def vsp(**changes: Any) -> dict[str, Any]:
    raw = copy.deepcopy(VSP)
    for path, value in changes.items():
        node = raw
        keys = path.split("__")
        for key in keys[:-1]:
            node = node[int(key)] if key.isdigit() else node[key]
        node[keys[-1]] = value
    return raw


def problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    return caught.value.problems


def test_a_vendor_plugin_config_has_its_socket_template_and_vlan() -> None:
    config = parse_config(VSP)
    assert config.vendor_plugin
    assert config.host_agent.endpoint == (
        "unix:///var/run/dpu-daemon/vendor-plugin/vendor-plugin.sock"
    )
    assert config.host_agent.port_name_template == "host{pf}-{vf}"
    assert config.resource_list[0].bridge_port.on_the_wire == ("10",)
    assert config.mode == "host"


def test_opi_evpn_bridge_stays_the_default() -> None:
    config = parse_config({"resourceList": [{**VSP["resourceList"][0], "bridgePort": OPI_BRIDGE}]})
    assert not config.vendor_plugin
    assert config.host_agent.endpoint == "unix:///var/run/xpu-host-agent/agent.sock"


@pytest.mark.parametrize("vlan", [0, 1, 4095, 5000, -3])
def test_a_vlan_outside_2_to_4094_is_a_config_error(vlan: int) -> None:
    (problem,) = problems(vsp(resourceList__0__bridgePort={"vlan": vlan}))
    assert problem.startswith("resourceList[0].bridgePort.vlan: Input should be")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(
            {"resourceList": [{**VSP["resourceList"][0], "bridgePort": {"vlan": 10}}]},
            "resourceList[0].bridgePort.vlan: a VLAN is what a dpu-vendor-plugin takes",
            id="vlan on opi-evpn-bridge",
        ),
        pytest.param(
            vsp(resourceList__0__bridgePort=OPI_BRIDGE),
            "resourceList[0].bridgePort.logicalBridges: a dpu-vendor-plugin takes a VLAN",
            id="logical bridges on a vendor plugin",
        ),
        pytest.param(
            vsp(resourceList__0__bridgePort={}),
            "resourceList[0].bridgePort.vlan: is required with hostAgent.api dpu-vendor-plugin",
            id="no vlan on a vendor plugin",
        ),
        pytest.param(
            vsp(resourceList__0__bridgePort={"vlan": 10, "type": "trunk"}),
            "resourceList[0].bridgePort.type: a VLAN port is an access port",
            id="trunk vlan",
        ),
        pytest.param(
            vsp(hostAgent={"api": "dpu-vendor-plugin", "endpoint": "10.0.0.1:50051"}),
            "hostAgent.endpoint: a dpu-vendor-plugin listens on a unix socket",
            id="vendor plugin over tcp",
        ),
        pytest.param(
            vsp(hostAgent={"api": "dpu-vendor-plugin", "portNameTemplate": "host{pf}"}),
            "hostAgent.portNameTemplate: 'host{pf}' names every function alike",
            id="template without an index",
        ),
        pytest.param(
            vsp(hostAgent={"api": "dpu-vendor-plugin", "portNameTemplate": "h{pf}-{port}"}),
            "hostAgent.portNameTemplate: 'h{pf}-{port}' uses ['port']; the placeholders are",
            id="unknown placeholder",
        ),
        pytest.param(
            vsp(hostAgent={"api": "dpu-vendor-plugin", "portNameTemplate": "h{vf}-{sfnum}"}),
            "hostAgent.portNameTemplate: 'h{vf}-{sfnum}': use {vf} or {sfnum}, not both",
            id="both indexes",
        ),
        pytest.param(
            vsp(hostAgent={"api": "dpu-vendor-plugin", "portNameTemplate": "x{pf}{vf}"}),
            "hostAgent.portNameTemplate: 'x{pf}{vf}': two placeholders side by side",
            id="adjacent placeholders",
        ),
        pytest.param(
            vsp(hostAgent={"api": "dpu-vendor-plugin", "portNameTemplate": "h/{pf}-{vf}"}),
            "hostAgent.portNameTemplate: 'h/{pf}-{vf}': a port name takes letters, digits",
            id="slash in the template",
        ),
        pytest.param(
            vsp(resourceList__0__deviceType="auxNetDevice"),
            "resourceList[0].deviceType: auxNetDevice ports are named by {sfnum}",
            id="SF pool with a VF template",
        ),
        pytest.param(
            vsp(portIdPrefix="node7"),
            "portIdPrefix: applies to opi-evpn-bridge port IDs",
            id="opi prefix on a vendor plugin",
        ),
        pytest.param(
            {"mode": "dpu", "resourceList": [{**VSP["resourceList"][0], "bridgePort": OPI_BRIDGE}]},
            "mode: dpu needs hostAgent.api dpu-vendor-plugin",
            id="dpu mode on opi-evpn-bridge",
        ),
        pytest.param(
            vsp(resourceList__0__networkFunction=True),
            "resourceList[0].networkFunction: network functions need mode dpu",
            id="network function in host mode",
        ),
        pytest.param(
            vsp(pfs=[{"pfName": "ens1f0", "numVfs": 4}, {"pfName": "ens1f1", "numVfs": 4}]),
            "pfs: a vendor plugin creates VFs with one SetNumVfs for its own PF",
            id="two PFs on a vendor plugin",
        ),
        pytest.param(
            vsp(pfs=[{"pfName": "ens1f0", "pciAddress": "0000:3b:00.0", "numVfs": 4}]),
            "pfs[0].pfName: name the PF by pfName or by pciAddress (one of them)",
            id="PF named twice",
        ),
        pytest.param(
            vsp(pfs=[{"pfName": "ens1f0", "numVfs": 5000}]),
            "pfs[0].numVfs: Input should be less than or equal to 4096",
            id="too many VFs",
        ),
    ],
)
def test_combinations_that_cannot_work_name_their_path(raw: dict[str, Any], expected: str) -> None:
    found = problems(raw)
    assert any(problem.startswith(expected) for problem in found), found


def test_every_cross_section_problem_is_its_own_line() -> None:
    raw = vsp(portIdPrefix="node7", resourceList__0__bridgePort=OPI_BRIDGE)
    found = problems(raw)
    assert len(found) == 2
    assert found[0].startswith("portIdPrefix: ")
    assert found[1].startswith("resourceList[0].bridgePort.logicalBridges: ")


def test_dpu_mode_with_a_network_function_pool() -> None:
    config = parse_config(vsp(mode="dpu", resourceList__0__networkFunction=True))
    assert config.mode == "dpu" and config.resource_list[0].network_function


def test_pfs_by_name_or_address() -> None:
    config = parse_config(vsp(pfs=[{"pciAddress": "0000:3B:00.0", "numVfs": 8}]))
    assert config.pfs[0].pci_address == "0000:3b:00.0" and config.pfs[0].num_vfs == 8


def test_the_configmaps_vendor_plugin_example_is_a_valid_config() -> None:
    from pathlib import Path

    import yaml

    manifest = yaml.safe_load(
        (Path(__file__).parents[1] / "manifests/base/02-configmap.yaml").read_text()
    )
    text = manifest["data"]["config.yaml"]
    example = text.split("# The same node with a dpu-operator vendor plugin instead", 1)[1]
    lines = [line[2:] for line in example.splitlines()[1:] if line.startswith("#  ")]
    config = parse_config(yaml.safe_load("\n".join(lines)))
    assert config.vendor_plugin and config.resource_list[0].bridge_port.vlan == 10
    assert config.pfs[0].num_vfs == 8


# --- plaintext TCP to the host agent ---------------------------------------------------------

PLAINTEXT_FIX = (
    "set hostAgent.tls (mTLS) or, to accept plaintext on the network, hostAgent.insecure: true"
)
TLS = {"caFile": "/etc/xpu-bridge/tls/ca.crt"}


def opi(**host_agent: Any) -> dict[str, Any]:
    return {
        "hostAgent": host_agent,
        "resourceList": [{**VSP["resourceList"][0], "bridgePort": OPI_BRIDGE}],
    }


def plaintext_refused(endpoint: str) -> str:
    return f"hostAgent.endpoint: {endpoint} is not loopback, and gRPC to it would be plaintext: "


@pytest.mark.parametrize(
    ("host_agent", "refused"),
    [
        pytest.param({"endpoint": "10.0.0.1:50051"}, plaintext_refused("10.0.0.1:50051"), id="ip"),
        pytest.param(
            {"endpoint": "agent.example:50051"},
            plaintext_refused("agent.example:50051"),
            id="dns name",
        ),
        pytest.param(
            {"endpoint": "[fd00::2]:50051"}, plaintext_refused("[fd00::2]:50051"), id="ipv6"
        ),
        pytest.param(
            {"endpoint": "128.0.0.1:50051"}, plaintext_refused("128.0.0.1:50051"), id="not 127/8"
        ),
        pytest.param({"endpoint": "[::1]:50051"}, None, id="ipv6 loopback"),
        pytest.param({"endpoint": "127.0.0.1:50051"}, None, id="ipv4 loopback"),
        pytest.param({"endpoint": "127.3.4.5:50051"}, None, id="anywhere in 127/8"),
        pytest.param({"endpoint": "localhost:50051"}, None, id="localhost"),
        pytest.param({"endpoint": "10.0.0.1:50051", "tls": TLS}, None, id="tls"),
        pytest.param({"endpoint": "10.0.0.1:50051", "insecure": True}, None, id="insecure"),
        pytest.param(
            {"endpoint": "10.0.0.1:50051", "insecure": True, "tls": TLS},
            "hostAgent.insecure: insecure: true contradicts tls (mTLS): remove one of the two",
            id="insecure and tls",
        ),
        pytest.param(
            {"endpoint": "10.0.0.1:50051", "insecure": "yes"},
            "hostAgent.insecure: Input should be a valid boolean",
            id="insecure must be a real boolean",
        ),
    ],
)
def test_plaintext_tcp_off_loopback_must_be_asked_for(
    host_agent: dict[str, Any], refused: str | None
) -> None:
    if refused is None:
        assert parse_config(opi(**host_agent)).host_agent.endpoint == host_agent["endpoint"]
        return
    (problem,) = problems(opi(**host_agent))
    assert problem.startswith(refused), problem
    if problem.startswith("hostAgent.endpoint"):
        assert problem.endswith(PLAINTEXT_FIX)


def test_insecure_is_off_unless_set() -> None:
    assert not parse_config(opi(endpoint="127.0.0.1:50051")).host_agent.insecure
    assert parse_config(opi(endpoint="10.0.0.1:50051", insecure=True)).host_agent.insecure


def test_check_config_refuses_plaintext_to_the_network_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "plaintext.yaml"
    config.write_text(yaml.safe_dump(opi(endpoint="10.0.0.1:50051")))
    result = subprocess.run(
        [sys.executable, "-m", "xpu_bridge.cli", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"xpu-bridge: config {config}: {plaintext_refused('10.0.0.1:50051')}{PLAINTEXT_FIX}"
    ]
