"""Daemon configuration: the YAML/JSON schema, its validation, and path-qualified error messages."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from xpu_bridge.common.addresses import parse_host_port, unix_socket_path
from xpu_bridge.common.errors import ProblemsError
from xpu_bridge.common.pci import HEX_ID, PCI_ADDRESS

API_VERSION = "xpu-bridge/v1"
SUPPORTED_API_VERSIONS = (API_VERSION,)

RESOURCE_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?\Z")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
PORT_ID_PREFIX = re.compile(r"^([a-z][a-z0-9-]*[a-z0-9])?\Z")
PF_NAME = re.compile(r"^(?P<name>[^#\s/]+)(#(?P<ranges>.+))?\Z")
RANGE_ITEM = re.compile(r"^(\d+)(-(\d+))?\Z")


class ConfigError(ProblemsError):
    """A configuration problem; `problems` holds one human-readable line per problem."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class TLSConfig(StrictModel):
    ca_file: Path = Field(alias="caFile")
    cert_file: Path | None = Field(default=None, alias="certFile")
    key_file: Path | None = Field(default=None, alias="keyFile")

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("certFile and keyFile must be given together")
        return self


class HostAgentConfig(StrictModel):
    endpoint: str = "unix:///var/run/xpu-host-agent/agent.sock"
    tls: TLSConfig | None = None
    rpc_timeout_seconds: float = Field(default=2.0, gt=0, le=300, alias="rpcTimeoutSeconds")
    attach_timeout_seconds: float = Field(default=10.0, gt=0, le=600, alias="attachTimeoutSeconds")
    unhealthy_after_seconds: float = Field(
        default=30.0, ge=0, le=3600, alias="unhealthyAfterSeconds"
    )

    @field_validator("endpoint")
    @classmethod
    def _endpoint_shape(cls, value: str) -> str:
        socket = unix_socket_path(value)
        if socket is not None:
            if not socket.is_absolute():
                raise ValueError("a unix endpoint needs an absolute path: unix:///path/to.sock")
            return value
        try:
            parse_host_port(value, allow_port_zero=False)
        except ValueError:
            raise ValueError("must be unix:///path or host:port") from None
        return value

    @model_validator(mode="after")
    def _tls_only_on_tcp(self) -> HostAgentConfig:
        if self.tls is not None and unix_socket_path(self.endpoint) is not None:
            raise ValueError("tls applies to host:port endpoints only, not unix sockets")
        if self.attach_timeout_seconds < self.rpc_timeout_seconds:
            raise ValueError("attachTimeoutSeconds must be at least rpcTimeoutSeconds")
        return self


class ReleaseConfig(StrictModel):
    """When ports no container holds are deleted, and what holds a release back."""

    interval_seconds: float = Field(default=5.0, gt=0, le=3600, alias="intervalSeconds")
    grace_seconds: float = Field(default=30.0, ge=0, le=86400, alias="graceSeconds")
    holdoff_seconds: float = Field(default=120.0, ge=0, le=86400, alias="holdoffSeconds")
    hook_socket: Path | None = Field(default=None, alias="hookSocket")

    @field_validator("hook_socket")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_absolute():
            raise ValueError("must be an absolute path such as /run/xpu-bridge/release.sock")
        return value


def parse_ranges(text: str) -> frozenset[int]:
    """Expand `0-3,7` into {0, 1, 2, 3, 7}."""
    indexes: set[int] = set()
    for item in text.split(","):
        match = RANGE_ITEM.match(item.strip())
        if not match:
            raise ValueError(f"bad range {item!r}: use N or N-M, comma separated")
        low = int(match.group(1))
        high = int(match.group(3)) if match.group(3) else low
        if high < low:
            raise ValueError(f"bad range {item!r}: end is before start")
        if high - low > 4096:
            raise ValueError(f"bad range {item!r}: more than 4096 functions")
        indexes.update(range(low, high + 1))
    return frozenset(indexes)


class PfNameSelector(BaseModel):
    """One `pfNames` entry: a PF netdev name, optionally limited to function indexes."""

    model_config = ConfigDict(frozen=True)
    name: str
    indexes: frozenset[int] | None = None

    @classmethod
    def parse(cls, text: str) -> PfNameSelector:
        match = PF_NAME.match(text)
        if not match:
            raise ValueError(f"bad pfNames entry {text!r}: use NAME or NAME#0-3,7")
        ranges = match.group("ranges")
        return cls(name=match.group("name"), indexes=parse_ranges(ranges) if ranges else None)


def _lower_all(values: list[str], pattern: re.Pattern[str], what: str) -> list[str]:
    lowered = [value.strip().lower().removeprefix("0x") for value in values]
    for value in lowered:
        if not pattern.match(value):
            raise ValueError(f"{value!r} is not a {what}")
    return lowered


class Selector(StrictModel):
    """Device filter; every field given must match (AND), any value within a field (OR)."""

    vendors: list[str] | None = None
    devices: list[str] | None = None
    drivers: list[str] | None = None
    pf_names: list[str] | None = Field(default=None, alias="pfNames")
    pci_addresses: list[str] | None = Field(default=None, alias="pciAddresses")
    root_devices: list[str] | None = Field(default=None, alias="rootDevices")
    aux_types: list[str] | None = Field(default=None, alias="auxTypes")

    @field_validator("vendors", "devices")
    @classmethod
    def _hex_ids(cls, values: list[str] | None) -> list[str] | None:
        return None if values is None else _lower_all(values, HEX_ID, "4-digit hex ID")

    @field_validator("pci_addresses", "root_devices")
    @classmethod
    def _pci(cls, values: list[str] | None) -> list[str] | None:
        if values is None:
            return None
        return _lower_all(values, PCI_ADDRESS, "PCI address like 0000:3b:02.1")

    @field_validator("pf_names")
    @classmethod
    def _pf_names(cls, values: list[str] | None) -> list[str] | None:
        for value in values or []:
            PfNameSelector.parse(value)
        return values

    @model_validator(mode="after")
    def _not_empty(self) -> Selector:
        if all(getattr(self, name) is None for name in type(self).model_fields):
            raise ValueError("a selector needs at least one field (vendors, devices, ...)")
        return self

    @property
    def pf_name_selectors(self) -> list[PfNameSelector]:
        return [PfNameSelector.parse(value) for value in self.pf_names or []]


