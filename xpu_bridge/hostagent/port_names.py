"""Port naming per backend: the ID or name a device's port has, and the MAC it must carry.

opi-evpn-bridge ports get a reversible ID from the device (`vf-0000-3b-02-1`) and, for a
function with no MAC, a derived one. A dpu-operator vendor plugin names ports by a template
(`host{pf}-{vf}`) and reads the MAC's second byte as the VF's VSI, so only the VF's own MAC
will do.
"""

from __future__ import annotations

import contextlib
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from xpu_bridge.common.pci import MAC_TEXT, mac_text
from xpu_bridge.config import Config
from xpu_bridge.hostagent.port_ids import PortKey, mac_bytes, parse_port_id, port_id_for


@dataclass(frozen=True, slots=True)
class FunctionRef:
    """What names a port: a VF (PCI address, index on its PF) or an SF (its PF, sfnum)."""

    kind: Literal["vf", "sf"]
    pci_address: str
    pf_address: str
    index: int

    @property
    def key(self) -> PortKey:
        if self.kind == "sf":
            return PortKey("sf", self.pf_address, self.index)
        return PortKey("vf", self.pci_address)


class PortNaming(Protocol):
    """How one backend names ports and which MACs it accepts."""

    def port_id(self, ref: FunctionRef) -> str: ...

    def ours(self, port_id: str) -> bool: ...

    def is_sf(self, port_id: str) -> bool: ...

    def held_vf_port_id(self, pci_address: str) -> str | None:
        """The port of a held VF that sysfs no longer shows, if its address alone tells."""
        ...

    def mac(self, port_id: str, sysfs_mac: str | None) -> bytes:
        """The MAC a port carries; empty when none will do (see mac_problem)."""
        ...

    def mac_problem(self, mac: bytes) -> str | None: ...


class OpiPortIds:
    """`[prefix-]vf-0000-3b-02-1`, reversible; a function without a MAC gets a derived one."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    def port_id(self, ref: FunctionRef) -> str:
        return port_id_for(ref.key, self.prefix)

    def ours(self, port_id: str) -> bool:
        return parse_port_id(port_id, self.prefix) is not None

    def is_sf(self, port_id: str) -> bool:
        key = parse_port_id(port_id, self.prefix)
        return key is not None and key.kind == "sf"

    def held_vf_port_id(self, pci_address: str) -> str | None:
        with contextlib.suppress(ValueError):
            return port_id_for(PortKey("vf", pci_address), self.prefix)
        return None

    def mac(self, port_id: str, sysfs_mac: str | None) -> bytes:
        return mac_bytes(sysfs_mac, port_id)

    def mac_problem(self, mac: bytes) -> str | None:
        return None


class TemplateNames:
    """A vendor plugin's names: `host{pf}-{vf}` with {pf} the PF's position on the node."""

    def __init__(self, template: str, pf_positions: Mapping[str, int]) -> None:
        self.template = template
        self._pf_positions = dict(pf_positions)
        self._pattern = _pattern(template)
        self._sf = "{sfnum}" in template

    def port_id(self, ref: FunctionRef) -> str:
        position = self._pf_positions.get(ref.pf_address)
        if position is None:
            raise ValueError(f"PF {ref.pf_address} is not among the node's PFs")
        return self.template.format(pf=position, vf=ref.index, sfnum=ref.index)

    def ours(self, port_id: str) -> bool:
        return self._pattern.fullmatch(port_id) is not None

    def is_sf(self, port_id: str) -> bool:
        return self._sf and self.ours(port_id)

    def held_vf_port_id(self, pci_address: str) -> str | None:
        return None  # the name needs the VF's index, which only sysfs tells

    def mac(self, port_id: str, sysfs_mac: str | None) -> bytes:
        if sysfs_mac and MAC_TEXT.match(sysfs_mac.lower()):
            return bytes.fromhex(sysfs_mac.replace(":", ""))
        return b""

    def mac_problem(self, mac: bytes) -> str | None:
        if len(mac) != 6 or not any(mac):
            return (
                "has no MAC address in sysfs; the dpu-vendor-plugin needs the VF's own MAC "
                "(it reads the VSI from it): check that the VF's netdev exists on the host"
            )
        if mac[1] == 0:
            return (
                f"MAC {mac_text(mac)} has 0 in its second byte, which the vendor plugin reads "
                "as the VF's VSI and refuses"
            )
        return None


def _pattern(template: str) -> re.Pattern[str]:
    parts = []
    for literal, field, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if field is not None:
            parts.append(r"\d+")
    return re.compile("".join(parts))


def port_naming(config: Config, pf_positions: Mapping[str, int]) -> PortNaming:
    if config.vendor_plugin:
        return TemplateNames(config.host_agent.port_name_template, pf_positions)
    return OpiPortIds(config.port_id_prefix)
