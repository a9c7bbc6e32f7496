"""The reconcile pass on fakes: recover() and reconcile() driven one call at a time.

Real pools, leases, device-info store and config; a fake host agent and PodResources. The
leases run on a clock the test moves; nothing waits on wall-clock time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from builders import PORTS, port_state, sf, vf
from fakes import Clock, FakeAgent, FakeHeld, settle

from xpu_bridge.common.pci import mac_text
from xpu_bridge.config import Config, parse_config
from xpu_bridge.hostagent.health import AgentHealth
from xpu_bridge.hostagent.port_ids import PortKey, port_id_for
from xpu_bridge.hostagent.ports import OperStatus, PortState
from xpu_bridge.node.devinfo import DevInfoStore
from xpu_bridge.node.inventory import Device
from xpu_bridge.node.leases import DeviceLeases
from xpu_bridge.node.pool import HEALTHY, UNHEALTHY, DevicePool
from xpu_bridge.node.pool_set import PoolSet
from xpu_bridge.release.device_health import AGENT_UNREACHABLE
from xpu_bridge.release.guards import POD_RESOURCES_UNREADABLE
from xpu_bridge.release.reconciler import Reconciler
from xpu_bridge.sim.scenario import BRIDGES

RED, GREEN = "opi.io/red", "opi.io/green"
HELD, FREE, OTHER = "0000:3b:02.0", "0000:3b:02.1", "0000:3b:02.2"
SF_HELD, SF_FREE = "mlx5_core.sf.2", "mlx5_core.sf.3"


def node_config(holdoff: float = 0, grace: float = 0, unhealthy_after: float = 30) -> Config:
    """Two pools; releases happen on the second pass unless a test sets a hold-off or grace."""
    return parse_config(
        {
            "hostAgent": {"unhealthyAfterSeconds": unhealthy_after},
            "release": {"holdoffSeconds": holdoff, "graceSeconds": grace},
            "resourceList": [
                {
                    "resourceName": "red",
                    "selectors": [{"pfNames": ["ens1f0"]}],
                    "bridgePort": {"logicalBridges": [BRIDGES + "red"]},
                },
                {
                    "resourceName": "green",
                    "deviceType": "auxNetDevice",
                    "selectors": [{"auxTypes": ["sf"]}],
                    "bridgePort": {"logicalBridges": [BRIDGES + "green"]},
                },
            ],
        }
    )


@dataclass
class Rig:
    """One node's release machinery: red holds four VFs of ens1f0, green two SFs."""

    config: Config
    reconciler: Reconciler
    agent: FakeAgent
    held: FakeHeld
    clock: Clock
    leases: DeviceLeases
    health: AgentHealth
    pools: PoolSet
    devinfo: DevInfoStore

    @property
    def red(self) -> DevicePool:
        return self.pools[RED]

    def port_id(self, device_id: str) -> str:
        found = self.pools.find(device_id)
        assert found is not None
        return found.entry.spec.port_id

    def add_port(self, device_id: str, oper: OperStatus = OperStatus.UP, **changes: Any) -> str:
        """The device's port as an earlier Allocate left it; returns the port's name."""
        found = self.pools.find(device_id)
        assert found is not None
        return self.agent.add(port_state(found.entry.spec, oper, **changes)).name

    def port_name(self, device_id: str) -> str:
        return PORTS + self.port_id(device_id)

    def has_port(self, device_id: str) -> bool:
        return self.port_id(device_id) in self.agent.ports

    async def passes(self, count: int) -> None:
        for _ in range(count):
            await self.reconciler.reconcile()

    def health_of(self) -> dict[str, str]:
        return {view.id: view.health for pool in self.pools for view in pool.snapshot()}


