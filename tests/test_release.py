"""Release and recovery through the simulators: orphans go, held ports stay, the xPU heals."""

from __future__ import annotations

import asyncio
import signal
import sys
import time

import pytest
from simnode import BLUE, BRIDGES, GREEN, RED, Node, eventually

from opi_protos.evpn_gw import l2_xpu_infra_mgr_pb2 as opi
from xpu_bridge.release.hook_socket import request_release
from xpu_bridge.sim.kubelet import Container

INTERVAL = 0.2
GRACE = 0.5
HOLDOFF = 2.0


def port_of(device_id: str) -> str:
    return "vf-" + device_id.replace(":", "-").replace(".", "-")


@pytest.fixture
def fast(node: Node) -> Node:
    node.raw_config["release"] = {
        "intervalSeconds": INTERVAL,
        "graceSeconds": GRACE,
        "holdoffSeconds": HOLDOFF,
        "hookSocket": str(node.root / "release.sock"),
    }
    node.raw_config["hostAgent"]["unhealthyAfterSeconds"] = 1.0
    return node


async def admit(node: Node, name: str, resource: str = RED, count: int = 1) -> tuple[str, ...]:
    (assignment,) = await node.kubelet.admit_pod(
        name, containers=[Container("c", {resource: count})]
    )
    return assignment.device_ids


async def test_deleted_pods_port_is_released_within_two_intervals_and_grace(fast: Node) -> None:
    await fast.start_daemon()
    keep = await admit(fast, "keep")
    (device,) = await admit(fast, "gone")
    info = fast.devinfo_dir / f"opi.io-red-{device}-device.json"
    assert info.exists()
    await asyncio.sleep(GRACE)  # the pod ran for a while
    fast.kubelet.delete_pod("gone")
    deleted = time.monotonic()
    await eventually(lambda: port_of(device) not in fast.agent.ports, timeout=15)
    took = time.monotonic() - deleted
    assert took < 2 * INTERVAL + GRACE + 1.5, f"released after {took:.2f}s"
    assert not info.exists()
    assert port_of(keep[0]) in fast.agent.ports
    assert fast.daemon.reconciler.stats.releases[(RED, "unheld")] == 1


async def test_held_ports_are_never_deleted(fast: Node) -> None:
    await fast.start_daemon()
    for name, resource in (("a", RED), ("b", BLUE), ("c", GREEN)):
        await admit(fast, name, resource)
    passes = fast.daemon.reconciler.stats.passes
    await eventually(lambda: fast.daemon.reconciler.stats.passes >= passes + 8)
    assert fast.agent.calls["DeleteBridgePort"] == 0
    assert len(fast.agent.ports) == 3


async def test_kubelet_restart_with_empty_pod_resources_releases_nothing(fast: Node) -> None:
    await fast.start_daemon()
    for name in ("a", "b", "c"):
        await admit(fast, name)
    await asyncio.sleep(GRACE + 2 * INTERVAL)
    await fast.kubelet.restart(pod_resources_empty_for=HOLDOFF + 1.0)
    await asyncio.sleep(HOLDOFF + 2.0)
    assert fast.agent.calls["DeleteBridgePort"] == 0
    assert len(fast.agent.ports) == 3
    held_back = fast.daemon.reconciler.stats.held_back
    assert held_back["kubelet_restart"] > 0
    assert held_back["mass_release"] > 0


async def test_unreadable_pod_resources_releases_nothing(fast: Node) -> None:
    await fast.start_daemon()
    await admit(fast, "a")
    await admit(fast, "b")
    await asyncio.sleep(GRACE)
    fast.kubelet.delete_pod("a")
    await fast.kubelet.stop()
    await eventually(
        lambda: fast.daemon.reconciler.stats.held_back["pod_resources_unreadable"] >= 5
    )
    assert fast.agent.calls["DeleteBridgePort"] == 0


async def test_mass_release_waits_for_the_holdoff(fast: Node) -> None:
    await fast.start_daemon()
    devices = [(await admit(fast, name))[0] for name in ("a", "b", "c")]
    await asyncio.sleep(GRACE)
    for name in ("a", "b", "c"):
        fast.kubelet.delete_pod(name)
    deleted = time.monotonic()
    await eventually(lambda: not fast.agent.ports, timeout=HOLDOFF + 10)
    assert time.monotonic() - deleted >= HOLDOFF
    assert fast.daemon.reconciler.stats.held_back["mass_release"] > 0
    assert all(port_of(d) not in fast.agent.ports for d in devices)


