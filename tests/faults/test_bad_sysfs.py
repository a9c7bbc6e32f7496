"""Odd sysfs trees: missing files, dangling links, links out of the root, junk and huge values,
FIFOs, sockets and directories where attributes belong, a VF whose PF vanished. Discovery never
raises, opens nothing outside --sysfs-root, never reads a value from outside, and a skipped
device (or one read in part) costs one warning naming it.

tests/test_inventory.py has the basic escapes (a PCI, virtfn or aux link out of the root, a
symlinked attribute); this module mutates whole trees at random and covers what it does not."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from records import FaultResult

from xpu_bridge.common.pci import HEX_ID, MAC_TEXT, PCI_ADDRESS
from xpu_bridge.config import parse_config
from xpu_bridge.node.inventory import Device, Inventory, discover
from xpu_bridge.node.rescan import scan
from xpu_bridge.node.sysfs import safe_name
from xpu_bridge.sim.sysfs import FakeSysfs, build_node

BAIT_VENDOR = "bad0"
BAIT_NUMA = "77"
BAIT_MAC = "0e:ba:17:00:00:01"
BAIT_INDEX = 77
JUNK = [
    "",
    "lots",
    "-1",
    "99999999999999999999999999",
    "0x",
    "0x15b3\n0x15b3",
    "\x00\x00",
    "²",
    "٣",
    "ff:ff",
    "a" * 5_000,
    "0xzzzz",
]
KINDS = [
    "delete",
    "dangling",
    "outside-absolute",
    "outside-relative",
    "escape-dots",
    "system",
    "loop",
    "junk",
    "directory",
    "fifo",
    "socket",
]
SYSTEM_TARGETS = ["/", "/etc", "/etc/passwd", "/dev/zero", "/proc/self/environ"]


class OpenAudit:
    """Records every path the process opens or lists (sys.addaudithook; a hook cannot be
    removed, so it records only while `active`)."""

    def __init__(self) -> None:
        self.active = False
        self.paths: list[str] = []
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if self.active and event in ("open", "os.scandir", "os.listdir") and args:
            path = args[0]
            if isinstance(path, bytes):
                path = path.decode(errors="replace")
            if isinstance(path, str):
                self.paths.append(path)

    @contextmanager
    def recording(self) -> Iterator[list[str]]:
        self.paths = []
        self.active = True
        try:
            yield self.paths
        finally:
            self.active = False


AUDIT = OpenAudit()


def scratch() -> str:
    """tmpfs when there is one: building trees is symlink-heavy."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else tempfile.gettempdir()


def discover_audited(root: Path) -> Inventory:
    """discover(), failing if it opened or listed any absolute path outside the root."""
    inside = os.path.realpath(root)
    with AUDIT.recording() as paths:
        inventory = discover(root)
    outside = [
        path
        for path in paths
        if os.path.isabs(path) and not (path == inside or path.startswith(inside + "/"))
    ]
    assert not outside, f"opened outside the sysfs root: {outside[:5]}"
    return inventory


def bait_function(directory: Path, name: str) -> Path:
    """Outside the root, a PF- and VF-looking directory named `name` whose every value is
    bait: if discovery read it, a device would show the bait."""
    path = directory / name
    path.mkdir(parents=True, exist_ok=True)
    for attribute, value in (
        ("vendor", f"0x{BAIT_VENDOR}"),
        ("device", f"0x{BAIT_VENDOR}"),
        ("numa_node", BAIT_NUMA),
        ("sriov_totalvfs", "8"),
        ("sriov_numvfs", "1"),
        ("sfnum", str(BAIT_INDEX)),
        ("address", BAIT_MAC),
    ):
        (path / attribute).write_text(value + "\n")
    (path / "net/bait0").mkdir(parents=True, exist_ok=True)
    (path / "net/bait0/address").write_text(BAIT_MAC + "\n")
    return path


def bait_file(directory: Path, name: str) -> Path:
    """Outside the root, a file named like the attribute it replaces, holding bait."""
    values = {"vendor": f"0x{BAIT_VENDOR}", "device": f"0x{BAIT_VENDOR}", "address": BAIT_MAC}
    path = directory / name
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(values.get(name, BAIT_NUMA if name != "sfnum" else str(BAIT_INDEX)) + "\n")
    return path


def entries(root: Path) -> list[Path]:
    found: list[Path] = []
    for directory, dirs, files in os.walk(root):
        found.extend(Path(directory, name) for name in sorted(dirs) + sorted(files))
    return sorted(found)