RED_DEVICES = [vf(f"0000:3b:02.{index}") for index in range(4)]
GREEN_DEVICES = [sf(SF_HELD), sf(SF_FREE)]
MakeRig = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def make_rig(tmp_path: Path) -> AsyncIterator[MakeRig]:
    made: list[Rig] = []

    async def make(
        red: list[Device] | None = None, kubelet_age: float | None = None, **settings: Any
    ) -> Rig:
        config = node_config(**settings)
        pools = PoolSet(
            [
                DevicePool(config.full_resource_name(resource), resource, config.port_id_prefix)
                for resource in config.resource_list
            ]
        )
        await pools[RED].replace_devices(RED_DEVICES if red is None else red)
        await pools[GREEN].replace_devices(GREEN_DEVICES)
        clock = Clock()
        agent = FakeAgent(config.host_agent.attach_timeout_seconds)
        held = FakeHeld()
        leases = DeviceLeases(config.release.grace_seconds, clock)
        health = AgentHealth(config.host_agent.unhealthy_after_seconds)
        devinfo = DevInfoStore(tmp_path / "devinfo")
        reconciler = Reconciler(
            config,
            pools,
            leases,
            agent,
            health,
            held,
            devinfo,
            lambda: None,
            kubelet_age=lambda: kubelet_age,
        )
        rig = Rig(config, reconciler, agent, held, clock, leases, health, pools, devinfo)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        await rig.reconciler.stop()


async def allocated(rig: Rig, device_id: str, attach_seconds: float = 0.5) -> None:
    """An Allocate of the device, start to end, as the plugin server runs one."""
    async with rig.leases.attaching([device_id]):
        rig.clock.advance(attach_seconds)


@pytest.fixture
async def rig(make_rig: MakeRig) -> Rig:
    """Ports for HELD (held), FREE and OTHER (not held), SF_HELD (held); FREE was allocated
    long ago and has a device-info file."""
    made = await make_rig()
    for device_id in (HELD, FREE, OTHER):
        made.add_port(device_id)
    made.add_port(SF_HELD)
    made.held.hold(RED, HELD)
    made.held.hold(GREEN, SF_HELD)
    await allocated(made, FREE)
    made.devinfo.write(RED, vf(FREE))
    made.clock.advance(600)
    return made


async def test_an_unheld_port_goes_on_the_second_pass_not_the_first(rig: Rig) -> None:
    info = rig.devinfo.path_for(RED, FREE)
    assert info.exists()
    await rig.passes(1)
    assert rig.agent.deleted == []
    await rig.passes(1)
    assert rig.agent.deleted == [rig.port_name(FREE), rig.port_name(OTHER)]
    assert rig.has_port(HELD) and rig.has_port(SF_HELD)
    assert not info.exists()
    assert not rig.leases.was_attached(FREE)
    assert rig.reconciler.stats.releases == {(RED, "unheld"): 2}
    await rig.passes(3)
    assert rig.agent.calls["delete_port"] == 2


async def test_recovery_counts_as_the_first_pass(rig: Rig) -> None:
    await rig.reconciler.recover()
    assert rig.agent.deleted == []
    late = rig.add_port("0000:3b:02.3")  # appeared after start-up: two passes as usual
    await rig.passes(1)
    assert rig.agent.deleted == [rig.port_name(FREE), rig.port_name(OTHER)]
    await rig.passes(1)
    assert rig.agent.deleted[2:] == [late]


async def test_held_ports_are_never_released(rig: Rig) -> None:
    await rig.reconciler.recover()
    await rig.passes(10)
    assert rig.has_port(HELD) and rig.has_port(SF_HELD)
    assert rig.agent.calls["delete_port"] == 2  # FREE and OTHER
    assert rig.agent.calls["list_ports"] == 11
    rig.held.drop(RED, HELD)  # its pod ended
    await rig.passes(1)
    assert rig.has_port(HELD)
    await rig.passes(1)
    assert not rig.has_port(HELD) and rig.has_port(SF_HELD)


async def test_unreadable_pod_resources_release_nothing(rig: Rig) -> None:
    await rig.reconciler.recover()
    rig.held.unavailable = "PodResources List at /pr.sock failed: UNAVAILABLE: no kubelet"
    await rig.passes(3)
    assert rig.agent.calls["delete_port"] == 0
    assert rig.reconciler.stats.held_back == {POD_RESOURCES_UNREADABLE: 3}
    rig.held.unavailable = None
    await rig.passes(1)
    assert rig.agent.deleted == []  # the two-pass count starts over
    await rig.passes(1)
    assert rig.agent.deleted == [rig.port_name(FREE), rig.port_name(OTHER)]


async def test_pod_resources_unreadable_at_start_up_seeds_nothing(rig: Rig) -> None:
    rig.held.unavailable = "PodResources List at /pr.sock failed: UNAVAILABLE: no kubelet"
    await rig.reconciler.recover()
    rig.held.unavailable = None
    await rig.passes(1)
    assert rig.agent.deleted == []
    await rig.passes(1)
    assert rig.agent.deleted == [rig.port_name(FREE), rig.port_name(OTHER)]


