"""A simulated node for integration tests: fake sysfs, simulated agent and kubelet, the daemon.

`node` has the opi-evpn-bridge host agent; `vsp_node` a dpu-operator vendor plugin instead.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from opi_protos.dpu_api import api_pb2 as vendor
from opi_protos.dpu_api import api_pb2_grpc as vendor_grpc
from opi_protos.evpn_gw import l2_xpu_infra_mgr_pb2 as opi
from opi_protos.evpn_gw import l2_xpu_infra_mgr_pb2_grpc as opi_grpc
from xpu_bridge.config import DPU_VENDOR_PLUGIN, Config, parse_config
from xpu_bridge.daemon import Daemon, DaemonOptions
from xpu_bridge.sim.host_agent import SimHostAgent
from xpu_bridge.sim.kubelet import SimKubelet
from xpu_bridge.sim.polling import wait_until
from xpu_bridge.sim.scenario import BLUE, BRIDGES, GREEN, NF, RED, simulated_config
from xpu_bridge.sim.sysfs import FakeSysfs, build_node
from xpu_bridge.sim.vendor_plugin import ALREADY_INITIALIZED, SimVendorPlugin

__all__ = [
    "BLUE",
    "BRIDGES",
    "GREEN",
    "NF",
    "RED",
    "VSP_INTERFACES",
    "Node",
    "VspNode",
    "eventually",
    "node",
    "node_config",
    "short_root",
    "vsp_node",
    "vsp_node_config",
]

# Enough ACC interfaces for every device of vsp_node's pools (red 12, nf 4) at once.
VSP_INTERFACES = 32


def node_config(root: Path, **overrides: Any) -> dict[str, Any]:
    """The pools `xpu-bridge simulate` uses (red: VFs on both PFs, access; blue: the rest of
    ens1f1, trunk; green: SFs), with tight agent timeouts and default release settings."""
    raw = simulated_config(root)
    raw["hostAgent"].update(rpcTimeoutSeconds=1, attachTimeoutSeconds=3)
    del raw["release"]
    raw.update(overrides)
    return raw


def vsp_node_config(
    root: Path, network_functions: bool = False, **overrides: Any
) -> dict[str, Any]:
    """The same node against a vendor plugin on <root>/vsp.sock: red (VLAN 10) on ens1f0 and
    ens1f1#0-3; with `network_functions`, mode dpu and an nf pool (VLAN 20) on ens1f1#4-7.
    Tight agent timeouts, a fast heartbeat, and quick release (no grace, no hold-off)."""
    resources: list[dict[str, Any]] = [
        {
            "resourceName": "red",
            "selectors": [{"pfNames": ["ens1f0", "ens1f1#0-3"]}],
            "bridgePort": {"vlan": 10},
        }
    ]
    raw: dict[str, Any] = {
        "apiVersion": "xpu-bridge/v1",
        "hostAgent": {
            "api": DPU_VENDOR_PLUGIN,
            "endpoint": f"unix://{root}/vsp.sock",
            "rpcTimeoutSeconds": 1,
            "attachTimeoutSeconds": 3,
            "heartbeatSeconds": 0.2,
            "unhealthyAfterSeconds": 1,
        },
        "release": {"intervalSeconds": 0.2, "graceSeconds": 0, "holdoffSeconds": 0},
        "resourceList": resources,
    }
    if network_functions:
        raw["mode"] = "dpu"
        resources.append(
            {
                "resourceName": "nf",
                "networkFunction": True,
                "selectors": [{"pfNames": ["ens1f1#4-7"]}],
                "bridgePort": {"vlan": 20},
            }
        )
    raw.update(overrides)
    return raw


@dataclass
class Node:
    """Everything one simulated node has; the daemon runs in-process over real sockets."""

    root: Path
    sysfs: FakeSysfs
    agent: SimHostAgent
    kubelet: SimKubelet
    raw_config: dict[str, Any]
    daemon: Daemon | None = None
    metrics_address: str | None = None
    _daemons: list[Daemon] = field(default_factory=list)

    @property
    def kubelet_dir(self) -> Path:
        return self.root / "dp"

    @property
    def devinfo_dir(self) -> Path:
        return self.root / "devinfo"

    @property
    def config(self) -> Config:
        return parse_config(self.raw_config)

    @property
    def resources(self) -> list[str]:
        """The pools raw_config has, by full resource name."""
        config = self.config
        return [config.full_resource_name(resource) for resource in config.resource_list]

    def options(self) -> DaemonOptions:
        return DaemonOptions(
            config=self.config,
            kubelet_dir=self.kubelet_dir,
            pod_resources_socket=self.root / "pr.sock",
            sysfs_root=self.root / "sys",
            devinfo_dir=self.devinfo_dir,
            registration_poll_seconds=0.05,
            metrics_address=self.metrics_address,
        )

    def run_command(self, *global_flags: str) -> list[str]:
        """`xpu-bridge [flags] run ...` for this node, its config written to a file first."""
        config = self.root / "config.yaml"
        config.write_text(yaml.safe_dump(self.raw_config))
        return [
            sys.executable, "-m", "xpu_bridge.cli", *global_flags, "run",
            "--config", str(config),
            "--kubelet-dir", str(self.kubelet_dir),
            "--pod-resources-socket", str(self.root / "pr.sock"),
            "--sysfs-root", str(self.root / "sys"),
            "--devinfo-dir", str(self.devinfo_dir),
            "--metrics-address", "127.0.0.1:0",
        ]  # fmt: skip

    async def start_daemon(self, wait: bool = True, options: DaemonOptions | None = None) -> Daemon:
        """With `options` (default: self.options()); `wait`: until every pool is served."""
        daemon = await Daemon.create(options or self.options())
        await daemon.start()
        self.daemon = daemon
        self._daemons.append(daemon)
        if wait:
            for resource in self.resources:
                await self.kubelet.wait_registered(resource, timeout=20)
                await self.kubelet.wait_for_devices(resource, timeout=20)
        return daemon

    async def stop_daemon(self) -> None:
        if self.daemon is not None:
            await self.daemon.stop()
            self._daemons.remove(self.daemon)
            self.daemon = None

    async def agent_client_create(self, port_id: str, mac: bytes, bridge: str) -> opi.BridgePort:
        """Create a port out of band, as another tool or operator would, over gRPC."""
        async with grpc.aio.insecure_channel(self.agent.target) as channel:
            return await opi_grpc.BridgePortServiceStub(channel).CreateBridgePort(
                opi.CreateBridgePortRequest(
                    bridge_port_id=port_id,
                    bridge_port=opi.BridgePort(
                        spec=opi.BridgePortSpec(
                            mac_address=mac,
                            ptype=opi.BRIDGE_PORT_TYPE_ACCESS,
                            logical_bridges=[bridge],
                        )
                    ),
                )
            )

    async def agent_client_delete(self, name: str) -> None:
        async with grpc.aio.insecure_channel(self.agent.target) as channel:
            await opi_grpc.BridgePortServiceStub(channel).DeleteBridgePort(
                opi.DeleteBridgePortRequest(name=name, allow_missing=True)
            )

    async def close(self) -> None:
        for daemon in self._daemons:
            await stopped_within(daemon.stop(), "the daemon's stop()")
        await stopped_within(self.kubelet.stop(), "the simulated kubelet's stop()")
        await stopped_within(self.agent.stop(), "the simulated agent's stop()")


STOP_LIMIT = 60.0
"""Far beyond any stop (a second or two): past it, a stop is stuck, not slow."""


async def stopped_within(stopping: Awaitable[None], what: str) -> None:
    """A stop that hangs fails the test with every task's stack, instead of hanging the run."""
    try:
        await asyncio.wait_for(stopping, STOP_LIMIT)
    except TimeoutError:
        stacks = io.StringIO()
        for task in asyncio.all_tasks():
            task.print_stack(limit=12, file=stacks)
        raise AssertionError(
            f"{what} did not finish within {STOP_LIMIT:.0f} s; tasks:\n{stacks.getvalue()}"
        ) from None


