"""Simulated OPI host agent: an in-memory opi-evpn-bridge look-alike (BridgePortService,
LogicalBridgeService, health, reflection) with run-time fault injection, for tests and
`xpu-bridge sim-agent`.

Behaviour follows upstream opiproject/opi-evpn-bridge (pkg/port, pkg/bridge, pkg/infradb,
pkg/utils) and einride/aip-go (fieldbehavior, resourceid, resourcename): status codes and
messages are copied so that a client tested here survives the real server.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import inspect
import logging
import math
import random
import stat
import string
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf import empty_pb2, field_mask_pb2
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from opi_protos.evpn_gw import component_pb2
from opi_protos.evpn_gw import l2_xpu_infra_mgr_pb2 as pb
from opi_protos.evpn_gw import l2_xpu_infra_mgr_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

PORT_PREFIX = "//network.opiproject.org/ports/"
BRIDGE_PREFIX = "//network.opiproject.org/bridges/"
DEFAULT_UP_DELAY = 0.02
DEFAULT_DELETE_DELAY = 0.02
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 250
# Subscriber names of upstream's config-intel-e2000.yaml for each object kind.
PORT_COMPONENTS: tuple[str, ...] = ("lvm",)
BRIDGE_COMPONENTS: tuple[str, ...] = ("lgm",)
ALL_METHODS = "*"
BRIDGE_PORT_SERVICE = pb.DESCRIPTOR.services_by_name["BridgePortService"].full_name
LOGICAL_BRIDGE_SERVICE = pb.DESCRIPTOR.services_by_name["LogicalBridgeService"].full_name
OPI_SERVICES: tuple[str, ...] = (BRIDGE_PORT_SERVICE, LOGICAL_BRIDGE_SERVICE)
_MAX_TOKENS = 10_000
_MAX_UNIX_PATH = 107
_ID_CHARS = frozenset(string.ascii_lowercase + string.digits + "-")
_HEX = frozenset(string.hexdigits)
_UUID_DASHES = (8, 13, 18, 23)

M = TypeVar("M", bound=Message)
Req = TypeVar("Req")
Resp = TypeVar("Resp")


class AgentError(Exception):
    """A gRPC status the agent answers with; domain code raises it, the servicer aborts with it."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _unknown(message: str) -> AgentError:
    """Upstream returns plain Go errors for these, which gRPC sends as UNKNOWN."""
    return AgentError(grpc.StatusCode.UNKNOWN, message)


def _invalid(message: str) -> AgentError:
    return AgentError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _not_found(message: str) -> AgentError:
    return AgentError(grpc.StatusCode.NOT_FOUND, message)


def _clone(msg: M) -> M:
    """Hand out copies so callers can never mutate the agent's state."""
    copy = type(msg)()
    copy.CopyFrom(msg)
    return copy


# --- names and validation (einride/aip-go semantics) -------------------------------------


def port_name(port: str) -> str:
    """Full resource name of a port given its ID or full name."""
    return port if port.startswith(PORT_PREFIX) else PORT_PREFIX + port


def bridge_name(bridge: str) -> str:
    """Full resource name of a logical bridge given its ID or full name."""
    return bridge if bridge.startswith(BRIDGE_PREFIX) else BRIDGE_PREFIX + bridge


def resource_id(name: str) -> str:
    """Last path segment: clients match on it, as DESIGN.md says."""
    return name.rsplit("/", 1)[-1]


def _looks_like_uuid(text: str) -> bool:
    """The forms google/uuid.Parse accepts that an ID made of [a-z0-9-] could take."""
    if len(text) == 36:
        return all(text[i] == "-" for i in _UUID_DASHES) and all(
            c in _HEX for i, c in enumerate(text) if i not in _UUID_DASHES
        )
    return len(text) == 32 and all(c in _HEX for c in text)


def validate_user_settable_id(value: str, *, strict: bool = True) -> None:
    """resourceid.ValidateUserSettable; `strict` adds AIP-122's leading-letter and
    no-trailing-hyphen rules, which upstream does not check on Create (but a trailing
    hyphen later fails resourcename.Validate on Get/Delete)."""
    if not 4 <= len(value) <= 63:
        raise _unknown("user-settable ID must be between 4 and 63 characters")
    if value[0] == "-":
        raise _unknown("user-settable ID must not start with a hyphen")
    if _looks_like_uuid(value):
        raise _unknown("user-settable ID must not be a valid UUIDv4")
    for position, char in enumerate(value):
        if char not in _ID_CHARS:
            raise _unknown(
                "user-settable ID must only contain lowercase, numbers and hyphens "
                f"(got: '{char}' in position {position})"
            )
    if strict and not value[0].isalpha():
        raise _unknown("user-settable ID must start with a lowercase letter")
    if strict and value.endswith("-"):
        raise _unknown("user-settable ID must not end with a hyphen")


def _is_domain_name(text: str) -> bool:
    """Port of Go's net isDomainName, which resourcename.Validate applies to each segment."""
    if not text or len(text) > 254 or (len(text) == 254 and text[-1] != "."):
        return False
    last, part_len = ".", 0
    for char in text:
        if char.isascii() and (char.isalnum() or char == "_"):
            part_len += 1
        elif char == "-":
            if last == ".":
                return False
            part_len += 1
        elif char == ".":
            if last in ".-" or part_len > 63 or part_len == 0:
                return False
            part_len = 0
        else:
            return False
        last = char
    return last != "-" and part_len <= 63


