"""Kubelet registration: register every pool, and again whenever the kubelet forgets us."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from pathlib import Path

import grpc

from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2 as dp
from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from xpu_bridge.common.errors import grpc_status_text
from xpu_bridge.common.loops import keep_running, loop_time
from xpu_bridge.kubelet.endpoint import PluginEndpoint
from xpu_bridge.kubelet.instance_lock import InstanceLock
from xpu_bridge.kubelet.kubelet_socket import KubeletSocketWatch

log = logging.getLogger(__name__)

API_VERSION = "v1beta1"
REGISTER_TIMEOUT = 5.0
STREAM_LOSS_SETTLE = 1.0


class RegisterBackoff:
    """Per resource: a failed Register waits 0.2 s, doubling up to 10 s, before the next."""

    def __init__(self) -> None:
        self._next_try: dict[str, float] = {}
        self._failures: dict[str, int] = {}

    def due(self, resource: str) -> bool:
        return self._next_try.get(resource, 0.0) <= loop_time()

    def failed(self, resource: str) -> float:
        failures = self._failures.get(resource, 0) + 1
        self._failures[resource] = failures
        delay = min(0.2 * 2.0 ** (failures - 1), 10.0)
        self._next_try[resource] = loop_time() + delay
        return delay

    def succeeded(self, resource: str) -> None:
        self._failures.pop(resource, None)

    def clear(self) -> None:
        """A new kubelet: try everything at once."""
        self._next_try.clear()


class KubeletRegistrar:
    """Watches kubelet.sock and our own sockets; a new kubelet socket means a kubelet restart.

    The kubelet deletes every socket in its directory when it restarts and never reconnects a
    lost ListAndWatch stream, so both events lead to the same cure: serve again and register.
    It sets each endpoint's service to tell it when its stream is lost.
    """

    def __init__(
        self,
        kubelet_dir: Path,
        endpoints: list[PluginEndpoint],
        poll_interval: float = 0.1,
        on_registered: Callable[[str], None] | None = None,
        lock: InstanceLock | None = None,
    ) -> None:
        """`lock` is the kubelet directory's instance lock, held until close()."""
        self.kubelet = KubeletSocketWatch(kubelet_dir)
        self.endpoints = endpoints
        self.poll_interval = poll_interval
        self._on_registered = on_registered
        self._pending: set[str] = {e.resource_name for e in endpoints}
        self._backoff = RegisterBackoff()
        self._lock = lock
        self._wake = asyncio.Event()
        self._settling: set[asyncio.Task[None]] = set()
        self._serving = asyncio.Lock()
        """Held while sockets are served again, and while an endpoint is added or removed."""
        for endpoint in endpoints:
            endpoint.service.on_stream_lost = functools.partial(self.stream_lost, endpoint)

    async def add(self, endpoint: PluginEndpoint) -> None:
        """A pool a config reload added (or gave back): serve it and register it soon. A
        socket that cannot be served now is served again by the next tick, as after a loss."""
        async with self._serving:
            endpoint.service.on_stream_lost = functools.partial(self.stream_lost, endpoint)
            self.endpoints.append(endpoint)
            self._pending.add(endpoint.resource_name)
            self._backoff.succeeded(endpoint.resource_name)
            try:
                await endpoint.start()
            except OSError as error:
                log.error("cannot serve %s: %s; retrying", endpoint.path, error)
        self._wake.set()

    async def remove(self, resource: str) -> PluginEndpoint | None:
        """A pool a config reload removed: its streams end and its socket goes, which is how
        the kubelet learns that the resource is gone."""
        async with self._serving:
            endpoint = next((e for e in self.endpoints if e.resource_name == resource), None)
            if endpoint is None:
                return None
            self.endpoints.remove(endpoint)
            self._pending.discard(resource)
            await endpoint.stop(grace=0.5)
        log.info("stopped serving %s (socket %s removed)", resource, endpoint.path)
        return endpoint

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()

    @property
    def kubelet_socket(self) -> Path:
        return self.kubelet.path

    @property
    def kubelet_restarts(self) -> int:
        return self.kubelet.restarts

    @property
    def last_kubelet_restart(self) -> float | None:
        return self.kubelet.last_restart

    @property
    def registered(self) -> set[str]:
        return {e.resource_name for e in self.endpoints} - self._pending

    def stream_lost(self, endpoint: PluginEndpoint) -> None:
        """Re-register after a moment unless the kubelet has already opened a new stream."""

        async def settle() -> None:
            await asyncio.sleep(STREAM_LOSS_SETTLE)
            if endpoint.service.active_streams == 0:
                self._pending.add(endpoint.resource_name)
                self._wake.set()

        task = asyncio.get_running_loop().create_task(settle())
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def run(self) -> None:
        """Runs until cancelled; a failing tick is logged and tried again, never fatal."""
        try:
            await keep_running(
                "registration check", self._tick, self._wait, step_first=True, after_failure=1.0
            )
        finally:
            for task in self._settling:
                task.cancel()

    async def _wait(self) -> None:
        """Until the next poll, or sooner when a lost stream asks for a registration."""
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.poll_interval)

    async def _tick(self) -> None:
        if self.kubelet.changed():
            self._pending.update(e.resource_name for e in self.endpoints)
            self._backoff.clear()
        async with self._serving:
            for endpoint in self.endpoints:
                if not endpoint.socket_intact():
                    log.info("socket %s is gone; serving it again", endpoint.path)
                    try:
                        await endpoint.restart()
                    except OSError as error:
                        log.error("cannot serve %s again: %s; retrying", endpoint.path, error)
                        continue
                    self._pending.add(endpoint.resource_name)
        if not self.kubelet.present():
            self.kubelet.warn_while_missing()
            return
        if not self._pending:
            return
        channel = grpc.aio.insecure_channel(f"unix://{self.kubelet_socket}")
        try:
            await asyncio.gather(
                *(self._register(channel, e) for e in list(self.endpoints) if self._due(e))
            )
        finally:
            await channel.close()

    def _due(self, endpoint: PluginEndpoint) -> bool:
        return endpoint.resource_name in self._pending and self._backoff.due(endpoint.resource_name)

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
            delay = self._backoff.failed(name)
            log.error(
                "registering %s with the kubelet at %s failed: %s; retrying in %.1fs",
                name,
                self.kubelet_socket,
                grpc_status_text(error),
                delay,
            )
            return
        self._backoff.succeeded(name)
        self._pending.discard(name)
        if endpoint not in self.endpoints:  # removed by a reload while it registered
            return
        log.info("registered %s with the kubelet (endpoint %s)", name, endpoint.socket_name)
        if self._on_registered is not None:
            self._on_registered(name)