async def test_agent_outage_marks_devices_unhealthy_then_healthy(fast: Node) -> None:
    await fast.start_daemon()
    await fast.agent.stop()
    down = time.monotonic()
    for resource in (RED, BLUE, GREEN):
        await fast.kubelet.wait_for_devices(
            resource, lambda ds: ds and all(d.health == "Unhealthy" for d in ds), timeout=15
        )
    assert time.monotonic() - down >= 1.0 - 0.05  # not before hostAgent.unhealthyAfterSeconds
    await fast.agent.start()
    up = time.monotonic()
    for resource in (RED, BLUE, GREEN):
        await fast.kubelet.wait_for_devices(
            resource, lambda ds: ds and all(d.health == "Healthy" for d in ds), timeout=15
        )
    assert time.monotonic() - up < INTERVAL + 3.0


async def test_port_in_error_makes_its_device_unhealthy(fast: Node) -> None:
    await fast.start_daemon()
    (device,) = await admit(fast, "a")
    fast.agent.set_port_error(port_of(device), details="vrf programming failed")
    await fast.kubelet.wait_for_devices(
        RED, lambda ds: {d.id: d.health for d in ds}[device] == "Unhealthy"
    )
    assert all(d.health == "Healthy" for d in fast.kubelet.devices(RED) if d.id != device)


async def test_xpu_losing_every_port_gets_held_ports_back(fast: Node) -> None:
    await fast.start_daemon()
    held = [
        port_of(d)
        for name, resource in (("a", RED), ("b", RED), ("c", BLUE))
        for d in await admit(fast, name, resource)
    ]
    creates = fast.agent.calls["CreateBridgePort"]
    assert fast.agent.drop_all_ports() == 3
    lost = time.monotonic()
    await eventually(
        lambda: all(
            p in fast.agent.ports
            and fast.agent.ports[p].status.oper_status == opi.BP_OPER_STATUS_UP
            for p in held
        ),
        timeout=15,
    )
    assert time.monotonic() - lost < 2 * INTERVAL + 2.0
    assert fast.agent.calls["CreateBridgePort"] == creates + 3
    await eventually(lambda: sum(fast.daemon.reconciler.stats.repairs.values()) == 3)


async def test_dying_port_is_reallocated(fast: Node) -> None:
    await fast.start_daemon()
    (device,) = await admit(fast, "a")
    await asyncio.sleep(GRACE)
    fast.agent.delete_delay = 1.0
    fast.kubelet.delete_pod("a")
    await eventually(
        lambda: (
            fast.agent.ports.get(port_of(device)) is not None
            and fast.agent.ports[port_of(device)].status.oper_status
            == opi.BP_OPER_STATUS_TO_BE_DELETED
        ),
        timeout=10,
    )
    assert await admit(fast, "b") == (device,)
    assert fast.agent.ports[port_of(device)].status.oper_status == opi.BP_OPER_STATUS_UP


async def test_release_hook_frees_one_device_and_refuses_a_held_one(fast: Node) -> None:
    fast.raw_config["release"]["intervalSeconds"] = 60  # only the hook may release here
    fast.raw_config["release"]["holdoffSeconds"] = GRACE
    await fast.start_daemon()
    (free,) = await admit(fast, "a")
    (held,) = await admit(fast, "b")
    fast.kubelet.delete_pod("a")
    socket = fast.root / "release.sock"
    assert oct(socket.stat().st_mode & 0o777) == "0o600"
    early = await request_release(socket, free)
    assert not early.released and "graceSeconds" in early.message
    await asyncio.sleep(GRACE)
    result = await request_release(socket, free)
    assert result.released, result.message
    assert port_of(free) not in fast.agent.ports or (
        fast.agent.ports[port_of(free)].status.oper_status == opi.BP_OPER_STATUS_TO_BE_DELETED
    )
    refused = await request_release(socket, held)
    assert not refused.released
    assert refused.message == f"device {held} is held by default/b container c"
    assert port_of(held) in fast.agent.ports
    unknown = await request_release(socket, "0000:99:00.0")
    assert not unknown.released and "not in any pool" in unknown.message


async def test_release_command_line(fast: Node) -> None:
    fast.raw_config["release"]["holdoffSeconds"] = 0
    await fast.start_daemon()
    (held,) = await admit(fast, "b")
    await asyncio.sleep(GRACE)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "xpu_bridge.cli",
        "release",
        "--socket",
        str(fast.root / "release.sock"),
        held,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1
    assert stdout.decode().strip() == f"device {held} is held by default/b container c"
    assert b"Traceback" not in stderr


