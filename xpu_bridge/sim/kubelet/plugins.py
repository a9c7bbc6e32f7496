"""Plugin endpoints: Register, dial-back and ListAndWatch, feeding the kubelet's device state.

Follows pkg/kubelet/cm/devicemanager/plugin/v1beta1/ (server and client) and endpoint.go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
import time
from collections.abc import Coroutine
from dataclasses import dataclass

import grpc

from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2 as dp
from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc

from .changes import Changes
from .devices import DeviceState
from .model import EndpointView, RegistrationRecord
from .rules import API_VERSION, go_status_error, is_extended_resource_name

log = logging.getLogger(__name__)


class _RegisterError(Exception):
    """Register failed; the message goes back to the plugin as an UNKNOWN status."""


@dataclass
class _Endpoint:
    resource: str
    socket_path: str
    channel: grpc.aio.Channel
    stub: dp_grpc.DevicePluginAsyncStub
    options: dp.DevicePluginOptions
    task: asyncio.Task[None] | None = None
    stopped: bool = False


class _RegistrationServicer(dp_grpc.RegistrationServicer):
    def __init__(self, plugins: PluginRegistry) -> None:
        self._plugins = plugins

    async def Register(
        self,
        request: dp.RegisterRequest,
        context: grpc.aio.ServicerContext[dp.RegisterRequest, dp.Empty],
    ) -> dp.Empty:
        try:
            await self._plugins.register(request)
        except _RegisterError as err:
            await context.abort(grpc.StatusCode.UNKNOWN, str(err))
        return dp.Empty()


class PluginRegistry:
    """Every Register call, and the one live endpoint per resource that ListAndWatch runs on."""

    def __init__(
        self,
        kubelet_dir: str,
        devices: DeviceState,
        changes: Changes,
        *,
        dial_timeout: float,
        dial_back_in_background: bool,
    ) -> None:
        self.kubelet_dir = kubelet_dir
        self.dial_timeout = dial_timeout
        self.dial_back_in_background = dial_back_in_background
        self.registrations: list[RegistrationRecord] = []
        self.generation = 0  # bumped by every restart()
        self._endpoints: dict[str, _Endpoint] = {}
        self._devices = devices
        self._changes = changes
        self._background: set[asyncio.Task[None]] = set()

    def servicer(self) -> dp_grpc.RegistrationServicer:
        return _RegistrationServicer(self)

    def endpoint(self, resource: str) -> _Endpoint | None:
        return self._endpoints.get(resource)

    def resources(self) -> list[str]:
        """Resources with a connected plugin, sorted."""
        return sorted(self._endpoints)

    def view(self, resource: str) -> EndpointView | None:
        ep = self._endpoints.get(resource)
        if ep is None:
            return None
        return EndpointView(ep.resource, ep.socket_path, ep.options, ep.stopped)

    # ------------------------------------------------------------ lifecycle

    async def restart(self) -> None:
        """Every plugin loses its connection; registrations still under way are refused."""
        await self.disconnect_all()
        self.generation += 1

    async def close(self) -> None:
        """Disconnect every plugin and end every background task (dial-backs included)."""
        await self.disconnect_all()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    async def disconnect_all(self) -> None:
        endpoints = list(self._endpoints.values())
        self._endpoints.clear()
        for ep in endpoints:
            await self._close_endpoint(ep)

    async def drop_stream(self, resource: str) -> None:
        """The connection to a plugin broke: its ListAndWatch ends and, as upstream, the
        kubelet marks the resource unhealthy and waits for the plugin to register again."""
        ep = self._endpoints.get(resource)
        if ep is None:
            raise KeyError(resource)
        await self._close_endpoint(ep)

    # ------------------------------------------------------------ registration

    async def register(self, request: dp.RegisterRequest) -> None:
        """server.Register: validate, then connect (now or in the background)."""
        record = RegistrationRecord(
            resource_name=request.resource_name,
            endpoint=request.endpoint,
            version=request.version,
            options=request.options,
            at=time.monotonic(),
            generation=self.generation,
        )
        self.registrations.append(record)
        try:
            self._validate_registration(request)
        except _RegisterError as err:
            record.error = str(err)
            self._changes.notify()
            raise
        record.accepted = True
        if self.dial_back_in_background:
            self._spawn(self._connect_quietly(record))
            self._changes.notify()
            return
        await self._connect(record)

    @staticmethod
    def _validate_registration(request: dp.RegisterRequest) -> None:
        if request.version != API_VERSION:
            raise _RegisterError(
                f'requested API version "{request.version}" is not supported by kubelet. '
                f'Supported version is ["{API_VERSION}"]'
            )
        if not is_extended_resource_name(request.resource_name):
            raise _RegisterError(f'the ResourceName "{request.resource_name}" is invalid')

    async def _connect_quietly(self, record: RegistrationRecord) -> None:
        """Background dial-back of old kubelets: failures are only logged."""
        with contextlib.suppress(_RegisterError):
            await self._connect(record)

    async def _connect(self, record: RegistrationRecord) -> None:
        """client.Connect + PluginConnected, then run ListAndWatch in the background."""
        socket_path = posixpath.normpath(f"{self.kubelet_dir}/{record.endpoint}")
        generation = self.generation
        try:
            channel, options = await self._dial(socket_path)
        except _RegisterError as err:
            record.error = str(err)
            log.warning("sim kubelet: %s: %s", record.resource_name, err)
            self._changes.notify()
            raise
        ep = _Endpoint(
            resource=record.resource_name,
            socket_path=socket_path,
            channel=channel,
            stub=dp_grpc.DevicePluginStub(channel),
            options=options,
        )
        if generation != self.generation:  # kubelet restarted meanwhile
            await channel.close()
            raise _RegisterError("kubelet restarted during registration")
        old = self._endpoints.get(ep.resource)
        self._endpoints[ep.resource] = ep
        self._devices.add_resource(ep.resource)
        ep.task = self._spawn(self._watch(ep))
        record.connected = True
        self._changes.notify()
        if old is not None:
            await self._close_endpoint(old)

    async def _dial(self, socket_path: str) -> tuple[grpc.aio.Channel, dp.DevicePluginOptions]:
        """Blocking dial with the kubelet's 10 s timeout, then GetDevicePluginOptions."""
        channel = grpc.aio.insecure_channel(f"unix:{socket_path}")
        try:
            return channel, await self._handshake(channel)
        except BaseException:  # also when a restart cancels the Register call
            await channel.close()
            raise

    async def _handshake(self, channel: grpc.aio.Channel) -> dp.DevicePluginOptions:
        try:
            await asyncio.wait_for(channel.channel_ready(), self.dial_timeout)
        except TimeoutError:
            raise _RegisterError(
                "failed to dial device plugin: context deadline exceeded"
            ) from None
        try:
            return await dp_grpc.DevicePluginStub(channel).GetDevicePluginOptions(dp.Empty())
        except grpc.aio.AioRpcError as err:
            raise _RegisterError(
                f"failed to get device plugin options: {go_status_error(err)}"
            ) from None

    # ------------------------------------------------------------ ListAndWatch

    async def _watch(self, ep: _Endpoint) -> None:
        """client.Run: every message replaces the device set; when the stream ends the
        resource turns unhealthy and nothing reconnects."""
        try:
            async for response in ep.stub.ListAndWatch(dp.Empty()):
                if self._endpoints.get(ep.resource) is not ep:
                    return
                self._devices.replace(ep.resource, response.devices)
                self._changes.notify()
        except grpc.aio.AioRpcError as err:
            log.info("sim kubelet: ListAndWatch of %s ended: %s", ep.resource, err.code())
        finally:
            if self._endpoints.get(ep.resource) is ep:
                ep.stopped = True
                self._devices.mark_unhealthy(ep.resource)
                log.info("sim kubelet: %s marked unhealthy", ep.resource)
                self._changes.notify()

    @staticmethod
    async def _close_endpoint(ep: _Endpoint) -> None:
        if ep.task is not None:
            ep.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ep.task
        await ep.channel.close()

    def _spawn(self, coro: Coroutine[object, object, None]) -> asyncio.Task[None]:
        """Keep a reference to background tasks so they are not garbage-collected."""
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task
