"""The dpu-operator vendor plugin backend end to end: simulated kubelet, daemon, SimVendorPlugin.

Everything goes over real unix sockets; the daemon runs in process, or as a `xpu-bridge run`
subprocess where a test kills it with -9. Port names come from hostAgent.portNameTemplate
(`host{pf}-{vf}`, {pf} the PF's position by PCI address), which the tests compute from sysfs on
their own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest
import yaml
from simnode import BLUE, NF, RED, Node, VspNode, eventually, vsp_node_config

from opi_protos.dpu_api import api_pb2 as vendor
from opi_protos.dpu_api import api_pb2_grpc as vendor_grpc
from opi_protos.evpn_gw import l2_xpu_infra_mgr_pb2 as opi
from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2 as dp
from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from xpu_bridge.kubelet.endpoint import socket_name
from xpu_bridge.sim.kernel import SimKernel
from xpu_bridge.sim.kubelet import AdmissionError, Assignment, Container
from xpu_bridge.sim.sysfs import FakeSysfs
from xpu_bridge.sim.vendor_plugin import CREATE, DELETE, NfCall

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "xpu_bridge.cli"]
INTERVAL = 0.2  # release.intervalSeconds of vsp_node_config
WAIT = 15.0  # generous: CI machines are noisy
CREATE_PORT, DELETE_PORT = "CreateBridgePort", "DeleteBridgePort"
# Blue on the VF-creation node: whatever ens1f1 has beyond red's VFs 0-3.
BLUE_POOL = {"resourceName": "blue", "selectors": [{"pfNames": ["ens1f1#4-15"]}]}
# Every red device's port name: ens1f0's 8 VFs and ens1f1's VFs 0-3.
RED_NAMES = frozenset({f"host0-{i}" for i in range(8)} | {f"host1-{i}" for i in range(4)})


# --- what the tests know about the node, computed from sysfs ------------------------------


def vf_index(sysfs: FakeSysfs, address: str) -> tuple[int, int]:
    """(the PF's position among the node's PFs by PCI address, the VF's index on it)."""
    for position, pf in enumerate(sorted(sysfs.pfs, key=lambda pf: pf.address)):
        for index, vf in sysfs.vfs(pf).items():
            if vf == address:
                return position, index
    raise AssertionError(f"{address} is not a VF of the node")


def name_of(node: Node, address: str) -> str:
    """The port name the template `host{pf}-{vf}` gives the VF."""
    position, index = vf_index(node.sysfs, address)
    return f"host{position}-{index}"


def mac_of(node: Node, address: str) -> str:
    """The VF's MAC as sysfs shows it on its netdev."""
    (netdev,) = (node.root / "sys/bus/pci/devices" / address / "net").iterdir()
    return (netdev / "address").read_text().strip()


def env_info(assignment: Assignment, resource: str = RED) -> dict[str, dict[str, object]]:
    variable = "PCIDEVICE_" + resource.replace(".", "_").replace("/", "_").upper() + "_INFO"
    info: dict[str, dict[str, object]] = json.loads(assignment.response.envs[variable])
    return info


async def admit(node: Node, pod: str, resource: str = RED, count: int = 1) -> Assignment:
    (assignment,) = await node.kubelet.admit_pod(
        pod, containers=[Container("c", {resource: count})]
    )
    return assignment


async def swept(node: Node) -> None:
    """The start-up sweep (one Delete per device no container holds) is done."""
    assert node.daemon is not None
    sweep = node.daemon.reconciler.parts.sweep
    await eventually(lambda: not sweep.pending, timeout=WAIT)


def calls_since(node: VspNode, mark: int, method: str | None = None) -> list[tuple[str, str]]:
    return [call for call in node.vsp.call_log[mark:] if method in (None, call[0])]


def with_network_functions(node: VspNode) -> None:
    node.raw_config = vsp_node_config(node.root, network_functions=True)


# --- ports by name ----------------------------------------------------------------------


async def test_each_device_gets_its_own_port_named_by_the_template(vsp_node: VspNode) -> None:
    await vsp_node.start_daemon()
    await swept(vsp_node)
    pair = await admit(vsp_node, "pair", count=2)
    one = await admit(vsp_node, "one")
    two = await admit(vsp_node, "two")
    devices = [*pair.device_ids, *one.device_ids, *two.device_ids]
    assert len(set(devices)) == 4
    names = {device: name_of(vsp_node, device) for device in devices}
    assert len(set(names.values())) == 4
    assert set(vsp_node.vsp.ports) == set(names.values())
    assert {"host0-0", "host0-1", "host1-0"} <= set(names.values())  # spread over both PFs
    for device, name in names.items():
        port = vsp_node.vsp.ports[name]
        assert port.name == name
        assert port.spec.ptype == opi.BRIDGE_PORT_TYPE_ACCESS
        assert list(port.spec.logical_bridges) == ["10"]
        assert bytes(port.spec.mac_address) == bytes.fromhex(
            mac_of(vsp_node, device).replace(":", "")
        )
    for assignment in (pair, one, two):
        info = env_info(assignment)
        assert set(info) == set(assignment.device_ids)
        for device in assignment.device_ids:
            xpu = info[device]["xpu"]
            assert xpu == {
                "bridgePort": names[device],
                "mac": mac_of(vsp_node, device),
                "logicalBridges": ["10"],
            }
    assert Counter(what for _, what in calls_since(vsp_node, 0, CREATE_PORT)) == Counter(
        names.values()
    )


async def test_a_deleted_pods_port_is_deleted_by_the_reconciler(vsp_node: VspNode) -> None:
    await vsp_node.start_daemon()
    await swept(vsp_node)
    (kept,) = (await admit(vsp_node, "keep")).device_ids
    (gone,) = (await admit(vsp_node, "gone")).device_ids
    info = vsp_node.devinfo_dir / f"opi.io-red-{gone}-device.json"
    assert info.exists()
    mark = len(vsp_node.vsp.call_log)
    vsp_node.kubelet.delete_pod("gone")
    await eventually(lambda: name_of(vsp_node, gone) not in vsp_node.vsp.ports, timeout=WAIT)
    assert vsp_node.daemon is not None
    stats = vsp_node.daemon.reconciler.stats
    # The plugin forgot the port before the daemon had its answer: wait for the daemon too.
    await eventually(lambda: stats.releases[(RED, "unheld")] >= 1, timeout=WAIT)
    await asyncio.sleep(5 * INTERVAL)  # and later passes leave the rest alone
    assert stats.releases[(RED, "unheld")] == 1
    assert set(vsp_node.vsp.ports) == {name_of(vsp_node, kept)}
    assert calls_since(vsp_node, mark, DELETE_PORT) == [(DELETE_PORT, name_of(vsp_node, gone))]
    assert not info.exists()
    assert (vsp_node.devinfo_dir / f"opi.io-red-{kept}-device.json").exists()


async def test_kill_9_then_restart_sweeps_the_deleted_pods_ports_and_keeps_held_ones(
    vsp_node: VspNode,
) -> None:
    args = vsp_node.run_command()
    logs = [vsp_node.root / "first.log", vsp_node.root / "second.log"]

    async def start(log: Path) -> asyncio.subprocess.Process:
        after = time.monotonic()
        with log.open("wb") as stderr:  # a file: a pipe nobody reads could block the daemon
            process = await asyncio.create_subprocess_exec(
                *args, stdout=asyncio.subprocess.DEVNULL, stderr=stderr
            )
        await vsp_node.kubelet.wait_registered(RED, after=after, timeout=30)
        await vsp_node.kubelet.wait_for_devices(
            RED, lambda ds: ds and all(d.health == "Healthy" for d in ds), timeout=30
        )
        return process

    first = await start(logs[0])
    try:
        gone = [name_of(vsp_node, (await admit(vsp_node, p)).device_ids[0]) for p in ("a", "b")]
        kept = name_of(vsp_node, (await admit(vsp_node, "kept")).device_ids[0])
        assert {*gone, kept} <= set(vsp_node.vsp.ports)
    finally:
        first.send_signal(signal.SIGKILL)
        await first.wait()
    vsp_node.kubelet.delete_pod("a")
    vsp_node.kubelet.delete_pod("b")
    kept_port = vsp_node.vsp.ports[kept]
    mark = len(vsp_node.vsp.call_log)
    second = await start(logs[1])
    try:
        await eventually(lambda: not set(gone) & set(vsp_node.vsp.ports), timeout=WAIT)
        swept_names = RED_NAMES - {kept}
        await eventually(
            lambda: {n for _, n in calls_since(vsp_node, mark, DELETE_PORT)} == swept_names,
            timeout=WAIT,
        )
        await asyncio.sleep(5 * INTERVAL)  # passes after the sweep change nothing
        deletes = Counter(n for _, n in calls_since(vsp_node, mark, DELETE_PORT))
        assert deletes == Counter(swept_names), "one Delete per unheld device, none of the held"
        # The held port: one idempotent Create by name at start, and still the same port.
        assert calls_since(vsp_node, mark, CREATE_PORT) == [(CREATE_PORT, kept)]
        assert vsp_node.vsp.ports == {kept: kept_port}
    finally:
        second.send_signal(signal.SIGTERM)
        await asyncio.wait_for(second.wait(), 30)
    stderr = logs[1].read_text()
    assert second.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "start-up recovery: 1 held port(s) ensured by name, 11 device(s) to sweep" in stderr


# --- the start-up sweep -----------------------------------------------------------------


async def leave_ports_of_an_earlier_run(node: VspNode, count: int) -> set[str]:
    """Ports by name for the first `count` red VFs no container holds, as a run before left."""
    names = set()
    for address in sorted(node.sysfs.vfs(node.sysfs.pfs[0]).values())[:count]:
        name = name_of(node, address)
        mac = bytes.fromhex(mac_of(node, address).replace(":", ""))
        await node.create_port_out_of_band(name, mac, 10)
        names.add(name)
    assert set(node.vsp.ports) >= names
    return names


async def test_ports_left_by_an_earlier_run_are_swept_even_when_most_devices_have_one(
    vsp_node: VspNode,
) -> None:
    # The mass-release guard holds a release of most owned ports back for a hold-off (after
    # the start-up one); with no hold-off at all it could not show.
    vsp_node.raw_config["release"]["holdoffSeconds"] = 1.0
    await vsp_node.start_daemon()
    held = name_of(vsp_node, (await admit(vsp_node, "held")).device_ids[0])
    await vsp_node.stop_daemon()
    left = await leave_ports_of_an_earlier_run(vsp_node, 8)
    left.discard(held)
    assert len(left) >= 7  # of 12 red devices, with the held one: a mass release by count
    daemon = await vsp_node.start_daemon()
    await eventually(lambda: not left & set(vsp_node.vsp.ports), timeout=WAIT)
    await swept(vsp_node)
    assert set(vsp_node.vsp.ports) == {held}
    stats = daemon.reconciler.stats
    assert stats.releases[(RED, "sweep")] == len(RED_NAMES) - 1
    assert stats.held_back["startup"] > 0
    assert stats.held_back["mass_release"] == 0


async def test_the_sweep_waits_out_the_startup_holdoff(vsp_node: VspNode) -> None:
    holdoff = 2.0
    vsp_node.raw_config["release"]["holdoffSeconds"] = holdoff
    left = await leave_ports_of_an_earlier_run(vsp_node, 3)
    daemon = await vsp_node.start_daemon()
    started = time.monotonic()
    await eventually(lambda: daemon.reconciler.stats.held_back["startup"] >= 2, timeout=WAIT)
    if time.monotonic() - started < holdoff - 0.5:
        assert left <= set(vsp_node.vsp.ports)
        assert not calls_since(vsp_node, 0, DELETE_PORT)
    await eventually(lambda: not left & set(vsp_node.vsp.ports), timeout=holdoff + WAIT)
    assert time.monotonic() - started >= holdoff - 0.5
    await swept(vsp_node)
    assert daemon.reconciler.stats.releases[(RED, "sweep")] == len(RED_NAMES)


async def test_the_sweep_waits_while_pod_resources_is_unreadable(vsp_node: VspNode) -> None:
    holdoff = 2.0  # the kubelet stops within it, so only PodResources holds the sweep back
    vsp_node.raw_config["release"]["holdoffSeconds"] = holdoff
    left = await leave_ports_of_an_earlier_run(vsp_node, 3)
    daemon = await vsp_node.start_daemon()
    started = time.monotonic()
    await vsp_node.kubelet.stop()
    assert time.monotonic() - started < holdoff, "too slow to stop the kubelet in the hold-off"
    stats = daemon.reconciler.stats
    await asyncio.sleep(started + holdoff + 5 * INTERVAL - time.monotonic())
    await eventually(lambda: stats.held_back["pod_resources_unreadable"] >= 5, timeout=WAIT)
    assert left <= set(vsp_node.vsp.ports)
    assert not calls_since(vsp_node, 0, DELETE_PORT)
    await vsp_node.kubelet.start()  # a kubelet restart: its own hold-off, then the sweep
    await eventually(lambda: not left & set(vsp_node.vsp.ports), timeout=holdoff + WAIT)
    await swept(vsp_node)
    assert stats.releases[(RED, "sweep")] == len(RED_NAMES)


async def test_ports_left_while_pod_resources_was_unreadable_at_start_are_swept_later(
    vsp_node: VspNode,
) -> None:
    left = await leave_ports_of_an_earlier_run(vsp_node, 3)
    await vsp_node.kubelet.stop()
    daemon = await vsp_node.start_daemon(wait=False)
    stats = daemon.reconciler.stats
    await eventually(lambda: stats.held_back["pod_resources_unreadable"] >= 3, timeout=WAIT)
    assert left <= set(vsp_node.vsp.ports)
    await vsp_node.kubelet.start()
    await vsp_node.kubelet.wait_registered(RED, timeout=WAIT)
    await eventually(lambda: not left & set(vsp_node.vsp.ports), timeout=10)


# --- failures -----------------------------------------------------------------------------


async def test_out_of_interfaces_fails_the_pod_naming_the_device_and_rolls_back(
    vsp_node: VspNode,
) -> None:
    vsp_node.vsp.config.interfaces = 2
    await vsp_node.start_daemon()
    await swept(vsp_node)
    mark = len(vsp_node.vsp.call_log)
    with pytest.raises(AdmissionError) as caught:
        await admit(vsp_node, "three", count=3)
    (allocate,) = vsp_node.kubelet.calls("Allocate", RED)
    asked = list(allocate.request.container_requests[0].devices_ids)
    assert len(asked) == 3
    message = caught.value.message
    assert "Interface not available" in message
    failed = [device for device in asked if f"device {device}: " in message]
    assert len(failed) == 1, message
    created = {n for _, n in calls_since(vsp_node, mark, CREATE_PORT)}
    assert created == {name_of(vsp_node, device) for device in asked}
    await eventually(lambda: not vsp_node.vsp.ports, timeout=WAIT)
    assert vsp_node.vsp.capacity_left == 2
    made = created - {name_of(vsp_node, failed[0])}
    assert {n for _, n in calls_since(vsp_node, mark, DELETE_PORT)} == made
    assert not list(vsp_node.devinfo_dir.glob("opi.io-red-*"))
    assert not vsp_node.kubelet.assignments(pod="three")


async def test_an_unhealthy_heartbeat_makes_every_device_unhealthy_until_it_recovers(
    vsp_node: VspNode,
) -> None:
    daemon = await vsp_node.start_daemon()
    assert daemon.status.not_ready() is None
    vsp_node.vsp.set_healthy(False)
    await vsp_node.kubelet.wait_for_devices(
        RED, lambda ds: ds and all(d.health == "Unhealthy" for d in ds), timeout=WAIT
    )
    await eventually(lambda: daemon.status.not_ready() is not None, timeout=WAIT)
    reason = daemon.status.not_ready()
    assert reason is not None and vsp_node.vsp_address in reason, reason
    assert "reports itself unhealthy (heartbeat answered healthy=false)" in reason
    some = next(iter(daemon.pools[RED].devices())).id
    assert daemon.pools[RED].unhealthy_reason(some) == (
        "host agent reports itself unhealthy (heartbeat answered healthy=false)"
    )
    vsp_node.vsp.set_healthy(True)
    await vsp_node.kubelet.wait_for_devices(
        RED, lambda ds: ds and all(d.health == "Healthy" for d in ds), timeout=WAIT
    )
    await eventually(lambda: daemon.status.not_ready() is None, timeout=WAIT)
    assert vsp_node.vsp.calls["Ping"] >= 3


async def restart_dropping_ports(node: VspNode, downtime: float) -> tuple[str, str, int]:
    """Pods `held` and `gone` have a port each; the plugin restarts and loses both, and `gone`
    is deleted while it is away. Answers their port names and the call log's mark after it."""
    await node.start_daemon()
    await swept(node)
    held = name_of(node, (await admit(node, "held")).device_ids[0])
    gone = name_of(node, (await admit(node, "gone")).device_ids[0])
    restart = asyncio.create_task(node.vsp.restart(drop_state=True, downtime=downtime))
    await eventually(lambda: not node.vsp.serving, timeout=WAIT)
    node.kubelet.delete_pod("gone")
    await restart
    assert not node.vsp.ports
    return held, gone, len(node.vsp.call_log)


async def test_a_plugin_restart_that_drops_its_ports_gets_the_held_ones_back(
    vsp_node: VspNode,
) -> None:
    held, gone, mark = await restart_dropping_ports(vsp_node, downtime=3.0)
    await eventually(lambda: held in vsp_node.vsp.ports, timeout=10)
    await asyncio.sleep(5 * INTERVAL)
    assert gone not in vsp_node.vsp.ports
    assert (CREATE_PORT, gone) not in calls_since(vsp_node, mark)


async def test_after_an_outage_held_ports_are_created_again_and_unheld_ones_are_not(
    vsp_node: VspNode,
) -> None:
    """As above, with a plugin that serves ports without a new Init (require_init off), so
    only the outage handling is tested: an idempotent Create for each held device."""
    vsp_node.vsp.config.require_init = False
    held, gone, mark = await restart_dropping_ports(vsp_node, downtime=3.0)
    await eventually(lambda: held in vsp_node.vsp.ports, timeout=WAIT)
    await asyncio.sleep(5 * INTERVAL)
    assert gone not in vsp_node.vsp.ports
    assert set(vsp_node.vsp.ports) == {held}
    assert calls_since(vsp_node, mark, CREATE_PORT) == [(CREATE_PORT, held)]
    assert vsp_node.daemon is not None
    assert vsp_node.daemon.reconciler.stats.repairs[RED] == 1


async def test_a_short_plugin_restart_that_drops_its_ports_gets_the_held_ones_back(
    vsp_node: VspNode,
) -> None:
    """A plugin restarted by its supervisor within a heartbeat or two (require_init off, so
    the missing re-Init above does not matter)."""
    vsp_node.vsp.config.require_init = False
    held, _, _ = await restart_dropping_ports(vsp_node, downtime=0.5)
    await eventually(lambda: held in vsp_node.vsp.ports, timeout=10)
    await asyncio.sleep(5 * INTERVAL)
    assert set(vsp_node.vsp.ports) == {held}


async def test_a_vf_without_a_mac_is_unhealthy_and_refused_with_failed_precondition(
    vsp_node: VspNode,
) -> None:
    (no_mac,) = vsp_node.sysfs.add_vfs(vsp_node.sysfs.pfs[0], 1, mac=None)
    assert not (vsp_node.root / "sys/bus/pci/devices" / no_mac / "net").exists()
    await vsp_node.start_daemon()
    devices = await vsp_node.kubelet.wait_for_devices(
        RED, lambda ds: no_mac in {d.id for d in ds}, timeout=WAIT
    )
    health = {d.id: d.health for d in devices}
    assert health.pop(no_mac) == "Unhealthy"
    assert set(health.values()) == {"Healthy"}
    await swept(vsp_node)
    mark = len(vsp_node.vsp.call_log)
    async with grpc.aio.insecure_channel(
        f"unix://{vsp_node.kubelet_dir / socket_name(RED)}"
    ) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await dp_grpc.DevicePluginStub(channel).Allocate(
                dp.AllocateRequest(
                    container_requests=[dp.ContainerAllocateRequest(devices_ids=[no_mac])]
                )
            )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = caught.value.details() or ""
    assert f"device {no_mac}" in details and "MAC" in details, details
    assert not calls_since(vsp_node, mark, CREATE_PORT)


# --- VF creation ----------------------------------------------------------------------------


async def test_the_vendor_plugin_creates_the_configured_vfs_and_the_pools_serve_them(
    vsp_node: VspNode,
) -> None:
    pf1 = vsp_node.sysfs.pfs[1]
    assert len(vsp_node.sysfs.vfs(pf1)) == 8
    vsp = await vsp_node.replace_vsp(sysfs=vsp_node.sysfs, pf=pf1)
    vsp_node.raw_config["pfs"] = [{"pfName": "ens1f1", "numVfs": 12}]
    vsp_node.raw_config["resourceList"].append({**BLUE_POOL, "bridgePort": {"vlan": 30}})
    await vsp_node.start_daemon()
    assert vsp.num_vfs_requests == [12]
    vfs = vsp_node.sysfs.vfs(pf1)
    assert sorted(vfs) == list(range(12))
    blue = await vsp_node.kubelet.wait_for_devices(BLUE, lambda ds: len(ds) == 8, timeout=WAIT)
    assert [d.id for d in blue] == sorted(vfs[i] for i in range(4, 12))
    assert {d.health for d in blue} == {"Healthy"}
    await swept(vsp_node)
    assignment = await admit(vsp_node, "new", BLUE, count=8)
    names = {name_of(vsp_node, device) for device in assignment.device_ids}
    assert names == {f"host1-{i}" for i in range(4, 12)}
    assert names <= set(vsp.ports)
    assert {tuple(vsp.ports[n].spec.logical_bridges) for n in names} == {("30",)}


async def test_the_vendor_plugin_leaves_a_pf_alone_while_a_container_holds_one_of_its_vfs(
    vsp_node: VspNode, caplog: pytest.LogCaptureFixture
) -> None:
    pf1 = vsp_node.sysfs.pfs[1]
    vsp = await vsp_node.replace_vsp(sysfs=vsp_node.sysfs, pf=pf1)
    await vsp_node.start_daemon()
    assignment = await admit(vsp_node, "holder", count=2)  # spread: one VF of each PF
    on_pf1 = [d for d in assignment.device_ids if d in vsp_node.sysfs.vfs(pf1).values()]
    assert len(on_pf1) == 1
    await vsp_node.stop_daemon()
    vsp_node.raw_config["pfs"] = [{"pfName": "ens1f1", "numVfs": 12}]
    with caplog.at_level(logging.ERROR, logger="xpu_bridge.node.vf_creation"):
        await vsp_node.start_daemon()
    assert vsp.num_vfs_requests == []
    assert len(vsp_node.sysfs.vfs(pf1)) == 8
    errors = [r.getMessage() for r in caplog.records if r.name == "xpu_bridge.node.vf_creation"]
    assert any("pf ens1f1" in e and "left as it is" in e and on_pf1[0] in e for e in errors), errors
    assert name_of(vsp_node, on_pf1[0]) in vsp.ports


async def test_vf_creation_through_sysfs_on_the_opi_backend(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    pf1 = node.sysfs.pfs[1]
    node.raw_config["pfs"] = [{"pfName": "ens1f1", "numVfs": 12}]
    async with SimKernel(node.sysfs) as kernel:
        await node.start_daemon()
        vfs = node.sysfs.vfs(pf1)
        assert sorted(vfs) == list(range(12))
        assert kernel.applied[-1].value == "12" and not kernel.refused
        blue = await node.kubelet.wait_for_devices(BLUE, lambda ds: len(ds) == 8, timeout=WAIT)
        assert [d.id for d in blue] == sorted(vfs[i] for i in range(4, 12))
        (device,) = (await admit(node, "holder", BLUE)).device_ids
        assert device in vfs.values()
        await node.stop_daemon()
        applied = len(kernel.applied)
        node.raw_config["pfs"] = [{"pfName": "ens1f1", "numVfs": 4}]
        with caplog.at_level(logging.ERROR, logger="xpu_bridge.node.vf_creation"):
            await node.start_daemon()
        await asyncio.sleep(5 * kernel.interval)  # a write would have been applied by now
        assert len(kernel.applied) == applied
        assert (pf1.path / "sriov_numvfs").read_text().strip() == "12"
        assert node.sysfs.vfs(pf1) == vfs
    errors = [r.getMessage() for r in caplog.records if r.name == "xpu_bridge.node.vf_creation"]
    assert any("left as it is" in e and device in e for e in errors), errors


# --- DPU mode and network functions ----------------------------------------------------


async def test_dpu_mode_chains_two_devices_and_unchains_them_before_their_ports_go(
    vsp_node: VspNode,
) -> None:
    with_network_functions(vsp_node)
    await vsp_node.start_daemon()
    # Init first, then again with every heartbeat (answered "already initialized")
    requests = vsp_node.vsp.init_requests
    assert requests and all(r.dpu_mode for r in requests)
    await swept(vsp_node)
    mark = len(vsp_node.vsp.call_log)
    assignment = await admit(vsp_node, "fw", NF, count=2)
    first, second = assignment.device_ids  # the kubelet's order
    pair = (mac_of(vsp_node, first), mac_of(vsp_node, second))
    ports = [name_of(vsp_node, first), name_of(vsp_node, second)]
    assert vsp_node.vsp.nf_calls == [NfCall(CREATE, *pair)]
    assert vsp_node.vsp.live_functions == {pair}
    log = calls_since(vsp_node, mark)
    assert log[-1] == (CREATE, ">".join(pair)), "chained after both ports were made"
    assert sorted(log[:-1]) == sorted((CREATE_PORT, p) for p in ports)
    assert set(ports) <= set(vsp_node.vsp.ports)
    mark = len(vsp_node.vsp.call_log)
    vsp_node.kubelet.delete_pod("fw")
    await eventually(lambda: not set(ports) & set(vsp_node.vsp.ports), timeout=WAIT)
    log = calls_since(vsp_node, mark)
    assert log[0] == (DELETE, ">".join(pair)), log
    assert sorted(log[1:]) == sorted((DELETE_PORT, p) for p in ports)
    assert vsp_node.vsp.nf_calls[-1] == NfCall(DELETE, *pair)
    assert not vsp_node.vsp.live_functions


@pytest.mark.parametrize("count", [1, 3])
async def test_a_network_function_container_must_take_exactly_two_devices(
    vsp_node: VspNode, count: int
) -> None:
    with_network_functions(vsp_node)
    await vsp_node.start_daemon()
    await swept(vsp_node)
    mark = len(vsp_node.vsp.call_log)
    with pytest.raises(AdmissionError) as caught:
        await admit(vsp_node, "odd", NF, count=count)
    message = caught.value.message
    assert "code = InvalidArgument" in message, message
    assert f"takes exactly 2 devices (input, output), not {count}" in message
    assert not calls_since(vsp_node, mark)
    assert not vsp_node.vsp.nf_calls


async def test_a_failing_create_network_function_fails_the_pod_and_rolls_back_both_ports(
    vsp_node: VspNode,
) -> None:
    with_network_functions(vsp_node)
    await vsp_node.start_daemon()
    await swept(vsp_node)
    vsp_node.vsp.fail_network_functions(message="no pipeline for this pair")
    mark = len(vsp_node.vsp.call_log)
    with pytest.raises(AdmissionError) as caught:
        await admit(vsp_node, "fw", NF, count=2)
    (allocate,) = vsp_node.kubelet.calls("Allocate", NF)
    first, second = allocate.request.container_requests[0].devices_ids
    pair = (mac_of(vsp_node, first), mac_of(vsp_node, second))
    message = caught.value.message
    assert "network function" in message and "no pipeline for this pair" in message, message
    assert f"{first} ({pair[0]}) -> {second} ({pair[1]})" in message
    assert vsp_node.vsp.nf_calls == [NfCall(CREATE, *pair, grpc.StatusCode.INTERNAL)]
    ports = {name_of(vsp_node, first), name_of(vsp_node, second)}
    await eventually(lambda: not vsp_node.vsp.ports, timeout=WAIT)
    assert {n for _, n in calls_since(vsp_node, mark, DELETE_PORT)} == ports
    assert not vsp_node.vsp.live_functions
    assert not vsp_node.kubelet.assignments(pod="fw")
    assert not list(vsp_node.devinfo_dir.glob("opi.io-nf-*"))


async def test_after_a_daemon_restart_deleting_the_pod_still_deletes_its_network_function(
    vsp_node: VspNode,
) -> None:
    with_network_functions(vsp_node)
    await vsp_node.start_daemon()
    assignment = await admit(vsp_node, "fw", NF, count=2)
    first, second = assignment.device_ids
    pair = (mac_of(vsp_node, first), mac_of(vsp_node, second))
    ports = {name_of(vsp_node, first), name_of(vsp_node, second)}
    await vsp_node.stop_daemon()
    await vsp_node.start_daemon()
    await swept(vsp_node)
    assert vsp_node.vsp.live_functions == {pair}
    assert ports <= set(vsp_node.vsp.ports)
    mark = len(vsp_node.vsp.call_log)
    vsp_node.kubelet.delete_pod("fw")
    await eventually(lambda: not ports & set(vsp_node.vsp.ports), timeout=WAIT)
    log = calls_since(vsp_node, mark)
    assert log[0] == (DELETE, ">".join(pair)), log
    assert sorted(log[1:]) == sorted((DELETE_PORT, p) for p in ports)
    assert not vsp_node.vsp.live_functions


# --- the commands ---------------------------------------------------------------------------


def test_check_config_names_a_vlan_out_of_range(tmp_path: Path) -> None:
    raw = vsp_node_config(tmp_path)
    raw["resourceList"][0]["bridgePort"]["vlan"] = 5000
    config = tmp_path / "vsp.yaml"
    config.write_text(yaml.safe_dump(raw))
    result = subprocess.run(
        [*CLI, "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"xpu-bridge: config {config}: resourceList[0].bridgePort.vlan: ")
    assert "4094" in line


async def test_sim_agent_serves_a_vendor_plugin_until_sigterm(short_root: Path) -> None:
    socket = short_root / "vsp.sock"
    process = await asyncio.create_subprocess_exec(
        *CLI,
        "sim-agent",
        "--api",
        "dpu-vendor-plugin",
        "--listen",
        f"unix://{socket}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await eventually(socket.exists, timeout=30)
        async with grpc.aio.insecure_channel(f"unix://{socket}") as channel:
            reply = await vendor_grpc.HeartbeatServiceStub(channel).Ping(
                vendor.PingRequest(timestamp=42, sender_id="test"), timeout=10
            )
        assert reply.healthy
        assert reply.timestamp == 42
        process.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()
    assert f"sim-agent (dpu-vendor-plugin) serving on unix://{socket}" in stdout.decode()
    assert not socket.exists()


def test_simulate_a_vendor_plugin_prints_ports_by_name_and_network_functions() -> None:
    result = subprocess.run(
        [*CLI, "simulate", "--api", "dpu-vendor-plugin"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("POD"))
    table = lines[lines.index(header) + 1 :]
    assert any(line.startswith("web-1") and " host0-0 " in line for line in table), table
    assert any(line.startswith("fw-2") and line.endswith("UP") for line in table), table
    creates = [
        line for line in lines if line.startswith("network function: CreateNetworkFunction(")
    ]
    deletes = [
        line for line in lines if line.startswith("network function: DeleteNetworkFunction(")
    ]
    assert len(creates) == 2 and len(deletes) == 1, lines
    assert deletes[0].split("(", 1)[1] == creates[0].split("(", 1)[1]
    assert "Traceback" not in result.stderr
