"""Repair of held ports and the stuck-delete back-off: pure decisions, then PortRepair on fakes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from builders import port_state, resource_config, vf
from fakes import Clock, FakeAgent, settle

from xpu_bridge.hostagent.health import AgentHealth
from xpu_bridge.hostagent.port_names import OpiPortIds
from xpu_bridge.hostagent.ports import OperStatus, PortSpec, PortState
from xpu_bridge.kubelet.pod_resources import HeldDevices, Holder
from xpu_bridge.node.leases import DeviceLeases
from xpu_bridge.node.pool import DevicePool
from xpu_bridge.node.pool_set import PoolSet
from xpu_bridge.release.owned import OwnedPorts
from xpu_bridge.release.repair import PortRepair, port_problem
from xpu_bridge.release.stats import ReleaseStats
from xpu_bridge.release.stuck import resend_due

SPEC = PortSpec(
    port_id="vf-0000-3b-02-0",
    mac=bytes.fromhex("0c42a1003b10"),
    ptype="trunk",
    logical_bridges=("//b/blue-a", "//b/blue-b"),
)
UP = port_state(SPEC)
DOWN = port_state(SPEC, OperStatus.DOWN)


@pytest.mark.parametrize(
    ("port", "down_for", "attach_timeout", "expected"),
    [
        pytest.param(None, 0, 10, "missing on the xPU", id="missing"),
        pytest.param(
            port_state(SPEC, OperStatus.TO_BE_DELETED), 0, 10, "being deleted", id="dying"
        ),
        pytest.param(
            port_state(SPEC, OperStatus.TO_BE_DELETED, logical_bridges=("//b/other",)),
            0,
            10,
            "being deleted",
            id="dying wins over configured differently",
        ),
        pytest.param(
            port_state(SPEC, OperStatus.DOWN, component_errors=("dpu: ERROR",)),
            0,
            10,
            "DOWN (dpu: ERROR)",
            id="DOWN with a component error, at once",
        ),
        pytest.param(
            port_state(SPEC, OperStatus.DOWN, component_errors=("dpu: ERROR", "nic: ERROR")),
            0,
            10,
            "DOWN (dpu: ERROR; nic: ERROR)",
            id="DOWN with two component errors",
        ),
        pytest.param(DOWN, 0, 10, None, id="DOWN just now"),
        pytest.param(DOWN, 9.5, 10, None, id="DOWN within the attach timeout"),
        pytest.param(DOWN, 10, 10, None, id="DOWN exactly the attach timeout"),
        pytest.param(DOWN, 10.4, 10, "DOWN for 10s", id="DOWN beyond the attach timeout"),
        pytest.param(DOWN, 75, 60, "DOWN for 75s", id="DOWN beyond a longer timeout"),
        pytest.param(
            port_state(SPEC, OperStatus.DOWN, logical_bridges=("//b/other",)),
            5,
            10,
            None,
            id="DOWN and different, within the timeout: wait",
        ),
        pytest.param(UP, 0, 10, None, id="UP as specified"),
        pytest.param(
            replace(UP, logical_bridges=("//b/blue-b", "//b/blue-a")),
            0,
            10,
            None,
            id="UP, bridges in another order",
        ),
        pytest.param(
            replace(UP, logical_bridges=("//b/blue-a",)),
            0,
            10,
            "configured differently",
            id="UP with other bridges",
        ),
        pytest.param(
            replace(UP, ptype="access"), 0, 10, "configured differently", id="UP, other type"
        ),
        pytest.param(replace(UP, ptype=None), 0, 10, "configured differently", id="UP, no type"),
        pytest.param(
            replace(UP, mac=bytes.fromhex("020000000001")),
            0,
            10,
            None,
            id="UP with only another MAC: MAC not compared",
        ),
        pytest.param(
            port_state(SPEC, OperStatus.UNSPECIFIED), 0, 10, None, id="UNSPECIFIED as specified"
        ),
        pytest.param(
            port_state(SPEC, OperStatus.UNSPECIFIED, ptype="access"),
            0,
            10,
            "configured differently",
            id="UNSPECIFIED and different",
        ),
    ],
)
def test_port_problem(
    port: PortState | None, down_for: float, attach_timeout: float, expected: str | None
) -> None:
    assert port_problem(port, SPEC, down_for, attach_timeout) == expected


def test_stuck_delete_resend_backs_off() -> None:
    assert [passes for passes in range(1, 201) if resend_due(passes)] == [12, 24, 48, 96, 192]
    assert not resend_due(0)


# PortRepair on a fake agent, with a clock the test moves.

RED = "opi.io/red"
HOLDER = Holder("default", "pod", "c")


class Repairs:
    """A pool of four VFs, the first two held, and PortRepair over a fake agent."""

    def __init__(self, attach_timeout: float = 10.0, grace: float = 30.0) -> None:
        self.clock = Clock()
        self.agent = FakeAgent(attach_timeout)
        self.leases = DeviceLeases(grace, self.clock)
        self.owned = OwnedPorts(self.agent, AgentHealth(30), OpiPortIds, 5.0, self.clock)
        self.stats = ReleaseStats()
        self.pool = DevicePool(RED, resource_config("red"), "")
        self.pools = PoolSet([self.pool])
        self.repair = PortRepair(self.agent, self.owned, self.leases, self.stats, self.clock)
        self.held = HeldDevices({RED: {"0000:3b:02.0": HOLDER, "0000:3b:02.1": HOLDER}})

    async def fill(self) -> None:
        await self.pool.replace_devices(vf(f"0000:3b:02.{index}") for index in range(4))

    def spec(self, device_id: str) -> PortSpec:
        entry = self.pool.get(device_id)
        assert entry is not None
        return entry.spec

    def add_port(
        self, device_id: str, oper: OperStatus = OperStatus.UP, **changes: object
    ) -> PortState:
        return self.agent.add(port_state(self.spec(device_id), oper, **changes))

    async def run(self) -> None:
        """One pass's part: list, track DOWN ports, start repairs, and let them finish."""
        ports = await self.owned.refresh()
        assert ports is not None
        self.owned.track_down(self.clock())
        self.repair.start(self.held, ports, self.pools)
        await settle()


