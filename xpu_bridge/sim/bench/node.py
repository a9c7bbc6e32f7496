"""A bench node: scratch directory (tmpfs when there is one), fake sysfs, config, the simulated
kubelet in the bench's process, and `xpu-bridge run` as a subprocess against them."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2 as dp
from xpu_bridge.sim.bench.processes import Subprocess, daemon_command
from xpu_bridge.sim.kubelet import HEALTHY, DeviceView, SimKubelet
from xpu_bridge.sim.sysfs import build_node

BRIDGE = "//network.opiproject.org/bridges/bench"
SHM = Path("/dev/shm")
READY_TIMEOUT = 120.0


def scratch_dir(prefix: str) -> Path:
    """A new directory on tmpfs if there is one (sysfs trees of thousands of devices are
    slow to build on disk), else under /tmp; short, for unix socket paths."""
    base = SHM if SHM.is_dir() and os.access(SHM, os.W_OK) else Path("/tmp")
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class Shape:
    """How a fake sysfs is built: PFs, VFs and SFs per PF."""

    pfs: int
    vfs_per_pf: int
    sfs_per_pf: int

    @classmethod
    def mixed(cls, devices: int) -> Shape:
        """`devices` functions on 16 PFs (fewer below 64): three quarters VFs, a quarter SFs."""
        pfs = 16 if devices >= 64 else 1
        per_pf = max(1, devices // pfs)
        sfs = per_pf // 4
        return cls(pfs, per_pf - sfs, sfs)

    @property
    def vfs(self) -> int:
        return self.pfs * self.vfs_per_pf

    @property
    def sfs(self) -> int:
        return self.pfs * self.sfs_per_pf

    @property
    def devices(self) -> int:
        return self.vfs + self.sfs

    def build(self, root: Path) -> None:
        build_node(
            root,
            pfs=self.pfs,
            vfs_per_pf=self.vfs_per_pf,
            sfs_per_pf=self.sfs_per_pf,
            total_vfs=max(1, self.vfs_per_pf),
        )


def pool(name: str, kind: Literal["vf", "sf"], pf_names: list[str] | None = None) -> dict[str, Any]:
    """A resourceList entry: the VFs (of `pf_names`, else every PF) or the SFs."""
    selector: dict[str, Any] = {"vendors": ["15b3"]} if kind == "vf" else {"auxTypes": ["sf"]}
    if pf_names:
        selector["pfNames"] = pf_names
    return {
        "resourceName": name,
        "deviceType": "netDevice" if kind == "vf" else "auxNetDevice",
        "selectors": [selector],
        "bridgePort": {"type": "access", "logicalBridges": [BRIDGE]},
    }


def port_id_of(response: dp.ContainerAllocateResponse, device: str) -> str:
    """The bridge port an Allocate answer names for `device` (its PCIDEVICE_..._INFO env)."""
    info = next(value for key, value in response.envs.items() if key.endswith("_INFO"))
    port: str = json.loads(info)[device]["xpu"]["bridgePort"]
    return port.rsplit("/", 1)[-1]


def node_config(
    root: Path,
    pools: list[dict[str, Any]],
    *,
    release_interval: float,
    grace: float,
    holdoff: float,
    unhealthy_after: float = 30.0,
) -> dict[str, Any]:
    return {
        "apiVersion": "xpu-bridge/v1",
        "hostAgent": {
            "endpoint": f"unix://{root}/agent.sock",
            "unhealthyAfterSeconds": unhealthy_after,
        },
        "release": {
            "intervalSeconds": release_interval,
            "graceSeconds": grace,
            "holdoffSeconds": holdoff,
        },
        "resourceList": pools,
    }


class BenchNode:
    """The bench's side of a node (files, kubelet) and the daemon it starts as a subprocess.
    `capacity`: full resource name -> device count the daemon must offer."""

    def __init__(self, root: Path, sysfs: Path, capacity: dict[str, int]) -> None:
        self.root = root
        self.sysfs = sysfs
        self.capacity = capacity
        self.kubelet = SimKubelet(root / "dp", root / "pr.sock")
        self.daemon = Subprocess(daemon_command(root, sysfs), root / "daemon.log")

    @classmethod
    async def start(
        cls, root: Path, sysfs: Path, raw_config: dict[str, Any], capacity: dict[str, int]
    ) -> BenchNode:
        """Write the config and serve the kubelet; the daemon is not started yet."""
        (root / "config.yaml").write_text(json.dumps(raw_config, indent=1))
        node = cls(root, sysfs, capacity)
        await node.kubelet.start()
        return node

    async def start_daemon(self, timeout: float = READY_TIMEOUT) -> float:
        """Start `xpu-bridge run`; returns the seconds from the spawn until every pool was
        registered and the kubelet had its full device list."""
        started = await self.daemon.start()
        ready = asyncio.create_task(self._ready(started, timeout))
        assert self.daemon.process is not None
        exited = asyncio.create_task(self.daemon.process.wait())
        await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
        exited.cancel()
        if not ready.done():
            ready.cancel()
            raise RuntimeError(f"the daemon exited before it was ready:\n{self.daemon.tail()}")
        try:
            return ready.result() - started
        except TimeoutError:
            raise RuntimeError(
                f"the daemon was not ready within {timeout:g}s:\n{self.daemon.tail()}"
            ) from None

    async def _ready(self, after: float, timeout: float) -> float:
        for resource, count in self.capacity.items():
            await self.kubelet.wait_registered(resource, after=after, timeout=timeout)

            def full(devices: list[DeviceView], count: int = count) -> bool:
                return len(devices) == count and all(d.health == HEALTHY for d in devices)

            await self.kubelet.wait_for_devices(resource, full, timeout=timeout)
        return time.monotonic()

    def plugin_target(self, resource: str) -> str:
        """The gRPC target of the daemon's socket for `resource`, as the kubelet dials it."""
        endpoint = self.kubelet.endpoint(resource)
        if endpoint is None:
            raise RuntimeError(f"{resource} is not registered")
        return f"unix:{endpoint.socket_path}"

    async def close(self) -> None:
        await self.daemon.stop()
        await self.kubelet.stop()