def _split_name(name: str) -> tuple[str | None, list[str]]:
    """Service (for `//service/...` full names) and segments, as resourcename.Scanner sees them."""
    if not name.startswith("//"):
        return None, name.split("/")
    rest = name[2:]
    slash = rest.find("/")
    if slash == -1:
        return rest, []
    return rest[:slash], rest[slash + 1 :].split("/")


def validate_resource_name(name: str) -> None:
    """resourcename.Validate: every segment a DNS label, no variables; errors are UNKNOWN."""
    if name == "":
        raise _unknown("empty")
    if name == "/":
        return
    service, segments = _split_name(name)
    for index, segment in enumerate(segments, start=1):
        if segment == "":
            raise _unknown(f"segment {index} is empty")
        if segment == "-":
            continue
        if segment.startswith("{") and segment.endswith("}"):
            raise _unknown(f"segment '{segment}': valid resource names must not contain variables")
        if not _is_domain_name(segment):
            raise _unknown(f"segment '{segment}': not a valid DNS name")
    if service is not None and not _is_domain_name(service):
        raise _unknown(f"service '{service}': not a valid DNS name")


def _check_name(name: str) -> None:
    """Get/Delete request checks: required field, then AIP-122 syntax (not existence)."""
    if not name:
        raise _unknown("missing required field: name")
    validate_resource_name(name)


def _check_port_required(port: pb.BridgePort, prefix: str) -> None:
    """fieldbehavior.ValidateRequiredFields for the REQUIRED fields of BridgePort."""
    if not port.HasField("spec"):
        raise _unknown(f"missing required field: {prefix}.spec")
    if not port.spec.mac_address:
        raise _unknown(f"missing required field: {prefix}.spec.mac_address")
    if port.spec.ptype == pb.BRIDGE_PORT_TYPE_UNSPECIFIED:
        raise _unknown(f"missing required field: {prefix}.spec.ptype")


def _validate_port_spec(spec: pb.BridgePortSpec) -> None:
    """Upstream validateBridgePortSpec: these are real status errors (INVALID_ARGUMENT)."""
    for bridge in spec.logical_bridges:
        try:
            validate_resource_name(bridge)
        except AgentError as err:
            raise _invalid(
                f"Logical Bridge {bridge} has invalid name, error: {err.message}"
            ) from None
    if spec.ptype not in (pb.BRIDGE_PORT_TYPE_ACCESS, pb.BRIDGE_PORT_TYPE_TRUNK):
        raise _invalid(f"Only ACCESS or TRUNK supported and not ({spec.ptype})")
    if spec.ptype == pb.BRIDGE_PORT_TYPE_ACCESS:
        count = len(spec.logical_bridges)
        if count == 0:
            raise _invalid(
                "LogicalBridges field cannot be empty when the Bridge Port is of type ACCESS"
            )
        if count > 1:
            raise _invalid(f"ACCESS type must have single LogicalBridge and not ({count})")
    # Upstream's ValidateMacAddress is a no-op regexp; we enforce what it means to check.
    if len(spec.mac_address) != 6:
        raise _invalid(f"Invalid format of MAC Address: want 6 bytes, got {len(spec.mac_address)}")


def _validate_bridge_spec(spec: pb.LogicalBridgeSpec) -> None:
    """Upstream validateLogicalBridgeSpec (INVALID_ARGUMENT)."""
    if not 1 <= spec.vlan_id <= 4095:
        raise _invalid(f"VlanId value ({spec.vlan_id}) have to be between 1 and 4095")
    if spec.HasField("vni") and not 1 <= spec.vni <= 16_777_215:
        raise _invalid(f"Vni value ({spec.vni}) have to be between 1 and 16777215")


def _check_mask(paths: Sequence[str], descriptor: Descriptor) -> None:
    """fieldmask.Validate: UNKNOWN for paths the message does not have."""
    if "*" in paths and len(paths) > 1:
        raise _unknown("invalid field path: '*' must not be used with other paths")
    for path in paths:
        if path != "*" and not field_mask_pb2.FieldMask(paths=[path]).IsValidForDescriptor(
            descriptor
        ):
            raise _unknown(f"invalid field path: {path}")


def _mac_key(mac: bytes) -> str:
    """net.HardwareAddr.String(), the key of upstream's per-bridge MAC table."""
    return ":".join(f"{byte:02x}" for byte in mac)


# --- pagination --------------------------------------------------------------------------


def _page_size(requested: int) -> int:
    """utils.ExtractPagination: 0 means 50, above 250 is clamped, negative is refused."""
    if requested < 0:
        raise _invalid("negative PageSize is not allowed")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


@dataclass
class _Pager:
    """Opaque page tokens. Upstream maps a token to an offset; we map it to the last name
    served, so deletions between pages never make a walk skip an entry."""

    tokens: dict[str, str] = field(default_factory=dict)

    def check(self, page_size: int, token: str) -> tuple[int, str | None]:
        size = _page_size(page_size)
        if not token:
            return size, None
        if token not in self.tokens:
            raise _not_found(f"unable to find pagination token {token}")
        return size, self.tokens[token]

    def slice(self, names: list[str], size: int, after: str | None) -> tuple[list[str], str]:
        start = 0 if after is None else bisect.bisect_right(names, after)
        chunk = names[start : start + size]
        if start + size >= len(names):
            return chunk, ""
        token = str(uuid.uuid4())
        self.tokens[token] = chunk[-1]
        while len(self.tokens) > _MAX_TOKENS:
            self.tokens.pop(next(iter(self.tokens)))
        return chunk, token


