"""The node daemon, wired: create() builds every part, start() brings them up in order.

Allocate path: kubelet/plugin_server.py (DevicePluginService.Allocate) -> node/allocator.py
(Allocator) -> node/prewarm.py (PrewarmedAttacher: a prewarmed port as it is) ->
hostagent/opi_evpn.py (BridgePortClient.ensure_port) or hostagent/vendor_plugin.py
(VendorPluginClient.ensure_port). Release path: release/reconciler.py
(Reconciler.reconcile) -> release/gate.py -> release/releaser.py; prewarmed ports:
release/prewarm.py (PrewarmKeeper).
Config reloads (SIGHUP, a changed file): reload.py (ConfigReloader) -> reconfigure.py.
CDI (cdi.enabled): node/cdi.py (CdiSpecs) writes the specs before the first registration,
the rescanner keeps them in step, stop() removes them.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from xpu_bridge.backends import Backend
from xpu_bridge.checks import conflict_problems, empty_pool_warning, written_directories
from xpu_bridge.common.loops import LoopSupervisor
from xpu_bridge.config import Config, ConfigError
from xpu_bridge.hostagent.ports import HostAgent, PortState
from xpu_bridge.hostagent.startup import wait_until_usable
from xpu_bridge.kubelet.endpoint import EndpointFactory
from xpu_bridge.kubelet.instance_lock import InstanceLock
from xpu_bridge.kubelet.pod_resources import PodResourcesClient, PodResourcesUnavailable
from xpu_bridge.kubelet.registration import KubeletRegistrar
from xpu_bridge.node.cdi import CdiSpecs
from xpu_bridge.node.devinfo import DevInfoStore
from xpu_bridge.node.leases import DeviceLeases
from xpu_bridge.node.pool_set import PoolSet
from xpu_bridge.node.prewarm import PrewarmedAttacher, PrewarmedPorts
from xpu_bridge.node.rescan import Rescanner, scan
from xpu_bridge.node.vf_creation import plan_vfs
from xpu_bridge.ops.http import OpsServer
from xpu_bridge.ops.metrics import Metrics
from xpu_bridge.ops.status import NodeStatus
from xpu_bridge.paths import check_writable
from xpu_bridge.reconfigure import ConfigApplier
from xpu_bridge.release.hook_socket import ReleaseHookServer
from xpu_bridge.release.reconciler import Reconciler
from xpu_bridge.reload import ConfigReloader

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DaemonOptions:
    config: Config
    kubelet_dir: Path = Path("/var/lib/kubelet/device-plugins")
    pod_resources_socket: Path = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
    sysfs_root: Path = Path("/sys")
    devinfo_dir: Path = Path("/var/run/k8s.cni.cncf.io/devinfo/dp")
    registration_poll_seconds: float = 0.1
    metrics_address: str | None = None
    debug_state_remote: bool = False
    config_path: Path | None = None
    """The file `config` was read from: reloaded on SIGHUP and when it changes."""
    config_poll_seconds: float = 2.0


class Daemon:
    """Start-up order matters: pools and sockets exist before the kubelet hears of them."""

    def __init__(
        self,
        options: DaemonOptions,
        metrics: Metrics,
        pools: PoolSet,
        backend: Backend,
        pod_resources: PodResourcesClient,
        registrar: KubeletRegistrar,
        reconciler: Reconciler,
        endpoints: EndpointFactory,
    ) -> None:
        self.backend = backend
        self.pod_resources = pod_resources
        self.registrar = registrar
        self.reconciler = reconciler
        cdi = options.config.cdi
        self.rescanner = Rescanner(
            options.config,
            options.sysfs_root,
            pools,
            reconciler.in_use,
            CdiSpecs(Path(cdi.spec_dir)) if cdi.enabled else None,
        )
        self.loops = LoopSupervisor()
        self.reloader = ConfigReloader(
            options.config_path,
            options.config,
            ConfigApplier(self.rescanner, reconciler, registrar, endpoints, backend.client),
            metrics,
            options.config_poll_seconds,
        )
        self.status = NodeStatus(
            pools,
            reconciler.leases,
            lambda: reconciler.owned.ports,
            registrar,
            reconciler.stats,
            backend,
            lambda: self.loops.broken,
            reconciler.prewarm.prewarmed,
        )
        metrics.watch_state(self.status.snapshot)
        address = options.metrics_address
        self.ops = (
            OpsServer(
                address,
                metrics,
                self.status.not_live,
                self.status.not_ready,
                self.status.debug_state,
                options.debug_state_remote,
            )
            if address
            else None
        )
        hook = options.config.release.hook_socket
        self.hook = ReleaseHookServer(hook, reconciler.release_hook().release_now) if hook else None

    @classmethod
    async def create(cls, options: DaemonOptions) -> Daemon:
        """Scan sysfs and build every part; raises ConfigError when pools would overlap. The
        channels opened here are closed again if anything after them fails."""
        directories = written_directories(options.config, options.kubelet_dir, options.devinfo_dir)
        if options.config.cdi.enabled:
            directories["cdi.specDir"] = Path(options.config.cdi.spec_dir)
        check_writable(directories)
        lock = InstanceLock(options.kubelet_dir)
        lock.acquire()
        metrics = Metrics()
        backend = Backend.connect(options.config, metrics, options.sysfs_root)
        pod_resources = PodResourcesClient(options.pod_resources_socket)
        try:
            return await cls._build(options, metrics, backend, pod_resources, lock)
        except BaseException:
            await backend.client.close()
            await pod_resources.close()
            lock.release()
            raise

    @classmethod
    async def _build(
        cls,
        options: DaemonOptions,
        metrics: Metrics,
        backend: Backend,
        pod_resources: PodResourcesClient,
        lock: InstanceLock,
    ) -> Daemon:
        config = options.config
        found = await scan(config, options.sysfs_root)
        if found.assignment.conflicts:
            raise ConfigError(conflict_problems(found.assignment.conflicts))
        pools = await PoolSet.build(config, found.assignment, found.naming)
        leases = DeviceLeases(config.release.grace_seconds)
        devinfo = DevInfoStore(options.devinfo_dir)
        prewarmed = PrewarmedPorts()

        def attached(port: PortState) -> None:
            """A port an Allocate handed out: its pool forgets the spec it replaced, and the
            owned ports (what status shows) have it now, not only after the next pass."""
            pools.port_attached(port)
            reconciler.owned.put(port)

        endpoints = EndpointFactory(
            options.kubelet_dir,
            PrewarmedAttacher(backend.client, prewarmed),
            devinfo,
            leases,
            backend.functions,
            observer=metrics.observe_allocate,
            on_attached=attached,
            cdi=config.cdi.enabled,
        )
        registrar = KubeletRegistrar(
            options.kubelet_dir,
            [endpoints(pool) for pool in pools],
            options.registration_poll_seconds,
            on_registered=metrics.registered,
            lock=lock,
        )
        reconciler = Reconciler(
            config,
            pools,
            leases,
            backend.client,
            backend.health,
            pod_resources,
            devinfo,
            lambda: registrar.last_kubelet_restart,
            backend.functions,
            registrar.kubelet.age,
            prewarmed,
        )
        if backend.heartbeat is not None:
            backend.heartbeat.on_outage = reconciler.note_outage
        for pool in pools:
            log.info("pool %s: %d device(s)", pool.resource_name, len(pool))
            if len(pool) == 0:
                log.warning("%s", empty_pool_warning(pool.resource_name, options.sysfs_root))
        return cls(
            options, metrics, pools, backend, pod_resources, registrar, reconciler, endpoints
        )

    @property
    def config(self) -> Config:
        """The config running now: as read at start, or as the last reload applied it."""
        return self.reloader.config

    @property
    def pools(self) -> PoolSet:
        return self.rescanner.pools

    def request_reload(self) -> None:
        """What SIGHUP does: read the config file again now (reload.py)."""
        self.reloader.request()

    @property
    def agent(self) -> HostAgent:
        return self.backend.client

    async def _create_vfs(self) -> None:
        """pfs[]: VFs first, then the pools see them (before anything is served)."""
        if not self.config.pfs:
            return
        found = await scan(self.config, self.rescanner.sysfs_root)
        plan = plan_vfs(self.config, found.inventory)
        if not plan.changes and not plan.problems:
            return
        try:
            held: set[str] | None = (await self.reconciler.held.read_all()).all_ids()
        except PodResourcesUnavailable:
            held = None
        if await self.backend.vfs.apply(plan, found.inventory, held):
            await self.rescanner.rescan()

    async def start(self) -> None:
        if self.ops is not None:
            await self.ops.start()
        await wait_until_usable(self.agent, self.config)
        await self._create_vfs()
        await self.reconciler.recover()
        if self.rescanner.cdi is not None:  # a runtime must find a device the kubelet has
            self.rescanner.cdi.sync(self.pools.accounted())
        for endpoint in self.registrar.endpoints:
            await endpoint.start()
        if self.hook is not None:
            await self.hook.start()
        self.loops.spawn("registrar", self.registrar.run())
        self.loops.spawn("rescan", self.rescanner.run())
        self.loops.spawn("reconciler", self.reconciler.run())
        self.loops.spawn("prewarm", self.reconciler.prewarm.run())
        if self.backend.heartbeat is not None:
            self.loops.spawn("heartbeat", self.backend.heartbeat.run())
        if self.reloader.path is not None:
            self.loops.spawn("config reload", self.reloader.run())
        self.status.started = True

    async def stop(self) -> None:
        """Stop serving and remove our sockets; ports stay attached for running pods."""
        await self.loops.stop()
        await self.reconciler.stop()
        if self.hook is not None:
            await self.hook.stop()
        await asyncio.gather(*(e.stop(grace=0.5) for e in self.registrar.endpoints))
        if self.rescanner.cdi is not None:
            self.rescanner.cdi.remove_all()
        await self.agent.close()
        await self.pod_resources.close()
        if self.ops is not None:
            await self.ops.stop()
        self.registrar.close()
