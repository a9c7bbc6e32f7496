"""Config reloads under a running daemon, over real sockets against the simulators: pools come
and go, devices move, bridge ports change for new attachments, bad files change nothing."""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from daemon_process import DaemonProcess
from invariants import Holds
from simnode import BLUE, BRIDGES, GREEN, RED, Node, VspNode, eventually

from xpu_bridge.config import ConfigError, load_config, parse_config
from xpu_bridge.config.changes import config_changes
from xpu_bridge.daemon import Daemon
from xpu_bridge.sim.kubelet import AdmissionError, Container

YELLOW = "opi.io/yellow"
POLL = 0.1
INTERVAL = 0.2
GRACE = 0.5
SETTLED = 30.0
"""Seconds any reload or release may take on a noisy machine."""


def port_of(device_id: str) -> str:
    return "vf-" + device_id.replace(":", "-").replace(".", "-")


@pytest.fixture
def fast(node: Node) -> Node:
    node.raw_config["release"] = {
        "intervalSeconds": INTERVAL,
        "graceSeconds": GRACE,
        "holdoffSeconds": 1.0,
    }
    return node


def config_file(node: Node) -> Path:
    return node.root / "config.yaml"


def write_config(node: Node, raw: dict[str, Any], path: Path | None = None) -> None:
    """The node's config becomes `raw`, written in one go as an editor's rename would."""
    node.raw_config = raw
    target = path or config_file(node)
    scratch = target.with_name(target.name + ".new")
    scratch.write_text(yaml.safe_dump(raw))
    os.replace(scratch, target)


async def start(node: Node, path: Path | None = None, poll: float = POLL) -> Daemon:
    """The node's daemon, reading its config from `path` (written first unless given)."""
    if path is None:
        path = config_file(node)
        write_config(node, node.raw_config, path)
    options = replace(node.options(), config_path=path, config_poll_seconds=poll)
    daemon = await Daemon.create(options)
    node._daemons.append(daemon)
    node.daemon = daemon
    await daemon.start()
    for resource in node.resources:
        await node.kubelet.wait_registered(resource, timeout=SETTLED)
        await node.kubelet.wait_for_devices(resource, timeout=SETTLED)
    return daemon


def reloads(daemon: Daemon, result: str) -> float:
    value = daemon.reloader.metrics.registry.get_sample_value(
        "xpu_bridge_config_reloads_total", {"result": result}
    )
    assert value is not None, f"no sample for result {result}"
    return value


async def reloaded(daemon: Daemon, result: str, count: int = 1) -> None:
    await eventually(lambda: reloads(daemon, result) >= count, timeout=SETTLED)


async def admit(node: Node, holds: Holds, pod: str, resource: str, count: int = 1) -> list[str]:
    assignments = await node.kubelet.admit_pod(pod, containers=[Container("c", {resource: count})])
    holds.admitted(pod, assignments)
    return [device for a in assignments for device in a.device_ids]


def delete(node: Node, holds: Holds, pod: str) -> None:
    node.kubelet.delete_pod(pod)
    holds.deleted(pod)


def deleted_while_held(node: Node, holds: Holds, resource: str) -> list[str]:
    return [
        f"{name} deleted at {at:.2f}"
        for at, name in node.agent.deletions
        for key in list(holds.since) + list(holds.intervals)
        if key[0] == resource and port_of(key[1]) == name and holds.held_at(key, at)
    ]


async def passes(daemon: Daemon, count: int) -> None:
    start_at = daemon.reconciler.stats.passes
    await eventually(lambda: daemon.reconciler.stats.passes >= start_at + count, timeout=SETTLED)


def healthy(node: Node, resource: str) -> set[str]:
    return {d.id for d in node.kubelet.devices(resource) if d.health == "Healthy"}


def sightings(node: Node, resource: str, device: str) -> tuple[asyncio.Task[None], list[float]]:
    """Every moment (sampled each 10 ms) that the kubelet lists `device` under `resource`."""
    seen: list[float] = []

    async def sample() -> None:
        while True:
            if device in {d.id for d in node.kubelet.devices(resource)}:
                seen.append(time.monotonic())
            await asyncio.sleep(0.01)

    return asyncio.create_task(sample()), seen


def error_lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.ERROR and text in r.getMessage()
    ]


# ---------------------------------------------------------------- pools added and removed


