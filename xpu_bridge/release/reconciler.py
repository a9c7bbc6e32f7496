"""The reconcile pass: compare what the kubelet holds with the ports we own on the xPU.

Each pass reads PodResources, lists owned ports, marks device health, repairs held ports the
xPU lost, re-sends stuck deletes and releases what the gate lets go. The pieces live beside
this module: held.py, owned.py, gate.py and guards.py, releaser.py, repair.py, stuck.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from xpu_bridge.common.loops import every, keep_running
from xpu_bridge.config import Config
from xpu_bridge.hostagent.health import AgentHealth
from xpu_bridge.hostagent.ports import HostAgent, PortState
from xpu_bridge.kubelet.pod_resources import HeldDevices, HeldDeviceSource, PodResourcesUnavailable
from xpu_bridge.node.devinfo import DevInfoStore
from xpu_bridge.node.leases import DeviceLeases
from xpu_bridge.node.network_functions import NetworkFunctions
from xpu_bridge.node.pool import PoolDevice
from xpu_bridge.node.pool_set import PoolSet
from xpu_bridge.node.prewarm import PrewarmedPorts
from xpu_bridge.release.device_health import mark_device_health
from xpu_bridge.release.gate import ReleaseGate, release_candidates
from xpu_bridge.release.guards import POD_RESOURCES_UNREADABLE, HoldBack, ReleaseGuards
from xpu_bridge.release.held import HeldPortMap, HeldPorts, adopt_held_macs
from xpu_bridge.release.hook import ReleaseHook
from xpu_bridge.release.owned import OwnedPorts
from xpu_bridge.release.prewarm import PrewarmKeeper
from xpu_bridge.release.recovery import RecoveryParts, adopt_function_pairs, recover
from xpu_bridge.release.releaser import PortReleaser
from xpu_bridge.release.repair import PortRepair
from xpu_bridge.release.stats import ReleaseStats
from xpu_bridge.release.stuck import StuckDeletes
from xpu_bridge.release.sweep import StartupSweep

log = logging.getLogger(__name__)


class Reconciler:
    """Deletes owned ports no container holds, and re-creates held ports the xPU lost.

    A port is released only after it was a candidate in two passes in a row, was not attached
    within the grace period, and no guard holds releases back (see guards.py). On an agent
    that cannot list, what we own is what we made, and a start-up sweep covers the rest.
    """

    def __init__(
        self,
        config: Config,
        pools: PoolSet,
        leases: DeviceLeases,
        agent: HostAgent,
        health: AgentHealth,
        held_source: HeldDeviceSource,
        devinfo: DevInfoStore,
        kubelet_restarted_at: Callable[[], float | None],
        functions: NetworkFunctions | None = None,
        kubelet_age: Callable[[], float | None] = lambda: None,
        prewarmed: PrewarmedPorts | None = None,
    ) -> None:
        """`kubelet_age` says how long the kubelet has been up (start-up hold-off or not);
        `prewarmed` are the ports Allocate takes first, which no pass releases.
        Guards, health and repair judge time by the leases' clock, as Allocates do."""
        clock = leases.now
        self.interval = config.release.interval_seconds
        self.leases = leases
        self.stats = ReleaseStats()
        owned = OwnedPorts(agent, health, lambda: pools.naming, self.interval, clock)
        guards = ReleaseGuards(config.release.holdoff_seconds)
        functions = functions or NetworkFunctions(None)
        held = HeldPortMap(config, pools, held_source, clock)
        gate = ReleaseGate(guards, self.stats, kubelet_restarted_at)
        prewarmed = prewarmed or PrewarmedPorts()
        self.parts = RecoveryParts(
            pools=pools,
            owned=owned,
            held=held,
            gate=gate,
            sweep=StartupSweep(),
            functions=functions,
            kubelet_age=kubelet_age,
            prewarm=PrewarmKeeper(pools, leases, owned, held, gate, prewarmed),
        )
        self.releaser = PortReleaser(
            agent, owned, leases, devinfo, self.stats, functions, prewarmed.spares
        )
        self._stuck = StuckDeletes(agent, leases)
        self._repair = PortRepair(agent, owned, leases, self.stats, clock)
        self._agent_was_down = False
        self._agent_restarted = False
        self._rechain_due = False

    @property
    def pools(self) -> PoolSet:
        return self.parts.pools

    @property
    def owned(self) -> OwnedPorts:
        return self.parts.owned

    @property
    def held(self) -> HeldPortMap:
        return self.parts.held

    @property
    def gate(self) -> ReleaseGate:
        return self.parts.gate

    @property
    def prewarm(self) -> PrewarmKeeper:
        return self.parts.prewarm

    def follow(self, config: Config) -> None:
        """A reloaded config's release timings and prefixes; the next pass uses them."""
        self.interval = config.release.interval_seconds
        self.leases.grace_seconds = config.release.grace_seconds
        self.gate.guards.holdoff = config.release.holdoff_seconds
        self.held.follow(config)

    def in_use(self, entry: PoolDevice) -> bool:
        """Whether the device's port may be in use, so that it must keep its pool and spec:
        held at the last PodResources read, attached since, or its port not yet released.
        Before PodResources has answered once, every device may be."""
        held = self.held.last_ids
        if held is None:
            return True
        return (
            entry.id in held
            or self.leases.busy(entry.id, self.held.last_read_at)
            or entry.spec.port_id in self.owned.ports
            or self.prewarm.prewarmed.spares(entry.spec.port_id)
        )

    def release_hook(self) -> ReleaseHook:
        """The hook's decisions share this pass's view, gate and releaser."""
        return ReleaseHook(self.pools, self.leases, self.held, self.owned, self.gate, self.releaser)

    async def recover(self) -> None:
        """Start-up, before the kubelet hears of us."""
        await recover(self.parts, self.leases.now())

    async def run(self) -> None:
        """Runs until cancelled."""
        await keep_running(
            "reconcile pass",
            self.reconcile,
            every(lambda: self.interval),
            meanwhile=f"trying again in {self.interval:.0f}s",
        )

    async def reconcile(self) -> None:
        """One pass. PodResources is read before the ports, so a hold it reports is never
        older than the port state it is compared with. The prewarm keeper hears how it
        went (it works only after passes that could read both)."""
        ok = False
        try:
            ok = await self._pass()
        finally:
            self.prewarm.after_pass(ok)

    async def _pass(self) -> bool:
        self.stats.passes += 1
        snapshot_at = self.leases.now()
        held: HeldDevices | None = None
        unreadable = ""
        try:
            held = await self.held.read()
        except PodResourcesUnavailable as error:
            unreadable = str(error)
        owned = await self.owned.refresh()
        now = self.leases.now()
        agent_down = self.owned.health.unhealthy_reason(now)
        await mark_device_health(self.pools, self.owned.ports, agent_down)
        if owned is None:
            self._agent_was_down = True
            return False
        self.owned.track_down(now)
        if held is None:
            self.gate.hold_back(HoldBack(POD_RESOURCES_UNREADABLE, unreadable))
            self.gate.forget()
            return False
        await adopt_held_macs(self.pools, held, owned)
        adopt_function_pairs(self.pools, held, self.parts.functions)
        if self._rechain_due:  # the pass after the one that made the ports again
            self._rechain_due = False
            await self.parts.functions.rechain()
        self._rechain_due, self._agent_restarted = self._agent_restarted, False
        self._repair.start(held, owned, self.pools, self._after_outage())
        await self._stuck.resend(owned, self.pools.by_port_id(), snapshot_at)
        await self._release(owned, self.held.port_ids(held), snapshot_at)
        return True

    def note_outage(self, restarted: bool) -> None:
        """The heartbeat saw the agent fail, report itself unhealthy or restart (then it lost
        its network functions too)."""
        self._agent_was_down = True
        self._agent_restarted = self._agent_restarted or restarted
        if not self.owned.agent.capabilities.lists_ports:
            self.prewarm.suspect()

    def _after_outage(self) -> str | None:
        """An agent that cannot list may have lost its ports while it was away: every held
        device gets an idempotent Create once it is back."""
        was_down, self._agent_was_down = self._agent_was_down, False
        if was_down and not self.owned.agent.capabilities.lists_ports:
            return "the agent was unreachable, unhealthy or restarted, and cannot say what it kept"
        return None

    async def _release(
        self, owned: dict[str, PortState], held: HeldPorts, snapshot_at: float
    ) -> None:
        by_port = self.pools.by_port_id()
        sweep = self.parts.sweep
        if not sweep.seeded and not self.owned.agent.capabilities.lists_ports:
            sweep.seed(self.pools, set(owned))
        for port_id in set(sweep.pending) & set(owned):
            sweep.done(port_id)  # allocated since start: an owned port like any other
        ports = {**sweep.pending, **owned}

        def busy(port_id: str) -> bool:
            """Being attached, attached recently, or prewarmed (free, but kept UP)."""
            if self.prewarm.prewarmed.spares(port_id):
                return True
            owner = by_port.get(port_id)
            return owner is not None and self.leases.busy(owner.id, snapshot_at)

        candidates = release_candidates(ports, held, busy, self.owned.is_sf)
        swept = candidates & set(sweep.pending)
        # Prewarmed ports are no pod's: they do not dilute the mass-release guard.
        counted = sum(1 for port_id in owned if not self.prewarm.prewarmed.spares(port_id))
        admitted = self.gate.admit(candidates, counted, self.leases.now(), unmassed=swept)
        for port_id in sorted(admitted):
            reason = "sweep" if port_id in swept else "unheld"
            owner = by_port.get(port_id)
            if await self.releaser.release_unless_busy(ports[port_id], owner, snapshot_at, reason):
                sweep.done(port_id)

    async def stop(self) -> None:
        await self._repair.stop()
