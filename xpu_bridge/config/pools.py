"""The `resourceList` and `pfs` sections: pools, their selectors and ports, VFs to create."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from xpu_bridge.common.pci import HEX_ID, PCI_ADDRESS
from xpu_bridge.config.base import StrictModel, field_error

RESOURCE_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?\Z")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
PF_NAME = re.compile(r"^(?P<name>[^#\s/]+)(#(?P<ranges>.+))?\Z")
# ASCII digits, no more than a VF index has (virtfnN): int() of more would fail or take long.
RANGE_ITEM = re.compile(r"^([0-9]{1,5})(-([0-9]{1,5}))?\Z")
MAX_VFS = 4096


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

    @field_validator("vendors", "devices", mode="before")
    @classmethod
    def _quoted(cls, values: object) -> object:
        """`vendors: [8086]` is what everyone writes first; YAML reads it as a number (and
        `0154` as the octal number 108), so the text cannot be recovered: say how to write it."""
        if isinstance(values, list):
            for index, value in enumerate(values):
                if isinstance(value, int | float) and not isinstance(value, bool):
                    raise field_error(
                        (index,),
                        f"{value} is a number, not a hex ID: quote each ID, e.g. "
                        '["8086", "0154"] (YAML reads unquoted digits as a number, and a '
                        "leading 0 as octal)",
                    )
        return values

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
            # No field to name: the empty mapping itself is the leaf at fault.
            raise ValueError("a selector needs at least one field (vendors, devices, ...)")
        return self

    @property
    def pf_name_selectors(self) -> list[PfNameSelector]:
        return [PfNameSelector.parse(value) for value in self.pf_names or []]


class BridgePortConfig(StrictModel):
    """The port a pool's devices get: logical bridges (opi-evpn-bridge) or a VLAN (a vendor
    plugin, which reads logical_bridges[0] as the VLAN ID)."""

    type: Literal["access", "trunk"] = "access"
    logical_bridges: list[str] = Field(default_factory=list, alias="logicalBridges")
    vlan: int | None = Field(default=None, ge=2, le=4094)
    prewarm: int = Field(default=0, ge=0, le=MAX_VFS, strict=True)
    """Free devices of the pool kept attached and UP ahead of demand (release/prewarm.py)."""

    @model_validator(mode="after")
    def _bridges_or_vlan(self) -> BridgePortConfig:
        if self.vlan is not None:
            if self.logical_bridges:
                raise field_error("vlan", "give logicalBridges or vlan, not both")
            if self.type != "access":
                raise field_error(
                    "type", "a VLAN port is an access port: leave out type or set access"
                )
            return self
        if self.type == "access" and len(self.logical_bridges) > 1:
            raise field_error("logicalBridges", "an access port needs exactly one logical bridge")
        for index, bridge in enumerate(self.logical_bridges):
            if bridge in self.logical_bridges[:index]:
                raise field_error(("logicalBridges", index), "logicalBridges lists a bridge twice")
        return self

    @property
    def on_the_wire(self) -> tuple[str, ...]:
        """`BridgePortSpec.logical_bridges` as sent: the bridges, or the VLAN as a string."""
        return (str(self.vlan),) if self.vlan is not None else tuple(self.logical_bridges)

    def describe(self) -> str:
        warm = f", {self.prewarm} prewarmed" if self.prewarm else ""
        if self.vlan is not None:
            return f"access port on VLAN {self.vlan}{warm}"
        return f"{self.type} port on {', '.join(self.logical_bridges)}{warm}"

    def same_port(self, other: BridgePortConfig) -> bool:
        """Whether ports made for `other` are ports of this config (prewarm aside)."""
        return (self.type, self.logical_bridges, self.vlan) == (
            other.type,
            other.logical_bridges,
            other.vlan,
        )


class ResourceConfig(StrictModel):
    resource_name: str = Field(alias="resourceName", min_length=1, max_length=63)
    resource_prefix: str | None = Field(default=None, alias="resourcePrefix")
    device_type: Literal["netDevice", "auxNetDevice"] = Field(
        default="netDevice", alias="deviceType"
    )
    selectors: list[Selector] = Field(min_length=1)
    bridge_port: BridgePortConfig = Field(alias="bridgePort")
    allocation_policy: Literal["spread", "pack"] = Field(default="spread", alias="allocationPolicy")
    network_function: bool = Field(default=False, alias="networkFunction")
    """DPU side: each container takes two devices, chained as one network function."""

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


class PfConfig(StrictModel):
    """A PF whose VFs xpu-bridge creates at start, named by netdev or by PCI address."""

    pf_name: str | None = Field(default=None, alias="pfName", min_length=1)
    pci_address: str | None = Field(default=None, alias="pciAddress")
    num_vfs: int = Field(alias="numVfs", ge=0, le=MAX_VFS)

    @field_validator("pci_address")
    @classmethod
    def _pci(cls, value: str | None) -> str | None:
        if value is None:
            return None
        lowered = value.strip().lower()
        if not PCI_ADDRESS.match(lowered):
            raise ValueError(f"{value!r} is not a PCI address like 0000:3b:00.0")
        return lowered

    @model_validator(mode="after")
    def _one_way_to_name_it(self) -> PfConfig:
        if (self.pf_name is None) == (self.pci_address is None):
            raise field_error("pfName", "name the PF by pfName or by pciAddress (one of them)")
        return self

    @property
    def label(self) -> str:
        return self.pf_name or str(self.pci_address)