def replace_with_link(path: Path, target: str) -> None:
    remove(path)
    os.symlink(target, path)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def mutate(root: Path, outside: Path, path: Path, kind: str, variant: int) -> None:
    """One odd change at `path`; `outside` holds the bait, beside the root."""
    is_dir = path.is_dir() and not path.is_symlink()
    number = len(list(outside.iterdir())) if outside.exists() else 0
    if kind == "delete":
        remove(path)
    elif kind == "dangling":
        replace_with_link(path, "nowhere/" + path.name)
    elif kind in ("outside-absolute", "outside-relative"):
        holder = outside / str(number)
        bait = bait_function(holder, path.name) if is_dir else bait_file(holder, path.name)
        target = str(bait) if kind == "outside-absolute" else os.path.relpath(bait, path.parent)
        replace_with_link(path, target)
    elif kind == "escape-dots":
        replace_with_link(path, "../" * (2 + variant % 12))
    elif kind == "system":
        replace_with_link(path, SYSTEM_TARGETS[variant % len(SYSTEM_TARGETS)])
    elif kind == "loop":
        replace_with_link(path, path.name)
    elif kind == "junk" and not is_dir:
        remove(path)
        path.write_bytes(JUNK[variant % len(JUNK)].encode() if variant % 7 else b"\xff\xfe\x00")
    elif kind == "directory":
        remove(path)
        path.mkdir()
    elif kind == "fifo":
        remove(path)
        os.mkfifo(path)
    elif kind == "socket" and len(str(path)) < 100:
        remove(path)
        with socket.socket(socket.AF_UNIX) as bound:
            bound.bind(str(path))


def baited(device: Device) -> bool:
    return (
        BAIT_VENDOR in (device.vendor, device.device_code)
        or device.numa_node == int(BAIT_NUMA)
        or device.mac == BAIT_MAC
        or device.index == BAIT_INDEX
        or (device.netdev or "").startswith("bait")
    )


def well_formed(device: Device) -> bool:
    return (
        (PCI_ADDRESS.fullmatch(device.id) is not None or safe_name(device.id))
        and PCI_ADDRESS.fullmatch(device.pci_address) is not None
        and HEX_ID.fullmatch(device.vendor) is not None
        and HEX_ID.fullmatch(device.device_code) is not None
        and (device.numa_node is None or 0 <= device.numa_node < 10_000)
        and (device.iommu_group is None or device.iommu_group.isdigit())
        and (device.mac is None or MAC_TEXT.fullmatch(device.mac) is not None)
        and (device.driver is None or safe_name(device.driver))
        and 0 <= device.index <= 0xFFFFFFFF
    )


def own_paths(sysfs: FakeSysfs) -> dict[str, set[Path]]:
    """Per device of the standard tree, the paths (relative to the root) whose change may
    change what discovery says of it: its directory, its PF's, the bus links to them, and the
    directories above them."""

    def rel(path: Path) -> Path:
        return path.relative_to(sysfs.root)

    common = {Path("bus"), Path("bus/pci"), Path("bus/pci/devices"), Path("devices")}
    owned: dict[str, set[Path]] = {}
    for pf in sysfs.pfs:
        pf_paths = {*common, rel(pf.path), rel(pf.path.parent), Path("bus/pci/devices", pf.address)}
        for index, address in sysfs.vfs(pf).items():
            owned[address] = pf_paths | {
                rel(pf.path.parent / address),
                Path("bus/pci/devices", address),
                rel(pf.path / f"virtfn{index}"),
            }
    for sf in sysfs.sfs:
        owned[sf.name] = {
            *common,
            rel(sf.pf.path),
            rel(sf.pf.path.parent),
            Path("bus/auxiliary"),
            Path("bus/auxiliary/devices"),
            Path("bus/auxiliary/devices", sf.name),
            Path("bus/pci/devices", sf.pf.address),
        }
    return owned


def touches(path: Path, owned: set[Path]) -> bool:
    return any(path == own or own in path.parents for own in owned)