# --- state -------------------------------------------------------------------------------


@dataclass
class AgentConfig:
    """Knobs of the simulated agent; mutable at run time (e.g. `agent.config.up_delay = 1`)."""

    up_delay: float = DEFAULT_UP_DELAY
    delete_delay: float = DEFAULT_DELETE_DELAY
    port_components: tuple[str, ...] = PORT_COMPONENTS
    bridge_components: tuple[str, ...] = BRIDGE_COMPONENTS
    strict_ids: bool = True
    # Upstream answers List with NOT_FOUND "Error: key not found" until the first object of
    # that kind was ever created (its index key does not exist yet in the store).
    list_not_found_until_first_create: bool = True


@dataclass
class _PortEntry:
    msg: pb.BridgePort
    bridges: tuple[str, ...]
    mac: str
    generation: int = 0
    timer: asyncio.Handle | None = None


@dataclass
class _BridgeEntry:
    msg: pb.LogicalBridge
    ports: set[str] = field(default_factory=set)
    macs: dict[str, str] = field(default_factory=dict)
    generation: int = 0
    timer: asyncio.Handle | None = None


_Entry = _PortEntry | _BridgeEntry


def _cancel(entry: _Entry) -> None:
    if entry.timer is not None:
        entry.timer.cancel()
        entry.timer = None


def _set_components(entry: _Entry, oper: int, comp_status: int) -> None:
    status = entry.msg.status
    status.oper_status = oper  # type: ignore[assignment]
    for component in status.components:
        component.status = comp_status  # type: ignore[assignment]
        component.details = ""


def _new_status(status: Any, oper: int, components: Iterable[str]) -> None:
    status.oper_status = oper
    for name in components:
        status.components.add(name=name, status=component_pb2.COMP_STATUS_PENDING)


