"""Applying a reloaded config to the running daemon: pools added, removed and changed, a rescan
that moves devices between pools, and the release timings (wiring, like daemon.py).

A removed pool's endpoint stops at once, so the kubelet sees its resource go; the pool itself
is retired, and its devices in use keep their ports (kept, repaired, released as before)
until released. New pools are filled by the rescan before they are served and registered.
A device in use never moves to another pool and keeps the bridge port it was attached with
(node/rescan.py); new attachments get the new spec.
"""

from __future__ import annotations

import logging

from xpu_bridge.checks import conflict_problems, empty_pool_warning
from xpu_bridge.config import Config, ConfigError, ResourceConfig
from xpu_bridge.config.changes import ConfigChanges, resources_by_name
from xpu_bridge.hostagent.ports import HostAgent, PortError
from xpu_bridge.kubelet.endpoint import EndpointFactory
from xpu_bridge.kubelet.registration import KubeletRegistrar
from xpu_bridge.node.pool import DevicePool
from xpu_bridge.node.pool_set import PoolSet
from xpu_bridge.node.rescan import Rescanner, Scan, scan
from xpu_bridge.release.reconciler import Reconciler

log = logging.getLogger(__name__)


def _bridges(config: Config) -> set[str]:
    return {bridge for r in config.resource_list for bridge in r.bridge_port.logical_bridges}


class ConfigApplier:
    """Changes the running parts to a new config; the caller has checked it with check()."""

    def __init__(
        self,
        rescanner: Rescanner,
        reconciler: Reconciler,
        registrar: KubeletRegistrar,
        endpoints: EndpointFactory,
        agent: HostAgent,
    ) -> None:
        self._rescanner = rescanner
        self._reconciler = reconciler
        self._registrar = registrar
        self._endpoints = endpoints
        self._agent = agent

    @property
    def pools(self) -> PoolSet:
        return self._rescanner.pools

    async def check(self, config: Config, running: Config) -> Scan:
        """What start-up refuses, on this node now: pools that overlap, and logical bridges
        the agent lacks (of those the running config does not name already). Raises
        ConfigError; an agent that cannot be asked is only a warning."""
        found = await scan(config, self._rescanner.sysfs_root)
        if found.assignment.conflicts:
            raise ConfigError(conflict_problems(found.assignment.conflicts))
        new = sorted(_bridges(config) - _bridges(running))
        if not new:
            return found
        try:
            missing = await self._agent.missing_logical_bridges(new)
        except PortError as error:
            log.warning(
                "config: cannot ask the host agent %s whether logical bridges %s exist (%s); "
                "Allocates of pools on a missing one will fail",
                self._agent.endpoint,
                ", ".join(new),
                error,
            )
            return found
        if missing:
            raise ConfigError(
                [
                    f"logical bridge {name} does not exist on the host agent "
                    f"{self._agent.endpoint}: create it there or fix "
                    "resourceList[].bridgePort.logicalBridges"
                    for name in missing
                ]
            )
        return found

    async def apply(self, running: Config, changes: ConfigChanges, found: Scan) -> None:
        """`found` is check()'s scan, with the new config."""
        config = changes.config
        resources = resources_by_name(config)
        for name in changes.removed:
            await self._registrar.remove(name)
        async with self._rescanner.lock:
            for name in changes.removed:
                self.pools.retire(name)
            for name in changes.changed:
                pool = self.pools.get(name)
                if pool is not None:
                    pool.resource = resources[name]
            added = [  # a pool served already was added by an earlier try that failed
                self._pool(name, resources[name])
                for name in changes.added
                if name not in self.pools
            ]
            self.pools.arrange(list(resources))
            self._rescanner.config = config
            self._reconciler.follow(config)
            await self._rescanner.apply(found)
        for pool in added:
            await self._registrar.add(self._endpoints(pool))
        self._reconciler.prewarm.wake()  # new counts, specs and pools apply now
        self._report(changes, resources_by_name(running), resources)

    def _pool(self, name: str, resource: ResourceConfig) -> DevicePool:
        """A new pool, or a retired one given back with its devices in use."""
        pool = self.pools.revive(name)
        if pool is None:
            pool = DevicePool(name, resource, self.pools.naming)
            self.pools.add(pool)
        pool.resource = resource
        return pool

    def _report(
        self,
        changes: ConfigChanges,
        before: dict[str, ResourceConfig],
        after: dict[str, ResourceConfig],
    ) -> None:
        retired = {pool.resource_name: len(pool) for pool in self.pools.retired()}
        for name in changes.removed:
            log.info(
                "pool %s removed: no longer offered to the kubelet; %d device(s) of it in use "
                "keep their ports until released",
                name,
                retired.get(name, 0),
            )
        for name in changes.added:
            count = len(self.pools[name])
            log.info("pool %s added: %d device(s)", name, count)
            if count == 0:
                log.warning("%s", empty_pool_warning(name, self._rescanner.sysfs_root))
        kept = self.pools.kept()
        for name in changes.changed:
            old, new = before[name].bridge_port, after[name].bridge_port
            if old.prewarm != new.prewarm:
                log.info("pool %s: prewarm is now %d (was %d)", name, new.prewarm, old.prewarm)
            if old.same_port(new):
                continue
            pool = self.pools[name]
            keeping = sum(1 for entry in pool.devices() if entry.id in kept)
            log.info(
                "pool %s: bridgePort is now %s for new attachments; %d device(s) in use keep "
                "%s until released",
                name,
                new.describe(),
                keeping,
                old.describe(),
            )
