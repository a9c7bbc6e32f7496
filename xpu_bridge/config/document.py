"""The whole config document, and the combinations of its sections that cannot work."""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Literal

from pydantic import Field, field_validator, model_validator

from xpu_bridge.config.base import StrictModel, field_error
from xpu_bridge.config.host_agent import (
    DPU_VENDOR_PLUGIN,
    OPI_EVPN_BRIDGE,
    HostAgentConfig,
    ReleaseConfig,
)
from xpu_bridge.config.pools import DNS_SUBDOMAIN, PfConfig, ResourceConfig

API_VERSION = "xpu-bridge/v1"
SUPPORTED_API_VERSIONS = (API_VERSION,)
PORT_ID_PREFIX = re.compile(r"^([a-z][a-z0-9-]*[a-z0-9])?\Z")
CDI_VENDOR_OR_CLASS = re.compile(r"^[A-Za-z]([A-Za-z0-9_.-]*[A-Za-z0-9])?\Z")
"""A CDI kind's vendor and class (container-device-interface pkg/parser): a letter first,
a letter or digit last, letters, digits, `_`, `.` and `-` between."""
CDI_DEVICE_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.:-]*[A-Za-z0-9])?\Z")
"""A CDI device name: as a class, but it may start with a digit and hold `:` (PCI addresses)."""


def shown(value: object, limit: int = 60) -> str:
    """A value as a problem quotes it: its repr, cut to `limit` characters (an int too long to
    print, which repr refuses, as such)."""
    try:
        text = repr(value)
    except ValueError:
        return "a number too long to show"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def unsupported_version(version: object) -> str:
    return (
        f"{shown(version)} is not supported; this xpu-bridge reads "
        f"{', '.join(SUPPORTED_API_VERSIONS)} (leaving it out means {API_VERSION})"
    )


class CdiConfig(StrictModel):
    """`cdi`: answer vfio VFs as CDI devices and keep one CDI spec file per pool in specDir.
    Only a restart applies a change (config/changes.py)."""

    enabled: bool = False
    spec_dir: str = Field(default="/var/run/cdi", alias="specDir", min_length=1)

    @field_validator("spec_dir")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not PurePosixPath(value).is_absolute():
            raise ValueError(
                f"{shown(value)} is not an absolute path; use the directory the container "
                "runtime reads CDI specs from, such as /var/run/cdi"
            )
        return value


class Config(StrictModel):
    api_version: str = Field(default=API_VERSION, alias="apiVersion")
    mode: Literal["host", "dpu"] = "host"
    host_agent: HostAgentConfig = Field(default_factory=HostAgentConfig, alias="hostAgent")
    port_id_prefix: str = Field(default="", alias="portIdPrefix", max_length=20)
    resource_prefix: str = Field(default="opi.io", alias="resourcePrefix")
    rescan_interval_seconds: float = Field(
        default=30.0, gt=0, le=3600, alias="rescanIntervalSeconds"
    )
    release: ReleaseConfig = Field(default_factory=ReleaseConfig)
    pfs: list[PfConfig] = Field(default_factory=list)
    resource_list: list[ResourceConfig] = Field(alias="resourceList", min_length=1)
    cdi: CdiConfig = Field(default_factory=CdiConfig)

    @field_validator("api_version")
    @classmethod
    def _supported_version(cls, value: str) -> str:
        if value not in SUPPORTED_API_VERSIONS:
            raise ValueError(unsupported_version(value))
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
        seen: dict[str, int] = {}
        for index, resource in enumerate(self.resource_list):
            full = self.full_resource_name(resource)
            if full in seen:
                raise field_error(
                    ("resourceList", index, "resourceName"),
                    f"resource {full} is configured twice (also resourceList[{seen[full]}])",
                )
            seen[full] = index
        return self

    @model_validator(mode="after")
    def _cdi_names(self) -> Config:
        """With cdi on, each pool's resource name is its CDI kind (`vendor/class`)."""
        if not self.cdi.enabled:
            return self
        for index, resource in enumerate(self.resource_list):
            own = resource.resource_prefix is not None
            vendor = resource.resource_prefix or self.resource_prefix
            for where, name, what in (
                (("resourceList", index, "resourcePrefix") if own else (), vendor, "vendor"),
                (("resourceList", index, "resourceName"), resource.resource_name, "class"),
            ):
                if not CDI_VENDOR_OR_CLASS.match(name):
                    raise field_error(
                        where or "resourcePrefix",
                        f"{name} is not a valid CDI {what} (cdi.enabled makes "
                        f"{self.full_resource_name(resource)} a CDI kind): start with a "
                        "letter, end with a letter or digit, and use only letters, digits, "
                        "'_', '.' and '-'",
                    )
        return self

    @model_validator(mode="after")
    def _works_with_the_agent(self) -> Config:
        """Reported one line per problem, each naming its own path (see loading.py)."""
        problems = backend_problems(self)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def full_resource_name(self, resource: ResourceConfig) -> str:
        return f"{resource.resource_prefix or self.resource_prefix}/{resource.resource_name}"

    @property
    def vendor_plugin(self) -> bool:
        return self.host_agent.api == DPU_VENDOR_PLUGIN