class _Registry:
    """Ports and logical bridges with upstream's asynchronous lifecycle. Everything runs on
    the event loop, so there are no locks; timers stand in for upstream's task manager."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.ports: dict[str, _PortEntry] = {}
        self.bridges: dict[str, _BridgeEntry] = {}
        self.port_pager = _Pager()
        self.bridge_pager = _Pager()
        self.ports_indexed = False
        self.bridges_indexed = False

    # lifecycle ---------------------------------------------------------------------------

    def _begin(
        self, entry: _Entry, oper: int, delay: float, finish: Callable[[str, int], None]
    ) -> None:
        """Components go PENDING and `finish` runs after `delay` (0: next loop iteration);
        a newer phase bumps the generation, like upstream's resource version."""
        _set_components(entry, oper, component_pb2.COMP_STATUS_PENDING)
        _cancel(entry)
        entry.generation += 1
        loop = asyncio.get_running_loop()
        args = (entry.msg.name, entry.generation)
        if delay <= 0:
            entry.timer = loop.call_soon(finish, *args)
        else:
            entry.timer = loop.call_later(delay, finish, *args)

    def _port_up(self, name: str, generation: int) -> None:
        entry = self.ports.get(name)
        if entry is not None and entry.generation == generation:
            entry.timer = None
            _set_components(entry, pb.BP_OPER_STATUS_UP, component_pb2.COMP_STATUS_SUCCESS)

    def _port_gone(self, name: str, generation: int) -> None:
        entry = self.ports.get(name)
        if entry is not None and entry.generation == generation:
            self.remove_port(name)

    def _bridge_up(self, name: str, generation: int) -> None:
        entry = self.bridges.get(name)
        if entry is not None and entry.generation == generation:
            entry.timer = None
            _set_components(entry, pb.LB_OPER_STATUS_UP, component_pb2.COMP_STATUS_SUCCESS)

    def _bridge_gone(self, name: str, generation: int) -> None:
        entry = self.bridges.get(name)
        if entry is not None and entry.generation == generation:
            _cancel(entry)
            del self.bridges[name]

    # bridge membership -------------------------------------------------------------------

    def _targets(self, spec: pb.BridgePortSpec) -> tuple[str, ...]:
        """A trunk without bridges is a transparent trunk: upstream attaches it to all."""
        if spec.logical_bridges:
            return tuple(spec.logical_bridges)
        if not self.bridges_indexed:
            raise _unknown("key not found")
        return tuple(sorted(self.bridges))

    def _check_attach(self, name: str, targets: tuple[str, ...], mac: str) -> None:
        """LogicalBridge.AddBridgePort checks, done for all bridges before changing any."""
        seen: set[str] = set()
        for bridge in targets:
            entry = self.bridges.get(bridge)
            if entry is None:
                raise _unknown("the referenced Logical Bridge has not been found")
            if bridge in seen or name in entry.ports:
                raise _unknown(
                    f"AddBridgePort(): the logical bridge {bridge} is already associated "
                    f"with the bridge port: {name}"
                )
            if mac in entry.macs:
                raise _unknown(
                    f"AddBridgePort(): the logical bridge {bridge} is already associated "
                    f"with the bridge port mac: {mac}"
                )
            seen.add(bridge)

    def _attach(self, entry: _PortEntry) -> None:
        for bridge in entry.bridges:
            self.bridges[bridge].ports.add(entry.msg.name)
            self.bridges[bridge].macs[entry.mac] = entry.msg.name

    def _detach(self, entry: _PortEntry) -> None:
        for bridge in entry.bridges:
            target = self.bridges.get(bridge)
            if target is None:
                continue
            target.ports.discard(entry.msg.name)
            if target.macs.get(entry.mac) == entry.msg.name:
                del target.macs[entry.mac]

    # ports -------------------------------------------------------------------------------

    def create_port(self, request: pb.CreateBridgePortRequest) -> pb.BridgePort:
        if not request.HasField("bridge_port"):
            raise _unknown("missing required field: bridge_port")
        _check_port_required(request.bridge_port, "bridge_port")
        if request.bridge_port_id:
            validate_user_settable_id(request.bridge_port_id, strict=self.config.strict_ids)
        name = PORT_PREFIX + (request.bridge_port_id or str(uuid.uuid4()))
        existing = self.ports.get(name)
        if existing is not None:
            return _clone(existing.msg)  # idempotent by ID, whatever the spec says
        return self._new_port(name, request.bridge_port.spec)

    def _new_port(self, name: str, spec: pb.BridgePortSpec) -> pb.BridgePort:
        _validate_port_spec(spec)
        targets, mac = self._targets(spec), _mac_key(spec.mac_address)
        self._check_attach(name, targets, mac)
        msg = pb.BridgePort(name=name)
        msg.spec.CopyFrom(spec)
        _new_status(msg.status, pb.BP_OPER_STATUS_DOWN, self.config.port_components)
        entry = _PortEntry(msg=msg, bridges=targets, mac=mac)
        self._attach(entry)
        self.ports[name] = entry
        self.ports_indexed = True
        self._begin(entry, pb.BP_OPER_STATUS_DOWN, self.config.up_delay, self._port_up)
        log.debug("created port %s", name)
        return _clone(msg)

    def get_port(self, request: pb.GetBridgePortRequest) -> pb.BridgePort:
        _check_name(request.name)
        entry = self.ports.get(request.name)
        if entry is None:
            raise _not_found(f"unable to find key {request.name}")
        return _clone(entry.msg)

    def delete_port(self, request: pb.DeleteBridgePortRequest) -> None:
        """Deleting a dying port restarts its deletion, as upstream's DeleteBP does."""
        _check_name(request.name)
        entry = self.ports.get(request.name)
        if entry is None:
            if request.allow_missing:
                return
            raise _not_found(f"unable to find key {request.name}")
        self._begin(
            entry, pb.BP_OPER_STATUS_TO_BE_DELETED, self.config.delete_delay, self._port_gone
        )
        log.debug("deleting port %s", request.name)

    def list_ports(self, request: pb.ListBridgePortsRequest) -> pb.ListBridgePortsResponse:
        size, after = self.port_pager.check(request.page_size, request.page_token)
        if not self.ports_indexed and self.config.list_not_found_until_first_create:
            raise _not_found("Error: key not found")
        names, token = self.port_pager.slice(sorted(self.ports), size, after)
        ports = [_clone(self.ports[name].msg) for name in names]
        return pb.ListBridgePortsResponse(bridge_ports=ports, next_page_token=token)

    def update_port(self, request: pb.UpdateBridgePortRequest) -> pb.BridgePort:
        """Upstream's UpdateBridgePort, except that bridge membership follows the new spec."""
        if not request.HasField("bridge_port"):
            raise _unknown("missing required field: bridge_port")
        _check_port_required(request.bridge_port, "bridge_port")
        paths = list(request.update_mask.paths)
        _check_mask(paths, pb.BridgePort.DESCRIPTOR)
        name = request.bridge_port.name
        validate_resource_name(name)
        entry = self.ports.get(name)
        if entry is None:
            if not request.allow_missing:
                raise _not_found(f"unable to find key {name}")
            return self._new_port(name, request.bridge_port.spec)
        if entry.msg.status.oper_status == pb.BP_OPER_STATUS_TO_BE_DELETED:
            raise _unknown(f"bridge Port {name} in to be deleted status")
        spec = _updated_spec(entry.msg, request.bridge_port, paths)
        if spec == entry.msg.spec:
            return _clone(entry.msg)
        _validate_port_spec(spec)
        self._replace_spec(entry, spec)
        self._begin(entry, pb.BP_OPER_STATUS_DOWN, self.config.up_delay, self._port_up)
        return _clone(entry.msg)

    def _replace_spec(self, entry: _PortEntry, spec: pb.BridgePortSpec) -> None:
        self._detach(entry)
        try:
            targets, mac = self._targets(spec), _mac_key(spec.mac_address)
            self._check_attach(entry.msg.name, targets, mac)
        except AgentError:
            self._attach(entry)
            raise
        entry.msg.spec.CopyFrom(spec)
        entry.bridges, entry.mac = targets, mac
        self._attach(entry)

    # logical bridges ---------------------------------------------------------------------

    def create_bridge(self, request: pb.CreateLogicalBridgeRequest) -> pb.LogicalBridge:
        if not request.HasField("logical_bridge"):
            raise _unknown("missing required field: logical_bridge")
        if not request.logical_bridge.HasField("spec"):
            raise _unknown("missing required field: logical_bridge.spec")
        if request.logical_bridge.spec.vlan_id == 0:
            raise _unknown("missing required field: logical_bridge.spec.vlan_id")
        if request.logical_bridge_id:
            validate_user_settable_id(request.logical_bridge_id, strict=self.config.strict_ids)
        name = BRIDGE_PREFIX + (request.logical_bridge_id or str(uuid.uuid4()))
        existing = self.bridges.get(name)
        if existing is not None:
            return _clone(existing.msg)
        entry = self._new_bridge(name, request.logical_bridge.spec)
        self._begin(entry, pb.LB_OPER_STATUS_DOWN, self.config.up_delay, self._bridge_up)
        return _clone(entry.msg)

    def _new_bridge(self, name: str, spec: pb.LogicalBridgeSpec) -> _BridgeEntry:
        _validate_bridge_spec(spec)
        if spec.HasField("vni") and any(
            b.msg.spec.HasField("vni") and b.msg.spec.vni == spec.vni for b in self.bridges.values()
        ):
            raise _unknown("the VNI is already in use")
        msg = pb.LogicalBridge(name=name)
        msg.spec.CopyFrom(spec)
        _new_status(msg.status, pb.LB_OPER_STATUS_DOWN, self.config.bridge_components)
        entry = _BridgeEntry(msg=msg)
        self.bridges[name] = entry
        self.bridges_indexed = True
        return entry

    def seed_bridge(self, name: str, vlan_id: int, vni: int | None) -> pb.LogicalBridge:
        """A bridge that is already UP, as if configured before the agent started."""
        existing = self.bridges.get(name)
        if existing is not None:
            return _clone(existing.msg)
        spec = pb.LogicalBridgeSpec(vlan_id=vlan_id)
        if vni is not None:
            spec.vni = vni
        entry = self._new_bridge(name, spec)
        _set_components(entry, pb.LB_OPER_STATUS_UP, component_pb2.COMP_STATUS_SUCCESS)
        return _clone(entry.msg)

    def get_bridge(self, request: pb.GetLogicalBridgeRequest) -> pb.LogicalBridge:
        _check_name(request.name)
        entry = self.bridges.get(request.name)
        if entry is None:
            raise _not_found(f"unable to find key {request.name}")
        return _clone(entry.msg)

    def delete_bridge(self, request: pb.DeleteLogicalBridgeRequest) -> None:
        _check_name(request.name)
        entry = self.bridges.get(request.name)
        if entry is None:
            if request.allow_missing:
                return
            raise _not_found(f"unable to find key {request.name}")
        if entry.ports or entry.macs:
            raise _unknown("the LogicalBridge is not empty")
        self._begin(
            entry, pb.LB_OPER_STATUS_TO_BE_DELETED, self.config.delete_delay, self._bridge_gone
        )

    def list_bridges(self, request: pb.ListLogicalBridgesRequest) -> pb.ListLogicalBridgesResponse:
        size, after = self.bridge_pager.check(request.page_size, request.page_token)
        if not self.bridges_indexed and self.config.list_not_found_until_first_create:
            raise _not_found("Error: key not found")
        names, token = self.bridge_pager.slice(sorted(self.bridges), size, after)
        bridges = [_clone(self.bridges[name].msg) for name in names]
        return pb.ListLogicalBridgesResponse(logical_bridges=bridges, next_page_token=token)

    # out-of-band events (test hooks) -----------------------------------------------------

    def remove_port(self, name: str) -> bool:
        entry = self.ports.pop(name, None)
        if entry is None:
            return False
        _cancel(entry)
        self._detach(entry)
        return True

    def fail_port(self, name: str, details: str) -> None:
        """A component reports ERROR: a live port goes DOWN, a dying one stops dying."""
        entry = self.ports[name]
        _cancel(entry)
        entry.generation += 1
        status = entry.msg.status
        if status.oper_status != pb.BP_OPER_STATUS_TO_BE_DELETED:
            status.oper_status = pb.BP_OPER_STATUS_DOWN
        if not status.components:
            status.components.add(name="sim")
        status.components[0].status = component_pb2.COMP_STATUS_ERROR
        status.components[0].details = details

    def recover_port(self, name: str) -> None:
        """The component recovered: the port comes UP, or a dying port finishes dying."""
        entry = self.ports[name]
        if entry.msg.status.oper_status == pb.BP_OPER_STATUS_TO_BE_DELETED:
            self._begin(
                entry, pb.BP_OPER_STATUS_TO_BE_DELETED, self.config.delete_delay, self._port_gone
            )
            return
        _cancel(entry)
        entry.generation += 1
        _set_components(entry, pb.BP_OPER_STATUS_UP, component_pb2.COMP_STATUS_SUCCESS)

    def clear(self) -> None:
        """Forget everything, as a restarted agent with an in-memory store does."""
        for entry in [*self.ports.values(), *self.bridges.values()]:
            _cancel(entry)
        self.ports.clear()
        self.bridges.clear()
        self.port_pager.tokens.clear()
        self.bridge_pager.tokens.clear()
        self.ports_indexed = self.bridges_indexed = False


