"""Port identity: device <-> xPU bridge port ID, deterministic and reversible; the port's MAC."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Literal

from xpu_bridge.common.pci import MAC_TEXT, PCI_ADDRESS

PORT_ID = re.compile(r"^[a-z][a-z0-9-]{2,61}[a-z0-9]\Z")
BODY = re.compile(
    r"^(?P<kind>vf|sf)-(?P<dom>[0-9a-f]{4,8})-(?P<bus>[0-9a-f]{2})-(?P<dev>[01][0-9a-f])-(?P<fn>[0-7])"
    r"(-(?P<sfnum>\d{1,10}))?\Z"
)


@dataclass(frozen=True, slots=True)
class PortKey:
    """What a port ID encodes: a VF by PCI address, or an SF by parent PF address and sfnum."""

    kind: Literal["vf", "sf"]
    pci_address: str
    sfnum: int | None = None


def _pci_dashes(address: str) -> str:
    match = PCI_ADDRESS.match(address)
    if not match:
        raise ValueError(f"{address!r} is not a PCI address like 0000:3b:02.1")
    return "-".join(match.groups())


def port_id_for(key: PortKey, prefix: str = "") -> str:
    """Deterministic, reversible AIP user-settable ID: `[prefix-]vf-0000-3b-02-1`."""
    body = f"{key.kind}-{_pci_dashes(key.pci_address)}"
    if key.kind == "sf":
        body += f"-{key.sfnum}"
    port_id = f"{prefix}-{body}" if prefix else body
    if not PORT_ID.match(port_id):
        raise ValueError(f"port ID {port_id!r} is not a valid 4-63 character AIP ID")
    return port_id


def parse_port_id(port_id: str, prefix: str = "") -> PortKey | None:
    """The inverse of port_id_for; None when the ID is not one of ours under this prefix."""
    if prefix:
        if not port_id.startswith(prefix + "-"):
            return None
        port_id = port_id[len(prefix) + 1 :]
    match = BODY.match(port_id)
    if not match:
        return None
    address = f"{match['dom']}:{match['bus']}:{match['dev']}.{match['fn']}"
    if match["kind"] == "vf":
        return None if match["sfnum"] is not None else PortKey("vf", address)
    if match["sfnum"] is None:
        return None
    return PortKey("sf", address, int(match["sfnum"]))


def port_id_from_name(name: str) -> str:
    """Servers name ports differently (`//network.opiproject.org/ports/x`, `bridgePorts/x`)."""
    return name.rstrip("/").rsplit("/", 1)[-1]


def derived_mac(port_id: str) -> bytes:
    """A stable locally administered unicast MAC for functions whose netdev has none."""
    raw = bytearray(hashlib.sha256(port_id.encode()).digest()[:6])
    raw[0] = (raw[0] | 0x02) & 0xFE
    return bytes(raw)


def mac_bytes(text: str | None, port_id: str) -> bytes:
    """The sysfs MAC as 6 raw bytes, or the derived one when absent or all-zero."""
    if text and MAC_TEXT.match(text.lower()):
        raw = bytes.fromhex(text.replace(":", ""))
        if any(raw):
            return raw
    return derived_mac(port_id)
