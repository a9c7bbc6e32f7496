"""Logical bridges: LogicalBridgeService semantics and which ports and MACs each one holds."""

from __future__ import annotations

import uuid

from opi_protos.evpn_gw import component_pb2
from opi_protos.evpn_gw import l2_xpu_infra_mgr_pb2 as pb
from xpu_bridge.sim.host_agent.config import AgentConfig
from xpu_bridge.sim.host_agent.errors import not_found, unknown
from xpu_bridge.sim.host_agent.lifecycle import BridgeEntry, PortEntry, pending
from xpu_bridge.sim.host_agent.names import (
    BRIDGE_PREFIX,
    lookup,
    validate_user_settable_id,
)
from xpu_bridge.sim.host_agent.pager import Pager
from xpu_bridge.sim.host_agent.specs import clone, validate_bridge_spec


class Bridges:
    """Logical bridges by full name. Everything runs on the event loop, so there are no locks."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.entries: dict[str, BridgeEntry] = {}
        self.pager = Pager()
        self.indexed = False

    def create_bridge(self, request: pb.CreateLogicalBridgeRequest) -> pb.LogicalBridge:
        if not request.HasField("logical_bridge"):
            raise unknown("missing required field: logical_bridge")
        if not request.logical_bridge.HasField("spec"):
            raise unknown("missing required field: logical_bridge.spec")
        if request.logical_bridge.spec.vlan_id == 0:
            raise unknown("missing required field: logical_bridge.spec.vlan_id")
        if request.logical_bridge_id:
            validate_user_settable_id(request.logical_bridge_id, strict=self.config.strict_ids)
        name = BRIDGE_PREFIX + (request.logical_bridge_id or str(uuid.uuid4()))
        existing = self.entries.get(name)
        if existing is not None:
            return clone(existing.msg)
        entry = self._new(name, request.logical_bridge.spec)
        entry.begin(pb.LB_OPER_STATUS_DOWN, self.config.up_delay, self._up)
        return clone(entry.msg)

    def _new(self, name: str, spec: pb.LogicalBridgeSpec) -> BridgeEntry:
        validate_bridge_spec(spec)
        if spec.HasField("vni") and any(
            b.msg.spec.HasField("vni") and b.msg.spec.vni == spec.vni for b in self.entries.values()
        ):
            raise unknown("the VNI is already in use")
        msg = pb.LogicalBridge(name=name)
        msg.spec.CopyFrom(spec)
        msg.status.oper_status = pb.LB_OPER_STATUS_DOWN
        msg.status.components.extend(pending(self.config.bridge_components))
        entry = BridgeEntry(msg=msg)
        self.entries[name] = entry
        self.indexed = True
        return entry

    def seed_bridge(self, name: str, vlan_id: int, vni: int | None) -> pb.LogicalBridge:
        """A bridge that is already UP, as if configured before the agent started."""
        existing = self.entries.get(name)
        if existing is not None:
            return clone(existing.msg)
        spec = pb.LogicalBridgeSpec(vlan_id=vlan_id)
        if vni is not None:
            spec.vni = vni
        entry = self._new(name, spec)
        entry.set_state(pb.LB_OPER_STATUS_UP, component_pb2.COMP_STATUS_SUCCESS)
        return clone(entry.msg)

    def get_bridge(self, request: pb.GetLogicalBridgeRequest) -> pb.LogicalBridge:
        entry = lookup(self.entries, request.name)
        assert entry is not None
        return clone(entry.msg)

    def delete_bridge(self, request: pb.DeleteLogicalBridgeRequest) -> None:
        entry = lookup(self.entries, request.name, allow_missing=request.allow_missing)
        if entry is None:
            return
        if entry.ports or entry.macs:
            raise unknown("the LogicalBridge is not empty")
        entry.begin(pb.LB_OPER_STATUS_TO_BE_DELETED, self.config.delete_delay, self._gone)

    def list_bridges(self, request: pb.ListLogicalBridgesRequest) -> pb.ListLogicalBridgesResponse:
        size, after = self.pager.check(request.page_size, request.page_token)
        if not self.indexed and self.config.list_not_found_until_first_create:
            raise not_found("Error: key not found")
        names, token = self.pager.slice(sorted(self.entries), size, after)
        bridges = [clone(self.entries[name].msg) for name in names]
        return pb.ListLogicalBridgesResponse(logical_bridges=bridges, next_page_token=token)

    def _up(self, name: str, generation: int) -> None:
        entry = self.entries.get(name)
        if entry is not None and entry.timer_fired(generation):
            entry.set_state(pb.LB_OPER_STATUS_UP, component_pb2.COMP_STATUS_SUCCESS)

    def _gone(self, name: str, generation: int) -> None:
        entry = self.entries.get(name)
        if entry is not None and entry.timer_fired(generation):
            del self.entries[name]

    # port membership ---------------------------------------------------------------------

    def targets(self, spec: pb.BridgePortSpec) -> tuple[str, ...]:
        """A trunk without bridges is a transparent trunk: upstream attaches it to all."""
        if spec.logical_bridges:
            return tuple(spec.logical_bridges)
        if not self.indexed:
            raise unknown("key not found")
        return tuple(sorted(self.entries))

    def check_attach(self, port: str, targets: tuple[str, ...], mac: str) -> None:
        """LogicalBridge.AddBridgePort checks, done for all bridges before changing any."""
        seen: set[str] = set()
        for bridge in targets:
            entry = self.entries.get(bridge)
            if entry is None:
                raise unknown("the referenced Logical Bridge has not been found")
            if bridge in seen or port in entry.ports:
                raise unknown(
                    f"AddBridgePort(): the logical bridge {bridge} is already associated "
                    f"with the bridge port: {port}"
                )
            if mac in entry.macs:
                raise unknown(
                    f"AddBridgePort(): the logical bridge {bridge} is already associated "
                    f"with the bridge port mac: {mac}"
                )
            seen.add(bridge)

    def attach(self, port: PortEntry) -> None:
        for bridge in port.bridges:
            self.entries[bridge].ports.add(port.msg.name)
            self.entries[bridge].macs[port.mac] = port.msg.name

    def detach(self, port: PortEntry) -> None:
        for bridge in port.bridges:
            target = self.entries.get(bridge)
            if target is None:
                continue
            target.ports.discard(port.msg.name)
            if target.macs.get(port.mac) == port.msg.name:
                del target.macs[port.mac]

    def clear(self) -> None:
        """Forget every bridge, as a restarted agent with an in-memory store does."""
        for entry in self.entries.values():
            entry.cancel()
        self.entries.clear()
        self.pager.tokens.clear()
        self.indexed = False
