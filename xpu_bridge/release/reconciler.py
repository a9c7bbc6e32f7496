"""Release and repair: compare what the kubelet holds with the ports we own on the xPU."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from xpu_bridge.allocator import Allocator
from xpu_bridge.config import Config
from xpu_bridge.devinfo import DevInfoError, DevInfoStore
from xpu_bridge.identity import PortKey, parse_port_id, port_id_for
from xpu_bridge.opi_client import BridgePortClient
from xpu_bridge.pod_resources import (
    HeldDevices,
    Holder,
    PodResourcesClient,
    PodResourcesUnavailable,
)
from xpu_bridge.pool import DevicePool, PoolDevice
from xpu_bridge.ports import OperStatus, PortError, PortState

log = logging.getLogger(__name__)

AGENT_UNREACHABLE = "host agent unreachable"
STUCK_DELETE_PASSES = 12
READY_TOLERANCE = 2.0


@dataclass(frozen=True, slots=True)
class OwnedDevice:
    """A device of one of our pools, found by its port ID."""

    pool: DevicePool
    entry: PoolDevice
    allocator: Allocator


@dataclass(frozen=True, slots=True)
class HeldPorts:
    """What PodResources says is held, as port IDs; `unmapped` are held SFs we never saw."""

    port_ids: set[str]
    unmapped: set[str]


@dataclass(frozen=True, slots=True)
class ReleaseResult:
    released: bool
    message: str
    port: str | None = None


@dataclass
class AgentHealth:
    """Host agent reachability from every RPC's outcome (passes, Allocates and repairs).

    A single failed call does not make the agent "down" for readiness: only one that has
    failed for READY_TOLERANCE seconds with no success in between; devices turn Unhealthy
    after `unhealthy_after`.
    """

    unhealthy_after: float
    down_since: float | None = None

    def record(self, reachable: bool, now: float) -> None:
        if reachable:
            self.down_since = None
        elif self.down_since is None:
            self.down_since = now

    def observe(self, code: str) -> None:
        """Feed from the OPI client: any answer but a transport failure means reachable."""
        failed = code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
        self.record(not failed, asyncio.get_running_loop().time())

    def up(self, now: float) -> bool:
        return self.down_since is None or now - self.down_since < READY_TOLERANCE

    def devices_unhealthy(self, now: float) -> bool:
        return self.down_since is not None and now - self.down_since >= self.unhealthy_after


@dataclass
class ReconcilerStats:
    """Counters the metrics endpoint exports."""

    releases: Counter[tuple[str, str]] = field(default_factory=Counter)
    held_back: Counter[str] = field(default_factory=Counter)
    repairs: Counter[str] = field(default_factory=Counter)
    passes: int = 0


class Reconciler:
    """Deletes owned ports no container holds, and re-creates held ports the xPU lost.

    Guards keep a blink from costing a running pod its network: nothing is released while
    PodResources is unreadable, during the hold-off after a kubelet restart, or while a pass
    would release more than half of the owned ports (until that verdict has held for the
    hold-off). A port must be a candidate in two passes in a row and not attached within the
    grace period.
    """

    def __init__(
        self,
        config: Config,
        pools: dict[str, DevicePool],
        allocators: dict[str, Allocator],
        client: BridgePortClient,
        pod_resources: PodResourcesClient,
        devinfo: DevInfoStore,
        kubelet_restarted_at: Callable[[], float | None],
    ) -> None:
        self.release_config = config.release
        self.prefix = config.port_id_prefix
        self.pools = pools
        self.allocators = allocators
        self.client = client
        self.pod_resources = pod_resources
        self.devinfo = devinfo
        self.kubelet_restarted_at = kubelet_restarted_at
        self._prefixes = {config.resource_prefix} | {
            r.resource_prefix for r in config.resource_list if r.resource_prefix
        }
        self.health = AgentHealth(config.host_agent.unhealthy_after_seconds)
        self.stats = ReconcilerStats()
        self.owned: dict[str, PortState] = {}
        self._previous: set[str] = set()
        self._mass_since: float | None = None
        self._holding: str | None = None
        self._repairing: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._unmapped: set[str] = set()
        self._dying_passes: dict[str, int] = {}
        self._down_since: dict[str, float] = {}
        self._stale_resources: set[str] = set()
        self._started_at = float("-inf")

    @property
    def interval(self) -> float:
        return self.release_config.interval_seconds

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _by_port(self) -> dict[str, OwnedDevice]:
        return {
            entry.spec.port_id: OwnedDevice(pool, entry, self.allocators[name])
            for name, pool in self.pools.items()
            for entry in pool.devices()
        }

    def _ours(self, resource: str) -> bool:
        """Served now, or under one of our prefixes: a pool renamed or removed from the config
        may still have running pods, and their ports are still theirs."""
        return resource in self.pools or resource.split("/", 1)[0] in self._prefixes

    async def _read_held(self) -> HeldDevices:
        held = await self.pod_resources.held(self._ours)
        stale = set(held.by_resource) - set(self.pools)
        if stale - self._stale_resources:
            log.warning(
                "containers still hold devices of %s, which this config no longer serves; "
                "their ports are kept until those pods end",
                ", ".join(sorted(stale)),
            )
        self._stale_resources = stale
        return held

    def _held_port_ids(self, held: HeldDevices) -> HeldPorts:
        """Port IDs of every device a container holds, even one that vanished from sysfs."""
        port_ids: set[str] = set()
        unmapped: set[str] = set()
        for device_id in held.all_ids():
            port_id = next(
                (p for pool in self.pools.values() if (p := pool.known_port_id(device_id))), None
            )
            if port_id is None:
                with contextlib.suppress(ValueError):
                    port_id = port_id_for(PortKey("vf", device_id), self.prefix)
            if port_id is None:
                unmapped.add(device_id)
            else:
                port_ids.add(port_id)
        return HeldPorts(port_ids, unmapped)

    async def _owned_ports(self) -> dict[str, PortState] | None:
        """Our ports on the xPU, or None when the agent cannot be reached."""
        budget = max(min(self.interval, self.client.attach_timeout), 1.0)
        try:
            ports = await self.client.list_ports(seconds=budget)
        except PortError as error:
            self.health.record(False, self._now())
            log.debug("ListBridgePorts failed: %s", error)
            return None
        self.health.record(True, self._now())
        owned = {p.port_id: p for p in ports if parse_port_id(p.port_id, self.prefix)}
        self.owned = owned
        return owned

    async def recover(self) -> None:
        """Start-up: adopt ports the kubelet still assigns, make the rest candidates."""
        self._started_at = self._now()
        owned = await self._owned_ports()
        if owned is None:
            return
        await self._update_health(owned)
        try:
            held = await self._read_held()
        except PodResourcesUnavailable as error:
            log.warning("start-up recovery: %s; releasing nothing until it answers", error)
            return
        held_ports = self._held_port_ids(held).port_ids
        adopted = sorted(set(owned) & held_ports)
        await self._adopt_macs(held, owned)
        self._previous = set(owned) - held_ports
        log.info(
            "start-up recovery: adopted %d port(s) held by containers, %d candidate(s) to release",
            len(adopted),
            len(self._previous),
        )

    async def run(self) -> None:
        """Runs until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.reconcile()
            except Exception:
                log.exception("reconcile pass failed; trying again in %.0fs", self.interval)

    async def reconcile(self) -> None:
        """One pass. PodResources is read before the ports, so a hold it reports is never
        older than the port state it is compared with."""
        self.stats.passes += 1
        snapshot_at = time.monotonic()
        try:
            held: HeldDevices | None = await self._read_held()
            unreadable = ""
        except PodResourcesUnavailable as error:
            held, unreadable = None, str(error)
        owned = await self._owned_ports()
        await self._update_health(self.owned if owned is None else owned)
        if owned is None:
            return
        self._track_down(owned)
        if held is None:
            self._hold_back("pod_resources_unreadable", unreadable)
            self._previous = set()
            return
        await self._adopt_macs(held, owned)
        self._repair(held, owned)
        await self._redelete_stuck(owned, snapshot_at)
        await self._release(owned, self._held_port_ids(held), snapshot_at)

    def _track_down(self, owned: dict[str, PortState]) -> None:
        now = self._now()
        self._down_since = {
            port_id: self._down_since.get(port_id, now)
            for port_id, port in owned.items()
            if port.oper is OperStatus.DOWN
        }

    async def _adopt_macs(self, held: HeldDevices, owned: dict[str, PortState]) -> None:
        """A held port's MAC wins over one derived because sysfs shows the device no netdev."""
        for name, pool in self.pools.items():
            for device_id in held.ids(name):
                entry = pool.get(device_id)
                port = owned.get(entry.spec.port_id) if entry else None
                if entry is not None and port is not None and entry.device.mac is None:
                    await pool.adopt_mac(device_id, port.mac)

    async def _update_health(self, owned: dict[str, PortState]) -> None:
        now = self._now()
        everything_down = self.health.devices_unhealthy(now)
        for pool in self.pools.values():
            unhealthy: dict[str, str] = {}
            for entry in pool.devices():
                port = owned.get(entry.spec.port_id)
                if everything_down:
                    unhealthy[entry.id] = AGENT_UNREACHABLE
                elif port is not None and port.component_errors:
                    unhealthy[entry.id] = "; ".join(port.component_errors)
            if await pool.set_health(unhealthy):
                log.warning(
                    "pool %s: %d device(s) unhealthy%s",
                    pool.resource_name,
                    len(unhealthy),
                    f" ({AGENT_UNREACHABLE})" if everything_down else "",
                )

    def _busy(self, owned_device: OwnedDevice | None, snapshot_at: float) -> bool:
        """Attaching, attached within the grace period, or attached since PodResources was
        read (a pass can outlast the grace period while it deletes)."""
        if owned_device is None:
            return False
        allocator, device_id = owned_device.allocator, owned_device.entry.id
        return (
            allocator.recently_attached(device_id, self.release_config.grace_seconds)
            or allocator.attached_at.get(device_id, float("-inf")) >= snapshot_at
        )

    async def _release(
        self, owned: dict[str, PortState], held: HeldPorts, snapshot_at: float
    ) -> None:
        by_port = self._by_port()
        candidates = {
            port_id
            for port_id, port in owned.items()
            if port_id not in held.port_ids
            and port.oper is not OperStatus.TO_BE_DELETED
            and not self._busy(by_port.get(port_id), snapshot_at)
            and not (held.unmapped and self._is_sf_port(port_id))
        }
        if held.unmapped and held.unmapped != self._unmapped:
            log.warning(
                "containers hold SF(s) %s that this daemon has not seen in sysfs; "
                "no SF port is released until they are back or no longer held",
                ", ".join(sorted(held.unmapped)),
            )
        self._unmapped = held.unmapped
        confirmed = candidates & self._previous
        self._previous = candidates
        guard = self._guard(confirmed, owned)
        if guard is not None:
            name, why = guard
            self._hold_back(name, why)
            return
        if self._holding is not None:
            log.info("release guard %s lifted", self._holding)
            self._holding = None
        for port_id in sorted(confirmed):
            owner = by_port.get(port_id)
            if owner is None:
                await self._delete(owned[port_id], None, "unheld")
                continue
            # Earlier deletes of this pass took time: an Allocate may have taken the device.
            async with owner.allocator.release_lock(owner.entry.id):
                if self._busy(owner, snapshot_at):
                    log.info("port %s not released: its device was just allocated", port_id)
                    continue
                await self._delete(owned[port_id], owner, "unheld")

    async def _redelete_stuck(self, owned: dict[str, PortState], snapshot_at: float) -> None:
        """A port dying for STUCK_DELETE_PASSES passes may have lost its Delete: send it again,
        backing off (12, 24, 48 ... passes), since a Delete restarts a slow deletion."""
        dying = {p for p, port in owned.items() if port.oper is OperStatus.TO_BE_DELETED}
        self._dying_passes = {p: self._dying_passes.get(p, 0) + 1 for p in dying}
        by_port = self._by_port()
        for port_id, passes in self._dying_passes.items():
            rounds, rest = divmod(passes, STUCK_DELETE_PASSES)
            if rest or rounds & (rounds - 1):
                continue
            owner = by_port.get(port_id)
            lock = owner.allocator.release_lock(owner.entry.id) if owner else asyncio.Lock()
            async with lock:
                if self._busy(owner, snapshot_at):
                    continue
                current = await self._fresh(owned[port_id].name)
                if current is None or current.oper is not OperStatus.TO_BE_DELETED:
                    continue
                log.warning("port %s is still being deleted; sending Delete again", port_id)
                with contextlib.suppress(PortError):
                    await self.client.delete_port(current.name)

    async def _fresh(self, name: str) -> PortState | None:
        try:
            return await self.client.get_port(name)
        except PortError:
            return None

    def _is_sf_port(self, port_id: str) -> bool:
        key = parse_port_id(port_id, self.prefix)
        return key is not None and key.kind == "sf"

    def _guard(self, confirmed: set[str], owned: dict[str, PortState]) -> tuple[str, str] | None:
        now = self._now()
        holdoff = self.release_config.holdoff_seconds
        mass = len(confirmed) > 1 and 2 * len(confirmed) > len(owned)
        if not mass:
            self._mass_since = None
        if not confirmed:
            return None
        if (holdoff_guard := self._holdoff()) is not None:
            return holdoff_guard
        if mass:
            # The clock starts only now, after the hold-offs: a PodResources that stays empty
            # past a kubelet restart's hold-off must still wait a whole hold-off of its own.
            if self._mass_since is None:
                self._mass_since = now
            if now - self._mass_since < holdoff:
                return "mass_release", (
                    f"a pass would release {len(confirmed)} of {len(owned)} owned ports; "
                    f"waiting until that has held for {holdoff:g}s (release.holdoffSeconds)"
                )
        return None

    def _holdoff(self) -> tuple[str, str] | None:
        """The start-up and kubelet-restart hold-offs: (guard, why), or None."""
        now = self._now()
        holdoff = self.release_config.holdoff_seconds
        if now - self._started_at < holdoff:
            return "startup", (
                f"started {now - self._started_at:.0f}s ago; the kubelet may have restarted "
                f"with us, so no release for {holdoff:g}s (release.holdoffSeconds)"
            )
        restarted = self.kubelet_restarted_at()
        if restarted is not None and now - restarted < holdoff:
            return "kubelet_restart", (
                f"kubelet restarted {now - restarted:.0f}s ago; no release for {holdoff:g}s "
                "(release.holdoffSeconds)"
            )
        return None

    def _holdoff_reason(self) -> str | None:
        guard = self._holdoff()
        return guard[1] if guard else None

    def _hold_back(self, guard: str, why: str) -> None:
        self.stats.held_back[guard] += 1
        if self._holding != guard:
            log.warning("holding back releases: %s", why)
            self._holding = guard

    async def _delete(self, port: PortState, owner: OwnedDevice | None, reason: str) -> bool:
        started = self._now()
        try:
            await self.client.delete_port(port.name)
        except PortError as error:
            log.error("could not release port %s: %s (next pass retries)", port.name, error)
            return False
        self.owned.pop(port.port_id, None)
        resource = owner.pool.resource_name if owner else "unknown"
        device = owner.entry.id if owner else "(no longer on this node)"
        if owner is not None:
            owner.allocator.attached_at.pop(owner.entry.id, None)
            try:
                self.devinfo.remove(resource, owner.entry.id)
            except (DevInfoError, OSError) as error:
                log.error("device %s: could not remove device-info file: %s", device, error)
        self.stats.releases[(resource, reason)] += 1
        log.info(
            "released port %s of device %s (%s) in %.1f ms: %s",
            port.name,
            device,
            resource,
            (self._now() - started) * 1000,
            "requested by the release hook" if reason == "hook" else "no container holds it",
        )
        return True

    def _repair(self, held: HeldDevices, owned: dict[str, PortState]) -> None:
        """Held devices whose port is missing, dying, DOWN or changed get it back, in the
        background, so one slow repair never delays a pass."""
        for name, pool in self.pools.items():
            allocator = self.allocators[name]
            for device_id in held.ids(name):
                entry = pool.get(device_id)
                if entry is None or entry.id in self._repairing or device_id in allocator.attaching:
                    continue
                port = owned.get(entry.spec.port_id)
                problem = self._port_problem(port, entry)
                if problem is None:
                    continue
                holder = held.holder(name, device_id)
                self._repairing.add(entry.id)
                task = asyncio.create_task(self._repair_one(pool, entry, port, problem, holder))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _repair_one(
        self,
        pool: DevicePool,
        entry: PoolDevice,
        port: PortState | None,
        problem: str,
        holder: Holder | None,
    ) -> None:
        allocator = self.allocators[pool.resource_name]
        try:
            if port is not None and port.oper is OperStatus.DOWN:
                async with allocator.release_lock(entry.id):
                    if allocator.recently_attached(entry.id, self.release_config.grace_seconds):
                        return
                    now = await self.client.get_port(port.name)
                    if now is not None and now.oper is OperStatus.DOWN:
                        await self.client.delete_port(port.name)
            attachment = await self.client.ensure_port(entry.spec)
        except PortError as error:
            log.error("device %s held by %s: repair failed: %s", entry.id, holder, error)
            return
        finally:
            self._repairing.discard(entry.id)
        self.stats.repairs[pool.resource_name] += 1
        self.owned[entry.spec.port_id] = attachment.port
        log.warning(
            "repaired port %s of device %s (%s) held by %s: it was %s",
            attachment.port.name,
            entry.id,
            pool.resource_name,
            holder,
            problem,
        )

    def _port_problem(self, port: PortState | None, entry: PoolDevice) -> str | None:
        """Why a held device's port needs re-creating, or None. A DOWN port is given the attach
        timeout to come UP (agents re-program ports after a component restart) unless a
        component reports ERROR. The MAC is not compared: sysfs can stop showing it (the
        netdev moved into the pod) while the pod still uses the port."""
        if port is None:
            return "missing on the xPU"
        if port.oper is OperStatus.TO_BE_DELETED:
            return "being deleted"
        if port.oper is OperStatus.DOWN:
            if port.component_errors:
                return f"DOWN ({'; '.join(port.component_errors)})"
            down_for = self._now() - self._down_since.get(port.port_id, self._now())
            if down_for > self.client.attach_timeout:
                return f"DOWN for {down_for:.0f}s"
            return None
        if _wrong_config(port, entry):
            return "configured differently"
        return None

    def _find(self, device_id: str) -> OwnedDevice | None:
        for name, pool in self.pools.items():
            entry = pool.get(device_id)
            if entry is not None:
                return OwnedDevice(pool, entry, self.allocators[name])
        return None

    async def release_now(self, device_id: str) -> ReleaseResult:
        """The release hook: free one device at once unless a container holds it."""
        owner = self._find(device_id)
        if owner is None:
            return ReleaseResult(False, f"device {device_id} is not in any pool of this node")
        name, entry, allocator = owner.pool.resource_name, owner.entry, owner.allocator
        too_recent = ReleaseResult(
            False,
            f"device {device_id} was attached less than "
            f"{self.release_config.grace_seconds:g}s ago (release.graceSeconds); "
            "the reconciler will release it when no container holds it",
        )
        if allocator.recently_attached(device_id, self.release_config.grace_seconds):
            return too_recent
        holdoff = self._holdoff_reason()
        if holdoff is not None:
            return ReleaseResult(False, f"device {device_id}: not now: {holdoff}")
        try:
            held = await self._read_held()
        except PodResourcesUnavailable as error:
            return ReleaseResult(False, f"device {device_id}: cannot check holders: {error}")
        holder = held.holder(name, device_id)
        if holder is not None:
            return ReleaseResult(False, f"device {device_id} is held by {holder}")
        owned = await self._owned_ports()
        if owned is None:
            return ReleaseResult(False, f"device {device_id}: host agent unreachable")
        port = owned.get(entry.spec.port_id)
        if port is None:
            return ReleaseResult(True, f"device {device_id} has no port on the xPU")
        if port.oper is OperStatus.TO_BE_DELETED:
            return ReleaseResult(True, f"port {port.name} is already being deleted", port.name)
        async with allocator.release_lock(device_id):
            if allocator.recently_attached(device_id, self.release_config.grace_seconds):
                return too_recent  # an Allocate took the device while we checked
            if not await self._delete(port, owner, "hook"):
                return ReleaseResult(False, f"device {device_id}: deleting {port.name} failed")
        return ReleaseResult(True, f"released port {port.name} of device {device_id}", port.name)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _wrong_config(port: PortState, entry: PoolDevice) -> bool:
    return port.ptype != entry.spec.ptype or sorted(port.logical_bridges) != sorted(
        entry.spec.logical_bridges
    )