@dataclass
class VspNode(Node):
    """A node whose xPU side is a simulated dpu-operator vendor plugin (`agent`, also `vsp`)."""

    agent: SimVendorPlugin  # type: ignore[assignment]

    @property
    def vsp(self) -> SimVendorPlugin:
        return self.agent

    @property
    def vsp_address(self) -> str:
        return f"unix://{self.root}/vsp.sock"

    async def replace_vsp(self, **options: Any) -> SimVendorPlugin:
        """Stop the plugin and serve a new one with `options` on the same socket."""
        await self.vsp.stop()
        options.setdefault("interfaces", VSP_INTERFACES)
        self.agent = SimVendorPlugin(**options)
        await self.agent.start(self.vsp_address)
        return self.agent

    async def create_port_out_of_band(self, name: str, mac: bytes, vlan: int) -> opi.BridgePort:
        """A port by name as another tool (or an earlier run) would leave it, over gRPC; the
        plugin is initialized first, as dpu-operator would have done."""
        async with grpc.aio.insecure_channel(self.vsp.target) as channel:
            try:
                await vendor_grpc.LifeCycleServiceStub(channel).Init(vendor.InitRequest())
            except grpc.aio.AioRpcError as error:
                if ALREADY_INITIALIZED not in (error.details() or ""):
                    raise
            return await opi_grpc.BridgePortServiceStub(channel).CreateBridgePort(
                opi.CreateBridgePortRequest(
                    bridge_port=opi.BridgePort(
                        name=name,
                        spec=opi.BridgePortSpec(
                            mac_address=mac,
                            ptype=opi.BRIDGE_PORT_TYPE_ACCESS,
                            logical_bridges=[str(vlan)],
                        ),
                    )
                )
            )


