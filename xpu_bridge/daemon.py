"""The node daemon: wires discovery, pools, the OPI client and the kubelet side, and runs them."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from xpu_bridge.allocator import Allocator
from xpu_bridge.config import Config, ResourceConfig
from xpu_bridge.devinfo import DevInfoStore
from xpu_bridge.inventory import discover
from xpu_bridge.metrics import DeviceCounts, Metrics, StateSnapshot
from xpu_bridge.opi_client import BridgePortClient
from xpu_bridge.ops_server import OpsServer
from xpu_bridge.plugin_server import DevicePluginService, PluginEndpoint
from xpu_bridge.pod_resources import PodResourcesClient
from xpu_bridge.pool import DevicePool, PoolDevice
from xpu_bridge.ports import PortError
from xpu_bridge.reconciler import Reconciler
from xpu_bridge.registration import KubeletRegistrar
from xpu_bridge.release_hook import ReleaseHookServer
from xpu_bridge.selection import Assignment, assign

log = logging.getLogger(__name__)

BRIDGE_CHECK_RETRY = 2.0


class StartupError(Exception):
    """The daemon cannot start; `problems` has one line per reason, for the operator."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class DaemonOptions:
    config: Config
    kubelet_dir: Path = Path("/var/lib/kubelet/device-plugins")
    pod_resources_socket: Path = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
    sysfs_root: Path = Path("/sys")
    devinfo_dir: Path = Path("/var/run/k8s.cni.cncf.io/devinfo/dp")
    registration_poll_seconds: float = 0.1
    metrics_address: str | None = None