@pytest.fixture
async def repairs() -> AsyncIterator[Repairs]:
    made = Repairs()
    await made.fill()
    yield made
    await made.repair.stop()


HELD, ALSO_HELD, UNHELD = "0000:3b:02.0", "0000:3b:02.1", "0000:3b:02.2"


async def test_a_held_device_whose_port_is_missing_gets_it_back(repairs: Repairs) -> None:
    repairs.add_port(ALSO_HELD)
    await repairs.run()
    spec = repairs.spec(HELD)
    assert repairs.agent.calls["ensure_port"] == 1
    assert repairs.agent.ports[spec.port_id] == port_state(spec)
    assert repairs.owned.ports[spec.port_id] == port_state(spec)
    assert repairs.stats.repairs == {RED: 1}
    assert repairs.spec(UNHELD).port_id not in repairs.agent.ports
    await repairs.run()
    assert repairs.agent.calls["ensure_port"] == 1


async def test_held_ports_as_specified_are_left_alone(repairs: Repairs) -> None:
    repairs.add_port(HELD, mac=bytes.fromhex("020000000001"))  # sysfs no longer shows it
    repairs.add_port(ALSO_HELD, OperStatus.DOWN)
    await repairs.run()
    assert repairs.agent.calls == {"list_ports": 1}
    assert repairs.stats.repairs == {}


async def test_a_down_port_gets_the_attach_timeout_then_is_replaced(repairs: Repairs) -> None:
    repairs.add_port(HELD)
    down = repairs.add_port(ALSO_HELD, OperStatus.DOWN)
    await repairs.run()
    repairs.clock.advance(10)
    await repairs.run()
    assert repairs.agent.deleted == []
    assert repairs.agent.calls["ensure_port"] == 0
    repairs.clock.advance(1)
    await repairs.run()
    assert repairs.agent.deleted == [down.name]
    assert repairs.agent.calls["ensure_port"] == 1
    assert repairs.agent.ports[down.port_id].oper is OperStatus.UP
    assert repairs.stats.repairs == {RED: 1}


async def test_a_down_port_with_a_component_error_is_replaced_at_once(repairs: Repairs) -> None:
    repairs.add_port(HELD)
    down = repairs.add_port(ALSO_HELD, OperStatus.DOWN, component_errors=("dpu: ERROR",))
    await repairs.run()
    assert repairs.agent.deleted == [down.name]
    assert repairs.agent.ports[down.port_id] == port_state(repairs.spec(ALSO_HELD))


async def test_a_device_being_attached_is_not_repaired(repairs: Repairs) -> None:
    repairs.add_port(ALSO_HELD)
    async with repairs.leases.attaching([HELD]):
        await repairs.run()
        assert repairs.agent.calls["ensure_port"] == 0
    await repairs.run()
    assert repairs.agent.calls["ensure_port"] == 1


async def test_a_down_port_attached_within_grace_is_not_deleted(repairs: Repairs) -> None:
    repairs.add_port(HELD)
    async with repairs.leases.attaching([ALSO_HELD]):
        pass
    down = repairs.add_port(ALSO_HELD, OperStatus.DOWN, component_errors=("dpu: ERROR",))
    await repairs.run()
    assert repairs.agent.deleted == []
    assert repairs.agent.calls["ensure_port"] == 0
    repairs.clock.advance(repairs.leases.grace_seconds)
    await repairs.run()
    assert repairs.agent.deleted == [down.name]
    assert repairs.stats.repairs == {RED: 1}


async def test_a_failed_repair_is_tried_again_on_the_next_pass(repairs: Repairs) -> None:
    repairs.add_port(ALSO_HELD)
    repairs.agent.fail("ensure_port", unreachable=False)
    await repairs.run()
    assert repairs.agent.calls["ensure_port"] == 1
    assert repairs.stats.repairs == {}
    repairs.agent.heal()
    await repairs.run()
    assert repairs.agent.calls["ensure_port"] == 2
    assert repairs.stats.repairs == {RED: 1}