def _updated_spec(
    current: pb.BridgePort, incoming: pb.BridgePort, paths: Sequence[str]
) -> pb.BridgePortSpec:
    """The spec after applying the update mask (none or `*`: replace the whole spec)."""
    if not paths or list(paths) == ["*"]:
        return _clone(incoming.spec)
    merged = _clone(current)
    field_mask_pb2.FieldMask(paths=list(paths)).MergeMessage(
        incoming, merged, replace_message_field=True, replace_repeated_field=True
    )
    return merged.spec


# --- gRPC servicers ----------------------------------------------------------------------


async def _answer(
    context: grpc.aio.ServicerContext, action: Callable[[Req], Resp], request: Req
) -> Resp:
    """Run domain code and turn an AgentError into the gRPC status it carries."""
    try:
        return action(request)
    except AgentError as err:
        await context.abort(err.code, err.message)
        raise  # unreachable: abort raises


class _BridgePortServicer(pb_grpc.BridgePortServiceServicer):
    def __init__(self, registry: _Registry) -> None:
        self._registry = registry

    async def CreateBridgePort(self, request: Any, context: Any) -> pb.BridgePort:
        return await _answer(context, self._registry.create_port, request)

    async def GetBridgePort(self, request: Any, context: Any) -> pb.BridgePort:
        return await _answer(context, self._registry.get_port, request)

    async def ListBridgePorts(self, request: Any, context: Any) -> pb.ListBridgePortsResponse:
        return await _answer(context, self._registry.list_ports, request)

    async def DeleteBridgePort(self, request: Any, context: Any) -> empty_pb2.Empty:
        await _answer(context, self._registry.delete_port, request)
        return empty_pb2.Empty()

    async def UpdateBridgePort(self, request: Any, context: Any) -> pb.BridgePort:
        return await _answer(context, self._registry.update_port, request)