async def test_an_added_pool_registers_and_can_be_allocated(fast: Node) -> None:
    raw = fast.raw_config
    raw["resourceList"][0]["selectors"] = [{"pfNames": ["ens1f0#0-3", "ens1f1#0-3"]}]
    daemon = await start(fast)
    red_registrations = len([r for r in fast.kubelet.registrations if r.resource_name == RED])
    new = copy.deepcopy(raw)
    new["resourceList"].append(
        {
            "resourceName": "yellow",
            "selectors": [{"pfNames": ["ens1f0#4-7"]}],
            "bridgePort": {"logicalBridges": [BRIDGES + "red"]},
        }
    )
    write_config(fast, new)
    await fast.kubelet.wait_registered(YELLOW, timeout=SETTLED)
    devices = await fast.kubelet.wait_for_devices(YELLOW, lambda ds: len(ds) == 4, timeout=SETTLED)
    assert {d.id for d in devices} == {f"0000:3b:02.{i}" for i in range(4, 8)}
    assert reloads(daemon, "applied") == 1
    holds = Holds()
    (device,) = await admit(fast, holds, "y", YELLOW)
    port = fast.agent.ports[port_of(device)]
    assert list(port.spec.logical_bridges) == [BRIDGES + "red"]
    assert f'"{device}"' in (fast.devinfo_dir / f"opi.io-yellow-{device}-device.json").read_text()
    assert len([r for r in fast.kubelet.registrations if r.resource_name == RED]) == (
        red_registrations
    ), "the pools that stay are not registered again"
    assert daemon.status.not_ready() is None


async def test_a_removed_pool_goes_but_its_held_port_stays_until_released(fast: Node) -> None:
    daemon = await start(fast)
    holds = Holds()
    (held,) = await admit(fast, holds, "p", BLUE)
    new = copy.deepcopy(fast.raw_config)
    del new["resourceList"][1]  # blue
    write_config(fast, new)
    await reloaded(daemon, "applied")
    await eventually(lambda: fast.kubelet.endpoint(BLUE).stopped, timeout=SETTLED)
    await fast.kubelet.wait_for_devices(
        BLUE, lambda ds: all(d.health == "Unhealthy" for d in ds), timeout=SETTLED
    )
    assert not (fast.kubelet_dir / "xpu-bridge-opi.io-blue.sock").exists()
    with pytest.raises(AdmissionError):
        await fast.kubelet.admit_pod("q", containers=[Container("c", {BLUE: 1})])
    assert BLUE not in daemon.pools and daemon.pools.find(held) is not None
    await passes(daemon, 8)
    assert port_of(held) in fast.agent.ports
    assert daemon.status.not_ready() is None

    delete(fast, holds, "p")
    await eventually(lambda: port_of(held) not in fast.agent.ports, timeout=SETTLED)
    await eventually(lambda: not daemon.pools.retired(), timeout=SETTLED)
    assert not (fast.devinfo_dir / f"opi.io-blue-{held}-device.json").exists()
    assert daemon.reconciler.stats.releases[(BLUE, "unheld")] == 1
    assert not deleted_while_held(fast, holds, BLUE)
    assert [name for _, name in fast.agent.deletions] == [port_of(held)]


async def test_a_removed_pool_keeps_its_held_port_on_a_vendor_plugin(vsp_node: VspNode) -> None:
    """A vendor plugin's port names cannot be derived from a PCI address: without the retired
    pool, nothing would say that the held VF's port is still held."""
    raw = vsp_node.raw_config
    raw["release"]["holdoffSeconds"] = 1.0
    raw["resourceList"][0]["selectors"] = [{"pfNames": ["ens1f0"]}]
    raw["resourceList"].append(
        {
            "resourceName": "amber",
            "selectors": [{"pfNames": ["ens1f1#0-3"]}],
            "bridgePort": {"vlan": 20},
        }
    )
    daemon = await start(vsp_node)
    amber = "opi.io/amber"
    (assignment,) = await vsp_node.kubelet.admit_pod("p", containers=[Container("c", {amber: 1})])
    (held,) = assignment.device_ids
    (name,) = vsp_node.vsp.ports
    new = copy.deepcopy(raw)
    del new["resourceList"][1]
    write_config(vsp_node, new)
    await reloaded(daemon, "applied")
    await eventually(lambda: vsp_node.kubelet.endpoint(amber).stopped, timeout=SETTLED)
    await passes(daemon, 10)
    assert list(vsp_node.vsp.ports) == [name]
    vsp_node.kubelet.delete_pod("p")
    deleted = time.monotonic()
    await eventually(lambda: not vsp_node.vsp.ports, timeout=SETTLED)
    assert [at >= deleted for at, _ in vsp_node.vsp.deletions] == [True]
    await eventually(lambda: not daemon.pools.retired(), timeout=SETTLED)
    assert daemon.pools.find(held) is None


