"""SimKubelet: composes the parts, serves both sockets, and stops and restarts like a kubelet."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc

from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from opi_protos.kubelet.podresources.v1 import api_pb2_grpc as pr_grpc
from xpu_bridge.common.sockets import MAX_SOCKET_PATH, prepare_socket

from .admission import Admission
from .changes import Changes
from .devices import DeviceState
from .model import (
    Assignment,
    Container,
    DeviceView,
    EndpointView,
    PluginCall,
    PodView,
    RegistrationRecord,
)
from .plugins import PluginRegistry
from .podresources import PodResourcesLister
from .pods import PodTable
from .rules import KUBELET_SOCKET

log = logging.getLogger(__name__)


class SimKubelet:
    """A kubelet's device manager and PodResources server, on real unix sockets."""

    def __init__(
        self,
        kubelet_dir: str | os.PathLike[str],
        pod_resources_socket: str | os.PathLike[str],
        *,
        dial_timeout: float = 10.0,
        dial_back_in_background: bool = False,
        terminated_pod_linger: float = 0.0,
        pod_resources_get_enabled: bool = True,
    ) -> None:
        """dial_back_in_background=True mimics kubelets <= 1.25 (Register returns before the
        dial-back); the default mimics current ones (Register returns after it)."""
        kubelet_dir = os.path.abspath(os.fspath(kubelet_dir))
        self.socket_path = _check_socket_path(os.path.join(kubelet_dir, KUBELET_SOCKET))
        self.pod_resources_socket = _check_socket_path(
            os.path.abspath(os.fspath(pod_resources_socket))
        )
        self._changes = Changes()
        self._devices = DeviceState()
        self._pods = PodTable(terminated_pod_linger)
        self._plugins = PluginRegistry(
            kubelet_dir,
            self._devices,
            self._changes,
            dial_timeout=dial_timeout,
            dial_back_in_background=dial_back_in_background,
        )
        self._admission = Admission(self._pods, self._devices, self._plugins, self._changes)
        self._pod_resources = PodResourcesLister(
            self._pods, self._devices, get_enabled=pod_resources_get_enabled
        )
        self._servers: list[grpc.aio.Server] = []

    # ------------------------------------------------------------ settings and records

    @property
    def kubelet_dir(self) -> str:
        return self._plugins.kubelet_dir

    @property
    def dial_timeout(self) -> float:
        return self._plugins.dial_timeout

    @dial_timeout.setter
    def dial_timeout(self, value: float) -> None:
        self._plugins.dial_timeout = value

    @property
    def dial_back_in_background(self) -> bool:
        return self._plugins.dial_back_in_background

    @dial_back_in_background.setter
    def dial_back_in_background(self, value: bool) -> None:
        self._plugins.dial_back_in_background = value

    @property
    def terminated_pod_linger(self) -> float:
        return self._pods.terminated_pod_linger

    @terminated_pod_linger.setter
    def terminated_pod_linger(self, value: float) -> None:
        self._pods.terminated_pod_linger = value

    @property
    def pod_resources_get_enabled(self) -> bool:
        return self._pod_resources.get_enabled

    @pod_resources_get_enabled.setter
    def pod_resources_get_enabled(self, value: bool) -> None:
        self._pod_resources.get_enabled = value

    @property
    def registrations(self) -> list[RegistrationRecord]:
        return self._plugins.registrations

    @property
    def plugin_calls(self) -> list[PluginCall]:
        return self._admission.plugin_calls

    @property
    def generation(self) -> int:
        """Bumped by every restart()."""
        return self._plugins.generation

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Clean stale sockets like the device manager does, then serve both sockets."""
        os.makedirs(self.kubelet_dir, exist_ok=True)
        _remove_sockets(self.kubelet_dir)
        await self._serve()

    async def stop(self) -> None:
        """Stop serving and drop every plugin connection; gRPC unlinks the kubelet's own
        sockets, plugin sockets stay."""
        await self._stop_servers()
        await self._plugins.close()

    async def restart(self, pod_resources_empty_for: float = 0.0) -> None:
        """A kubelet restart: plugins lose their connection and their sockets, kubelet.sock
        is re-created, device state is forgotten until plugins register again, assignments
        of running pods survive (checkpoint), and List may be empty for a while."""
        await self._stop_servers()
        await self._plugins.restart()
        self._devices.forget()
        for path in _remove_sockets(self.kubelet_dir):
            log.info("sim kubelet restart removed socket %s", path)
        self._pod_resources.empty_for(pod_resources_empty_for)
        await self._serve()
        self._changes.notify()

    async def _serve(self) -> None:
        registration = grpc.aio.server()
        dp_grpc.add_RegistrationServicer_to_server(self._plugins.servicer(), registration)
        registration.add_insecure_port(f"unix:{self.socket_path}")
        await registration.start()
        self._servers.append(registration)

        prepare_socket(Path(self.pod_resources_socket), "sim kubelet PodResources socket")
        pod_resources = grpc.aio.server()
        pr_grpc.add_PodResourcesListerServicer_to_server(self._pod_resources, pod_resources)
        pod_resources.add_insecure_port(f"unix:{self.pod_resources_socket}")
        await pod_resources.start()
        self._servers.append(pod_resources)

    async def _stop_servers(self) -> None:
        for server in self._servers:
            await server.stop(grace=None)
        self._servers.clear()

    # ------------------------------------------------------------ pods and plugins

    async def admit_pod(
        self,
        name: str,
        namespace: str = "default",
        containers: Sequence[Container] = (),
        init_containers: Sequence[Container] = (),
    ) -> list[Assignment]:
        """Admit a pod container by container, as the device manager does; pods are admitted
        one at a time, so a slow Allocate delays every pod. Raises AdmissionError."""
        return await self._admission.admit_pod(name, namespace, containers, init_containers)

    def delete_pod(
        self, name: str, namespace: str = "default", linger: float | None = None
    ) -> None:
        """The pod terminated: its devices are free at once, but PodResources may keep
        listing it for `linger` seconds (default: terminated_pod_linger)."""
        self._pods.delete(name, namespace, linger)
        self._changes.notify()

    async def drop_stream(self, resource: str) -> None:
        """The connection to a plugin broke: its ListAndWatch ends and, as upstream, the
        kubelet marks the resource unhealthy and waits for the plugin to register again."""
        await self._plugins.drop_stream(resource)

    # ------------------------------------------------------------ observability

    def devices(self, resource: str) -> list[DeviceView]:
        """The device list of a resource as the kubelet last saw it, sorted by ID."""
        return self._devices.views(resource)

    def endpoint(self, resource: str) -> EndpointView | None:
        return self._plugins.view(resource)

    def resources(self) -> list[str]:
        """Resources whose plugin is connected now (registered and dialled back), sorted."""
        return self._plugins.resources()

    def pods(self) -> list[PodView]:
        """Every pod PodResources would list (deleted ones while they linger)."""
        return self._pods.views()

    def assignments(self, namespace: str | None = None, pod: str | None = None) -> list[Assignment]:
        """Devices recorded for containers of active pods (after Allocate returned)."""
        return self._pods.assignments(namespace, pod)

    def calls(self, method: str | None = None, resource: str | None = None) -> list[PluginCall]:
        return self._admission.calls(method, resource)

    async def wait_for_devices(
        self,
        resource: str,
        predicate: Callable[[list[DeviceView]], bool] = bool,
        timeout: float = 10.0,
    ) -> list[DeviceView]:
        """Wait until predicate(devices(resource)) holds (default: any device known)."""

        def check() -> list[DeviceView] | None:
            devices = self.devices(resource)
            return devices if predicate(devices) else None

        return await self._changes.wait(check, timeout, f"devices of {resource}")

    async def wait_registered(
        self, resource: str, after: float = 0.0, timeout: float = 10.0
    ) -> RegistrationRecord:
        """Wait for a registration of resource that arrived at or after `after` (monotonic)
        and whose dial-back succeeded."""

        def check() -> RegistrationRecord | None:
            for record in reversed(self.registrations):
                if record.resource_name == resource and record.at >= after and record.connected:
                    return record
            return None

        return await self._changes.wait(check, timeout, f"registration of {resource}")


def _check_socket_path(path: str) -> str:
    """A path too long for sun_path fails only in bind(); catch it early with a clear error."""
    if len(path) > MAX_SOCKET_PATH:
        raise ValueError(f"unix socket path too long ({len(path)} > {MAX_SOCKET_PATH}): {path}")
    return path


def _remove_sockets(directory: str) -> list[str]:
    """CleanupPluginDirectory: delete every socket (not files, not dirs) directly in directory."""
    removed: list[str] = []
    for entry in os.scandir(directory):
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(entry.stat(follow_symlinks=True).st_mode):
                os.unlink(entry.path)
                removed.append(entry.path)
    return removed
