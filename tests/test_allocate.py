"""Allocate end to end: simulated kubelet -> daemon -> simulated OPI host agent."""

from __future__ import annotations

import json
import time

import grpc
import pytest
from simnode import BLUE, BRIDGES, GREEN, RED, Node, eventually

from opi_protos.evpn_gw import l2_xpu_infra_mgr_pb2 as opi
from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2 as dp
from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from xpu_bridge.kubelet.endpoint import socket_name
from xpu_bridge.sim.kubelet import AdmissionError, Container

UP = opi.BP_OPER_STATUS_UP


def sysfs_mac(node: Node, address: str) -> bytes:
    (ifname,) = [p.name for p in (node.root / "sys/bus/pci/devices" / address / "net").iterdir()]
    text = (node.root / "sys/bus/pci/devices" / address / "net" / ifname / "address").read_text()
    return bytes.fromhex(text.strip().replace(":", ""))


async def test_allocate_attaches_port_and_answers_env_and_devinfo(node: Node) -> None:
    await node.start_daemon()
    (assignment,) = await node.kubelet.admit_pod("web", containers=[Container("app", {RED: 1})])
    (device,) = assignment.device_ids
    port_id = "vf-" + device.replace(":", "-").replace(".", "-")
    port = node.agent.ports[port_id]
    assert port.status.oper_status == UP
    assert bytes(port.spec.mac_address) == sysfs_mac(node, device)
    assert port.spec.ptype == opi.BRIDGE_PORT_TYPE_ACCESS
    assert list(port.spec.logical_bridges) == [BRIDGES + "red"]
    envs = dict(assignment.response.envs)
    assert envs["PCIDEVICE_OPI_IO_RED"] == device
    info = json.loads(envs["PCIDEVICE_OPI_IO_RED_INFO"])[device]
    assert info["generic"] == {"deviceID": device}
    assert info["xpu"]["bridgePort"] == port.name
    devinfo = json.loads((node.devinfo_dir / f"opi.io-red-{device}-device.json").read_text())
    assert devinfo["type"] == "pci" and devinfo["version"] == "1.1.0"
    assert devinfo["pci"]["pci-address"] == device
    assert devinfo["pci"]["pf-pci-address"] == "0000:3b:00.0"
    assert node.agent.calls["CreateBridgePort"] == 1


async def test_trunk_port_and_sf(node: Node) -> None:
    await node.start_daemon()
    (blue,) = await node.kubelet.admit_pod("b", containers=[Container("c", {BLUE: 1})])
    (green,) = await node.kubelet.admit_pod("g", containers=[Container("c", {GREEN: 1})])
    trunk = node.agent.ports["vf-" + blue.device_ids[0].replace(":", "-").replace(".", "-")]
    assert trunk.spec.ptype == opi.BRIDGE_PORT_TYPE_TRUNK
    assert sorted(trunk.spec.logical_bridges) == [BRIDGES + "blue-a", BRIDGES + "blue-b"]
    (sf,) = green.device_ids
    assert sf.startswith("mlx5_core.sf.")
    sf_ports = [p for p in node.agent.ports if p.startswith("sf-")]
    assert len(sf_ports) == 1 and sf_ports[0].startswith("sf-0000-3b-00-")
    assert dict(green.response.envs)["PCIDEVICE_OPI_IO_GREEN"] == sf
    devinfo = json.loads((node.devinfo_dir / f"opi.io-green-{sf}-device.json").read_text())
    assert devinfo["type"] == "auxiliary"


async def test_allocate_waits_for_async_up(node: Node) -> None:
    await node.start_daemon()
    node.agent.up_delay = 0.4
    started = time.monotonic()
    (assignment,) = await node.kubelet.admit_pod("slow", containers=[Container("c", {RED: 1})])
    assert time.monotonic() - started >= 0.35
    port_id = "vf-" + assignment.device_ids[0].replace(":", "-").replace(".", "-")
    assert node.agent.ports[port_id].status.oper_status == UP
    assert node.agent.calls["GetBridgePort"] >= 1
    assert node.agent.calls["CreateBridgePort"] == 1


async def test_same_device_for_init_and_app_container_is_fine(node: Node) -> None:
    await node.start_daemon()
    assignments = await node.kubelet.admit_pod(
        "two",
        init_containers=[Container("init", {RED: 1})],
        containers=[Container("app", {RED: 1})],
    )
    (init, app) = assignments
    assert init.device_ids == app.device_ids
    assert len(node.agent.ports) == 1
    assert node.agent.calls["DeleteBridgePort"] == 0


async def test_unknown_device_is_invalid_argument_without_xpu_call(node: Node) -> None:
    await node.start_daemon()
    calls_before = sum(node.agent.calls.values())
    channel = grpc.aio.insecure_channel(f"unix://{node.kubelet_dir / socket_name(RED)}")
    try:
        stub = dp_grpc.DevicePluginStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Allocate(
                dp.AllocateRequest(
                    container_requests=[
                        dp.ContainerAllocateRequest(devices_ids=["0000:3b:02.0", "0000:99:00.0"])
                    ]
                )
            )
    finally:
        await channel.close()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "0000:99:00.0" in caught.value.details()
    assert sum(node.agent.calls.values()) == calls_before