async def test_kill_9_then_restart_releases_orphans_and_adopts_held_ports(fast: Node) -> None:
    args = fast.run_command()

    async def start() -> asyncio.subprocess.Process:
        after = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        for resource in (RED, BLUE, GREEN):
            await fast.kubelet.wait_registered(resource, after=after, timeout=30)
            await fast.kubelet.wait_for_devices(
                resource, lambda ds: ds and all(d.health == "Healthy" for d in ds), timeout=30
            )
        return process

    first = await start()
    (orphan,) = await admit(fast, "orphan")
    (kept,) = await admit(fast, "kept")
    first.send_signal(signal.SIGKILL)
    await first.wait()
    fast.kubelet.delete_pod("orphan")
    creates = fast.agent.calls["CreateBridgePort"]
    second = await start()
    try:
        await eventually(lambda: port_of(orphan) not in fast.agent.ports, timeout=20)
        assert port_of(kept) in fast.agent.ports
        assert fast.agent.ports[port_of(kept)].status.oper_status == opi.BP_OPER_STATUS_UP
        assert fast.agent.calls["CreateBridgePort"] == creates
    finally:
        second.send_signal(signal.SIGTERM)
        await asyncio.wait_for(second.wait(), 30)
    assert second.returncode == 0


async def test_a_release_pass_never_deletes_a_port_handed_out_meanwhile(fast: Node) -> None:
    fast.raw_config["release"]["holdoffSeconds"] = 0
    await fast.start_daemon()
    keep = [(await admit(fast, f"k{i}"))[0] for i in range(7)]
    for i in range(5):
        await admit(fast, f"a{i}")
    await asyncio.sleep(GRACE)
    fast.agent.set_latency("DeleteBridgePort", 0.1)  # the pass deletes its 5 ports slowly
    deletes = fast.agent.calls["DeleteBridgePort"]
    for i in range(5):
        fast.kubelet.delete_pod(f"a{i}")
    await eventually(lambda: fast.agent.calls["DeleteBridgePort"] > deletes, interval=0.001)
    taken = await admit(fast, "b", count=5)  # takes the same 5 devices mid-pass
    fast.agent.set_latency("DeleteBridgePort", 0)
    lost: set[str] = set()
    for _ in range(100):
        for device in taken:
            port = fast.agent.ports.get(port_of(device))
            if port is None or port.status.oper_status != opi.BP_OPER_STATUS_UP:
                lost.add(device)
        await asyncio.sleep(0.005)
    assert not lost, f"pod b holds {taken}; ports lost after admission: {sorted(lost)}"
    assert all(port_of(device) in fast.agent.ports for device in keep)


async def test_no_release_during_the_holdoff_after_start(fast: Node) -> None:
    await fast.agent_client_create(
        "vf-0000-3b-02-7", bytes.fromhex("0c42a1003b17"), BRIDGES + "red"
    )  # left by an earlier run of the daemon; no container holds 0000:3b:02.7
    await fast.start_daemon()
    started = time.monotonic()
    await eventually(lambda: fast.daemon.reconciler.stats.held_back["startup"] >= 2)
    if time.monotonic() - started < HOLDOFF - 0.2:
        assert "vf-0000-3b-02-7" in fast.agent.ports
    await eventually(lambda: "vf-0000-3b-02-7" not in fast.agent.ports, timeout=HOLDOFF + 10)
    assert time.monotonic() - started >= HOLDOFF - 0.5


async def test_held_sf_that_vanishes_from_sysfs_keeps_its_port(fast: Node) -> None:
    fast.raw_config["release"]["holdoffSeconds"] = 0
    await fast.start_daemon()
    (sf,) = await admit(fast, "edge", GREEN)
    (port_id,) = [p for p in fast.agent.ports if p.startswith("sf-")]
    await asyncio.sleep(GRACE)
    (handle,) = [h for h in fast.sysfs.sfs if h.name == sf]
    fast.sysfs.remove_sf(handle)  # a devlink reload while the pod runs
    await fast.daemon.rescanner.rescan()
    assert fast.daemon.pools[GREEN].get(sf) is None
    passes = fast.daemon.reconciler.stats.passes
    await eventually(lambda: fast.daemon.reconciler.stats.passes >= passes + 6)
    assert port_id in fast.agent.ports
    assert fast.agent.calls["DeleteBridgePort"] == 0


async def test_release_hook_waits_out_the_holdoff_after_start(fast: Node) -> None:
    fast.raw_config["release"]["holdoffSeconds"] = 60
    await fast.start_daemon()
    result = await request_release(fast.root / "release.sock", "0000:3b:02.3")
    assert not result.released
    assert result.message.startswith("device 0000:3b:02.3: not now: started 0s ago")


async def test_renaming_a_pool_keeps_the_ports_its_running_pods_hold(fast: Node) -> None:
    fast.raw_config["release"]["holdoffSeconds"] = 0
    await fast.start_daemon()
    (device,) = await admit(fast, "a")
    await asyncio.sleep(GRACE)
    await fast.stop_daemon()
    fast.raw_config["resourceList"][0]["resourceName"] = "crimson"
    daemon = await fast.start_daemon(wait=False)
    passes = daemon.reconciler.stats.passes
    await eventually(lambda: daemon.reconciler.stats.passes >= passes + 6)
    assert port_of(device) in fast.agent.ports
    assert fast.agent.calls["DeleteBridgePort"] == 0