async def test_a_removed_pools_held_device_joins_another_pool_once_released(fast: Node) -> None:
    daemon = await start(fast)
    holds = Holds()
    (held,) = await admit(fast, holds, "p", BLUE)
    new = copy.deepcopy(fast.raw_config)
    del new["resourceList"][1]  # blue; red takes all of ens1f1
    new["resourceList"][0]["selectors"] = [{"pfNames": ["ens1f0", "ens1f1"]}]
    write_config(fast, new)
    await reloaded(daemon, "applied")
    await fast.kubelet.wait_for_devices(RED, lambda ds: len(ds) == 15, timeout=SETTLED)
    watcher, seen = sightings(fast, RED, held)
    await passes(daemon, 6)
    assert port_of(held) in fast.agent.ports
    deleted = time.monotonic()
    delete(fast, holds, "p")
    await fast.kubelet.wait_for_devices(RED, lambda ds: len(ds) == 16, timeout=SETTLED)
    watcher.cancel()
    assert all(at > deleted for at in seen), "listed under another pool while held"
    assert not daemon.pools.retired()
    assert not deleted_while_held(fast, holds, BLUE)
    assert held in await admit(fast, holds, "q", RED, 16)
    port = fast.agent.ports[port_of(held)]  # red's port now: access, on red
    assert list(port.spec.logical_bridges) == [BRIDGES + "red"]


# ---------------------------------------------------------------- devices that move


async def test_a_held_device_stays_in_its_pool_until_released(fast: Node) -> None:
    daemon = await start(fast)
    holds = Holds()
    (held,) = await admit(fast, holds, "p", BLUE)
    moving = {f"0000:3b:0a.{i}" for i in range(4, 8)}
    new = copy.deepcopy(fast.raw_config)
    new["resourceList"][0]["selectors"] = [{"pfNames": ["ens1f0", "ens1f1"]}]
    new["resourceList"][1]["selectors"] = [{"pfNames": ["ens1f1#8-15"]}]  # nothing
    write_config(fast, new)
    await reloaded(daemon, "applied")
    await fast.kubelet.wait_for_devices(
        RED, lambda ds: {d.id for d in ds} >= moving - {held}, timeout=SETTLED
    )
    await fast.kubelet.wait_for_devices(
        BLUE, lambda ds: [(d.id, d.health) for d in ds] == [(held, "Unhealthy")], timeout=SETTLED
    )
    watcher, seen = sightings(fast, RED, held)
    with pytest.raises(AdmissionError):  # a device leaving its pool is not handed out there
        await fast.kubelet.admit_pod("q", containers=[Container("c", {BLUE: 1})])
    await passes(daemon, 6)
    assert port_of(held) in fast.agent.ports
    others = await admit(fast, holds, "r", RED, len(healthy(fast, RED)))
    assert held not in others

    deleted = time.monotonic()
    delete(fast, holds, "p")
    await fast.kubelet.wait_for_devices(RED, lambda ds: held in {d.id for d in ds}, timeout=SETTLED)
    watcher.cancel()
    assert all(at > deleted for at in seen), "listed under another pool while held"
    await fast.kubelet.wait_for_devices(BLUE, lambda ds: not ds, timeout=SETTLED)
    assert port_of(held) not in fast.agent.ports
    assert not holds.violations
    assert not deleted_while_held(fast, holds, BLUE)
    assert not deleted_while_held(fast, holds, RED)