class Daemon:
    """Start-up order matters: pools and sockets exist before the kubelet hears of them."""

    def __init__(self, options: DaemonOptions) -> None:
        self.options = options
        self.config = options.config
        self.metrics = Metrics()
        self.client = BridgePortClient(self.config.host_agent, observer=self._observe_opi)
        self.devinfo = DevInfoStore(options.devinfo_dir)
        self.pools: dict[str, DevicePool] = {}
        self.allocators: dict[str, Allocator] = {}
        self.endpoints: list[PluginEndpoint] = []
        self.registrar: KubeletRegistrar | None = None
        self.pod_resources = PodResourcesClient(options.pod_resources_socket)
        self.reconciler = Reconciler(
            self.config,
            self.pools,
            self.allocators,
            self.client,
            self.pod_resources,
            self.devinfo,
            lambda: self.registrar.last_kubelet_restart if self.registrar else None,
        )
        hook = self.config.release.hook_socket
        self.hook = ReleaseHookServer(hook, self.reconciler.release_now) if hook else None
        self.metrics.watch_state(self.snapshot)
        self.ops = (
            OpsServer(
                options.metrics_address,
                self.metrics,
                self.not_live,
                self.not_ready,
                self.debug_state,
            )
            if options.metrics_address
            else None
        )
        self._started = False
        self.broken: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._last_conflicts: tuple[str, ...] = ()

    async def start(self) -> None:
        if self.ops is not None:
            await self.ops.start()
        self.options.kubelet_dir.mkdir(parents=True, exist_ok=True)
        assignment = await self._scan()
        if assignment.conflicts:
            raise StartupError(list(assignment.conflicts))
        await self._check_logical_bridges()
        for resource in self.config.resource_list:
            await self._add_pool(self.config.full_resource_name(resource), resource, assignment)
        await self.reconciler.recover()
        for endpoint in self.endpoints:
            await endpoint.start()
        if self.hook is not None:
            await self.hook.start()
        self.registrar = KubeletRegistrar(
            self.options.kubelet_dir,
            self.endpoints,
            self.options.registration_poll_seconds,
            on_registered=self.metrics.registered,
        )
        self._tasks = [
            asyncio.create_task(self.registrar.run(), name="registrar"),
            asyncio.create_task(self._rescan_forever(), name="rescan"),
            asyncio.create_task(self.reconciler.run(), name="reconciler"),
        ]
        for task in self._tasks:
            task.add_done_callback(self._task_ended)
        self._started = True

    async def _add_pool(self, name: str, resource: ResourceConfig, assignment: Assignment) -> None:
        pool = DevicePool(name, resource, self.config.port_id_prefix)
        await pool.replace_devices(assignment.pools.get(name, ()))
        allocator = Allocator(pool, self.client, self.devinfo)
        service = DevicePluginService(
            pool, allocator, lambda: self._stream_lost(name), self.metrics
        )
        self.pools[name] = pool
        self.allocators[name] = allocator
        self.endpoints.append(PluginEndpoint(service, self.options.kubelet_dir))
        log.info("pool %s: %d device(s)", name, len(pool))

    def _stream_lost(self, name: str) -> None:
        if self.registrar is None:
            return
        endpoint = next(e for e in self.endpoints if e.resource_name == name)
        self.registrar.stream_lost(name, lambda: endpoint.service.active_streams)

    async def _scan(self) -> Assignment:
        inventory = await asyncio.to_thread(discover, self.options.sysfs_root)
        for problem in inventory.problems:
            log.warning("sysfs: %s", problem)
        return assign(self.config, inventory.devices)

    async def _check_logical_bridges(self) -> None:
        """Missing bridges are a configuration error; an unreachable agent is waited for."""
        names = sorted(
            {b for r in self.config.resource_list for b in r.bridge_port.logical_bridges}
        )
        while True:
            try:
                missing = await self.client.missing_logical_bridges(names)
            except PortError as error:
                log.error(
                    "host agent %s not usable yet (%s); retrying in %.0fs",
                    self.client.endpoint,
                    error,
                    BRIDGE_CHECK_RETRY,
                )
                await asyncio.sleep(BRIDGE_CHECK_RETRY)
                continue
            if missing:
                raise StartupError(
                    [
                        f"logical bridge {name} does not exist on the host agent "
                        f"{self.client.endpoint}: create it there or fix "
                        "resourceList[].bridgePort.logicalBridges"
                        for name in missing
                    ]
                )
            return

    async def rescan(self) -> None:
        """Pick up devices that appeared or vanished; ListAndWatch follows by itself."""
        assignment = await self._scan()
        if assignment.conflicts != self._last_conflicts:
            for conflict in assignment.conflicts:
                log.error("config: %s; it stays in the first pool", conflict)
            self._last_conflicts = assignment.conflicts
        for name, pool in self.pools.items():
            before = {entry.id for entry in pool.devices()}
            if await pool.replace_devices(assignment.pools.get(name, ())):
                after = {entry.id for entry in pool.devices()}
                log.info(
                    "pool %s: +%s -%s",
                    name,
                    sorted(after - before) or "[]",
                    sorted(before - after) or "[]",
                )

    async def _rescan_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.rescan_interval_seconds)
            try:
                await self.rescan()
            except Exception:
                log.exception(
                    "rescan of %s failed; keeping the last device list", self.options.sysfs_root
                )

    async def stop(self) -> None:
        """Stop serving and remove our sockets; ports stay attached for running pods."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.reconciler.stop()
        if self.hook is not None:
            await self.hook.stop()
        await asyncio.gather(*(endpoint.stop(grace=0.5) for endpoint in self.endpoints))
        await self.client.close()
        await self.pod_resources.close()
        if self.ops is not None:
            await self.ops.stop()

    def _observe_opi(self, method: str, code: str, seconds: float) -> None:
        """Every OPI call feeds the metrics and the agent's health (Allocates included)."""
        self.metrics.observe_opi(method, code, seconds)
        self.reconciler.health.observe(code)

    def _agent_up(self) -> bool:
        return self.reconciler.health.up(asyncio.get_running_loop().time())

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        """A loop that should run forever stopped: fail /healthz so the kubelet restarts us."""
        if task.cancelled():
            return
        error = task.exception()
        self.broken = f"{task.get_name()} loop stopped: {error!r}"
        log.error("%s; /healthz now fails so that the pod is restarted", self.broken)

    def not_live(self) -> str | None:
        return self.broken

    def not_ready(self) -> str | None:
        """Why the node should not get pods yet, or None when it may."""
        if not self._started or self.registrar is None:
            return "starting: waiting for the host agent and the first registration"
        missing = sorted(set(self.pools) - self.registrar.registered)
        if missing:
            return f"not registered with the kubelet: {', '.join(missing)}"
        if not self._agent_up():
            return f"host agent {self.client.endpoint} unreachable"
        return None

    def snapshot(self) -> StateSnapshot:
        counts = []
        for name, pool in self.pools.items():
            unhealthy = sum(1 for e in pool.devices() if pool.unhealthy_reason(e.id))
            allocated = sum(
                1
                for e in pool.devices()
                if self._attached(name, e) and not pool.unhealthy_reason(e.id)
            )
            free = len(pool) - unhealthy - allocated
            counts.append(DeviceCounts(name, free, allocated, unhealthy))
        stats = self.reconciler.stats
        return StateSnapshot(
            devices=counts,
            host_agent_up=self._agent_up(),
            releases=dict(stats.releases),
            held_back=dict(stats.held_back),
            repairs=dict(stats.repairs),
        )

    def _attached(self, name: str, entry: PoolDevice) -> bool:
        """Its port exists on the xPU (last pass) or an Allocate attached it since."""
        return entry.spec.port_id in self.reconciler.owned or entry.id in (
            self.allocators[name].attached_at
        )

    def debug_state(self) -> dict[str, object]:
        """Pools, devices, their ports and who is registered: for `xpu-bridge status`."""
        owned = self.reconciler.owned
        registered = self.registrar.registered if self.registrar else set()
        return {
            "hostAgent": {
                "endpoint": self.client.endpoint,
                "reachable": self._agent_up(),
            },
            "kubeletRestarts": self.registrar.kubelet_restarts if self.registrar else 0,
            "ready": self.not_ready() is None,
            "notReadyReason": self.not_ready(),
            "pools": {
                name: {
                    "registered": name in registered,
                    "devices": [
                        {
                            "id": e.id,
                            "pci": e.device.pci_address,
                            "pf": e.device.pf_name,
                            "health": pool.unhealthy_reason(e.id) or "Healthy",
                            "port": e.spec.port_id,
                            "portState": owned[e.spec.port_id].oper.name
                            if e.spec.port_id in owned
                            else None,
                        }
                        for e in pool.devices()
                    ],
                }
                for name, pool in self.pools.items()
            },
        }
