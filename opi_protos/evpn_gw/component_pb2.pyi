from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CompStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMP_STATUS_UNSPECIFIED: _ClassVar[CompStatus]
    COMP_STATUS_PENDING: _ClassVar[CompStatus]
    COMP_STATUS_SUCCESS: _ClassVar[CompStatus]
    COMP_STATUS_ERROR: _ClassVar[CompStatus]
COMP_STATUS_UNSPECIFIED: CompStatus
COMP_STATUS_PENDING: CompStatus
COMP_STATUS_SUCCESS: CompStatus
COMP_STATUS_ERROR: CompStatus

class Component(_message.Message):
    __slots__ = ("name", "status", "details")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    name: str
    status: CompStatus
    details: str
    def __init__(self, name: _Optional[str] = ..., status: _Optional[_Union[CompStatus, str]] = ..., details: _Optional[str] = ...) -> None: ...