async def test_an_unreachable_agent_releases_nothing(rig: Rig) -> None:
    await rig.reconciler.recover()
    rig.agent.fail()
    await rig.passes(3)
    assert rig.agent.calls["list_ports"] == 4
    assert rig.agent.calls["delete_port"] == 0
    assert rig.reconciler.stats.releases == {}
    assert rig.has_port(FREE) and rig.has_port(OTHER)


async def test_a_port_attached_after_the_pod_resources_snapshot_stays(rig: Rig) -> None:
    await rig.reconciler.recover()  # FREE and OTHER count as candidates once already

    async def admit_free() -> None:  # the Allocate ends after the kubelet's snapshot
        await allocated(rig, FREE)

    rig.held.during_read = admit_free
    await rig.passes(1)
    assert rig.agent.deleted == [rig.port_name(OTHER)]
    assert rig.has_port(FREE)
    rig.held.during_read = None
    rig.held.hold(RED, FREE)  # the next snapshot lists the new pod
    rig.clock.advance(600)
    await rig.passes(3)
    assert rig.has_port(FREE)


async def test_an_allocate_while_the_pass_deletes_keeps_its_port(rig: Rig) -> None:
    await rig.reconciler.recover()
    first = rig.port_name(FREE)

    async def allocate_other_meanwhile(name: str) -> None:
        if name == first:
            await allocated(rig, OTHER)

    rig.agent.on_delete = allocate_other_meanwhile
    await rig.passes(1)
    assert rig.agent.deleted == [first]
    assert rig.has_port(OTHER)


async def test_a_stuck_delete_is_sent_again_after_12_passes(rig: Rig) -> None:
    rig.held.hold(RED, OTHER)
    rig.agent.set_oper(rig.port_id(FREE), OperStatus.TO_BE_DELETED)
    await rig.passes(11)
    assert rig.agent.calls["delete_port"] == 0
    await rig.passes(1)
    assert rig.agent.deleted == [rig.port_name(FREE)]
    assert not rig.has_port(FREE)


async def test_a_held_sf_this_node_never_saw_keeps_every_sf_port(rig: Rig) -> None:
    rig.add_port(SF_FREE)
    rig.held.hold(GREEN, "mlx5_core.sf.9")
    await rig.reconciler.recover()
    await rig.passes(2)
    assert rig.has_port(SF_FREE)
    assert not rig.has_port(FREE) and not rig.has_port(OTHER)
    rig.held.drop(GREEN, "mlx5_core.sf.9")
    await rig.passes(1)
    assert rig.has_port(SF_FREE)
    await rig.passes(1)
    assert not rig.has_port(SF_FREE) and rig.has_port(SF_HELD)


async def test_only_our_ports_are_released_even_of_devices_gone(rig: Rig) -> None:
    rig.held.hold(RED, FREE)
    rig.held.hold(RED, OTHER)
    gone = port_id_for(PortKey("vf", "0000:3b:0a.0"))  # its VF left sysfs
    foreign = "tool-port-1"
    for port_id in (gone, foreign):
        rig.agent.add(
            PortState(
                name=PORTS + port_id,
                port_id=port_id,
                mac=bytes.fromhex("020000000001"),
                ptype="access",
                logical_bridges=(BRIDGES + "red",),
                oper=OperStatus.UP,
            )
        )
    await rig.passes(3)
    assert rig.agent.deleted == [PORTS + gone]
    assert foreign in rig.agent.ports
    assert rig.reconciler.stats.releases == {("unknown", "unheld"): 1}


@pytest.mark.parametrize(
    ("kubelet_age", "held", "holds_back"),
    [
        pytest.param(None, True, True, id="no kubelet socket at start"),
        pytest.param(30.0, True, True, id="kubelet socket younger than the hold-off"),
        pytest.param(86400.0, True, False, id="kubelet up for a day"),
        pytest.param(86400.0, False, True, id="up for a day, but PodResources shows none of ours"),
    ],
)
async def test_the_start_up_hold_off_only_when_the_kubelet_may_have_restarted(
    make_rig: MakeRig, kubelet_age: float | None, held: bool, holds_back: bool
) -> None:
    rig = await make_rig(holdoff=120, kubelet_age=kubelet_age)
    rig.add_port(FREE)
    rig.add_port(HELD)
    if held:
        rig.held.hold(RED, HELD)
    await rig.reconciler.recover()
    await rig.passes(2)
    assert (rig.reconciler.gate.holdoff_reason(rig.clock()) is not None) is holds_back
    deleted = [rig.port_name(FREE)] + ([] if held else [rig.port_name(HELD)])
    assert rig.agent.deleted == ([] if holds_back else deleted)


