"""Prewarmed ports (`bridgePort.prewarm: N`) through the simulators, on both backends: ports of
free devices kept UP ahead of demand, handed out without a Create, replenished, released when
no longer wanted, spared by the reconciler, adopted after a restart."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import builders
import grpc
import pytest
import yaml
from builders import resource_config, vf_address
from fakes import Clock, FakeAgent, FakeHeld, settle
from simnode import BRIDGES, RED, Node, VspNode, eventually
from test_reload import reloaded, start, write_config

from opi_protos.evpn_gw import l2_xpu_infra_mgr_pb2 as opi
from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2 as dp
from xpu_bridge.config import ConfigError, parse_config
from xpu_bridge.config.loading import load_config
from xpu_bridge.daemon import Daemon
from xpu_bridge.hostagent.health import AgentHealth
from xpu_bridge.hostagent.ports import Attachment, PortSpec
from xpu_bridge.node.devinfo import DevInfoStore
from xpu_bridge.node.leases import DeviceLeases
from xpu_bridge.node.pool import DevicePool, PoolDevice
from xpu_bridge.node.pool_set import PoolSet
from xpu_bridge.node.prewarm import PrewarmedAttacher, PrewarmedPort, PrewarmedPorts
from xpu_bridge.release.reconciler import Reconciler
from xpu_bridge.sim.kubelet import Container

INTERVAL = 0.2
SETTLED = 30.0
"""Seconds anything here may take on a noisy machine."""


def prewarm(node: Node, count: int, resource: int = 0) -> None:
    node.raw_config["resourceList"][resource]["bridgePort"]["prewarm"] = count


def quick(node: Node, grace: float = 0.5) -> Node:
    node.raw_config["release"] = {
        "intervalSeconds": INTERVAL,
        "graceSeconds": grace,
        "holdoffSeconds": 0,
    }
    return node


@pytest.fixture(params=["opi-evpn-bridge", "dpu-vendor-plugin"])
def any_node(request: pytest.FixtureRequest) -> Node:
    """A node on either backend, quick releases, red with prewarm 2."""
    created: Node = request.getfixturevalue("vsp_node" if "vendor" in request.param else "node")
    quick(created)
    prewarm(created, 2)
    return created


def daemon_of(node: Node) -> Daemon:
    assert node.daemon is not None
    return node.daemon


def warm(node: Node, resource: str = RED) -> set[str]:
    """Device IDs of `resource` whose port is prewarmed now."""
    prewarmed = daemon_of(node).reconciler.prewarm.prewarmed
    return {r.device_id for r in prewarmed.ready() if r.resource == resource}


def port_id(node: Node, device: str, resource: str = RED) -> str:
    entry = daemon_of(node).pools[resource].get(device)
    assert entry is not None
    return entry.spec.port_id


def has_port(node: Node, device: str, resource: str = RED) -> bool:
    return port_id(node, device, resource) in node.agent.ports


async def settled(node: Node, count: int, resource: str = RED) -> set[str]:
    """Wait until `count` devices are prewarmed, each with its port on the agent."""
    await eventually(
        lambda: (
            len(warm(node, resource)) == count
            and all(has_port(node, d, resource) for d in warm(node, resource))
        ),
        timeout=SETTLED,
    )
    return warm(node, resource)


async def admit(node: Node, pod: str, count: int = 1, resource: str = RED) -> list[str]:
    (assignment,) = await node.kubelet.admit_pod(
        pod, containers=[Container("c", {resource: count})]
    )
    return list(assignment.device_ids)


async def passes(node: Node, count: int) -> None:
    stats = daemon_of(node).reconciler.stats
    start_at = stats.passes
    await eventually(lambda: stats.passes >= start_at + count, timeout=SETTLED)


def metric(node: Node, name: str, resource: str = RED) -> float | None:
    registry = daemon_of(node).reloader.metrics.registry
    return registry.get_sample_value(name, {"resource": resource})


def refuse_creates(node: Node) -> None:
    """The agent refuses every CreateBridgePort from now on (a plain error, never retried)."""
    node.agent.set_error_rate("CreateBridgePort", 1.0, grpc.StatusCode.INVALID_ARGUMENT)


# ---------------------------------------------------------------- config


def test_prewarm_is_an_integer_of_zero_or_more_named_when_wrong() -> None:
    base: dict[str, Any] = {
        "resourceList": [
            {
                "resourceName": "red",
                "selectors": [{"pfNames": ["ens1f0"]}],
                "bridgePort": {"logicalBridges": [BRIDGES + "red"], "prewarm": 3},
            }
        ]
    }
    assert parse_config(base).resource_list[0].bridge_port.prewarm == 3
    for bad in (-1, "2", 1.5, True):
        raw = copy.deepcopy(base)
        raw["resourceList"][0]["bridgePort"]["prewarm"] = bad
        with pytest.raises(ConfigError) as error:
            parse_config(raw)
        (line,) = error.value.problems
        assert line.startswith("resourceList[0].bridgePort.prewarm: "), line
    del base["resourceList"][0]["bridgePort"]["prewarm"]
    assert parse_config(base).resource_list[0].bridge_port.prewarm == 0


def test_describe_says_how_many_are_prewarmed(tmp_path: Any) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {"resourceList": [{"resourceName": "r", "selectors": [{"pfNames": ["e"]}],
                               "bridgePort": {"vlan": 10, "prewarm": 2}}],
             "hostAgent": {"api": "dpu-vendor-plugin"}}
        )
    )  # fmt: skip
    port = load_config(path).resource_list[0].bridge_port
    assert port.describe() == "access port on VLAN 10, 2 prewarmed"


# ---------------------------------------------------------------- preferred pick


async def filled() -> DevicePool:
    pool = DevicePool("opi.io/red", resource_config("red"), "")
    await pool.replace_devices(builders.vf(vf_address(pf, i)) for pf in range(2) for i in range(4))
    return pool


async def test_the_preferred_pick_takes_prewarmed_devices_after_must_include() -> None:
    pool = await filled()
    ids = [entry.id for entry in pool.devices()]
    warm_ids = {vf_address(0, 3), vf_address(1, 2), vf_address(1, 3)}
    pool.prewarmed = frozenset(warm_ids)
    assert set(pool.preferred(ids, [], 3)) == warm_ids
    picked = pool.preferred(ids, [vf_address(0, 0)], 3)
    assert picked[0] == vf_address(0, 0)
    assert set(picked[1:]) <= warm_ids
    spread = pool.preferred(ids, [], 2)  # spread across PFs within the prewarmed ones
    assert {builders.vf(i).pf_address for i in spread} == {
        builders.vf(vf_address(0, 0)).pf_address,
        builders.vf(vf_address(1, 0)).pf_address,
    }
    assert len(pool.preferred(ids, [], 5)) == 5


async def test_take_hands_out_a_port_of_the_current_spec_once() -> None:
    pool = await filled()
    entry = pool.devices()[0]
    prewarmed = PrewarmedPorts()
    woken: list[bool] = []
    prewarmed.on_taken = lambda: woken.append(True)
    port = builders.port_state(entry.spec)
    prewarmed.add(PrewarmedPort(pool, entry.id, entry.spec, port, 0.0))
    assert pool.prewarmed == {entry.id}
    assert prewarmed.spares(entry.spec.port_id)
    assert prewarmed.take(entry.spec) == port
    assert prewarmed.take(entry.spec) is None
    assert pool.prewarmed == frozenset() and woken == [True]
    assert prewarmed.taken == {"opi.io/red": 1}
    other = replace(entry.spec, logical_bridges=(BRIDGES + "green",))
    prewarmed.add(PrewarmedPort(pool, entry.id, entry.spec, port, 0.0))
    assert prewarmed.take(other) is None  # an old spec is given up: Allocate attaches anew
    assert not prewarmed.spares(entry.spec.port_id)


async def test_preferred_allocation_offers_prewarmed_devices_first(any_node: Node) -> None:
    await any_node.start_daemon()
    ready = await settled(any_node, 2)
    got = await admit(any_node, "a", count=2)
    assert set(got) == ready
    (call, *_) = any_node.kubelet.calls("GetPreferredAllocation", RED)
    assert isinstance(call.response, dp.PreferredAllocationResponse)
    assert set(call.response.container_responses[0].deviceIDs) == ready


# ---------------------------------------------------------------- Allocate and replenish


async def test_an_allocate_takes_a_prewarmed_port_and_it_is_replenished(any_node: Node) -> None:
    await any_node.start_daemon()
    ready = await settled(any_node, 2)
    (taken,) = await admit(any_node, "a")
    assert taken in ready
    assert taken not in warm(any_node)
    again = await settled(any_node, 2)
    assert taken not in again
    assert metric(any_node, "xpu_bridge_allocations_prewarmed_total") == 1
    assert metric(any_node, "xpu_bridge_prewarmed_ports") == 2
    state = daemon_of(any_node).status.debug_state()["pools"][RED]["devices"]
    assert {d["id"] for d in state if d.get("prewarmed")} == again
    registry = daemon_of(any_node).reloader.metrics.registry
    allocated = registry.get_sample_value(
        "xpu_bridge_devices", {"resource": RED, "state": "allocated"}
    )
    assert allocated == 1  # prewarmed devices are free


async def test_allocates_of_prewarmed_devices_need_no_create(short_root: Any, node: Node) -> None:
    """With the agent taking 500 ms to bring a port UP and prewarm >= demand, Allocate finds
    its port UP: it still succeeds while the agent refuses every Create."""
    quick(node)
    prewarm(node, 3)
    node.agent.up_delay = 0.5
    await node.start_daemon()
    ready = await settled(node, 3)
    refuse_creates(node)
    creates = node.agent.calls["CreateBridgePort"]
    got = await admit(node, "a", count=3)
    assert set(got) == ready
    assert metric(node, "xpu_bridge_allocations_prewarmed_total") == 3
    answer = node.kubelet.calls("Allocate", RED)[-1].response
    assert isinstance(answer, dp.AllocateResponse)
    info = json.loads(answer.container_responses[0].envs["PCIDEVICE_OPI_IO_RED_INFO"])
    for device in got:
        assert info[device]["xpu"]["bridgePort"].endswith("/" + port_id(node, device))
        assert info[device]["xpu"]["logicalBridges"] == [BRIDGES + "red"]
        assert (node.devinfo_dir / f"opi.io-red-{device}-device.json").exists()
    # replenishing tried (and failed, logged, with backoff), the Allocates did not wait
    await eventually(lambda: node.agent.calls["CreateBridgePort"] > creates, timeout=SETTLED)


async def test_a_prewarmed_device_is_answered_as_any_other(any_node: Node) -> None:
    node = any_node
    prewarm(node, 1)
    await node.start_daemon()
    (ready,) = await settled(node, 1)
    got = await admit(node, "a", count=2)  # one prewarmed, one attached now
    assert ready in got
    (cold,) = set(got) - {ready}
    answer = node.kubelet.calls("Allocate", RED)[-1].response
    assert isinstance(answer, dp.AllocateResponse)
    info = json.loads(answer.container_responses[0].envs["PCIDEVICE_OPI_IO_RED_INFO"])
    warm_info, cold_info = info[ready], info[cold]
    assert set(warm_info) == set(cold_info) and set(warm_info["xpu"]) == set(cold_info["xpu"])
    assert warm_info["xpu"]["logicalBridges"] == cold_info["xpu"]["logicalBridges"]
    for device in (ready, cold):
        port = info[device]["xpu"]["bridgePort"]
        assert port.rsplit("/", 1)[-1] == port_id(node, device)
        assert (node.devinfo_dir / f"opi.io-red-{device}-device.json").exists()
    warm_name, cold_name = warm_info["xpu"]["bridgePort"], cold_info["xpu"]["bridgePort"]
    assert warm_name.count("/") == cold_name.count("/")  # named as the agent names ports
    assert warm_name.rpartition("/")[0] == cold_name.rpartition("/")[0]


# ---------------------------------------------------------------- pods and the reconciler


async def test_a_taken_port_is_the_pods_until_the_pod_is_gone(any_node: Node) -> None:
    await any_node.start_daemon()
    await settled(any_node, 2)
    (taken,) = await admit(any_node, "a")
    await passes(any_node, 10)
    assert has_port(any_node, taken)
    assert not any_node.agent.deletions
    any_node.kubelet.delete_pod("a")
    await eventually(lambda: not has_port(any_node, taken) or taken in warm(any_node), SETTLED)
    released = daemon_of(any_node).reconciler.stats.releases[(RED, "unheld")]
    assert released == 1 or taken in warm(any_node)


async def test_the_reconciler_leaves_prewarmed_ports_alone(any_node: Node) -> None:
    await any_node.start_daemon()
    ready = await settled(any_node, 2)
    await passes(any_node, 15)
    assert warm(any_node) == ready
    assert all(has_port(any_node, d) for d in ready)
    assert not any_node.agent.deletions
    assert not daemon_of(any_node).reconciler.stats.releases[(RED, "unheld")]


async def test_a_prewarmed_port_vanishing_on_the_agent_is_replaced(node: Node) -> None:
    quick(node)
    prewarm(node, 2)
    await node.start_daemon()
    ready = await settled(node, 2)
    lost = sorted(ready)[0]
    node.agent.delete_port_now(port_id(node, lost))
    await eventually(lambda: has_port(node, lost) and lost in warm(node), timeout=SETTLED)
    await settled(node, 2)


async def test_an_allocate_confirms_a_prewarmed_port_the_agent_lost(node: Node) -> None:
    """Lost after the last pass (an hour away): the Allocate asks the agent, finds it gone
    and attaches anew, rather than answering for a port the xPU no longer has."""
    quick(node)
    prewarm(node, 2)
    daemon = await start(node)
    ready = await settled(node, 2)
    slow = copy.deepcopy(node.raw_config)
    slow["release"]["intervalSeconds"] = 3600
    write_config(node, slow)
    await reloaded(daemon, "applied")
    await passes(node, 1)  # the pass under way when the reload came; the next is an hour away
    for device in ready:
        node.agent.delete_port_now(port_id(node, device))
    taken = await admit(node, "web", count=2)
    assert set(taken) == ready
    for device in taken:
        port = node.agent.ports[port_id(node, device)]
        assert port.status.oper_status == opi.BP_OPER_STATUS_UP


async def test_a_prewarmed_device_that_turns_unhealthy_is_dropped(node: Node) -> None:
    quick(node)
    prewarm(node, 2)
    await node.start_daemon()
    ready = await settled(node, 2)
    sick = sorted(ready)[0]
    node.agent.set_port_error(port_id(node, sick), details="programming failed")
    await eventually(lambda: sick not in warm(node), timeout=SETTLED)
    await eventually(lambda: len(warm(node)) == 2, timeout=SETTLED)


# ---------------------------------------------------------------- config reloads


@pytest.fixture
def reloading(any_node: Node) -> Node:
    return any_node


async def test_lowering_prewarm_by_a_reload_releases_the_surplus(reloading: Node) -> None:
    node = reloading
    daemon = await start(node)
    await settled(node, 2)
    new = copy.deepcopy(node.raw_config)
    new["resourceList"][0]["bridgePort"]["prewarm"] = 1
    write_config(node, new)
    await reloaded(daemon, "applied")
    kept = await settled(node, 1)
    await eventually(lambda: len([p for p in node.agent.ports]) == 1, timeout=SETTLED)
    assert {port_id(node, d) for d in kept} == set(node.agent.ports)
    assert metric(node, "xpu_bridge_prewarmed_ports") == 1


async def test_a_removed_pool_releases_its_prewarmed_ports(reloading: Node) -> None:
    node = reloading
    resources = node.raw_config["resourceList"]
    node.raw_config["resourceList"] = [r for r in resources if r["resourceName"] == "red"]
    node.raw_config["resourceList"].append(
        copy.deepcopy(node.raw_config["resourceList"][0])
        | {"resourceName": "spare", "selectors": [{"pfNames": ["ens1f1#4-7"]}]}
    )
    daemon = await start(node)
    await settled(node, 2)
    await settled(node, 2, "opi.io/spare")
    new = copy.deepcopy(node.raw_config)
    new["resourceList"].pop()
    write_config(node, new)
    await reloaded(daemon, "applied")
    await eventually(lambda: len(node.agent.ports) == 2, timeout=SETTLED)
    await settled(node, 2)


async def test_a_bridge_port_reload_replaces_prewarmed_ports(node: Node) -> None:
    quick(node)
    prewarm(node, 2)
    daemon = await start(node)
    ready = await settled(node, 2)
    new = copy.deepcopy(node.raw_config)
    new["resourceList"][0]["bridgePort"]["logicalBridges"] = [BRIDGES + "green"]
    write_config(node, new)
    await reloaded(daemon, "applied")

    def on_green() -> bool:
        ports = node.agent.ports
        return len(warm(node)) == 2 and all(
            list(ports[port_id(node, d)].spec.logical_bridges) == [BRIDGES + "green"]
            for d in warm(node)
            if port_id(node, d) in ports
        )

    await eventually(on_green, timeout=SETTLED)
    await settled(node, 2)
    assert warm(node) == ready  # the same devices, their ports made again
    assert not daemon.pools.kept()


# ---------------------------------------------------------------- restarts


async def test_a_restart_adopts_prewarmed_ports(node: Node) -> None:
    quick(node)
    prewarm(node, 2)
    await node.start_daemon()
    ready = await settled(node, 2)
    await node.stop_daemon()
    creates = node.agent.calls["CreateBridgePort"]
    await node.start_daemon()
    assert warm(node) == ready  # adopted at start-up, before the first pass
    await passes(node, 10)
    assert warm(node) == ready
    assert node.agent.calls["CreateBridgePort"] == creates
    assert not node.agent.deletions


async def test_a_restart_adopts_no_more_than_prewarm(node: Node) -> None:
    quick(node)
    prewarm(node, 3)
    await node.start_daemon()
    await settled(node, 3)
    await node.stop_daemon()
    prewarm(node, 1)
    await node.start_daemon()
    assert len(warm(node)) == 1
    await eventually(lambda: len(node.agent.ports) == 1, timeout=SETTLED)
    await settled(node, 1)


async def test_a_restart_on_a_vendor_plugin_makes_them_again_by_name(vsp_node: VspNode) -> None:
    quick(vsp_node)
    prewarm(vsp_node, 2)
    await vsp_node.start_daemon()
    await settled(vsp_node, 2)
    await vsp_node.stop_daemon()
    left = vsp_node.vsp.capacity_left
    await vsp_node.start_daemon()
    await settled(vsp_node, 2)
    await passes(vsp_node, 10)
    assert len(vsp_node.vsp.ports) == 2
    assert vsp_node.vsp.capacity_left == left


# ---------------------------------------------------------------- races, on fakes


class GatedAgent(FakeAgent):
    """A fake agent whose ensure_port waits for `creates` to be set (when it is not None)."""

    def __init__(self) -> None:
        super().__init__()
        self.creates: asyncio.Event | None = None

    async def ensure_port(self, spec: PortSpec) -> Attachment:
        if self.creates is not None:
            await self.creates.wait()
        return await super().ensure_port(spec)


@dataclass
class Keeping:
    """The release machinery of one red pool of four VFs on fakes, prewarm 1."""

    agent: GatedAgent
    pools: PoolSet
    leases: DeviceLeases
    reconciler: Reconciler
    attacher: PrewarmedAttacher

    @property
    def prewarmed(self) -> PrewarmedPorts:
        return self.reconciler.prewarm.prewarmed

    def spec(self, device_id: str) -> PortSpec:
        entry = self.pools[RED].get(device_id)
        assert entry is not None
        return entry.spec

    async def allocate(self, device_id: str) -> Attachment:
        """What Allocate does with one device: the lease, then the attacher."""
        async with self.leases.attaching([device_id]):
            return await self.attacher.ensure_port(self.spec(device_id))


@pytest.fixture
async def keeping(tmp_path: Any) -> AsyncIterator[Keeping]:
    config = parse_config(
        {
            "release": {"holdoffSeconds": 0, "graceSeconds": 0},
            "resourceList": [
                {
                    "resourceName": "red",
                    "selectors": [{"pfNames": ["ens1f0"]}],
                    "bridgePort": {"logicalBridges": [BRIDGES + "red"], "prewarm": 1},
                }
            ],
        }
    )
    (resource,) = config.resource_list
    pools = PoolSet([DevicePool(RED, resource, "")])
    await pools[RED].replace_devices(builders.vf(vf_address(0, i)) for i in range(4))
    agent = GatedAgent()
    leases = DeviceLeases(0, Clock())
    prewarmed = PrewarmedPorts()
    reconciler = Reconciler(
        config,
        pools,
        leases,
        agent,
        AgentHealth(30),
        FakeHeld(),
        DevInfoStore(tmp_path / "devinfo"),
        lambda: None,
        prewarmed=prewarmed,
    )
    await reconciler.recover()
    await reconciler.reconcile()
    yield Keeping(agent, pools, leases, reconciler, PrewarmedAttacher(agent, prewarmed))
    await reconciler.stop()


async def test_replenish_gives_way_to_an_allocate_of_the_device(keeping: Keeping) -> None:
    keeping.agent.creates = asyncio.Event()
    step = asyncio.create_task(keeping.reconciler.prewarm.step())
    await settle()
    (device,) = [
        e.id for e in keeping.pools[RED].devices() if keeping.prewarmed.spares(e.spec.port_id)
    ]
    allocate = asyncio.create_task(keeping.allocate(device))
    await settle()
    assert not allocate.done()  # it waits while the keeper makes the port
    keeping.agent.creates.set()
    await step
    attachment = await allocate
    assert attachment.port.port_id == keeping.spec(device).port_id
    assert not keeping.prewarmed.spares(keeping.spec(device).port_id)  # the Allocate's now
    assert keeping.agent.calls["ensure_port"] == 2  # the Allocate ensured it itself


async def test_an_allocate_waits_for_a_surplus_release_and_attaches_anew(
    keeping: Keeping,
) -> None:
    await keeping.reconciler.prewarm.step()
    (record,) = keeping.prewarmed.ready()
    pool = keeping.pools[RED]
    port = pool.resource.bridge_port.model_copy(update={"prewarm": 0})
    pool.resource = pool.resource.model_copy(update={"bridge_port": port})
    deleting = asyncio.Event()
    go_on = asyncio.Event()

    async def slow_delete(name: str) -> None:
        deleting.set()
        await go_on.wait()

    keeping.agent.on_delete = slow_delete
    step = asyncio.create_task(keeping.reconciler.prewarm.step())
    await deleting.wait()
    allocate = asyncio.create_task(keeping.allocate(record.device_id))
    await settle()
    assert not allocate.done()  # the prewarmed port is being deleted: the Allocate waits
    go_on.set()
    await step
    attachment = await allocate
    assert attachment.created  # made anew, not the port that was deleted
    assert keeping.agent.deleted == [record.port.name]
    assert not keeping.prewarmed.ready()
    assert keeping.prewarmed.taken[RED] == 0


async def test_the_reconciler_spares_prewarmed_ports_on_fakes(keeping: Keeping) -> None:
    await keeping.reconciler.prewarm.step()
    (record,) = keeping.prewarmed.ready()
    for _ in range(10):
        await keeping.reconciler.reconcile()
    assert not keeping.agent.deleted
    assert keeping.reconciler.in_use(PoolDevice(builders.vf(record.device_id), record.spec))
    keeping.prewarmed.remove(record.spec.port_id)  # no longer prewarmed: an unheld port
    for _ in range(3):
        await keeping.reconciler.reconcile()
    assert keeping.agent.deleted == [record.port.name]


async def test_the_release_hook_leaves_a_prewarmed_port(keeping: Keeping) -> None:
    await keeping.reconciler.prewarm.step()
    (record,) = keeping.prewarmed.ready()
    result = await keeping.reconciler.release_hook().release_now(record.device_id)
    assert not result.released
    assert "prewarmed" in result.message
    assert not keeping.agent.deleted


async def test_status_shows_prewarmed_ports(any_node: Node) -> None:
    from xpu_bridge.ops.reports import status_report

    await any_node.start_daemon()
    ready = await settled(any_node, 2)
    report = status_report(daemon_of(any_node).status.debug_state())
    rows = [line for line in report.splitlines() if "(prewarmed)" in line]
    assert sorted(row.split()[0] for row in rows) == sorted(ready)