class _LogicalBridgeServicer(pb_grpc.LogicalBridgeServiceServicer):
    def __init__(self, registry: _Registry) -> None:
        self._registry = registry

    async def CreateLogicalBridge(self, request: Any, context: Any) -> pb.LogicalBridge:
        return await _answer(context, self._registry.create_bridge, request)

    async def GetLogicalBridge(self, request: Any, context: Any) -> pb.LogicalBridge:
        return await _answer(context, self._registry.get_bridge, request)

    async def ListLogicalBridges(self, request: Any, context: Any) -> pb.ListLogicalBridgesResponse:
        return await _answer(context, self._registry.list_bridges, request)

    async def DeleteLogicalBridge(self, request: Any, context: Any) -> empty_pb2.Empty:
        await _answer(context, self._registry.delete_bridge, request)
        return empty_pb2.Empty()

    async def UpdateLogicalBridge(self, request: Any, context: Any) -> pb.LogicalBridge:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "UpdateLogicalBridge is not simulated")
        raise AssertionError("unreachable")


# --- fault injection ---------------------------------------------------------------------


@dataclass
class _ErrorRule:
    rate: float
    code: grpc.StatusCode
    message: str


@dataclass
class Faults:
    """Run-time fault plan, consulted on every RPC. Keys are method names such as
    "CreateBridgePort" (or "Check" for health); "*" applies to every method."""

    rng: random.Random
    latency: dict[str, float] = field(default_factory=dict)
    errors: dict[str, _ErrorRule] = field(default_factory=dict)
    queued: dict[str, list[grpc.StatusCode]] = field(default_factory=dict)
    unavailable_until: float | None = None

    def unavailable(self) -> bool:
        return self.unavailable_until is not None and time.monotonic() < self.unavailable_until

    def delay(self, method: str) -> float:
        return self.latency.get(method, self.latency.get(ALL_METHODS, 0.0))

    def error(self, method: str) -> tuple[grpc.StatusCode, str] | None:
        """A queued failure first, then a roll of the seeded dice against the error rate."""
        for key in (method, ALL_METHODS):
            queue = self.queued.get(key)
            if queue:
                return queue.pop(0), f"simulated fault in {method}"
        rule = self.errors.get(method, self.errors.get(ALL_METHODS))
        if rule is not None and rule.rate > 0 and self.rng.random() < rule.rate:
            return rule.code, rule.message
        return None

    def clear(self) -> None:
        self.latency.clear()
        self.errors.clear()
        self.queued.clear()
        self.unavailable_until = None


Gate = Callable[[grpc.aio.ServicerContext], Awaitable[None]]