async def test_the_start_up_hold_off_holds_every_release(make_rig: MakeRig) -> None:
    rig = await make_rig(holdoff=120)
    rig.add_port(FREE)
    await rig.reconciler.recover()
    await rig.passes(3)
    assert rig.agent.calls["delete_port"] == 0
    assert rig.reconciler.stats.held_back == {"startup": 3}
    assert rig.reconciler.gate.holdoff_reason(rig.clock()) is not None
    rig.clock.advance(121)
    assert rig.reconciler.gate.holdoff_reason(rig.clock()) is None
    await rig.passes(1)
    assert rig.agent.deleted == [rig.port_name(FREE)]


@pytest.mark.parametrize(
    ("unhealthy_after", "failing_for", "unhealthy"),
    [
        pytest.param(0, None, True, id="unhealthyAfterSeconds 0: at once"),
        pytest.param(30, None, False, id="just failed"),
        pytest.param(30, 25, False, id="failing for 25s of 30"),
        pytest.param(30, 31, True, id="failing for 31s of 30"),
    ],
)
async def test_devices_turn_unhealthy_when_the_agent_stays_unreachable(
    make_rig: MakeRig, unhealthy_after: float, failing_for: float | None, unhealthy: bool
) -> None:
    rig = await make_rig(unhealthy_after=unhealthy_after)
    await rig.passes(1)
    every = set(rig.health_of())
    assert len(every) == 6 and set(rig.health_of().values()) == {HEALTHY}
    rig.agent.fail()
    if failing_for is not None:  # an Allocate's call failed that long ago
        rig.health.record(False, rig.clock() - failing_for)
    await rig.passes(1)
    assert rig.health_of() == dict.fromkeys(every, UNHEALTHY if unhealthy else HEALTHY)
    if unhealthy:
        assert rig.red.unhealthy_reason(HELD) == AGENT_UNREACHABLE
    rig.agent.heal()
    await rig.passes(1)
    assert set(rig.health_of().values()) == {HEALTHY}


async def test_a_port_reporting_a_component_error_makes_its_device_unhealthy(rig: Rig) -> None:
    rig.agent.set_oper(rig.port_id(HELD), OperStatus.UP, "dpu: ERROR", "nic: ERROR")
    await rig.passes(1)
    health = rig.health_of()
    assert health.pop(HELD) == UNHEALTHY
    assert set(health.values()) == {HEALTHY}
    assert rig.red.unhealthy_reason(HELD) == "dpu: ERROR; nic: ERROR"
    rig.agent.set_oper(rig.port_id(HELD), OperStatus.UP)
    await rig.passes(1)
    assert rig.red.unhealthy_reason(HELD) is None


async def test_a_held_port_the_xpu_lost_is_created_again(rig: Rig) -> None:
    del rig.agent.ports[rig.port_id(SF_HELD)]
    await rig.passes(1)
    await settle()
    assert rig.has_port(SF_HELD)
    assert rig.agent.calls["ensure_port"] == 1
    assert rig.reconciler.stats.repairs == {GREEN: 1}


async def test_recovery_adopts_the_mac_of_a_held_port_sysfs_shows_none(make_rig: MakeRig) -> None:
    rig = await make_rig(red=[vf(HELD, driver="vfio-pci"), *RED_DEVICES[1:]])
    entry = rig.red.get(HELD)
    assert entry is not None and entry.device.mac is None
    mac = bytes.fromhex("0c42a1003b10")
    assert entry.spec.mac != mac
    rig.agent.add(port_state(entry.spec, mac=mac))
    rig.held.hold(RED, HELD)
    await rig.reconciler.recover()
    adopted = rig.red.get(HELD)
    assert adopted is not None
    assert adopted.spec.mac == mac and adopted.device.mac == mac_text(mac)
    await rig.passes(2)
    await settle()
    assert rig.agent.calls["ensure_port"] == 0 and rig.agent.deleted == []