async def test_agent_down_fails_pod_with_device_and_cause_then_recovers(node: Node) -> None:
    await node.start_daemon()
    node.agent.set_unavailable()
    with pytest.raises(AdmissionError) as caught:
        await node.kubelet.admit_pod("down", containers=[Container("c", {RED: 1})])
    message = str(caught.value)
    assert "device 0000:3b:02.0" in message
    assert "UNAVAILABLE" in message
    assert f"is the host agent running and reachable at unix://{node.root}" in message
    assert not node.kubelet.assignments(pod="down")
    node.agent.clear_unavailable()
    (assignment,) = await node.kubelet.admit_pod("up", containers=[Container("c", {RED: 1})])
    assert assignment.device_ids == ("0000:3b:02.0",)


async def test_transient_errors_are_retried_within_the_budget(node: Node) -> None:
    await node.start_daemon()
    node.agent.fail_next("CreateBridgePort", 2, grpc.StatusCode.UNAVAILABLE)
    (assignment,) = await node.kubelet.admit_pod("retry", containers=[Container("c", {RED: 1})])
    assert assignment.device_ids
    assert node.agent.calls["CreateBridgePort"] == 3


async def test_validation_errors_are_not_retried(node: Node) -> None:
    await node.start_daemon()
    node.agent.fail_next("CreateBridgePort", 1, grpc.StatusCode.UNKNOWN)
    with pytest.raises(AdmissionError, match=r"UNKNOWN.*check resourceList\[\]\.bridgePort"):
        await node.kubelet.admit_pod("bad", containers=[Container("c", {RED: 1})])
    assert node.agent.calls["CreateBridgePort"] == 1


async def test_failure_of_one_device_rolls_back_the_others(node: Node) -> None:
    await node.start_daemon()
    # Another port already holds the MAC of 0000:3b:0a.0 on the red bridge, so its Create fails.
    await node.agent_client_create("squatter", sysfs_mac(node, "0000:3b:0a.0"), BRIDGES + "red")
    with pytest.raises(AdmissionError) as caught:
        await node.kubelet.admit_pod("pair", containers=[Container("c", {RED: 2})])
    assert "device 0000:3b:0a.0" in str(caught.value)
    assert "0000:3b:02.0" not in str(caught.value)
    await eventually(lambda: set(node.agent.ports) == {"squatter"})
    assert not list(node.devinfo_dir.glob("opi.io-red-*"))


async def test_port_being_deleted_is_waited_out_then_recreated(node: Node) -> None:
    await node.start_daemon()
    (first,) = await node.kubelet.admit_pod("a", containers=[Container("c", {RED: 1})])
    node.kubelet.delete_pod("a")
    port_id = "vf-" + first.device_ids[0].replace(":", "-").replace(".", "-")
    node.agent.delete_delay = 0.4
    await node.agent_client_delete(node.agent.ports[port_id].name)
    assert node.agent.ports[port_id].status.oper_status == opi.BP_OPER_STATUS_TO_BE_DELETED
    (second,) = await node.kubelet.admit_pod("b", containers=[Container("c", {RED: 1})])
    assert second.device_ids == first.device_ids
    assert node.agent.ports[port_id].status.oper_status == UP
    assert node.agent.calls["CreateBridgePort"] >= 3


async def test_port_with_a_different_spec_is_replaced(node: Node) -> None:
    await node.start_daemon()
    await node.agent_client_create("vf-0000-3b-02-0", b"\x02\x00\x00\x00\x00\x01", BRIDGES + "red")
    (assignment,) = await node.kubelet.admit_pod("r", containers=[Container("c", {RED: 1})])
    assert assignment.device_ids == ("0000:3b:02.0",)
    port = node.agent.ports["vf-0000-3b-02-0"]
    assert bytes(port.spec.mac_address) == sysfs_mac(node, "0000:3b:02.0")
    assert port.status.oper_status == UP


async def test_vfio_bound_vf_gets_device_nodes(node: Node) -> None:
    pf0, _ = node.sysfs.pfs
    node.sysfs.set_vf_driver(pf0, 0, "vfio-pci")
    await node.start_daemon()
    (assignment,) = await node.kubelet.admit_pod("dpdk", containers=[Container("c", {RED: 1})])
    assert assignment.device_ids == ("0000:3b:02.0",)
    group = (node.root / "sys/bus/pci/devices/0000:3b:02.0/iommu_group").resolve().name
    nodes = {(d.container_path, d.host_path, d.permissions) for d in assignment.response.devices}
    assert nodes == {
        ("/dev/vfio/vfio", "/dev/vfio/vfio", "rw"),
        (f"/dev/vfio/{group}", f"/dev/vfio/{group}", "rw"),
    }
    info = json.loads(dict(assignment.response.envs)["PCIDEVICE_OPI_IO_RED_INFO"])
    assert info["0000:3b:02.0"]["vfio"]["dev-mount"] == f"/dev/vfio/{group}"
