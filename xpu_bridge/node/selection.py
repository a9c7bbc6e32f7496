"""Pool selection: which configured resource pool each discovered device joins, and why."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from xpu_bridge.config import Config, PfNameSelector, ResourceConfig, Selector
from xpu_bridge.node.inventory import Device

KIND_OF_DEVICE_TYPE = {"netDevice": "vf", "auxNetDevice": "sf"}
_KIND_NAMES = {"vf": ("VFs", "a VF"), "sf": ("SFs", "an SF")}


@dataclass(frozen=True, slots=True)
class Assignment:
    """Pools keyed by full resource name (all configured ones, maybe empty), devices by id."""

    pools: dict[str, tuple[Device, ...]]
    unmatched: tuple[Device, ...]
    conflicts: tuple[str, ...]

    def pf_positions(self) -> dict[str, int]:
        """Each PF with a device in a pool, by its position in PCI address order: what {pf}
        is in a vendor plugin's port names (0 on a node with one such PF, as dpu-operator)."""
        pfs = sorted({d.pf_address for members in self.pools.values() for d in members})
        return {pf: position for position, pf in enumerate(pfs)}


def _shown(value: object) -> str:
    return "(none)" if value is None else str(value)


@dataclass(frozen=True, slots=True)
class _FieldCheck:
    """One selector field that compares a device attribute with a set of accepted values."""

    label: str
    attribute: str
    accepted: frozenset[str]
    listed: tuple[str, ...]
    vf_only: bool = False

    def ok(self, device: Device) -> bool:
        if self.vf_only and device.kind != "vf":
            return False
        return getattr(device, self.attribute) in self.accepted

    def why(self, device: Device) -> str:
        if self.vf_only and device.kind != "vf":
            return f"{self.label} applies to VFs only"
        value = _shown(getattr(device, self.attribute))
        return f"{self.label} {value} not in [{', '.join(self.listed)}]"


@dataclass(frozen=True, slots=True)
class _PfNameCheck:
    """`pfNames`: the parent PF's netdev name, optionally with a VF index / sfnum range."""

    indexes_by_name: dict[str, tuple[frozenset[int] | None, ...]]
    listed: tuple[str, ...]

    @classmethod
    def compile(cls, entries: list[str]) -> _PfNameCheck:
        by_name: dict[str, list[frozenset[int] | None]] = {}
        for entry in entries:
            parsed = PfNameSelector.parse(entry)
            by_name.setdefault(parsed.name, []).append(parsed.indexes)
        return cls({name: tuple(sets) for name, sets in by_name.items()}, tuple(entries))

    def ok(self, device: Device) -> bool:
        if device.pf_name is None:
            return False
        sets = self.indexes_by_name.get(device.pf_name, ())
        return any(indexes is None or device.index in indexes for indexes in sets)

    def why(self, device: Device) -> str:
        what = "sfnum" if device.kind == "sf" else "VF index"
        return (
            f"pf {_shown(device.pf_name)} {what} {device.index} "
            f"not in pfNames [{', '.join(self.listed)}]"
        )


_Check = _FieldCheck | _PfNameCheck


def _field_checks(selector: Selector) -> list[_Check]:
    fields: list[tuple[list[str] | None, str, str, bool]] = [
        (selector.vendors, "vendor", "vendor", False),
        (selector.devices, "device", "device_code", False),
        (selector.drivers, "driver", "driver", False),
        (selector.pci_addresses, "PCI address", "pci_address", True),
        (selector.root_devices, "root device", "pf_address", False),
        (selector.aux_types, "aux type", "aux_type", False),
    ]
    checks: list[_Check] = [
        _FieldCheck(label, attribute, frozenset(values), tuple(values), vf_only)
        for values, label, attribute, vf_only in fields
        if values is not None
    ]
    if selector.pf_names is not None:
        checks.append(_PfNameCheck.compile(selector.pf_names))
    return checks


@dataclass(frozen=True, slots=True)
class _CompiledSelector:
    """All fields must match (AND); within a field any listed value does (OR)."""

    checks: tuple[_Check, ...]

    def ok(self, device: Device) -> bool:
        return all(check.ok(device) for check in self.checks)

    def why(self, device: Device) -> str:
        return " and ".join(check.why(device) for check in self.checks if not check.ok(device))