def test_random_odd_trees(record: list[FaultResult]) -> None:
    with tempfile.TemporaryDirectory(dir=scratch(), prefix="xb-sysfs-") as directory:
        base = Path(directory, "base/sys")
        sysfs = build_node(base, pfs=2, vfs_per_pf=2, sfs_per_pf=1)
        baseline = {device.id: device for device in discover(base).devices}
        owned = own_paths(sysfs)
        assert len(baseline) == len(owned) == 6
        runs = 0
        skipped = 0

        @settings(
            max_examples=250,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        )
        @given(
            st.lists(
                st.tuples(st.integers(0, 10_000), st.sampled_from(KINDS), st.integers(0, 99)),
                min_size=1,
                max_size=4,
            )
        )
        def one(mutations: list[tuple[int, str, int]]) -> None:
            nonlocal runs, skipped
            runs += 1
            case = Path(directory, "case")
            shutil.rmtree(case, ignore_errors=True)
            root, outside = case / "sys", case / "outside"
            shutil.copytree(base, root, symlinks=True)
            touched: list[Path] = []
            for pick, kind, variant in mutations:
                candidates = entries(root)
                if not candidates:
                    break
                path = candidates[pick % len(candidates)]
                touched.append(path.relative_to(root))
                mutate(root, outside, path, kind, variant)
            inventory = discover_audited(root)
            for device in inventory.devices:
                assert not baited(device), device
                assert well_formed(device), device
                before = baseline[device.id]  # nothing new appears
                assert (device.kind, device.pci_address, device.index) == (
                    before.kind,
                    before.pci_address,
                    before.index,
                )
            found = {device.id: device for device in inventory.devices}
            for device_id, paths in owned.items():
                if not any(touches(path, paths) for path in touched):  # read exactly as before
                    assert found.get(device_id) == baseline[device_id], (device_id, touched)
            skipped += len(baseline) - len(found)
            assert len(set(inventory.problems)) == len(inventory.problems)
            for problem in inventory.problems:
                assert problem and "\n" not in problem and not problem.startswith("/")

        one()
    record.append(
        FaultResult(
            "odd sysfs trees: random deletions, dangling/escaping/system links, junk, "
            "FIFOs, sockets (hypothesis)",
            "-",
            runs,
            f"never raised, nothing opened outside the root, no bait read ({skipped} devices "
            "skipped in all)",
        )
    )


# --------------------------------------------------------------- one case, one warning each

CONFIG = {
    "hostAgent": {"endpoint": "unix:///run/agent.sock"},
    "resourceList": [
        {
            "resourceName": "vfs",
            "selectors": [{"vendors": ["15b3"], "devices": ["101e"]}],
            "bridgePort": {"logicalBridges": ["//network.opiproject.org/bridges/red"]},
        },
        {
            "resourceName": "sfs",
            "deviceType": "auxNetDevice",
            "selectors": [{"auxTypes": ["sf"]}],
            "bridgePort": {"logicalBridges": ["//network.opiproject.org/bridges/green"]},
        },
    ],
}


@dataclass(frozen=True)
class Expect:
    """What a hand-made case must give: the devices skipped, and one problem line per name in
    `named` (a device, or the PF or link the line is about) and no other."""

    skipped: list[str] = field(default_factory=list)
    named: list[str] = field(default_factory=list)


def vf_dir(sysfs: FakeSysfs, pf: int = 0, index: int = 0) -> Path:
    handle = sysfs.pfs[pf]
    return handle.path.parent / sysfs.vfs(handle)[index]


def vf_id(sysfs: FakeSysfs, pf: int = 0, index: int = 0) -> str:
    return vf_dir(sysfs, pf, index).name


def write(path: Path, text: str) -> None:
    path.unlink()
    path.write_text(text)


def _huge_numa(sysfs: FakeSysfs, outside: Path) -> Expect:
    write(vf_dir(sysfs) / "numa_node", "99999999999999999999")
    return Expect(named=[vf_id(sysfs)])  # read in part: the VF stays, without a NUMA node


def _unicode_numa(sysfs: FakeSysfs, outside: Path) -> Expect:
    write(vf_dir(sysfs) / "numa_node", "٣")
    return Expect(named=[vf_id(sysfs)])


def _unicode_numvfs(sysfs: FakeSysfs, outside: Path) -> Expect:
    write(sysfs.pfs[0].path / "sriov_numvfs", "²")
    write(sysfs.pfs[1].path / "sriov_totalvfs", "99999999999")
    return Expect()  # counts no device depends on: read as unknown


def _unicode_sfnum(sysfs: FakeSysfs, outside: Path) -> Expect:
    write(sysfs.sfs[0].path / "sfnum", "³")
    return Expect([sysfs.sfs[0].name], [sysfs.sfs[0].name])


def _huge_sfnum(sysfs: FakeSysfs, outside: Path) -> Expect:
    write(sysfs.sfs[1].path / "sfnum", "9" * 30)
    return Expect([sysfs.sfs[1].name], [sysfs.sfs[1].name])


def _pf_vanished(sysfs: FakeSysfs, outside: Path) -> Expect:
    pf = sysfs.pfs[1]
    gone = [*sysfs.vfs(pf).values(), *(sf.name for sf in sysfs.sfs if sf.pf == pf)]
    shutil.rmtree(pf.path)
    (sysfs.root / "bus/pci/devices" / pf.address).unlink()
    return Expect(gone, gone)


def _physfn_outside(sysfs: FakeSysfs, outside: Path) -> Expect:
    bait = bait_function(outside, sysfs.pfs[0].address)
    replace_with_link(vf_dir(sysfs) / "physfn", str(bait))
    return Expect(named=[vf_id(sysfs)])  # still offered by its PF; the odd link gets a line