def backend_problems(config: Config) -> list[str]:
    """What the chosen host agent cannot do with this config, as `path: problem` lines."""
    if config.host_agent.api == OPI_EVPN_BRIDGE:
        return _opi_problems(config)
    return _vendor_plugin_problems(config)


def _opi_problems(config: Config) -> list[str]:
    problems = []
    if config.mode == "dpu":
        problems.append("mode: dpu needs hostAgent.api dpu-vendor-plugin")
    for index, resource in enumerate(config.resource_list):
        where = f"resourceList[{index}]"
        if resource.bridge_port.vlan is not None:
            problems.append(
                f"{where}.bridgePort.vlan: a VLAN is what a dpu-vendor-plugin takes; "
                "opi-evpn-bridge ports name logicalBridges"
            )
        elif not resource.bridge_port.logical_bridges:
            problems.append(f"{where}.bridgePort.logicalBridges: is required")
        if resource.network_function:
            problems.append(
                f"{where}.networkFunction: network functions need mode dpu and "
                "hostAgent.api dpu-vendor-plugin"
            )
    return problems


def _vendor_plugin_problems(config: Config) -> list[str]:
    problems = []
    if config.port_id_prefix:
        problems.append(
            "portIdPrefix: applies to opi-evpn-bridge port IDs; a vendor plugin names ports "
            "by hostAgent.portNameTemplate"
        )
    if len(config.pfs) > 1:
        problems.append(
            "pfs: a vendor plugin creates VFs with one SetNumVfs for its own PF; list one PF"
        )
    fields = config.host_agent.template_fields
    for index, resource in enumerate(config.resource_list):
        where = f"resourceList[{index}]"
        if resource.bridge_port.logical_bridges:
            problems.append(
                f"{where}.bridgePort.logicalBridges: a dpu-vendor-plugin takes a VLAN, not "
                "logical bridges: set bridgePort.vlan (2-4094) instead"
            )
        elif resource.bridge_port.vlan is None:
            problems.append(
                f"{where}.bridgePort.vlan: is required with hostAgent.api dpu-vendor-plugin "
                "(a VLAN ID, 2-4094)"
            )
        wanted = "vf" if resource.device_type == "netDevice" else "sfnum"
        if wanted not in fields:
            problems.append(
                f"{where}.deviceType: {resource.device_type} ports are named by "
                f"{{{wanted}}}, which hostAgent.portNameTemplate "
                f"{config.host_agent.port_name_template!r} does not use"
            )
        if resource.network_function and config.mode != "dpu":
            problems.append(f"{where}.networkFunction: network functions need mode dpu")
    return problems
