"""The `hostAgent` and `release` sections: which agent, how to reach it, when to release."""

from __future__ import annotations

import ipaddress
import re
import string
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, StrictBool, field_validator, model_validator

from xpu_bridge.common.addresses import parse_host_port, unix_socket_path
from xpu_bridge.config.base import StrictModel, field_error

AgentApi = Literal["opi-evpn-bridge", "dpu-vendor-plugin"]
OPI_EVPN_BRIDGE: AgentApi = "opi-evpn-bridge"
DPU_VENDOR_PLUGIN: AgentApi = "dpu-vendor-plugin"
DEFAULT_ENDPOINTS: dict[str, str] = {
    OPI_EVPN_BRIDGE: "unix:///var/run/xpu-host-agent/agent.sock",
    DPU_VENDOR_PLUGIN: "unix:///var/run/dpu-daemon/vendor-plugin/vendor-plugin.sock",
}
TEMPLATE_FIELDS = frozenset({"pf", "vf", "sfnum"})
TEMPLATE_TEXT = re.compile(r"^[A-Za-z0-9._-]*\Z")
PLAINTEXT_FIX = (
    "set hostAgent.tls (mTLS) or, to accept plaintext on the network, hostAgent.insecure: true"
)


class TLSConfig(StrictModel):
    ca_file: Path = Field(alias="caFile")
    cert_file: Path | None = Field(default=None, alias="certFile")
    key_file: Path | None = Field(default=None, alias="keyFile")

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            missing = "keyFile" if self.key_file is None else "certFile"
            raise field_error(missing, "certFile and keyFile must be given together")
        return self


def is_loopback(host: str) -> bool:
    """`localhost`, 127.0.0.0/8 and ::1 (IPv4-mapped included): traffic that stays on the node."""
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def template_fields(template: str) -> set[str]:
    """The placeholders of a port name template; ValueError for a malformed one."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        raise ValueError(f"{template!r} is not a name template: {error}") from None
    fields = {name for _, name, _, _ in parsed if name is not None}
    for position, (literal, name, spec, _) in enumerate(parsed):
        if not TEMPLATE_TEXT.match(literal) or spec:
            raise ValueError(
                f"{template!r}: a port name takes letters, digits, '.', '_' and '-' around "
                "the placeholders, and no format specs"
            )
        if position and name is not None and not literal and parsed[position - 1][1]:
            raise ValueError(
                f"{template!r}: two placeholders side by side cannot be told apart "
                "(host{pf}{vf} is host111 for both 1/11 and 11/1): put a '-' between them"
            )
    unknown = fields - TEMPLATE_FIELDS
    if "" in fields or unknown:
        raise ValueError(
            f"{template!r} uses {sorted(unknown) or ['{}']}; the placeholders are "
            "{pf} (the PF's position on the node), {vf} (the VF index) and {sfnum} (an SF's)"
        )
    return fields


class HostAgentConfig(StrictModel):
    api: AgentApi = OPI_EVPN_BRIDGE
    endpoint: str = DEFAULT_ENDPOINTS[OPI_EVPN_BRIDGE]
    tls: TLSConfig | None = None
    insecure: StrictBool = False
    """Plaintext gRPC to a host:port that is not loopback: asked for explicitly, never implied."""
    rpc_timeout_seconds: float = Field(default=2.0, gt=0, le=300, alias="rpcTimeoutSeconds")
    attach_timeout_seconds: float = Field(default=10.0, gt=0, le=600, alias="attachTimeoutSeconds")
    unhealthy_after_seconds: float = Field(
        default=30.0, ge=0, le=3600, alias="unhealthyAfterSeconds"
    )
    port_name_template: str = Field(default="host{pf}-{vf}", alias="portNameTemplate")
    heartbeat_seconds: float = Field(default=5.0, gt=0, le=300, alias="heartbeatSeconds")
    failing_creates_unready: int = Field(default=5, ge=0, le=10_000, alias="failingCreatesUnready")
    """This many CreateBridgePort failures in a row make the node not ready; 0 disables."""

    @model_validator(mode="before")
    @classmethod
    def _endpoint_of_the_api(cls, data: Any) -> Any:
        """Each api has its usual socket; an endpoint given explicitly wins."""
        if isinstance(data, dict) and "endpoint" not in data:
            api = data.get("api", OPI_EVPN_BRIDGE)
            if api in DEFAULT_ENDPOINTS:
                return {**data, "endpoint": DEFAULT_ENDPOINTS[api]}
        return data

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

    @field_validator("port_name_template")
    @classmethod
    def _template_shape(cls, value: str) -> str:
        fields = template_fields(value)
        if not fields & {"vf", "sfnum"}:
            raise ValueError(
                f"{value!r} names every function alike: it needs {{vf}} (VF pools) "
                "or {sfnum} (SF pools)"
            )
        if {"vf", "sfnum"} <= fields:
            raise ValueError(f"{value!r}: use {{vf}} or {{sfnum}}, not both")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> HostAgentConfig:
        unix = unix_socket_path(self.endpoint) is not None
        if self.tls is not None and unix:
            raise field_error("tls", "tls applies to host:port endpoints only, not unix sockets")
        if self.api == DPU_VENDOR_PLUGIN and not unix:
            raise field_error(
                "endpoint",
                "a dpu-vendor-plugin listens on a unix socket: set endpoint to "
                f"{DEFAULT_ENDPOINTS[DPU_VENDOR_PLUGIN]} (or leave it out)",
            )
        if self.insecure and self.tls is not None:
            raise field_error(
                "insecure", "insecure: true contradicts tls (mTLS): remove one of the two"
            )
        if not unix and self.tls is None and not self.insecure:
            host, _ = parse_host_port(self.endpoint)
            if not is_loopback(host):
                raise field_error(
                    "endpoint",
                    f"{self.endpoint} is not loopback, and gRPC to it would be plaintext: "
                    + PLAINTEXT_FIX,
                )
        if self.attach_timeout_seconds < self.rpc_timeout_seconds:
            raise field_error(
                "attachTimeoutSeconds", "attachTimeoutSeconds must be at least rpcTimeoutSeconds"
            )
        return self

    @property
    def template_fields(self) -> set[str]:
        return template_fields(self.port_name_template)


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
