"""Device, pool-entry, port and resource-config literals for unit tests.

The defaults describe the node `xpu_bridge.sim.sysfs.build_node` builds, so a literal here
is what discovery reports for the same device there: Mellanox ConnectX functions (vendor
15b3, PFs 101d, VFs 101e, driver mlx5_core); dual-port cards ens1f0/ens1f1 at
0000:3b:00.0/.1, ens2f0/ens2f1 at 0000:4b:00.0/.1, ...; even PFs on NUMA 0, odd ones on
NUMA 1; up to 16 VFs per PF, from 0000:3b:02.0 (ens1f0) and 0000:3b:0a.0 (ens1f1), with
netdevs <pf>v<index> and MACs 0c:42:a1:...; SFs mlx5_core.sf.2 and .3 (sfnum 0 and 1) on
ens1f0, .4 and .5 on ens1f1, ..., with netdevs <pf>s<sfnum>.

Only the IOMMU group has no default (build_node numbers groups in creation order): pass it
when a test compares it. tests/test_inventory.py checks these defaults against discovery.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from xpu_bridge.config import ResourceConfig
from xpu_bridge.hostagent.ports import OperStatus, PortSpec, PortState
from xpu_bridge.node.inventory import Device
from xpu_bridge.node.pool import PoolDevice, port_spec
from xpu_bridge.sim import sysfs as sim
from xpu_bridge.sim.scenario import BRIDGES

VENDOR = "15b3"
PF_DEVICE = "101d"
VF_DEVICE = "101e"
VF_DRIVER = "mlx5_core"
SF_DRIVER = sim.SF_DRIVER
TOTAL_VFS = 16
"""build_node's sriov_totalvfs while vfs_per_pf is at most 16 (its default is 8)."""
SFS_PER_PF = 2
FIRST_AUX_ID = 2
SIM_SF_NAME = re.compile(r"mlx5_core\.sf\.(\d{1,6})")
PORTS = "//network.opiproject.org/ports/"
"""How an OPI agent names a port: this prefix and the port ID."""


@dataclass(frozen=True, slots=True)
class SimPf:
    """A PF as build_node lays it out; `number` counts PFs from 0 (ens1f0)."""

    number: int
    address: str
    name: str
    numa_node: int
    first_vf_rid: int


def _layout(count: int = 24) -> tuple[SimPf, ...]:
    """build_node's PFs, placed with the fake sysfs's own routing-ID rules."""
    pfs: list[SimPf] = []
    next_free = 0
    for number in range(count):
        card, port = divmod(number, 2)
        pci = sim.PciAddress(0, 0x3B + card * 0x10, 0, port)
        first = sim.first_vf_rid(pci, next_free)
        next_free = first + sim.vf_block_size(TOTAL_VFS)
        pfs.append(SimPf(number, str(pci), f"ens{card + 1}f{port}", number % 2, first))
    return tuple(pfs)


SIM_PFS = _layout()
PF0 = SIM_PFS[0].address
PF1 = SIM_PFS[1].address
_PF_BY_ADDRESS = {pf.address: pf for pf in SIM_PFS}


def vf_address(pf: int = 0, index: int = 0) -> str:
    """The PCI address build_node gives VF `index` of PF number `pf` (0: ens1f0, 1: ens1f1)."""
    if not 0 <= index < TOTAL_VFS:
        raise ValueError(f"build_node gives a PF at most {TOTAL_VFS} VFs, not index {index}")
    owner = SIM_PFS[pf]
    return str(sim.vf_address(sim.PciAddress.parse(owner.address), owner.first_vf_rid, index))


def _sim_vf(address: str) -> tuple[SimPf, int] | None:
    pci = sim.PciAddress.parse(address)
    for owner in SIM_PFS:
        index = pci.rid - owner.first_vf_rid
        if pci.domain == 0 and 0 <= index < TOTAL_VFS:
            return owner, index
    return None