@pytest.fixture
def short_root() -> Iterator[Path]:
    """Unix socket paths must stay under ~100 characters; pytest's tmp_path may not."""
    root = Path(tempfile.mkdtemp(prefix="xb-", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


async def started_node(root: Path) -> Node:
    """2 PFs x 8 VFs and 2 SFs each, the simulated agent and kubelet serving in `root`, the
    config not yet used: no daemon runs."""
    sysfs = build_node(root / "sys", pfs=2, vfs_per_pf=8, sfs_per_pf=2)
    agent = SimHostAgent(
        [BRIDGES + name for name in ("red", "blue-a", "blue-b", "green")],
        up_delay=0.01,
        delete_delay=0.01,
        seed=7,
    )
    await agent.start(f"unix://{root}/agent.sock")
    kubelet = SimKubelet(root / "dp", root / "pr.sock")
    await kubelet.start()
    return Node(root, sysfs, agent, kubelet, node_config(root))


@pytest.fixture
async def node(short_root: Path) -> AsyncIterator[Node]:
    created = await started_node(short_root)
    try:
        yield created
    finally:
        await created.close()


async def eventually(
    predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02
) -> None:
    """Poll until predicate() is true; generous timeouts, since CI machines are noisy."""
    try:
        await wait_until(lambda: bool(predicate()), timeout, interval)
    except TimeoutError:
        raise AssertionError(f"condition not met within {timeout}s") from None


@pytest.fixture
async def vsp_node(short_root: Path) -> AsyncIterator[VspNode]:
    """Like `node`, against a SimVendorPlugin with VSP_INTERFACES interfaces (tests that want
    few set `vsp_node.vsp.config.interfaces`) and vsp_node_config (red only, host mode)."""
    sysfs = build_node(short_root / "sys", pfs=2, vfs_per_pf=8, sfs_per_pf=2)
    vsp = SimVendorPlugin(interfaces=VSP_INTERFACES, seed=7)
    await vsp.start(f"unix://{short_root}/vsp.sock")
    kubelet = SimKubelet(short_root / "dp", short_root / "pr.sock")
    await kubelet.start()
    created = VspNode(short_root, sysfs, vsp, kubelet, vsp_node_config(short_root))
    try:
        yield created
    finally:
        await created.close()
