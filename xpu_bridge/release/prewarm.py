"""Keeping prewarmed ports: replenish, release surplus, replace lost or outdated ones, adopt.

Each pool with `bridgePort.prewarm: N` keeps N free devices attached and UP on the agent
(node/prewarm.py holds them). The keeper works in the background, woken after every
reconcile pass and whenever an Allocate took a prewarmed port; failures are logged and
retried with backoff. It works only while the last pass could read PodResources and the
agent; while a release hold-off is up (the kubelet's view may miss containers) it deletes
and replaces nothing, and makes ports only on an agent that lists its ports. Every Create
and Delete runs under the device's release lock, and a device an Allocate is attaching is
never made or deleted here (node/leases.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Mapping
from collections.abc import Set as AbstractSet

from xpu_bridge.common.loops import keep_running
from xpu_bridge.hostagent.ports import OperStatus, PortError, PortState
from xpu_bridge.node.leases import DeviceLeases
from xpu_bridge.node.pool import DevicePool, PoolDevice
from xpu_bridge.node.pool_set import PoolSet
from xpu_bridge.node.prewarm import PrewarmedPort, PrewarmedPorts
from xpu_bridge.release.gate import ReleaseGate
from xpu_bridge.release.held import HeldPortMap
from xpu_bridge.release.owned import OwnedPorts

log = logging.getLogger(__name__)

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
REPLACE = "replace: "
IDLE_SECONDS = 30.0
"""Longest pause without a wake-up; every reconcile pass wakes the keeper anyway."""


def lost(record: PrewarmedPort, port: PortState | None, listed_after: bool) -> str | None:
    """Why a prewarmed port must be made again: the agent lost it (a listing made after it
    was ready does not show it), it is being deleted or DOWN, or it may be lost (suspect)."""
    if record.suspect:
        return "the agent may have lost it"
    if not listed_after:
        return None
    if port is None:
        return "it vanished on the xPU"
    if port.oper is OperStatus.TO_BE_DELETED:
        return "it is being deleted on the xPU"
    if port.oper is OperStatus.DOWN and not port.component_errors:
        return "it is DOWN on the xPU"
    return None


class PrewarmKeeper:
    """Makes the prewarmed ports be as the config says, one round at a time."""

    def __init__(
        self,
        pools: PoolSet,
        leases: DeviceLeases,
        owned: OwnedPorts,
        held: HeldPortMap,
        gate: ReleaseGate,
        prewarmed: PrewarmedPorts,
    ) -> None:
        self._pools = pools
        self._leases = leases
        self._owned = owned
        self._held = held
        self._gate = gate
        self.prewarmed = prewarmed
        self._wake = asyncio.Event()
        self._usable = False
        self._failures = 0
        prewarmed.on_taken = self.wake

    # ------------------------------------------------------------ signals

    def wake(self) -> None:
        self._wake.set()

    def after_pass(self, ok: bool) -> None:
        """A reconcile pass ended; `ok` when it read PodResources and the agent's ports."""
        self._usable = ok
        if ok:
            self.wake()

    def suspect(self) -> None:
        """The agent was away and cannot list: every prewarmed port is ensured again."""
        self.prewarmed.suspect_all()
        self.wake()

    # ------------------------------------------------------------ start-up

    def adopt(self, owned: Mapping[str, PortState], held: AbstractSet[str]) -> set[str]:
        """Start-up recovery: UP ports of free devices with their pool's current spec become
        prewarmed, up to each pool's count; returns their port IDs. An agent that cannot
        list shows none (the start-up sweep deletes what is not made again)."""
        adopted: set[str] = set()
        if not self._owned.agent.capabilities.lists_ports:
            return adopted
        now = self._leases.now()
        for pool in self._pools:
            want = pool.resource.bridge_port.prewarm
            if not want:
                continue
            usable = {
                entry.id: (entry, port)
                for entry in pool.devices()
                if entry.id not in held
                and not pool.unhealthy_reason(entry.id)
                and (port := owned.get(entry.spec.port_id)) is not None
                and port.oper is OperStatus.UP
                and port.matches(entry.spec)
            }
            for device_id in pool.preferred(list(usable), [], want):
                entry, port = usable[device_id]
                self.prewarmed.add(PrewarmedPort(pool, entry.id, entry.spec, port, now))
                adopted.add(entry.spec.port_id)
            if usable:
                log.info(
                    "start-up recovery: %s: %d existing port(s) of free devices adopted as "
                    "prewarmed (bridgePort.prewarm %d)",
                    pool.resource_name,
                    min(len(usable), want),
                    want,
                )
        return adopted

    # ------------------------------------------------------------ the loop

    async def run(self) -> None:
        """Runs until cancelled."""
        await keep_running("prewarm round", self.step, self._pause, meanwhile="trying again")

    async def _pause(self) -> None:
        if self._failures:
            await asyncio.sleep(min(BACKOFF_FIRST * 2 ** (self._failures - 1), BACKOFF_MAX))
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), IDLE_SECONDS)
        self._wake.clear()

    def _idle(self, now: float) -> bool:
        """Nothing to do, or nothing to decide on: the last pass could not read PodResources
        or the agent, or the agent is down."""
        if not self.prewarmed.ready() and not any(
            p.resource.bridge_port.prewarm for p in self._pools
        ):
            return True
        usable = self._usable and self._held.last_ids is not None
        return not usable or not self._owned.health.up(now)

    async def step(self) -> None:
        """One round: check the prewarmed ports, then release, replace and replenish."""
        now = self._leases.now()
        if self._idle(now):
            return
        # While a release hold-off is up (the kubelet may not list every container yet),
        # nothing is deleted or replaced: only ports of devices that have none are made, and
        # only on an agent that lists its ports (elsewhere a Create may meet a pod's port).
        cautious = self._gate.holdoff_reason(now) is not None
        if cautious and not self._owned.agent.capabilities.lists_ports:
            return
        jobs: list[Awaitable[bool]] = []
        keep: dict[str, list[PrewarmedPort]] = {}
        replacing: Counter[str] = Counter()
        for record in self.prewarmed.ready():
            action = self._judge(record)
            entry = record.pool.get(record.device_id)
            if action == "keep" or (cautious and action != "forget"):
                keep.setdefault(record.resource, []).append(record)
            elif action == "forget":
                self.prewarmed.remove(record.spec.port_id)
            elif action.startswith(REPLACE) and entry is not None:
                replacing[record.resource] += 1
                jobs.append(self._warm(record.pool, entry, record, action.removeprefix(REPLACE)))
            else:
                jobs.append(self._release(record, action))
        for pool in self._pools:
            ready = keep.get(pool.resource_name, [])
            count = len(ready) + replacing[pool.resource_name]
            jobs += self._balance(pool, ready, count, cautious)
        if not jobs:
            self._failures = 0
            return
        results = await asyncio.gather(*jobs)
        self._failures = 0 if all(results) else self._failures + 1

    def _judge(self, record: PrewarmedPort) -> str:
        """ "keep", "forget" (a container holds the device: the port is its), "replace:<why>"
        or why the port is to be released."""
        held = self._held.last_ids or frozenset()
        if record.device_id in held:
            log.info(
                "device %s is held by a container: its prewarmed port %s is the container's",
                record.device_id,
                record.port.name,
            )
            return "forget"
        pool = record.pool
        if self._pools.get(pool.resource_name) is not pool:
            return "its pool is no longer served"
        entry = pool.get(record.device_id)
        if entry is None:
            return "the device is gone from sysfs"
        if self._pools.pinned().get(entry.id):
            return "the config moves the device to another pool"
        unhealthy = pool.unhealthy_reason(entry.id)
        if unhealthy:
            return f"the device is Unhealthy ({unhealthy})"
        if entry.spec != record.spec:
            return REPLACE + "the port it needs changed (a bridgePort reload, or its MAC)"
        listed_after = (
            self._owned.agent.capabilities.lists_ports and record.ready_at < self._held.last_read_at
        )
        why = lost(record, self._owned.ports.get(entry.spec.port_id), listed_after)
        return REPLACE + why if why else "keep"

    def _balance(
        self, pool: DevicePool, ready: list[PrewarmedPort], count: int, cautious: bool
    ) -> list[Awaitable[bool]]:
        """Release the surplus over the pool's count (unless `cautious`), or make ports for
        the deficit."""
        want = pool.resource.bridge_port.prewarm
        count += self.prewarmed.warming_in(pool)
        if count > want and not cautious:
            surplus = sorted(ready, key=lambda r: r.device_id, reverse=True)[: count - want]
            why = f"surplus over bridgePort.prewarm {want}"
            return [self._release(record, why) for record in surplus]
        if count >= want:
            return []
        held = self._held.last_ids or frozenset()
        pinned = self._pools.pinned()
        free = [entry.id for entry in pool.devices() if self._free(pool, entry, held, pinned)]
        picked = pool.preferred(free, [], want - count)
        return [self._warm(pool, entry, None, "") for e in picked if (entry := pool.get(e))]

    def _free(
        self, pool: DevicePool, entry: PoolDevice, held: AbstractSet[str], pinned: Mapping[str, str]
    ) -> bool:
        """Free to prewarm: healthy, not held, not attached or being attached by an
        Allocate, and without a port on the agent (a leftover is released first)."""
        port_id = entry.spec.port_id
        return (
            not pool.unhealthy_reason(entry.id)
            and entry.id not in pinned
            and entry.id not in held
            and not self._leases.busy(entry.id, self._held.last_read_at)
            and not self._leases.was_attached(entry.id)
            and port_id not in self._owned.ports
            and not self.prewarmed.spares(port_id)
        )

    # ------------------------------------------------------------ agent calls

    async def _warm(
        self, pool: DevicePool, entry: PoolDevice, replacing: PrewarmedPort | None, why: str
    ) -> bool:
        """Make (or make again) the device's port with the pool's current spec; False when
        the agent failed. An Allocate that comes for the device meanwhile gets it."""
        port_id = entry.spec.port_id
        lock = self._leases.release_lock(entry.id)
        if lock.locked():
            return True  # a release is deleting its port: next round
        async with lock:
            if self._leases.is_attaching(entry.id):
                return True
            if replacing is not None:
                if self.prewarmed.remove(port_id) is None:
                    return True  # an Allocate took it
                log.info(
                    "prewarmed port %s of device %s: %s; making it again",
                    replacing.port.name,
                    entry.id,
                    why,
                )
            self.prewarmed.start_warming(port_id, entry.id)
            try:
                attachment = await self._owned.agent.ensure_port(entry.spec)
            except PortError as error:
                log.error(
                    "device %s (%s): prewarming its port failed: %s",
                    entry.id,
                    pool.resource_name,
                    error,
                )
                return False
            finally:
                self.prewarmed.done_warming(port_id)
            self._owned.put(attachment.port)
            if self._leases.is_attaching(entry.id) or self._leases.was_attached(entry.id):
                return True  # an Allocate came for it while it was made: the port is its
            self._pools.forget_spec(entry.id)  # it has the pool's current spec now
            record = PrewarmedPort(pool, entry.id, entry.spec, attachment.port, self._leases.now())
            self.prewarmed.add(record)
        log.info(
            "prewarmed port %s of device %s (%s)",
            attachment.port.name,
            entry.id,
            pool.resource_name,
        )
        return True

    async def _release(self, record: PrewarmedPort, why: str) -> bool:
        """Delete a prewarmed port that is no longer wanted; False when the agent failed
        (the port is then an unheld one, which a release pass deletes)."""
        port_id = record.spec.port_id
        lock = self._leases.release_lock(record.device_id)
        if lock.locked():
            return True
        async with lock:
            if self.prewarmed.get(port_id) is not record or self._leases.is_attaching(
                record.device_id
            ):
                return True  # an Allocate took it
            self.prewarmed.remove(port_id)
            try:
                await self._owned.agent.delete_port(record.port.name)
            except PortError as error:
                log.error("could not release prewarmed port %s: %s", record.port.name, error)
                return False
            self._owned.forget(port_id)
        log.info(
            "released prewarmed port %s of device %s (%s): %s",
            record.port.name,
            record.device_id,
            record.resource,
            why,
        )
        return True