@dataclass(frozen=True, slots=True)
class _Pool:
    name: str
    position: int
    device_type: str
    kind: str
    selectors: tuple[_CompiledSelector, ...]

    @classmethod
    def compile(cls, config: Config, position: int, resource: ResourceConfig) -> _Pool:
        selectors = tuple(_CompiledSelector(tuple(_field_checks(s))) for s in resource.selectors)
        return cls(
            name=config.full_resource_name(resource),
            position=position,
            device_type=resource.device_type,
            kind=KIND_OF_DEVICE_TYPE[resource.device_type],
            selectors=selectors,
        )

    @property
    def label(self) -> str:
        return f"{self.name} (resourceList[{self.position}])"

    def matches(self, device: Device) -> bool:
        """Any selector matching is enough."""
        return device.kind == self.kind and any(s.ok(device) for s in self.selectors)

    def why_not(self, device: Device) -> str:
        if device.kind != self.kind:
            takes, is_a = _KIND_NAMES[self.kind][0], _KIND_NAMES[device.kind][1]
            return f"takes {self.device_type} ({takes}), {device.id} is {is_a}"
        if len(self.selectors) == 1:
            return self.selectors[0].why(device)
        return ", ".join(f"selectors[{i}] {s.why(device)}" for i, s in enumerate(self.selectors))


def _listing(pools: Sequence[_Pool]) -> str:
    labels = [pool.label for pool in pools]
    return ", ".join(labels[:-1]) + f" and {labels[-1]}"


SHOWN_DEVICES = 3


def _conflict(pools: Sequence[_Pool], device_ids: list[str]) -> str:
    """One line per set of overlapping pools, naming the pools, the devices and the fix."""
    shown = ", ".join(device_ids[:SHOWN_DEVICES])
    if len(device_ids) > SHOWN_DEVICES:
        shown += f" and {len(device_ids) - SHOWN_DEVICES} more"
    devices = f"device {shown}" if len(device_ids) == 1 else f"{len(device_ids)} devices ({shown})"
    both = len(pools) == 2
    return (
        f"{_listing(pools)} {'both' if both else 'all'} select {devices}, and a device joins "
        f"one pool only: narrow the selectors of {'one of them' if both else 'all but one'} "
        f"(pfNames ranges such as ens1f0#0-3 and ens1f0#4-7 split a PF's VFs); "
        f"`xpu-bridge inventory --config ...` shows what each device matches"
    )


class PoolMatcher:
    """A config's pools compiled once, so matching thousands of devices stays cheap."""

    def __init__(self, config: Config) -> None:
        self.pools = tuple(
            _Pool.compile(config, position, resource)
            for position, resource in enumerate(config.resource_list)
        )

    def matching(self, device: Device) -> list[_Pool]:
        return [pool for pool in self.pools if pool.matches(device)]

    def assign(self, devices: Iterable[Device]) -> Assignment:
        """First matching pool takes a device; one that several match is also a conflict,
        which start-up refuses and a rescan reports (the device stays in the first pool)."""
        pools: dict[str, list[Device]] = {pool.name: [] for pool in self.pools}
        unmatched: list[Device] = []
        overlaps: dict[tuple[int, ...], list[str]] = {}
        for device in sorted(devices, key=lambda device: device.id):
            matching = self.matching(device)
            if not matching:
                unmatched.append(device)
                continue
            pools[matching[0].name].append(device)
            if len(matching) > 1:
                overlaps.setdefault(tuple(p.position for p in matching), []).append(device.id)
        return Assignment(
            pools={name: tuple(members) for name, members in pools.items()},
            unmatched=tuple(unmatched),
            conflicts=tuple(
                _conflict([self.pools[i] for i in group], ids) for group, ids in overlaps.items()
            ),
        )

    def explain(self, device: Device) -> str:
        """One line for operators: the pool a device joins, or each pool's reason to refuse it."""
        matching = self.matching(device)
        if not matching:
            reasons = "; ".join(f"{pool.label}: {pool.why_not(device)}" for pool in self.pools)
            return f"{device.id} joins no pool: {reasons}"
        line = f"{device.id} joins {matching[0].label}"
        if len(matching) > 1:
            others = ", ".join(pool.label for pool in matching[1:])
            line += (
                f"; it also matches {others}: a conflict, which run and check-config refuse "
                f"until only one pool's selectors match it"
            )
        return line


def assign(config: Config, devices: Iterable[Device]) -> Assignment:
    return PoolMatcher(config).assign(devices)


def explain(config: Config, device: Device) -> str:
    return PoolMatcher(config).explain(device)
