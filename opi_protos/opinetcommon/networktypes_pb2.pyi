from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class IpAf(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IP_AF_UNSPECIFIED: _ClassVar[IpAf]
    IP_AF_INET: _ClassVar[IpAf]
    IP_AF_INET6: _ClassVar[IpAf]
IP_AF_UNSPECIFIED: IpAf
IP_AF_INET: IpAf
IP_AF_INET6: IpAf

class IPAddress(_message.Message):
    __slots__ = ("af", "v4_addr", "v6_addr")
    AF_FIELD_NUMBER: _ClassVar[int]
    V4_ADDR_FIELD_NUMBER: _ClassVar[int]
    V6_ADDR_FIELD_NUMBER: _ClassVar[int]
    af: IpAf
    v4_addr: int
    v6_addr: bytes
    def __init__(self, af: _Optional[_Union[IpAf, str]] = ..., v4_addr: _Optional[int] = ..., v6_addr: _Optional[bytes] = ...) -> None: ...

class IPPrefix(_message.Message):
    __slots__ = ("addr", "len")
    ADDR_FIELD_NUMBER: _ClassVar[int]
    LEN_FIELD_NUMBER: _ClassVar[int]
    addr: IPAddress
    len: int
    def __init__(self, addr: _Optional[_Union[IPAddress, _Mapping]] = ..., len: _Optional[int] = ...) -> None: ...