class BridgePortConfig(StrictModel):
    type: Literal["access", "trunk"] = "access"
    logical_bridges: list[str] = Field(alias="logicalBridges", min_length=1)

    @model_validator(mode="after")
    def _access_has_one_bridge(self) -> BridgePortConfig:
        if self.type == "access" and len(self.logical_bridges) != 1:
            raise ValueError("an access port needs exactly one logical bridge")
        if len(set(self.logical_bridges)) != len(self.logical_bridges):
            raise ValueError("logicalBridges lists a bridge twice")
        return self


class ResourceConfig(StrictModel):
    resource_name: str = Field(alias="resourceName", min_length=1, max_length=63)
    resource_prefix: str | None = Field(default=None, alias="resourcePrefix")
    device_type: Literal["netDevice", "auxNetDevice"] = Field(
        default="netDevice", alias="deviceType"
    )
    selectors: list[Selector] = Field(min_length=1)
    bridge_port: BridgePortConfig = Field(alias="bridgePort")
    allocation_policy: Literal["spread", "pack"] = Field(default="spread", alias="allocationPolicy")

    @field_validator("resource_name")
    @classmethod
    def _resource_name(cls, value: str) -> str:
        if not RESOURCE_NAME.match(value):
            raise ValueError("must be letters, digits, '-', '_' or '.', starting and ending alnum")
        return value

    @field_validator("resource_prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        if value is not None and not DNS_SUBDOMAIN.match(value):
            raise ValueError("must be a DNS subdomain such as opi.io")
        return value


class Config(StrictModel):
    api_version: str = Field(default=API_VERSION, alias="apiVersion")
    host_agent: HostAgentConfig = Field(default_factory=HostAgentConfig, alias="hostAgent")
    port_id_prefix: str = Field(default="", alias="portIdPrefix", max_length=20)
    resource_prefix: str = Field(default="opi.io", alias="resourcePrefix")
    rescan_interval_seconds: float = Field(
        default=30.0, gt=0, le=3600, alias="rescanIntervalSeconds"
    )
    release: ReleaseConfig = Field(default_factory=ReleaseConfig)
    resource_list: list[ResourceConfig] = Field(alias="resourceList", min_length=1)

    @field_validator("api_version")
    @classmethod
    def _supported_version(cls, value: str) -> str:
        if value not in SUPPORTED_API_VERSIONS:
            raise ValueError(_unsupported(value))
        return value

    @field_validator("port_id_prefix")
    @classmethod
    def _port_prefix(cls, value: str) -> str:
        if not PORT_ID_PREFIX.match(value):
            raise ValueError("must be lower-case letters, digits and '-', starting with a letter")
        return value

    @field_validator("resource_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not DNS_SUBDOMAIN.match(value) or value.endswith("kubernetes.io"):
            raise ValueError("must be a DNS subdomain outside kubernetes.io, such as opi.io")
        return value

    @model_validator(mode="after")
    def _unique_resources(self) -> Config:
        seen: set[str] = set()
        for resource in self.resource_list:
            full = self.full_resource_name(resource)
            if full in seen:
                raise ValueError(f"resource {full} is configured twice")
            seen.add(full)
        return self

    def full_resource_name(self, resource: ResourceConfig) -> str:
        return f"{resource.resource_prefix or self.resource_prefix}/{resource.resource_name}"


def _location(loc: tuple[int | str, ...]) -> str:
    """Render a pydantic error location as `resourceList[0].bridgePort.type`."""
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item.startswith(("function-", "literal[")) or item in {"list[str]", "str"}:
            continue
        else:
            parts.append(("." if parts else "") + item)
    return "".join(parts) or "(top level)"


def _message(error: ErrorDetails) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "is required"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def validation_problems(error: ValidationError) -> list[str]:
    return [f"{_location(e['loc'])}: {_message(e)}" for e in error.errors()]


def _check_api_version(raw: dict[str, object]) -> None:
    """Checked before anything else: a document of another version would only add noise."""
    version = raw.get("apiVersion", raw.get("api_version", API_VERSION))
    if version not in SUPPORTED_API_VERSIONS:
        raise ConfigError([f"apiVersion: {_unsupported(version)}"])


def _unsupported(version: object) -> str:
    return (
        f"{version!r} is not supported; this xpu-bridge reads "
        f"{', '.join(SUPPORTED_API_VERSIONS)} (leaving it out means {API_VERSION})"
    )


def parse_config(raw: object) -> Config:
    """Validate an already-decoded document; raises ConfigError with one line per problem."""
    if not isinstance(raw, dict):
        raise ConfigError(["(top level): must be a mapping with hostAgent, resourceList, ..."])
    _check_api_version(raw)
    try:
        return Config.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(validation_problems(error)) from None


def load_config(path: Path) -> Config:
    """Read a YAML or JSON file and validate it; messages leave the file name to the caller."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError([f"cannot read: {error.strerror or error}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(["is not UTF-8 text"]) from None
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError([f"not valid YAML/JSON{line}: {_short(error)}"]) from None
    return parse_config(raw)


def _short(error: Exception) -> str:
    return " ".join(str(error).split())[:200]
