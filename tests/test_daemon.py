"""The daemon against the simulated kubelet: registration, ListAndWatch, rescan, restarts."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import time

import grpc
import pytest
from simnode import BLUE, GREEN, RED, Node, eventually

from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2 as dp
from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from xpu_bridge.common.errors import StartupError
from xpu_bridge.config import ConfigError
from xpu_bridge.daemon import Daemon
from xpu_bridge.kubelet.endpoint import socket_name
from xpu_bridge.sim.kubelet import Container


async def test_every_pool_registers_with_options_and_private_socket(node: Node) -> None:
    await node.start_daemon()
    for resource in (RED, BLUE, GREEN):
        record = await node.kubelet.wait_registered(resource)
        assert record.version == "v1beta1"
        assert record.options.get_preferred_allocation_available
        path = node.kubelet_dir / record.endpoint
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


async def test_list_and_watch_has_ids_health_and_numa(node: Node) -> None:
    await node.start_daemon()
    red = node.kubelet.devices(RED)
    assert [d.id for d in red] == [f"0000:3b:02.{i}" for i in range(8)] + [
        f"0000:3b:0a.{i}" for i in range(4)
    ]
    assert {d.health for d in red} == {"Healthy"}
    assert {d.id: d.numa_nodes for d in red}["0000:3b:02.0"] == (0,)
    assert {d.id: d.numa_nodes for d in red}["0000:3b:0a.0"] == (1,)
    assert [d.id for d in node.kubelet.devices(BLUE)] == [f"0000:3b:0a.{i}" for i in range(4, 8)]
    assert [d.id for d in node.kubelet.devices(GREEN)] == [
        "mlx5_core.sf.2",
        "mlx5_core.sf.3",
        "mlx5_core.sf.4",
        "mlx5_core.sf.5",
    ]


async def test_rescan_updates_list_and_watch_without_restart(node: Node) -> None:
    node.raw_config["rescanIntervalSeconds"] = 0.2
    await node.start_daemon()
    pf0, pf1 = node.sysfs.pfs
    node.sysfs.remove_vf(pf0, 3)
    node.sysfs.add_vfs(pf1, 1)  # index 8 on ens1f1 joins blue
    await node.kubelet.wait_for_devices(
        RED, lambda ds: "0000:3b:02.3" not in {d.id for d in ds}, timeout=10
    )
    await node.kubelet.wait_for_devices(
        BLUE, lambda ds: "0000:3b:0b.0" in {d.id for d in ds}, timeout=10
    )
    assert len(node.kubelet.devices(RED)) == 11


async def test_kubelet_restart_reregisters_every_pool_within_a_second(node: Node) -> None:
    await node.start_daemon()
    await node.kubelet.restart()
    restarted = time.monotonic()
    for resource in (RED, BLUE, GREEN):
        record = await node.kubelet.wait_registered(resource, after=restarted, timeout=10)
        assert record.at - restarted < 1.0, f"{resource} took {record.at - restarted:.2f}s"
    await node.kubelet.wait_for_devices(RED, lambda ds: len(ds) == 12)
    assert (node.kubelet_dir / socket_name(RED)).exists()


async def test_lost_stream_leads_to_registering_again(node: Node) -> None:
    await node.start_daemon()
    before = len([r for r in node.kubelet.registrations if r.resource_name == RED])
    await node.kubelet.drop_stream(RED)
    assert {d.health for d in node.kubelet.devices(RED)} == {"Unhealthy"}
    await eventually(
        lambda: len([r for r in node.kubelet.registrations if r.resource_name == RED]) > before
    )
    await node.kubelet.wait_for_devices(
        RED, lambda ds: len(ds) == 12 and all(d.health == "Healthy" for d in ds)
    )


async def test_missing_logical_bridge_stops_start_with_its_name(node: Node) -> None:
    node.raw_config["resourceList"][0]["bridgePort"]["logicalBridges"] = [
        "//network.opiproject.org/bridges/nope"
    ]
    daemon = await Daemon.create(node.options())
    with pytest.raises(StartupError) as caught:
        await daemon.start()
    await daemon.stop()
    assert "//network.opiproject.org/bridges/nope does not exist" in str(caught.value)
    assert not any(node.kubelet_dir.glob("xpu-bridge-*.sock"))


async def test_overlapping_pools_are_a_startup_error(node: Node) -> None:
    node.raw_config["resourceList"][1]["selectors"] = [{"pfNames": ["ens1f1"]}]
    with pytest.raises(ConfigError) as caught:
        await Daemon.create(node.options())
    (problem,) = caught.value.problems
    assert problem.startswith(
        "resourceList: opi.io/red (resourceList[0]) and opi.io/blue (resourceList[1]) both "
        "select 4 devices (0000:3b:0a.0, 0000:3b:0a.1, 0000:3b:0a.2 and 1 more)"
    )
    assert not any(node.kubelet_dir.glob("xpu-bridge-*.sock"))


async def test_preferred_allocation_over_grpc_spreads_and_honours_must_include(
    node: Node,
) -> None:
    await node.start_daemon()
    channel = grpc.aio.insecure_channel(f"unix://{node.kubelet_dir / socket_name(RED)}")
    try:
        stub = dp_grpc.DevicePluginStub(channel)
        ids = [d.id for d in node.kubelet.devices(RED)]
        reply = await stub.GetPreferredAllocation(
            dp.PreferredAllocationRequest(
                container_requests=[
                    dp.ContainerPreferredAllocationRequest(
                        available_deviceIDs=ids,
                        must_include_deviceIDs=["0000:3b:02.5"],
                        allocation_size=4,
                    )
                ]
            )
        )
    finally:
        await channel.close()
    (picked,) = reply.container_responses
    assert list(picked.deviceIDs) == [
        "0000:3b:02.5",
        "0000:3b:0a.0",
        "0000:3b:02.0",
        "0000:3b:0a.1",
    ]


async def test_stop_removes_sockets(node: Node) -> None:
    await node.start_daemon()
    assert (node.kubelet_dir / socket_name(RED)).exists()
    await node.stop_daemon()
    assert not any(node.kubelet_dir.glob("xpu-bridge-*.sock"))
    await asyncio.sleep(0)


async def test_kubelet_restart_counts_even_after_a_gap_without_its_socket(node: Node) -> None:
    daemon = await node.start_daemon()
    await node.kubelet.stop()
    assert not (node.kubelet_dir / "kubelet.sock").exists()
    await asyncio.sleep(0.3)  # several registrar polls find no kubelet.sock at all
    await node.kubelet.start()
    started = time.monotonic()
    await eventually(lambda: daemon.registrar.kubelet_restarts == 1)
    assert daemon.registrar.last_kubelet_restart is not None
    await node.kubelet.wait_registered(RED, after=started)


async def test_registration_survives_the_kubelet_dir_vanishing(node: Node) -> None:
    daemon = await node.start_daemon()
    await node.kubelet.stop()
    shutil.rmtree(node.kubelet_dir)
    await asyncio.sleep(0.3)  # the registrar cannot serve its sockets again meanwhile
    node.kubelet_dir.mkdir()
    await node.kubelet.start()
    started = time.monotonic()
    for resource in (RED, BLUE, GREEN):
        await node.kubelet.wait_registered(resource, after=started, timeout=15)
    assert daemon.status.not_live() is None


async def test_stop_leaves_ports_attached_for_running_pods(node: Node) -> None:
    await node.start_daemon()
    await node.kubelet.admit_pod("p", containers=[Container("c", {RED: 1})])
    await node.stop_daemon()
    assert list(node.agent.ports) == ["vf-0000-3b-02-0"]
    assert node.agent.calls["DeleteBridgePort"] == 0