def _mac_outside(sysfs: FakeSysfs, outside: Path) -> Expect:
    (net,) = (vf_dir(sysfs) / "net").iterdir()
    replace_with_link(net / "address", str(bait_file(outside, "address")))
    return Expect(named=[vf_id(sysfs)])  # read in part: the VF stays, without a MAC


def _vendor_is_a_socket(sysfs: FakeSysfs, outside: Path) -> Expect:
    vendor = vf_dir(sysfs, 1, 1) / "vendor"
    vendor.unlink()
    with socket.socket(socket.AF_UNIX) as bound:
        bound.bind(str(vendor))
    return Expect([vf_id(sysfs, 1, 1)], [vf_id(sysfs, 1, 1)])


def _device_is_a_directory(sysfs: FakeSysfs, outside: Path) -> Expect:
    device = vf_dir(sysfs, 0, 1) / "device"
    device.unlink()
    device.mkdir()
    return Expect([vf_id(sysfs, 0, 1)], [vf_id(sysfs, 0, 1)])


def _virtfn_loop(sysfs: FakeSysfs, outside: Path) -> Expect:
    skipped = vf_id(sysfs, 0, 1)
    replace_with_link(sysfs.pfs[0].path / "virtfn1", "virtfn1")
    return Expect([skipped], ["virtfn1"])


def _bus_link_to_system(sysfs: FakeSysfs, outside: Path) -> Expect:
    pf = sysfs.pfs[0]
    replace_with_link(sysfs.root / "bus/pci/devices" / pf.address, "/etc")
    return Expect(list(sysfs.vfs(pf).values()), [pf.address])  # its SF is found under it


def _iommu_group_to_system(sysfs: FakeSysfs, outside: Path) -> Expect:
    replace_with_link(vf_dir(sysfs, 1, 0) / "iommu_group", "/etc")
    return Expect(named=[vf_id(sysfs, 1, 0)])  # read in part: no vfio group


CASES: dict[str, Callable[[FakeSysfs, Path], Expect]] = {
    "numa_node of 20 digits": _huge_numa,
    "numa_node in Arabic digits": _unicode_numa,
    "sriov_numvfs '²', sriov_totalvfs of 11 digits": _unicode_numvfs,
    "sfnum '³'": _unicode_sfnum,
    "sfnum of 30 digits": _huge_sfnum,
    "a PF vanished, its VFs and SFs left behind": _pf_vanished,
    "physfn linked out of the root": _physfn_outside,
    "netdev address linked out of the root": _mac_outside,
    "vendor is a unix socket": _vendor_is_a_socket,
    "device is a directory": _device_is_a_directory,
    "virtfn link to itself": _virtfn_loop,
    "PF bus link to /etc": _bus_link_to_system,
    "iommu_group linked to /etc": _iommu_group_to_system,
}


async def check_case(case: str, directory: Path, caplog: pytest.LogCaptureFixture) -> Expect:
    sysfs = build_node(directory / "sys", pfs=2, vfs_per_pf=2, sfs_per_pf=1)
    baseline = {device.id: device for device in discover(sysfs.root).devices}
    expect = CASES[case](sysfs, directory / "outside")
    inventory = discover_audited(sysfs.root)
    found = {device.id: device for device in inventory.devices}
    assert set(found) == set(baseline) - set(expect.skipped), case
    assert not [d for d in found.values() if baited(d) or not well_formed(d)], case
    problems = list(inventory.problems)
    assert len(problems) == len(expect.named), (case, problems)
    for name in expect.named:
        assert [p for p in problems if name in p], (case, name, problems)
    for problem in problems:
        assert "\n" not in problem and not problem.startswith("/"), (case, problem)
    # The daemon's scan logs each line once, as a warning.
    caplog.clear()
    found_by_scan = await scan(parse_config(CONFIG), sysfs.root)
    warnings = [r.getMessage() for r in caplog.records if r.name == "xpu_bridge.node.rescan"]
    assert warnings == [f"sysfs: {p}" for p in found_by_scan.inventory.problems], case
    assert len(warnings) == len(problems), case
    return expect


async def test_each_odd_entry_costs_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, record: list[FaultResult]
) -> None:
    caplog.set_level("WARNING", logger="xpu_bridge.node.rescan")
    skipped = named = 0
    for number, case in enumerate(CASES):
        expect = await check_case(case, tmp_path / str(number), caplog)
        skipped += len(expect.skipped)
        named += len(expect.named)
    record.append(
        FaultResult(
            f"sysfs: {len(CASES)} hand-made odd entries (huge or non-ASCII numa_node, sfnum, "
            "sriov counts; a vanished PF; links out of the root, to /etc, to themselves; "
            "a socket or a directory as an attribute)",
            "-",
            len(CASES),
            f"{skipped} device(s) skipped; one warning per skipped or partly read device "
            f"({named} in all), no traceback",
        )
    )
