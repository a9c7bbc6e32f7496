"""Bridge ports: BridgePortService semantics, out-of-band failures, membership in bridges."""

from __future__ import annotations

import logging
import time
import uuid

from opi_protos.evpn_gw import component_pb2
from opi_protos.evpn_gw import l2_xpu_infra_mgr_pb2 as pb
from xpu_bridge.sim.host_agent.bridges import Bridges
from xpu_bridge.sim.host_agent.config import AgentConfig
from xpu_bridge.sim.host_agent.errors import AgentError, not_found, unknown
from xpu_bridge.sim.host_agent.lifecycle import PortEntry, pending
from xpu_bridge.sim.host_agent.names import (
    PORT_PREFIX,
    lookup,
    validate_resource_name,
    validate_user_settable_id,
)
from xpu_bridge.sim.host_agent.pager import Pager
from xpu_bridge.sim.host_agent.specs import (
    check_mask,
    check_port_required,
    clone,
    mac_key,
    updated_spec,
    validate_port_spec,
)

log = logging.getLogger(__name__)


class Ports:
    """Bridge ports by full name, attached to `bridges`. Everything runs on the event loop,
    so there are no locks."""

    def __init__(self, config: AgentConfig, bridges: Bridges) -> None:
        self.config = config
        self.bridges = bridges
        self.entries: dict[str, PortEntry] = {}
        self.deletions: list[tuple[float, str]] = []
        """(time.monotonic(), name) of every accepted DeleteBridgePort of a stored port."""
        self.pager = Pager()
        self.indexed = False

    def create_port(self, request: pb.CreateBridgePortRequest) -> pb.BridgePort:
        if not request.HasField("bridge_port"):
            raise unknown("missing required field: bridge_port")
        check_port_required(request.bridge_port, "bridge_port")
        if request.bridge_port_id:
            validate_user_settable_id(request.bridge_port_id, strict=self.config.strict_ids)
        name = PORT_PREFIX + (request.bridge_port_id or str(uuid.uuid4()))
        existing = self.entries.get(name)
        if existing is not None:
            return clone(existing.msg)  # idempotent by ID, whatever the spec says
        return self._new(name, request.bridge_port.spec)

    def _new(self, name: str, spec: pb.BridgePortSpec) -> pb.BridgePort:
        validate_port_spec(spec)
        targets, mac = self.bridges.targets(spec), mac_key(spec.mac_address)
        self.bridges.check_attach(name, targets, mac)
        msg = pb.BridgePort(name=name)
        msg.spec.CopyFrom(spec)
        msg.status.oper_status = pb.BP_OPER_STATUS_DOWN
        msg.status.components.extend(pending(self.config.port_components))
        entry = PortEntry(msg=msg, bridges=targets, mac=mac)
        self.bridges.attach(entry)
        self.entries[name] = entry
        self.indexed = True
        if self.config.up_on_create:
            entry.set_state(pb.BP_OPER_STATUS_UP, component_pb2.COMP_STATUS_SUCCESS)
        else:
            entry.begin(pb.BP_OPER_STATUS_DOWN, self.config.up_delay, self._up)
        log.debug("created port %s", name)
        return clone(msg)

    def get_port(self, request: pb.GetBridgePortRequest) -> pb.BridgePort:
        entry = lookup(self.entries, request.name)
        assert entry is not None
        return clone(entry.msg)

    def delete_port(self, request: pb.DeleteBridgePortRequest) -> None:
        """Deleting a dying port restarts its deletion, as upstream's DeleteBP does."""
        entry = lookup(self.entries, request.name, allow_missing=request.allow_missing)
        if entry is None:
            return
        self.deletions.append((time.monotonic(), entry.msg.name))
        entry.begin(pb.BP_OPER_STATUS_TO_BE_DELETED, self.config.delete_delay, self._gone)
        log.debug("deleting port %s", request.name)

    def list_ports(self, request: pb.ListBridgePortsRequest) -> pb.ListBridgePortsResponse:
        size, after = self.pager.check(request.page_size, request.page_token)
        if not self.indexed and self.config.list_not_found_until_first_create:
            raise not_found("Error: key not found")
        names, token = self.pager.slice(sorted(self.entries), size, after)
        ports = [clone(self.entries[name].msg) for name in names]
        return pb.ListBridgePortsResponse(bridge_ports=ports, next_page_token=token)

    def update_port(self, request: pb.UpdateBridgePortRequest) -> pb.BridgePort:
        """Upstream's UpdateBridgePort, except that bridge membership follows the new spec."""
        if not request.HasField("bridge_port"):
            raise unknown("missing required field: bridge_port")
        check_port_required(request.bridge_port, "bridge_port")
        paths = list(request.update_mask.paths)
        check_mask(paths, pb.BridgePort.DESCRIPTOR)
        name = request.bridge_port.name
        validate_resource_name(name)
        entry = self.entries.get(name)
        if entry is None:
            if not request.allow_missing:
                raise not_found(f"unable to find key {name}")
            return self._new(name, request.bridge_port.spec)
        if entry.msg.status.oper_status == pb.BP_OPER_STATUS_TO_BE_DELETED:
            raise unknown(f"bridge Port {name} in to be deleted status")
        spec = updated_spec(entry.msg, request.bridge_port, paths)
        if spec == entry.msg.spec:
            return clone(entry.msg)
        validate_port_spec(spec)
        self._replace_spec(entry, spec)
        entry.begin(pb.BP_OPER_STATUS_DOWN, self.config.up_delay, self._up)
        return clone(entry.msg)

    def _replace_spec(self, entry: PortEntry, spec: pb.BridgePortSpec) -> None:
        self.bridges.detach(entry)
        try:
            targets, mac = self.bridges.targets(spec), mac_key(spec.mac_address)
            self.bridges.check_attach(entry.msg.name, targets, mac)
        except AgentError:
            self.bridges.attach(entry)
            raise
        entry.msg.spec.CopyFrom(spec)
        entry.bridges, entry.mac = targets, mac
        self.bridges.attach(entry)

    def _up(self, name: str, generation: int) -> None:
        entry = self.entries.get(name)
        if entry is not None and entry.timer_fired(generation):
            entry.set_state(pb.BP_OPER_STATUS_UP, component_pb2.COMP_STATUS_SUCCESS)

    def _gone(self, name: str, generation: int) -> None:
        entry = self.entries.get(name)
        if entry is not None and entry.timer_fired(generation):
            self.remove_port(name)

    # out-of-band events (test hooks) -----------------------------------------------------

    def remove_port(self, name: str) -> bool:
        entry = self.entries.pop(name, None)
        if entry is None:
            return False
        entry.cancel()
        self.bridges.detach(entry)
        return True

    def fail_port(self, name: str, details: str) -> None:
        """A component reports ERROR: a live port goes DOWN, a dying one stops dying."""
        entry = self.entries[name]
        entry.supersede()
        status = entry.msg.status
        if status.oper_status != pb.BP_OPER_STATUS_TO_BE_DELETED:
            status.oper_status = pb.BP_OPER_STATUS_DOWN
        if not status.components:
            status.components.add(name="sim")
        status.components[0].status = component_pb2.COMP_STATUS_ERROR
        status.components[0].details = details

    def recover_port(self, name: str) -> None:
        """The component recovered: the port comes UP, or a dying port finishes dying."""
        entry = self.entries[name]
        if entry.msg.status.oper_status == pb.BP_OPER_STATUS_TO_BE_DELETED:
            entry.begin(pb.BP_OPER_STATUS_TO_BE_DELETED, self.config.delete_delay, self._gone)
            return
        entry.supersede()
        entry.set_state(pb.BP_OPER_STATUS_UP, component_pb2.COMP_STATUS_SUCCESS)

    def clear(self) -> None:
        """Forget every port, as a restarted agent with an in-memory store does."""
        for entry in self.entries.values():
            entry.cancel()
        self.entries.clear()
        self.pager.tokens.clear()
        self.indexed = False
