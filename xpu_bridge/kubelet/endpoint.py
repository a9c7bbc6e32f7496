"""A device plugin endpoint: one pool's DevicePlugin service on its socket in the kubelet dir."""

from __future__ import annotations

import re
from pathlib import Path

import grpc

from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from xpu_bridge.common.sockets import owner_only, prepare_socket
from xpu_bridge.kubelet.plugin_server import DevicePluginService


def socket_name(resource_name: str) -> str:
    """`opi.io/red` -> `xpu-bridge-opi.io-red.sock`, unique per resource in the kubelet dir."""
    return "xpu-bridge-" + re.sub(r"[^A-Za-z0-9._-]", "-", resource_name) + ".sock"


class PluginEndpoint:
    """Serves one DevicePluginService on `<kubelet-dir>/<socket>` (mode 0600), restartable."""

    def __init__(self, service: DevicePluginService, kubelet_dir: Path) -> None:
        self.service = service
        self.resource_name = service.pool.resource_name
        self.socket_name = socket_name(self.resource_name)
        self.path = kubelet_dir / self.socket_name
        self._server: grpc.aio.Server | None = None
        self._inode: int | None = None

    async def start(self) -> None:
        prepare_socket(self.path, "device plugin socket", make_parent=False)
        server = grpc.aio.server()
        dp_grpc.add_DevicePluginServicer_to_server(self.service, server)
        with owner_only():
            server.add_insecure_port(f"unix://{self.path}")  # binds: the file is 0600 at once
        await server.start()
        self._inode = self.path.stat().st_ino
        self._server = server
        self.service.closing = False

    def socket_intact(self) -> bool:
        """False once the kubelet (or anyone) removed or replaced our socket file."""
        try:
            return self.path.stat().st_ino == self._inode
        except FileNotFoundError:
            return False

    async def stop(self, grace: float | None = 0.5) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        await self.service.end_streams()
        await server.stop(grace)
        if self.socket_intact():
            self.path.unlink(missing_ok=True)

    async def restart(self) -> None:
        await self.stop(grace=0)
        await self.start()
