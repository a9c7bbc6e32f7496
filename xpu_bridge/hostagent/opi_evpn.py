"""OPI host agent client: ensures, lists and deletes bridge ports with deadlines and retries."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
from google.protobuf.message import Message
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_before_delay,
    wait_random_exponential,
)

from opi_protos.evpn_gw import component_pb2
from opi_protos.evpn_gw import l2_xpu_infra_mgr_pb2 as pb
from opi_protos.evpn_gw import l2_xpu_infra_mgr_pb2_grpc as pb_grpc
from xpu_bridge.config import ConfigError, HostAgentConfig, TLSConfig
from xpu_bridge.identity import port_id_from_name
from xpu_bridge.ports import Attachment, OperStatus, PortError, PortSpec, PortState, PortType

log = logging.getLogger(__name__)

TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)
REFUSED = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
    }
)
PTYPE_TO_WIRE = {"access": pb.BRIDGE_PORT_TYPE_ACCESS, "trunk": pb.BRIDGE_PORT_TYPE_TRUNK}
PTYPE_FROM_WIRE: dict[int, PortType] = {v: k for k, v in PTYPE_TO_WIRE.items()}  # type: ignore[misc]
LIST_PAGE_SIZE = 250
POLL_FIRST = 0.001
POLL_MAX = 0.05

Reply = TypeVar("Reply", bound=Message)
RequestObserver = Callable[[str, str, float], None]


def _poll_delays() -> Iterator[float]:
    """Ask again at once (a fast agent is UP by then), then back off to POLL_MAX."""
    yield 0.0
    delay = POLL_FIRST
    while True:
        yield delay
        delay = min(delay * 2, POLL_MAX)


def _transient(error: BaseException) -> bool:
    return isinstance(error, grpc.aio.AioRpcError) and error.code() in TRANSIENT


def _describe(error: grpc.aio.AioRpcError) -> str:
    return f"{error.code().name}: {error.details() or 'no details'}"


def port_state(port: pb.BridgePort) -> PortState:
    status = port.status
    errors = tuple(
        f"{c.name}: {c.details or 'error'}"
        for c in status.components
        if c.status == component_pb2.COMP_STATUS_ERROR
    )
    return PortState(
        name=port.name,
        port_id=port_id_from_name(port.name),
        mac=bytes(port.spec.mac_address),
        ptype=PTYPE_FROM_WIRE.get(port.spec.ptype),
        logical_bridges=tuple(port.spec.logical_bridges),
        oper=OperStatus(status.oper_status)
        if status.oper_status in (0, 1, 2, 3)
        else OperStatus.UNSPECIFIED,
        component_errors=errors,
    )


@dataclass(frozen=True, slots=True)
class _Budget:
    """Absolute deadline on the event loop clock shared by every call of one operation."""

    deadline: float

    def remaining(self) -> float:
        return self.deadline - asyncio.get_running_loop().time()


def _read_pem(field: str, path: Path) -> bytes:
    """One `hostAgent.tls` file; a ConfigError naming the field and the file if it is unusable."""
    where = f"hostAgent.tls.{field}"
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError([f"{where}: cannot read {path}: {error.strerror or error}"]) from None
    if b"-----BEGIN " not in data:
        raise ConfigError([f"{where}: {path} is not PEM (no -----BEGIN line)"])
    return data


def tls_credentials(tls: TLSConfig) -> grpc.ChannelCredentials:
    """Server verified against caFile; client certificate (mutual TLS) when certFile is given.
    The files are read once, here: a rotated certificate needs a restart."""
    ca = _read_pem("caFile", tls.ca_file)
    cert = _read_pem("certFile", tls.cert_file) if tls.cert_file is not None else None
    key = _read_pem("keyFile", tls.key_file) if tls.key_file is not None else None
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


def channel_for(config: HostAgentConfig) -> grpc.aio.Channel:
    """Raises ConfigError (one line per problem) when a TLS file cannot be used."""
    options = [("grpc.enable_retries", 0), ("grpc.keepalive_time_ms", 30_000)]
    if config.tls is None:
        return grpc.aio.insecure_channel(config.endpoint, options=options)
    credentials = tls_credentials(config.tls)
    return grpc.aio.secure_channel(config.endpoint, credentials, options=options)


class BridgePortClient:
    """Talks BridgePortService/LogicalBridgeService; one channel for the daemon's lifetime."""

    def __init__(
        self,
        config: HostAgentConfig,
        channel: grpc.aio.Channel | None = None,
        observer: RequestObserver | None = None,
    ) -> None:
        self._config = config
        self._channel = channel or channel_for(config)
        self._ports = pb_grpc.BridgePortServiceStub(self._channel)
        self._bridges = pb_grpc.LogicalBridgeServiceStub(self._channel)
        self._observer = observer

    @property
    def endpoint(self) -> str:
        return self._config.endpoint

    @property
    def attach_timeout(self) -> float:
        return self._config.attach_timeout_seconds

    async def close(self) -> None:
        await self._channel.close()

    def _budget(self, seconds: float | None = None) -> _Budget:
        total = self._config.attach_timeout_seconds if seconds is None else seconds
        return _Budget(asyncio.get_running_loop().time() + total)

    async def _call(
        self, method: str, rpc: Callable[..., Awaitable[Reply]], request: Message, budget: _Budget
    ) -> Reply:
        """One RPC, retried on transient codes with jittered backoff, never past the budget.

        The first attempt goes straight out: Allocate sits inside pod admission, and the retry
        machinery is only worth its cost once something failed.
        """
        try:
            return await self._once(method, rpc, request, budget)
        except grpc.aio.AioRpcError as error:
            if not _transient(error):
                raise
        retrying = AsyncRetrying(
            retry=retry_if_exception(_transient),
            wait=wait_random_exponential(multiplier=0.02, max=1.0),
            stop=stop_before_delay(max(budget.remaining(), 0.0)),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._once(method, rpc, request, budget)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(
        self, method: str, rpc: Callable[..., Awaitable[Reply]], request: Message, budget: _Budget
    ) -> Reply:
        timeout = min(self._config.rpc_timeout_seconds, budget.remaining())
        if timeout <= 0:
            raise PortError(f"no time left for {method} at {self.endpoint}", unreachable=True)
        loop = asyncio.get_running_loop()
        started = loop.time()
        code = "OK"
        try:
            return await rpc(request, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            code = error.code().name
            raise
        finally:
            if self._observer is not None:
                self._observer(method, code, loop.time() - started)

    def _fail(self, what: str, error: grpc.aio.AioRpcError) -> PortError:
        """The message names the call, the agent's answer, and what the operator can check."""
        unreachable = error.code() in TRANSIENT
        if unreachable:
            hint = f"is the OPI host agent running and reachable at {self.endpoint}?"
        elif error.code() in REFUSED:
            hint = "the agent refused it: check resourceList[].bridgePort against its bridges"
        else:
            hint = "see the host agent's log"
        where = f" at {self.endpoint}" if unreachable else ""
        return PortError(
            f"{what} failed{where}: {_describe(error)} ({hint})", unreachable=unreachable
        )

    async def ensure_port(self, spec: PortSpec) -> Attachment:
        """Create (idempotent) or reuse the port, replace a mismatching one, wait until UP."""
        budget = self._budget()
        created = False
        replaced = False
        while True:
            state = await self._create(spec, budget)
            if state.oper is OperStatus.TO_BE_DELETED:
                await self._wait_gone(state, budget)
                continue
            if not state.matches(spec):
                if replaced:
                    raise PortError(f"port {spec.port_id} keeps a different spec after replace")
                log.warning("port %s has a different spec on the xPU; replacing it", state.name)
                await self.delete_port(state.name, budget)
                await self._wait_gone(state, budget)
                replaced = True
                continue
            created = created or state.oper is not OperStatus.UP
            if state.oper is not OperStatus.UP:
                state = await self._wait_up(state, budget)
            return Attachment(state, created)

    async def _create(self, spec: PortSpec, budget: _Budget) -> PortState:
        request = pb.CreateBridgePortRequest(
            bridge_port_id=spec.port_id,
            bridge_port=pb.BridgePort(
                spec=pb.BridgePortSpec(
                    mac_address=spec.mac,
                    ptype=PTYPE_TO_WIRE[spec.ptype],
                    logical_bridges=list(spec.logical_bridges),
                )
            ),
        )
        try:
            reply = await self._call(
                "CreateBridgePort", self._ports.CreateBridgePort, request, budget
            )
        except grpc.aio.AioRpcError as error:
            raise self._fail(f"CreateBridgePort {spec.port_id}", error) from None
        return port_state(reply)

    async def get_port(self, name: str, budget: _Budget | None = None) -> PortState | None:
        """The port, or None when the agent says NOT_FOUND."""
        request = pb.GetBridgePortRequest(name=name)
        try:
            reply = await self._call(
                "GetBridgePort", self._ports.GetBridgePort, request, budget or self._budget()
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise self._fail(f"GetBridgePort {name}", error) from None
        return port_state(reply)

    async def _poll(
        self, state: PortState, budget: _Budget, done: Callable[[PortState | None], bool]
    ) -> PortState | None:
        delays = _poll_delays()
        current: PortState | None = state
        while not done(current):
            delay = next(delays)
            if current is not None and current.component_errors:
                raise PortError(
                    f"port {state.port_id} failed on the xPU: {'; '.join(current.component_errors)}"
                )
            if budget.remaining() <= delay:
                status = "gone" if current is None else current.oper.name
                raise PortError(
                    f"port {state.port_id} still {status} after "
                    f"{self._config.attach_timeout_seconds:g}s (hostAgent.attachTimeoutSeconds)"
                )
            await asyncio.sleep(delay)
            current = await self.get_port(state.name, budget)
        return current

    async def _wait_up(self, state: PortState, budget: _Budget) -> PortState:
        def up(current: PortState | None) -> bool:
            if current is None:
                raise PortError(f"port {state.port_id} vanished while coming UP")
            return current.oper is OperStatus.UP

        result = await self._poll(state, budget, up)
        assert result is not None
        return result

    async def _wait_gone(self, state: PortState, budget: _Budget) -> None:
        await self._poll(state, budget, lambda current: current is None)

    async def delete_port(self, name: str, budget: _Budget | None = None) -> None:
        """Delete with allow_missing: a port that is already gone is not an error."""
        request = pb.DeleteBridgePortRequest(name=name, allow_missing=True)
        try:
            await self._call(
                "DeleteBridgePort", self._ports.DeleteBridgePort, request, budget or self._budget()
            )
        except grpc.aio.AioRpcError as error:
            raise self._fail(f"DeleteBridgePort {name}", error) from None

    async def list_ports(self, seconds: float | None = None) -> list[PortState]:
        """Every port on the agent, all pages, within `seconds` (default: the attach budget)."""
        budget = self._budget(seconds)
        ports: list[PortState] = []
        token = ""
        while True:
            request = pb.ListBridgePortsRequest(page_size=LIST_PAGE_SIZE, page_token=token)
            try:
                reply = await self._call(
                    "ListBridgePorts", self._ports.ListBridgePorts, request, budget
                )
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND and not token:
                    return []  # opi-evpn-bridge answers NOT_FOUND until its first port exists
                raise self._fail("ListBridgePorts", error) from None
            ports.extend(port_state(port) for port in reply.bridge_ports)
            token = reply.next_page_token
            if not token:
                return ports

    async def missing_logical_bridges(self, names: list[str]) -> list[str]:
        """The configured logical bridges the agent does not know."""
        budget = self._budget()
        missing = []
        for name in names:
            request = pb.GetLogicalBridgeRequest(name=name)
            try:
                await self._call(
                    "GetLogicalBridge", self._bridges.GetLogicalBridge, request, budget
                )
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise self._fail(f"GetLogicalBridge {name}", error) from None
                missing.append(name)
        return missing
