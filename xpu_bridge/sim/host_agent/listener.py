"""One serving run of a simulator: a grpc.aio server with its services, health, reflection."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from opi_protos.evpn_gw import l2_xpu_infra_mgr_pb2 as pb
from xpu_bridge.common.addresses import parse_host_port, unix_socket_path
from xpu_bridge.common.sockets import prepare_socket

BRIDGE_PORT_SERVICE = pb.DESCRIPTOR.services_by_name["BridgePortService"].full_name
LOGICAL_BRIDGE_SERVICE = pb.DESCRIPTOR.services_by_name["LogicalBridgeService"].full_name
OPI_SERVICES: tuple[str, ...] = (BRIDGE_PORT_SERVICE, LOGICAL_BRIDGE_SERVICE)

# Adds a simulator's servicers to a server that is not started yet.
AddServicers: TypeAlias = Callable[[grpc.aio.Server], None]


@dataclass(frozen=True, slots=True)
class ServerTLS:
    """TLS for the simulated agent's TCP port: PEM bytes of the server's certificate chain and
    key, and of the CA that client certificates must chain to (mutual TLS)."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None
    require_client_auth: bool = False

    def __post_init__(self) -> None:
        if self.require_client_auth and self.client_ca is None:
            raise ValueError("require_client_auth needs client_ca")

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.private_key, self.cert_chain)],
            root_certificates=self.client_ca,
            require_client_auth=self.require_client_auth,
        )


def _resolved(address: str, port: int) -> str:
    """The address clients should dial: port 0 replaced by the port actually bound."""
    if unix_socket_path(address) is not None:
        return address
    try:
        host, requested = parse_host_port(address)
    except ValueError:
        return address  # grpc bound something we cannot parse; it is what the caller gave
    if requested != 0:
        return address
    return f"[{host}]:{port}" if address.startswith("[") else f"{host}:{port}"


class Listener:
    """A started server: the address clients dial and the bound TCP port (0 for a unix
    socket); stop() ends it and removes its socket file."""

    def __init__(
        self,
        server: grpc.aio.Server,
        health_servicer: health.aio.HealthServicer,
        address: str,
        port: int,
    ) -> None:
        self._server = server
        self._health = health_servicer
        self._socket = unix_socket_path(address)
        self.address = _resolved(address, port)
        self.port = 0 if self._socket is not None else port

    @classmethod
    async def start(
        cls,
        address: str,
        add_servicers: AddServicers,
        services: Sequence[str],
        interceptor: grpc.aio.ServerInterceptor,
        tls: ServerTLS | None,
        *,
        what: str = "sim host agent",
    ) -> Listener:
        """Serve `services` (full names, for health and reflection), which `add_servicers`
        adds, on `address`; `what` names the simulator in socket errors."""
        socket = unix_socket_path(address)
        if socket is not None:
            prepare_socket(socket, what)
        server = grpc.aio.server(interceptors=[interceptor], options=[("grpc.so_reuseport", 0)])
        add_servicers(server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (*services, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        if tls is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, tls.credentials())
        await server.start()
        for service in ("", *services):
            await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
        return cls(server, health_servicer, address, port)

    async def stop(self, grace: float | None) -> None:
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace)
        if self._socket is not None:
            self._socket.unlink(missing_ok=True)
