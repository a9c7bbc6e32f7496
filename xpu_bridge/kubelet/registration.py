"""Kubelet registration: register every pool, and again whenever the kubelet forgets us."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import grpc

from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2 as dp
from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from xpu_bridge.plugin_server import PluginEndpoint

log = logging.getLogger(__name__)

API_VERSION = "v1beta1"
KUBELET_SOCKET = "kubelet.sock"
REGISTER_TIMEOUT = 5.0
STREAM_LOSS_SETTLE = 1.0


class KubeletRegistrar:
    """Watches kubelet.sock and our own sockets; a new kubelet socket means a kubelet restart.

    The kubelet deletes every socket in its directory when it restarts and never reconnects a
    lost ListAndWatch stream, so both events lead to the same cure: serve again and register.
    """

    def __init__(
        self,
        kubelet_dir: Path,
        endpoints: list[PluginEndpoint],
        poll_interval: float = 0.1,
        on_registered: Callable[[str], None] | None = None,
    ) -> None:
        self.kubelet_socket = kubelet_dir / KUBELET_SOCKET
        self.endpoints = endpoints
        self.poll_interval = poll_interval
        self.kubelet_restarts = 0
        self.last_kubelet_restart: float | None = None
        self._on_registered = on_registered
        self._known_kubelet: tuple[int, int] | None = None
        self._seen_kubelet = False
        self._pending: set[str] = {e.resource_name for e in endpoints}
        self._next_try: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._settling: set[asyncio.Task[None]] = set()

    @property
    def registered(self) -> set[str]:
        return {e.resource_name for e in self.endpoints} - self._pending

    def stream_lost(self, resource_name: str, active_streams: Callable[[], int]) -> None:
        """Re-register after a moment unless the kubelet has already opened a new stream."""

        async def settle() -> None:
            await asyncio.sleep(STREAM_LOSS_SETTLE)
            if active_streams() == 0:
                self._pending.add(resource_name)
                self._wake.set()

        task = asyncio.get_running_loop().create_task(settle())
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    def _kubelet_identity(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self.kubelet_socket)
        except OSError:
            return None
        return (stat.st_ino, stat.st_ctime_ns)

    async def run(self) -> None:
        """Runs until cancelled; a failing tick is logged and tried again, never fatal."""
        try:
            while True:
                try:
                    await self._tick()
                except Exception:
                    log.exception("registration check failed; trying again")
                    await asyncio.sleep(1.0)
                await self._wait()
        finally:
            for task in self._settling:
                task.cancel()

    async def _wait(self) -> None:
        """Until the next poll, or sooner when a lost stream asks for a registration."""
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.poll_interval)

    async def _tick(self) -> None:
        identity = self._kubelet_identity()
        if identity != self._known_kubelet:
            if identity is not None and self._seen_kubelet:
                self.kubelet_restarts += 1
                self.last_kubelet_restart = asyncio.get_running_loop().time()
                log.warning("kubelet restarted (new %s); registering again", self.kubelet_socket)
            self._known_kubelet = identity
            self._seen_kubelet = self._seen_kubelet or identity is not None
            self._pending.update(e.resource_name for e in self.endpoints)
            self._next_try.clear()
        for endpoint in self.endpoints:
            if not endpoint.socket_intact():
                log.info("socket %s is gone; serving it again", endpoint.path)
                try:
                    await endpoint.restart()
                except OSError as error:
                    log.error("cannot serve %s again: %s; retrying", endpoint.path, error)
                    continue
                self._pending.add(endpoint.resource_name)
        if identity is None or not self._pending:
            return
        channel = grpc.aio.insecure_channel(f"unix://{self.kubelet_socket}")
        try:
            await asyncio.gather(
                *(self._register(channel, e) for e in self.endpoints if self._due(e))
            )
        finally:
            await channel.close()

    def _due(self, endpoint: PluginEndpoint) -> bool:
        now = asyncio.get_running_loop().time()
        return (
            endpoint.resource_name in self._pending
            and self._next_try.get(endpoint.resource_name, 0.0) <= now
        )

    async def _register(self, channel: grpc.aio.Channel, endpoint: PluginEndpoint) -> None:
        name = endpoint.resource_name
        request = dp.RegisterRequest(
            version=API_VERSION,
            endpoint=endpoint.socket_name,
            resource_name=name,
            options=dp.DevicePluginOptions(get_preferred_allocation_available=True),
        )
        try:
            await dp_grpc.RegistrationStub(channel).Register(request, timeout=REGISTER_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            failures = self._failures.get(name, 0) + 1
            self._failures[name] = failures
            delay = min(0.2 * 2 ** (failures - 1), 10.0)
            self._next_try[name] = asyncio.get_running_loop().time() + delay
            log.error(
                "registering %s with the kubelet at %s failed: %s: %s; retrying in %.1fs",
                name,
                self.kubelet_socket,
                error.code().name,
                error.details(),
                delay,
            )
            return
        self._failures.pop(name, None)
        self._pending.discard(name)
        log.info("registered %s with the kubelet (endpoint %s)", name, endpoint.socket_name)
        if self._on_registered is not None:
            self._on_registered(name)