def _gated_unary(inner: Callable[..., Any], gate: Gate) -> Callable[..., Awaitable[Any]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await gate(context)
        result = inner(request, context)
        return await result if inspect.isawaitable(result) else result

    return handle


def _gated_stream(inner: Callable[..., Any], gate: Gate) -> Callable[..., Any]:
    """Keep the handler's shape: grpc.aio dispatches on coroutine vs async generator."""
    if inspect.iscoroutinefunction(inner):

        async def handle_writer(request: Any, context: grpc.aio.ServicerContext) -> None:
            await gate(context)
            await inner(request, context)

        return handle_writer

    async def handle_generator(
        request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        await gate(context)
        responses = inner(request, context)
        if inspect.isasyncgen(responses):
            async for response in responses:
                yield response
        else:
            for response in responses:
                yield response

    return handle_generator


def _wrap_handler(handler: grpc.RpcMethodHandler, gate: Gate) -> grpc.RpcMethodHandler:
    for kind in ("unary_unary", "stream_unary", "unary_stream", "stream_stream"):
        inner = getattr(handler, kind)
        if inner is not None:
            wrap = _gated_unary if kind.endswith("_unary") else _gated_stream
            return handler._replace(**{kind: wrap(inner, gate)})  # type: ignore[attr-defined]
    return handler


class _FaultInterceptor(grpc.aio.ServerInterceptor):
    """Counts every RPC and applies the fault plan before the real handler runs."""

    def __init__(self, calls: Counter[str], faults: Faults) -> None:
        self._calls = calls
        self._faults = faults

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        return _wrap_handler(handler, functools.partial(self._gate, method))

    async def _gate(self, method: str, context: grpc.aio.ServicerContext) -> None:
        self._calls[method] += 1
        if self._faults.unavailable():
            await context.abort(grpc.StatusCode.UNAVAILABLE, "simulated agent unavailable")
        delay = self._faults.delay(method)
        if delay > 0:
            await asyncio.sleep(delay)
        failure = self._faults.error(method)
        if failure is not None:
            await context.abort(*failure)


# --- server lifecycle --------------------------------------------------------------------


def _unix_socket_path(address: str) -> Path | None:
    if address.startswith("unix://"):
        return Path(address[len("unix://") :])
    if address.startswith("unix:"):
        return Path(address[len("unix:") :])
    return None


def _prepare_socket(path: Path) -> None:
    """Refuse paths the kernel cannot bind and clear a stale socket left by a crash."""
    if len(str(path)) > _MAX_UNIX_PATH:
        raise ValueError(f"unix socket path longer than {_MAX_UNIX_PATH} bytes: {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise FileExistsError(f"not a socket, refusing to replace: {path}")
        path.unlink()


def _resolved(address: str, port: int) -> str:
    """The address clients should dial: port 0 replaced by the port actually bound."""
    if _unix_socket_path(address) is not None:
        return address
    host, _, requested = address.rpartition(":")
    return f"{host}:{port}" if requested == "0" else address


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]],
    timeout: float = 5.0,
    interval: float = 0.005,
) -> None:
    """Poll `predicate` (sync or async) until true; TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


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


class SimHostAgent:
    """A simulated OPI host agent: state, fault plan and a restartable grpc.aio server."""

    def __init__(
        self,
        bridges: Iterable[str] = (),
        *,
        up_delay: float = DEFAULT_UP_DELAY,
        delete_delay: float = DEFAULT_DELETE_DELAY,
        seed: int | None = None,
        drop_state_on_restart: bool = False,
        port_components: Sequence[str] = PORT_COMPONENTS,
        bridge_components: Sequence[str] = BRIDGE_COMPONENTS,
        strict_ids: bool = True,
        list_not_found_until_first_create: bool = True,
        tls: ServerTLS | None = None,
    ) -> None:
        self.tls = tls  # serve TLS (TCP addresses only); kept across restarts
        self.config = AgentConfig(
            up_delay=up_delay,
            delete_delay=delete_delay,
            port_components=tuple(port_components),
            bridge_components=tuple(bridge_components),
            strict_ids=strict_ids,
            list_not_found_until_first_create=list_not_found_until_first_create,
        )
        self.drop_state_on_restart = drop_state_on_restart
        self.calls: Counter[str] = Counter()
        self.faults = Faults(rng=random.Random(seed))
        self._registry = _Registry(self.config)
        self._seeds = [_seed_name(bridge) for bridge in bridges]
        self._seed()
        self._server: grpc.aio.Server | None = None
        self._health: Any = None
        self._address: str | None = None
        self._socket: Path | None = None
        self._started_before = False

    # lifecycle ---------------------------------------------------------------------------

    async def start(self, address: str | None = None) -> int:
        """Serve on `unix:///path` or `host:port` (default: the last address, else
        127.0.0.1:0). Returns the bound TCP port, 0 for unix sockets."""
        drop = self.drop_state_on_restart and self._started_before
        return await self._start(address, drop_state=drop)

    async def stop(self, grace: float | None = None) -> None:
        """Stop serving (state is kept) and remove the unix socket file."""
        server, self._server = self._server, None
        if server is None:
            return
        await self._health.enter_graceful_shutdown()
        await server.stop(grace)
        if self._socket is not None:
            self._socket.unlink(missing_ok=True)
        self._started_before = True
        log.info("sim host agent stopped on %s", self._address)

    async def restart(
        self, *, drop_state: bool | None = None, downtime: float = 0.0, grace: float | None = None
    ) -> int:
        """Stop, stay down for `downtime` seconds, start on the same address. A real agent
        with an in-memory store loses everything: pass drop_state=True for that."""
        await self.stop(grace)
        if downtime > 0:
            await asyncio.sleep(downtime)
        drop = self.drop_state_on_restart if drop_state is None else drop_state
        return await self._start(None, drop_state=drop)

    async def _start(self, address: str | None, *, drop_state: bool) -> int:
        if self._server is not None:
            raise RuntimeError(f"already serving on {self._address}")
        address = address or self._address or "127.0.0.1:0"
        socket = _unix_socket_path(address)
        if socket is not None and self.tls is not None:
            raise ValueError(f"TLS applies to host:port addresses only, not {address}")
        if drop_state:
            self.reset_state()
        if socket is not None:
            _prepare_socket(socket)
        server = grpc.aio.server(
            interceptors=[_FaultInterceptor(self.calls, self.faults)],
            options=[("grpc.so_reuseport", 0)],
        )
        pb_grpc.add_BridgePortServiceServicer_to_server(_BridgePortServicer(self._registry), server)
        pb_grpc.add_LogicalBridgeServiceServicer_to_server(
            _LogicalBridgeServicer(self._registry), server
        )
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (*OPI_SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        if self.tls is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, self.tls.credentials())
        await server.start()
        for service in ("", *OPI_SERVICES):
            await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
        self._server, self._health, self._socket = server, health_servicer, socket
        self._address = _resolved(address, port)
        log.info("sim host agent serving on %s", self._address)
        return 0 if socket is not None else port

    @property
    def target(self) -> str:
        """What a client passes to grpc.aio.insecure_channel() (secure_channel() with TLS)."""
        if self._address is None:
            raise RuntimeError("agent was never started")
        return self._address

    @property
    def serving(self) -> bool:
        return self._server is not None

    # state -------------------------------------------------------------------------------

    @property
    def up_delay(self) -> float:
        return self.config.up_delay

    @up_delay.setter
    def up_delay(self, seconds: float) -> None:
        self.config.up_delay = seconds

    @property
    def delete_delay(self) -> float:
        return self.config.delete_delay

    @delete_delay.setter
    def delete_delay(self, seconds: float) -> None:
        self.config.delete_delay = seconds

    def _seed(self) -> None:
        for index, name in enumerate(self._seeds):
            self._registry.seed_bridge(name, vlan_id=100 + index, vni=None)

    def reset_state(self) -> None:
        """Back to the constructor's bridges and no ports (counters and faults stay)."""
        self._registry.clear()
        self._seed()

    def add_bridge(
        self, bridge: str, vlan_id: int | None = None, vni: int | None = None
    ) -> pb.LogicalBridge:
        """Add a logical bridge that is UP at once (not re-created by reset_state)."""
        vlan = vlan_id if vlan_id is not None else 100 + len(self._registry.bridges)
        return self._registry.seed_bridge(_seed_name(bridge), vlan_id=vlan, vni=vni)

    @property
    def ports(self) -> dict[str, pb.BridgePort]:
        """Current ports by ID (copies)."""
        return {resource_id(n): _clone(e.msg) for n, e in self._registry.ports.items()}

    @property
    def bridges(self) -> dict[str, pb.LogicalBridge]:
        """Current logical bridges by ID (copies)."""
        return {resource_id(n): _clone(e.msg) for n, e in self._registry.bridges.items()}

    def port(self, port: str) -> pb.BridgePort | None:
        """One port by ID or full name, or None."""
        entry = self._registry.ports.get(port_name(port))
        return None if entry is None else _clone(entry.msg)

    async def wait_until(
        self,
        predicate: Callable[[], bool | Awaitable[bool]],
        timeout: float = 5.0,
        interval: float = 0.005,
    ) -> None:
        await wait_until(predicate, timeout, interval)

    # out-of-band events ------------------------------------------------------------------

    def set_port_error(self, port: str, details: str = "simulated component failure") -> None:
        """The port's first component reports ERROR and the port goes DOWN (a dying port
        stays TO_BE_DELETED but stops dying) until clear_port_error() or delete_port_now()."""
        self._registry.fail_port(port_name(port), details)

    def clear_port_error(self, port: str) -> None:
        self._registry.recover_port(port_name(port))

    def delete_port_now(self, port: str) -> bool:
        """Someone deleted the port out of band: it vanishes at once."""
        return self._registry.remove_port(port_name(port))

    def drop_all_ports(self) -> int:
        """The xPU rebooted: every port vanishes at once (bridges stay)."""
        names = list(self._registry.ports)
        for name in names:
            self._registry.remove_port(name)
        return len(names)

    # fault injection ---------------------------------------------------------------------

    def set_latency(self, method: str, seconds: float) -> None:
        """Add `seconds` before `method` (or "*") is handled; 0 removes it."""
        if seconds > 0:
            self.faults.latency[method] = seconds
        else:
            self.faults.latency.pop(method, None)

    def set_error_rate(
        self,
        method: str,
        rate: float,
        code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
        message: str | None = None,
    ) -> None:
        """Fail `rate` (0..1) of calls to `method` (or "*") with `code`; 0 removes it."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"error rate must be within 0..1, got {rate}")
        if rate == 0:
            self.faults.errors.pop(method, None)
            return
        text = message or f"simulated fault in {method}"
        self.faults.errors[method] = _ErrorRule(rate=rate, code=code, message=text)

    def fail_next(
        self, method: str, count: int = 1, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    ) -> None:
        """Fail exactly the next `count` calls to `method` (or "*"): deterministic retries."""
        self.faults.queued.setdefault(method, []).extend([code] * count)

    def set_unavailable(self, seconds: float | None = None) -> None:
        """Every RPC answers UNAVAILABLE for `seconds`, or until clear_unavailable()."""
        self.faults.unavailable_until = math.inf if seconds is None else time.monotonic() + seconds

    def clear_unavailable(self) -> None:
        self.faults.unavailable_until = None

    def clear_faults(self) -> None:
        self.faults.clear()


def _seed_name(bridge: str) -> str:
    """Accept `red` or `//network.opiproject.org/bridges/red`. Seeds skip the 4-63 character
    rule of CreateLogicalBridge (they were configured out of band) but must be valid names."""
    name = bridge_name(bridge)
    try:
        if "/" in name[len(BRIDGE_PREFIX) :]:
            raise _unknown("a logical bridge ID must not contain '/'")
        validate_resource_name(name)
    except AgentError as err:
        raise ValueError(f"bad logical bridge {bridge!r}: {err.message}") from None
    return name


async def serve_host_agent(
    listen: str,
    bridges: Sequence[str] = (),
    up_delay: float = DEFAULT_UP_DELAY,
    delete_delay: float = DEFAULT_DELETE_DELAY,
    *,
    seed: int | None = None,
    on_started: Callable[[SimHostAgent], None] | None = None,
) -> None:
    """Run a simulated agent on `listen` until cancelled (the `sim-agent` CLI command)."""
    agent = SimHostAgent(bridges, up_delay=up_delay, delete_delay=delete_delay, seed=seed)
    await agent.start(listen)
    if on_started is not None:
        on_started(agent)
    try:
        await asyncio.Event().wait()
    finally:
        await agent.stop(grace=0.5)