async def test_a_changed_bridge_port_applies_to_new_attachments_only(
    fast: Node, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="xpu_bridge")
    daemon = await start(fast)
    holds = Holds()
    (old,) = await admit(fast, holds, "a", RED)
    new = copy.deepcopy(fast.raw_config)
    new["resourceList"][0]["bridgePort"] = {"logicalBridges": [BRIDGES + "green"]}
    write_config(fast, new)
    await reloaded(daemon, "applied")
    assert (
        f"pool {RED}: bridgePort is now access port on {BRIDGES}green for new attachments; "
        f"1 device(s) in use keep access port on {BRIDGES}red until released"
    ) in caplog.messages
    (fresh,) = await admit(fast, holds, "b", RED)
    assert list(fast.agent.ports[port_of(fresh)].spec.logical_bridges) == [BRIDGES + "green"]
    await passes(daemon, 8)  # repair leaves the held port as it was attached
    assert list(fast.agent.ports[port_of(old)].spec.logical_bridges) == [BRIDGES + "red"]
    assert not fast.agent.deletions

    delete(fast, holds, "a")
    await eventually(lambda: port_of(old) not in fast.agent.ports, timeout=SETTLED)
    await eventually(lambda: not daemon.pools.kept(), timeout=SETTLED)
    await fast.kubelet.wait_for_devices(
        RED, lambda ds: old in {d.id for d in ds if d.health == "Healthy"}, timeout=SETTLED
    )
    rest = await admit(fast, holds, "c", RED, len(healthy(fast, RED)) - 1)  # b holds one
    assert old in rest
    assert list(fast.agent.ports[port_of(old)].spec.logical_bridges) == [BRIDGES + "green"]
    assert not deleted_while_held(fast, holds, RED)


# ---------------------------------------------------------------- files that do not apply


async def test_a_broken_file_keeps_the_running_config(
    fast: Node, caplog: pytest.LogCaptureFixture
) -> None:
    daemon = await start(fast)
    running = daemon.config
    path = config_file(fast)
    path.write_text("resourceList: [\n")
    await reloaded(daemon, "invalid")
    (line,) = error_lines(caplog, f"config {path}:")
    assert line.startswith(f"config {path}: not valid YAML")

    bad = copy.deepcopy(fast.raw_config)
    bad["rescanIntervalSeconds"] = -1
    bad["resourceList"][0]["bridgePort"]["type"] = "bogus"
    write_config(fast, bad)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert len(caught.value.problems) == 2
    await reloaded(daemon, "invalid", 2)
    lines = error_lines(caplog, f"config {path}:")
    assert lines[1:] == [f"config {path}: {problem}" for problem in caught.value.problems]

    assert daemon.config == running
    assert reloads(daemon, "applied") == 0
    holds = Holds()
    await admit(fast, holds, "still", RED)
    assert set(daemon.pools.names()) == {RED, BLUE, GREEN}


async def test_overlapping_pools_are_refused_as_at_start(
    fast: Node, caplog: pytest.LogCaptureFixture
) -> None:
    daemon = await start(fast)
    good = copy.deepcopy(fast.raw_config)
    overlapping = copy.deepcopy(good)
    overlapping["resourceList"][1]["selectors"] = [{"pfNames": ["ens1f1"]}]
    write_config(fast, overlapping)
    await reloaded(daemon, "invalid")
    (line,) = error_lines(caplog, "both select")
    assert line.startswith(f"config {config_file(fast)}: resourceList: ")
    missing = copy.deepcopy(good)
    missing["resourceList"][0]["bridgePort"]["logicalBridges"] = [BRIDGES + "nope"]
    write_config(fast, missing)
    await reloaded(daemon, "invalid", 2)
    assert error_lines(caplog, f"logical bridge {BRIDGES}nope does not exist")
    assert len(fast.kubelet.devices(BLUE)) == 4


async def test_fields_only_a_restart_applies_are_named_and_the_rest_applies(
    fast: Node, caplog: pytest.LogCaptureFixture
) -> None:
    daemon = await start(fast)
    running_agent = daemon.config.host_agent
    changed = copy.deepcopy(fast.raw_config)
    changed["hostAgent"]["rpcTimeoutSeconds"] = 2
    write_config(fast, changed)
    await reloaded(daemon, "restart_required")
    assert (
        f"config {config_file(fast)}: hostAgent.rpcTimeoutSeconds changed: restart the daemon "
        "to apply"
    ) in caplog.messages
    both = copy.deepcopy(changed)
    both["resourceList"][0]["allocationPolicy"] = "pack"
    write_config(fast, both)
    await reloaded(daemon, "applied")
    assert daemon.config.host_agent == running_agent
    assert daemon.pools[RED].resource.allocation_policy == "pack"


# ---------------------------------------------------------------- triggers


