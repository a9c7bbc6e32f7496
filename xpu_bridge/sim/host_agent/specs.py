"""Checks and merges of BridgePort/LogicalBridge specs, as upstream's validate* functions do."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from google.protobuf import field_mask_pb2
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from opi_protos.evpn_gw import l2_xpu_infra_mgr_pb2 as pb
from xpu_bridge.sim.host_agent.errors import AgentError, invalid, unknown
from xpu_bridge.sim.host_agent.names import validate_resource_name

M = TypeVar("M", bound=Message)


def clone(msg: M) -> M:
    """Hand out copies so callers can never mutate the agent's state."""
    copy = type(msg)()
    copy.CopyFrom(msg)
    return copy


def check_port_required(port: pb.BridgePort, prefix: str) -> None:
    """fieldbehavior.ValidateRequiredFields for the REQUIRED fields of BridgePort."""
    if not port.HasField("spec"):
        raise unknown(f"missing required field: {prefix}.spec")
    if not port.spec.mac_address:
        raise unknown(f"missing required field: {prefix}.spec.mac_address")
    if port.spec.ptype == pb.BRIDGE_PORT_TYPE_UNSPECIFIED:
        raise unknown(f"missing required field: {prefix}.spec.ptype")


def validate_port_spec(spec: pb.BridgePortSpec) -> None:
    """Upstream validateBridgePortSpec: these are real status errors (INVALID_ARGUMENT)."""
    for bridge in spec.logical_bridges:
        try:
            validate_resource_name(bridge)
        except AgentError as err:
            raise invalid(
                f"Logical Bridge {bridge} has invalid name, error: {err.message}"
            ) from None
    if spec.ptype not in (pb.BRIDGE_PORT_TYPE_ACCESS, pb.BRIDGE_PORT_TYPE_TRUNK):
        raise invalid(f"Only ACCESS or TRUNK supported and not ({spec.ptype})")
    if spec.ptype == pb.BRIDGE_PORT_TYPE_ACCESS:
        count = len(spec.logical_bridges)
        if count == 0:
            raise invalid(
                "LogicalBridges field cannot be empty when the Bridge Port is of type ACCESS"
            )
        if count > 1:
            raise invalid(f"ACCESS type must have single LogicalBridge and not ({count})")
    # Upstream's ValidateMacAddress is a no-op regexp; we enforce what it means to check.
    if len(spec.mac_address) != 6:
        raise invalid(f"Invalid format of MAC Address: want 6 bytes, got {len(spec.mac_address)}")


def validate_bridge_spec(spec: pb.LogicalBridgeSpec) -> None:
    """Upstream validateLogicalBridgeSpec (INVALID_ARGUMENT)."""
    if not 1 <= spec.vlan_id <= 4095:
        raise invalid(f"VlanId value ({spec.vlan_id}) have to be between 1 and 4095")
    if spec.HasField("vni") and not 1 <= spec.vni <= 16_777_215:
        raise invalid(f"Vni value ({spec.vni}) have to be between 1 and 16777215")


def check_mask(paths: Sequence[str], descriptor: Descriptor) -> None:
    """fieldmask.Validate: UNKNOWN for paths the message does not have."""
    if "*" in paths and len(paths) > 1:
        raise unknown("invalid field path: '*' must not be used with other paths")
    for path in paths:
        if path != "*" and not field_mask_pb2.FieldMask(paths=[path]).IsValidForDescriptor(
            descriptor
        ):
            raise unknown(f"invalid field path: {path}")


def updated_spec(
    current: pb.BridgePort, incoming: pb.BridgePort, paths: Sequence[str]
) -> pb.BridgePortSpec:
    """The spec after applying the update mask (none or `*`: replace the whole spec)."""
    if not paths or list(paths) == ["*"]:
        return clone(incoming.spec)
    merged = clone(current)
    field_mask_pb2.FieldMask(paths=list(paths)).MergeMessage(
        incoming, merged, replace_message_field=True, replace_repeated_field=True
    )
    return merged.spec


def mac_key(mac: bytes) -> str:
    """net.HardwareAddr.String(), the key of upstream's per-bridge MAC table."""
    return ":".join(f"{byte:02x}" for byte in mac)