def vf(
    address: str = "0000:3b:02.0",
    *,
    pf: str | None = None,
    index: int | None = None,
    **changes: Any,
) -> Device:
    """A VF as discovery reports it. For an address of build_node's layout the PF and index
    follow from it; pass both for any other address. `changes` set any other field; netdev
    and mac follow pf_name, index and driver unless given (no net driver: no netdev; no
    netdev: no MAC), as the kernel shows them."""
    if pf is None or index is None:
        placed = _sim_vf(address)
        if placed is None:
            raise ValueError(f"{address} is not a VF of build_node's node; pass pf= and index=")
        pf = placed[0].address if pf is None else pf
        index = placed[1] if index is None else index
    owner = _PF_BY_ADDRESS.get(pf)
    pf_name = changes.pop("pf_name", owner.name if owner else None)
    driver = changes.pop("driver", VF_DRIVER)
    netdev = changes.pop(
        "netdev", f"{pf_name or 'vf'}v{index}" if driver in sim.NET_DRIVERS else None
    )
    mac = changes.pop(
        "mac", sim.pci_mac(sim.PciAddress.parse(address)) if netdev is not None else None
    )
    fields: dict[str, Any] = {
        "id": address,
        "kind": "vf",
        "pci_address": address,
        "pf_address": pf,
        "pf_name": pf_name,
        "index": index,
        "vendor": VENDOR,
        "device_code": VF_DEVICE,
        "driver": driver,
        "numa_node": owner.numa_node if owner else None,
        "iommu_group": None,
        "netdev": netdev,
        "mac": mac,
        "aux_type": None,
    }
    return Device(**(fields | changes))


def sf(
    name: str = "mlx5_core.sf.2",
    *,
    pf: str | None = None,
    index: int | None = None,
    **changes: Any,
) -> Device:
    """An SF as discovery reports it (the parent PF's PCI address, vendor, device code and
    NUMA node). For build_node's names (sf.2, sf.3 on ens1f0, sf.4, sf.5 on ens1f1, ...)
    the PF and sfnum (`index`) follow from the name; pass both for any other name."""
    if pf is None or index is None:
        match = SIM_SF_NAME.fullmatch(name)
        aux_id = int(match.group(1)) if match else -1
        number, sfnum = divmod(aux_id - FIRST_AUX_ID, SFS_PER_PF)
        if aux_id < FIRST_AUX_ID or number >= len(SIM_PFS):
            raise ValueError(f"{name} is not an SF of build_node's node; pass pf= and index=")
        pf = SIM_PFS[number].address if pf is None else pf
        index = sfnum if index is None else index
    owner = _PF_BY_ADDRESS.get(pf)
    pf_name = changes.pop("pf_name", owner.name if owner else None)
    netdev = changes.pop("netdev", f"{pf_name or 'sf'}s{index}")
    mac = changes.pop("mac", sim.sf_mac(name) if netdev is not None else None)
    fields: dict[str, Any] = {
        "id": name,
        "kind": "sf",
        "pci_address": pf,
        "pf_address": pf,
        "pf_name": pf_name,
        "index": index,
        "vendor": VENDOR,
        "device_code": PF_DEVICE,
        "driver": SF_DRIVER,
        "numa_node": owner.numa_node if owner else None,
        "iommu_group": None,
        "netdev": netdev,
        "mac": mac,
        "aux_type": "sf",
    }
    return Device(**(fields | changes))


def resource_config(name: str = "red", **fields: Any) -> ResourceConfig:
    """A validated resource; `fields` by YAML key or attribute name (allocationPolicy="pack",
    device_type="auxNetDevice", ...). By default: vendor 15b3, an access port on bridge
    //network.opiproject.org/bridges/<name>."""
    raw: dict[str, Any] = {
        "resourceName": name,
        "selectors": [{"vendors": [VENDOR]}],
        "bridgePort": {"type": "access", "logicalBridges": [BRIDGES + name]},
    }
    for key, value in fields.items():
        info = ResourceConfig.model_fields.get(key)
        raw[info.alias if info is not None and info.alias else key] = value
    return ResourceConfig.model_validate(raw)


def pool_device(
    device: Device, resource: ResourceConfig | None = None, prefix: str = ""
) -> PoolDevice:
    """The pool entry a DevicePool makes of `device` (its port spec via port_spec)."""
    return PoolDevice(device, port_spec(device, resource or resource_config(), prefix))


def port_state(spec: PortSpec, oper: OperStatus = OperStatus.UP, **changes: Any) -> PortState:
    """The port an agent reports for `spec` once it is created; `changes` set other fields
    (mac=..., logical_bridges=(...), component_errors=(...))."""
    fields: dict[str, Any] = {
        "name": PORTS + spec.port_id,
        "port_id": spec.port_id,
        "mac": spec.mac,
        "ptype": spec.ptype,
        "logical_bridges": spec.logical_bridges,
        "oper": oper,
        "component_errors": (),
    }
    return PortState(**(fields | changes))