async def test_request_reload_reads_the_file_as_sighup_does(fast: Node) -> None:
    daemon = await start(fast, poll=3600)  # the file is looked at once, then not polled
    daemon.request_reload()
    await reloaded(daemon, "unchanged")
    new = copy.deepcopy(fast.raw_config)
    del new["resourceList"][2]  # green
    write_config(fast, new)
    await asyncio.sleep(0.5)
    assert reloads(daemon, "applied") == 0
    daemon.request_reload()
    await reloaded(daemon, "applied")
    await eventually(lambda: fast.kubelet.endpoint(GREEN).stopped, timeout=SETTLED)


async def test_a_configmap_symlink_swap_is_noticed(fast: Node) -> None:
    """The kubelet's atomic writer: config.yaml -> ..data/config.yaml, ..data -> a new dir."""
    mount = fast.root / "cm"

    def publish(version: str, raw: dict[str, Any]) -> None:
        (mount / version).mkdir(parents=True)
        (mount / version / "config.yaml").write_text(yaml.safe_dump(raw))
        os.symlink(version, mount / "..data_tmp")
        os.replace(mount / "..data_tmp", mount / "..data")

    publish("..2024_01", fast.raw_config)
    os.symlink("..data/config.yaml", mount / "config.yaml")
    daemon = await start(fast, path=mount / "config.yaml")
    publish("..2024_02", fast.raw_config)  # the same content again: nothing to reload
    await asyncio.sleep(10 * POLL)
    assert reloads(daemon, "unchanged") + reloads(daemon, "applied") == 0
    new = copy.deepcopy(fast.raw_config)
    new["resourceList"][0]["selectors"] = [{"pfNames": ["ens1f0"]}]
    fast.raw_config = new
    publish("..2024_03", new)
    await reloaded(daemon, "applied")
    await fast.kubelet.wait_for_devices(RED, lambda ds: len(ds) == 8, timeout=SETTLED)
    first = daemon.reloader.metrics.registry.get_sample_value(
        "xpu_bridge_config_last_reload_success_timestamp_seconds"
    )
    assert first is not None and abs(first - time.time()) < SETTLED


async def test_sighup_reloads_a_running_xpu_bridge(fast: Node) -> None:
    process = DaemonProcess(fast, {RED: 12, BLUE: 4, GREEN: 4})
    await process.start()
    try:
        new = copy.deepcopy(fast.raw_config)
        new["resourceList"][0]["selectors"] = [{"pfNames": ["ens1f0"]}]
        # run_command writes the file; this one is as a kubectl edit would leave it
        write_config(fast, new)
        assert process.process is not None
        process.process.send_signal(signal.SIGHUP)
        await fast.kubelet.wait_for_devices(RED, lambda ds: len(ds) == 8, timeout=SETTLED)
        await eventually(lambda: "reloaded (SIGHUP)" in process.log_text(), timeout=SETTLED)
        assert process.process.returncode is None
    finally:
        assert await process.stop() == 0


# ---------------------------------------------------------------- the diff itself


def test_config_changes_name_pools_and_restart_only_fields(short_root: Path) -> None:
    from simnode import node_config

    raw = node_config(short_root)
    running = parse_config(raw)
    new = copy.deepcopy(raw)
    new["mode"] = "host"
    new["hostAgent"]["endpoint"] = "unix:///run/other.sock"
    new["release"] = {"hookSocket": "/run/xpu-bridge/release.sock"}
    new["resourcePrefix"] = "example.com"
    changes = config_changes(running, parse_config(new))
    assert changes.restart_only == ("hostAgent.endpoint", "release.hookSocket")
    assert changes.config.host_agent == running.host_agent
    assert changes.config.release.hook_socket is None
    assert changes.removed == (RED, BLUE, GREEN)
    assert changes.added == ("example.com/red", "example.com/blue", "example.com/green")
    assert changes.applies


def test_a_config_valid_only_with_its_new_agent_is_refused(short_root: Path) -> None:
    from simnode import node_config

    raw = node_config(short_root)
    new = copy.deepcopy(raw)
    new["hostAgent"] = {"api": "dpu-vendor-plugin"}
    for resource in new["resourceList"]:
        resource["bridgePort"] = {"vlan": 10}
    new["resourceList"] = new["resourceList"][:1]
    with pytest.raises(ConfigError) as caught:
        config_changes(parse_config(raw), parse_config(new))
    (problem,) = caught.value.problems
    assert problem.startswith("resourceList[0].bridgePort.vlan: a VLAN is what")
    assert "(with the running hostAgent.api, hostAgent.endpoint" in problem
