from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from opi_protos.evpn_gw import component_pb2 as _component_pb2
from opi_protos.opinetcommon import networktypes_pb2 as _networktypes_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LBOperStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LB_OPER_STATUS_UNSPECIFIED: _ClassVar[LBOperStatus]
    LB_OPER_STATUS_UP: _ClassVar[LBOperStatus]
    LB_OPER_STATUS_DOWN: _ClassVar[LBOperStatus]
    LB_OPER_STATUS_TO_BE_DELETED: _ClassVar[LBOperStatus]

class BPOperStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BP_OPER_STATUS_UNSPECIFIED: _ClassVar[BPOperStatus]
    BP_OPER_STATUS_UP: _ClassVar[BPOperStatus]
    BP_OPER_STATUS_DOWN: _ClassVar[BPOperStatus]
    BP_OPER_STATUS_TO_BE_DELETED: _ClassVar[BPOperStatus]

class BridgePortType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BRIDGE_PORT_TYPE_UNSPECIFIED: _ClassVar[BridgePortType]
    BRIDGE_PORT_TYPE_ACCESS: _ClassVar[BridgePortType]
    BRIDGE_PORT_TYPE_TRUNK: _ClassVar[BridgePortType]
LB_OPER_STATUS_UNSPECIFIED: LBOperStatus
LB_OPER_STATUS_UP: LBOperStatus
LB_OPER_STATUS_DOWN: LBOperStatus
LB_OPER_STATUS_TO_BE_DELETED: LBOperStatus
BP_OPER_STATUS_UNSPECIFIED: BPOperStatus
BP_OPER_STATUS_UP: BPOperStatus
BP_OPER_STATUS_DOWN: BPOperStatus
BP_OPER_STATUS_TO_BE_DELETED: BPOperStatus
BRIDGE_PORT_TYPE_UNSPECIFIED: BridgePortType
BRIDGE_PORT_TYPE_ACCESS: BridgePortType
BRIDGE_PORT_TYPE_TRUNK: BridgePortType

class LogicalBridge(_message.Message):
    __slots__ = ("name", "spec", "status")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    name: str
    spec: LogicalBridgeSpec
    status: LogicalBridgeStatus
    def __init__(self, name: _Optional[str] = ..., spec: _Optional[_Union[LogicalBridgeSpec, _Mapping]] = ..., status: _Optional[_Union[LogicalBridgeStatus, _Mapping]] = ...) -> None: ...

class LogicalBridgeSpec(_message.Message):
    __slots__ = ("vlan_id", "vni", "vtep_ip_prefix")
    VLAN_ID_FIELD_NUMBER: _ClassVar[int]
    VNI_FIELD_NUMBER: _ClassVar[int]
    VTEP_IP_PREFIX_FIELD_NUMBER: _ClassVar[int]
    vlan_id: int
    vni: int
    vtep_ip_prefix: _networktypes_pb2.IPPrefix
    def __init__(self, vlan_id: _Optional[int] = ..., vni: _Optional[int] = ..., vtep_ip_prefix: _Optional[_Union[_networktypes_pb2.IPPrefix, _Mapping]] = ...) -> None: ...

class LogicalBridgeStatus(_message.Message):
    __slots__ = ("oper_status", "components")
    OPER_STATUS_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    oper_status: LBOperStatus
    components: _containers.RepeatedCompositeFieldContainer[_component_pb2.Component]
    def __init__(self, oper_status: _Optional[_Union[LBOperStatus, str]] = ..., components: _Optional[_Iterable[_Union[_component_pb2.Component, _Mapping]]] = ...) -> None: ...

class CreateLogicalBridgeRequest(_message.Message):
    __slots__ = ("logical_bridge_id", "logical_bridge")
    LOGICAL_BRIDGE_ID_FIELD_NUMBER: _ClassVar[int]
    LOGICAL_BRIDGE_FIELD_NUMBER: _ClassVar[int]
    logical_bridge_id: str
    logical_bridge: LogicalBridge
    def __init__(self, logical_bridge_id: _Optional[str] = ..., logical_bridge: _Optional[_Union[LogicalBridge, _Mapping]] = ...) -> None: ...

class ListLogicalBridgesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListLogicalBridgesResponse(_message.Message):
    __slots__ = ("logical_bridges", "next_page_token")
    LOGICAL_BRIDGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    logical_bridges: _containers.RepeatedCompositeFieldContainer[LogicalBridge]
    next_page_token: str
    def __init__(self, logical_bridges: _Optional[_Iterable[_Union[LogicalBridge, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetLogicalBridgeRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteLogicalBridgeRequest(_message.Message):
    __slots__ = ("name", "allow_missing")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALLOW_MISSING_FIELD_NUMBER: _ClassVar[int]
    name: str
    allow_missing: bool
    def __init__(self, name: _Optional[str] = ..., allow_missing: _Optional[bool] = ...) -> None: ...

class UpdateLogicalBridgeRequest(_message.Message):
    __slots__ = ("logical_bridge", "update_mask", "allow_missing")
    LOGICAL_BRIDGE_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    ALLOW_MISSING_FIELD_NUMBER: _ClassVar[int]
    logical_bridge: LogicalBridge
    update_mask: _field_mask_pb2.FieldMask
    allow_missing: bool
    def __init__(self, logical_bridge: _Optional[_Union[LogicalBridge, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ..., allow_missing: _Optional[bool] = ...) -> None: ...

class BridgePort(_message.Message):
    __slots__ = ("name", "spec", "status")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    name: str
    spec: BridgePortSpec
    status: BridgePortStatus
    def __init__(self, name: _Optional[str] = ..., spec: _Optional[_Union[BridgePortSpec, _Mapping]] = ..., status: _Optional[_Union[BridgePortStatus, _Mapping]] = ...) -> None: ...

class BridgePortSpec(_message.Message):
    __slots__ = ("mac_address", "ptype", "logical_bridges")
    MAC_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PTYPE_FIELD_NUMBER: _ClassVar[int]
    LOGICAL_BRIDGES_FIELD_NUMBER: _ClassVar[int]
    mac_address: bytes
    ptype: BridgePortType
    logical_bridges: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, mac_address: _Optional[bytes] = ..., ptype: _Optional[_Union[BridgePortType, str]] = ..., logical_bridges: _Optional[_Iterable[str]] = ...) -> None: ...

class BridgePortStatus(_message.Message):
    __slots__ = ("oper_status", "components")
    OPER_STATUS_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    oper_status: BPOperStatus
    components: _containers.RepeatedCompositeFieldContainer[_component_pb2.Component]
    def __init__(self, oper_status: _Optional[_Union[BPOperStatus, str]] = ..., components: _Optional[_Iterable[_Union[_component_pb2.Component, _Mapping]]] = ...) -> None: ...

class CreateBridgePortRequest(_message.Message):
    __slots__ = ("bridge_port_id", "bridge_port")
    BRIDGE_PORT_ID_FIELD_NUMBER: _ClassVar[int]
    BRIDGE_PORT_FIELD_NUMBER: _ClassVar[int]
    bridge_port_id: str
    bridge_port: BridgePort
    def __init__(self, bridge_port_id: _Optional[str] = ..., bridge_port: _Optional[_Union[BridgePort, _Mapping]] = ...) -> None: ...

class ListBridgePortsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListBridgePortsResponse(_message.Message):
    __slots__ = ("bridge_ports", "next_page_token")
    BRIDGE_PORTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    bridge_ports: _containers.RepeatedCompositeFieldContainer[BridgePort]
    next_page_token: str
    def __init__(self, bridge_ports: _Optional[_Iterable[_Union[BridgePort, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetBridgePortRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteBridgePortRequest(_message.Message):
    __slots__ = ("name", "allow_missing")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALLOW_MISSING_FIELD_NUMBER: _ClassVar[int]
    name: str
    allow_missing: bool
    def __init__(self, name: _Optional[str] = ..., allow_missing: _Optional[bool] = ...) -> None: ...

class UpdateBridgePortRequest(_message.Message):
    __slots__ = ("bridge_port", "update_mask", "allow_missing")
    BRIDGE_PORT_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    ALLOW_MISSING_FIELD_NUMBER: _ClassVar[int]
    bridge_port: BridgePort
    update_mask: _field_mask_pb2.FieldMask
    allow_missing: bool
    def __init__(self, bridge_port: _Optional[_Union[BridgePort, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ..., allow_missing: _Optional[bool] = ...) -> None: ...
