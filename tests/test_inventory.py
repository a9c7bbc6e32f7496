"""Discovery of VFs and SFs from a fake sysfs tree in the kernel's layout."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import builders
import pytest
from builders import sf, vf
from hypothesis import given, settings
from hypothesis import strategies as st

from xpu_bridge.common.pci import PCI_ADDRESS
from xpu_bridge.node.inventory import Device, Inventory, aux_type, discover
from xpu_bridge.sim.sysfs import FakeSysfs, PciAddress, build_node, vf_address


def by_id(root: Path) -> dict[str, Device]:
    return {device.id: device for device in discover(root).devices}


def test_standard_node_every_field(tmp_path: Path) -> None:
    build_node(tmp_path)
    inventory = discover(tmp_path)
    assert inventory.problems == ()
    assert len(inventory.devices) == 2 * 8 + 2 * 2
    devices = {device.id: device for device in inventory.devices}
    assert devices["0000:3b:02.1"] == vf(
        "0000:3b:02.1",
        pci_address="0000:3b:02.1",
        pf="0000:3b:00.0",
        pf_name="ens1f0",
        index=1,
        vendor="15b3",
        device_code="101e",
        driver="mlx5_core",
        numa_node=0,
        iommu_group=devices["0000:3b:02.1"].iommu_group,
        netdev="ens1f0v1",
        mac="0c:42:a1:00:3b:11",
        aux_type=None,
    )
    assert devices["0000:3b:02.1"].iommu_group is not None
    assert devices["0000:3b:0a.7"].pf_name == "ens1f1"
    assert devices["0000:3b:0a.7"].numa_node == 1
    assert devices["0000:3b:0a.7"].index == 7


def test_sf_fields(tmp_path: Path) -> None:
    sysfs = FakeSysfs(tmp_path)
    pf = sysfs.add_pf("0000:3b:00.1", "ens1f1", numa_node=1, total_vfs=0)
    sysfs.add_sf(pf, 88, aux_id=4, mac="AA:BB:CC:DD:EE:FF")
    assert discover(tmp_path).devices == (
        sf(
            "mlx5_core.sf.4",
            pci_address="0000:3b:00.1",
            pf="0000:3b:00.1",
            pf_name="ens1f1",
            index=88,
            vendor="15b3",
            device_code="101d",
            driver="mlx5_core.sf",
            numa_node=1,
            iommu_group=None,
            netdev="ens1f1s88",
            mac="aa:bb:cc:dd:ee:ff",
            aux_type="sf",
        ),
    )


def test_builders_describe_build_node(tmp_path: Path) -> None:
    """tests/builders.py's defaults are what discovery reads from build_node's tree (all but
    the IOMMU group, which the builders leave to the test)."""
    build_node(tmp_path, pfs=3, vfs_per_pf=16, sfs_per_pf=2)
    discovered = discover(tmp_path).devices
    assert len(discovered) == 3 * 16 + 3 * 2
    for device in discovered:
        build = vf if device.kind == "vf" else sf
        assert build(device.id, iommu_group=device.iommu_group) == device
    assert {builders.vf_address(pf, i) for pf in range(3) for i in range(16)} == {
        device.id for device in discovered if device.kind == "vf"
    }


def test_plain_pf_contributes_no_vfs(tmp_path: Path) -> None:
    sysfs = FakeSysfs(tmp_path)
    sysfs.add_pf("0000:3b:00.0", "ens1f0", total_vfs=0)
    assert discover(tmp_path) == Inventory((), ())


def test_numa_minus_one_is_none(tmp_path: Path) -> None:
    sysfs = FakeSysfs(tmp_path)
    pf = sysfs.add_pf("0000:3b:00.0", "ens1f0", numa_node=-1)
    sysfs.add_vfs(pf, 1)
    sysfs.add_sf(pf, 0)
    assert {device.numa_node for device in discover(tmp_path).devices} == {None}


def test_unbound_vf_has_no_driver_and_no_netdev(tmp_path: Path) -> None:
    sysfs = FakeSysfs(tmp_path)
    pf = sysfs.add_pf("0000:3b:00.0", "ens1f0")
    [address] = sysfs.add_vfs(pf, 1, driver=None)
    device = by_id(tmp_path)[address]
    assert (device.driver, device.netdev, device.mac) == (None, None, None)


def test_vfio_vf_has_iommu_group_and_no_netdev(tmp_path: Path) -> None:
    sysfs = FakeSysfs(tmp_path)
    pf = sysfs.add_pf("0000:3b:00.0", "ens1f0")
    first, second = sysfs.add_vfs(pf, 2, driver="vfio-pci")
    devices = by_id(tmp_path)
    assert devices[first].driver == "vfio-pci"
    assert devices[first].iommu_group is not None and devices[first].iommu_group.isdigit()
    assert devices[first].iommu_group != devices[second].iommu_group
    assert devices[first].netdev is None


def test_missing_netdev_means_no_mac(tmp_path: Path) -> None:
    sysfs = FakeSysfs(tmp_path)
    pf = sysfs.add_pf("0000:3b:00.0", "ens1f0")
    [address] = sysfs.add_vfs(pf, 1, mac=None)
    sysfs.add_sf(pf, 3, ifname=None)
    devices = by_id(tmp_path)
    assert (devices[address].netdev, devices[address].mac) == (None, None)
    assert (devices["mlx5_core.sf.2"].netdev, devices["mlx5_core.sf.2"].mac) == (None, None)


def test_zero_mac_is_reported_as_is(tmp_path: Path) -> None:
    sysfs = FakeSysfs(tmp_path)
    pf = sysfs.add_pf("0000:3b:00.0", "ens1f0")
    [address] = sysfs.add_vfs(pf, 1, mac="00:00:00:00:00:00")
    assert by_id(tmp_path)[address].mac == "00:00:00:00:00:00"


def test_unparsable_mac_is_none(tmp_path: Path) -> None:
    sysfs = FakeSysfs(tmp_path)
    pf = sysfs.add_pf("0000:3b:00.0", "ens1f0")
    [address] = sysfs.add_vfs(pf, 1)
    (pf.path.parent / address / "net" / "ens1f0v0" / "address").write_text("garbage\n")
    device = by_id(tmp_path)[address]
    assert (device.netdev, device.mac) == ("ens1f0v0", None)


def test_non_sf_aux_devices_are_ignored(tmp_path: Path) -> None:
    sysfs = build_node(tmp_path, pfs=1, vfs_per_pf=0, sfs_per_pf=1)
    [pf] = sysfs.pfs
    [sf] = sysfs.sfs
    eth = pf.path / "mlx5_core.eth.0"
    nested = sf.path / "mlx5_core.eth.5"
    for path in (eth, nested):
        path.mkdir()
        os.symlink(path, tmp_path / "bus/auxiliary/devices" / path.name)
    inventory = discover(tmp_path)
    assert [device.id for device in inventory.devices] == [sf.name]
    assert inventory.problems == ()


def test_switchdev_pf_name_is_the_uplink(tmp_path: Path) -> None:
    sysfs = FakeSysfs(tmp_path)
    pf = sysfs.add_pf("0000:3b:00.0", "ens1f0")
    sysfs.add_vfs(pf, 1)
    for name, port in (("eth0", "pf0vf0"), ("ens1f0", "p0")):
        (pf.path / "net" / name).mkdir(exist_ok=True)
        (pf.path / "net" / name / "phys_port_name").write_text(port + "\n")
    assert by_id(tmp_path)["0000:3b:02.0"].pf_name == "ens1f0"


def test_devices_sorted_by_id(tmp_path: Path) -> None:
    build_node(tmp_path, pfs=4, vfs_per_pf=9, sfs_per_pf=3)
    ids = [device.id for device in discover(tmp_path).devices]
    assert ids == sorted(ids)
    assert len(ids) == len(set(ids)) == 4 * 12


def test_vanished_vf_and_sf_disappear_on_next_discover(tmp_path: Path) -> None:
    sysfs = build_node(tmp_path)
    pf = sysfs.pfs[0]
    address = sysfs.vfs(pf)[3]
    sf = sysfs.sfs[0]
    assert {address, sf.name} <= by_id(tmp_path).keys()
    sysfs.remove_vf(pf, 3)
    sysfs.remove_sf(sf)
    inventory = discover(tmp_path)
    assert inventory.problems == ()
    assert address not in {device.id for device in inventory.devices}
    assert sf.name not in {device.id for device in inventory.devices}
    assert len(inventory.devices) == 16 + 4 - 2


def test_rebinding_is_seen(tmp_path: Path) -> None:
    sysfs = build_node(tmp_path, pfs=1, vfs_per_pf=2, sfs_per_pf=0)
    pf = sysfs.pfs[0]
    sysfs.set_vf_driver(pf, 0, "vfio-pci")
    device = by_id(tmp_path)[sysfs.vfs(pf)[0]]
    assert (device.driver, device.netdev) == ("vfio-pci", None)
    sysfs.set_vf_driver(pf, 0, "mlx5_core")
    assert by_id(tmp_path)[sysfs.vfs(pf)[0]].netdev == "ens1f0v0"


def _outside_pf(outside: Path, address: str) -> Path:
    """A PF-looking directory outside the sysfs root."""
    path = outside / address
    path.mkdir(parents=True)
    (path / "sriov_totalvfs").write_text("8\n")
    (path / "vendor").write_text("0x15b3\n")
    (path / "device").write_text("0x101d\n")
    return path


def test_pci_link_outside_root_is_skipped(tmp_path: Path) -> None:
    root = tmp_path / "sys"
    build_node(root, pfs=1, vfs_per_pf=2, sfs_per_pf=0)
    evil = _outside_pf(tmp_path / "outside", "0000:99:00.0")
    os.symlink(evil, root / "bus/pci/devices/0000:99:00.0")
    inventory = discover(root)
    assert len(inventory.devices) == 2
    [problem] = inventory.problems
    assert problem.startswith("bus/pci/devices/0000:99:00.0: ")
    assert "outside the sysfs root" in problem


def test_virtfn_link_outside_root_is_skipped(tmp_path: Path) -> None:
    root = tmp_path / "sys"
    sysfs = build_node(root, pfs=1, vfs_per_pf=2, sfs_per_pf=0)
    pf = sysfs.pfs[0]
    evil = _outside_pf(tmp_path / "outside", "0000:3b:02.2")
    os.symlink(os.path.relpath(evil, pf.path), pf.path / "virtfn2")
    inventory = discover(root)
    assert [device.index for device in inventory.devices] == [0, 1]
    [problem] = inventory.problems
    assert "virtfn2" in problem and "outside the sysfs root" in problem


def test_link_escaping_through_a_symlinked_dir_is_skipped(tmp_path: Path) -> None:
    root = tmp_path / "sys"
    sysfs = build_node(root, pfs=1, vfs_per_pf=1, sfs_per_pf=0)
    _outside_pf(tmp_path / "outside", "0000:77:00.0")
    os.symlink(tmp_path / "outside", root / "devices/escape")
    os.symlink("../../../devices/escape/0000:77:00.0", root / "bus/pci/devices/0000:77:00.0")
    os.symlink("../../escape/0000:77:00.0", sysfs.pfs[0].path / "virtfn1")
    inventory = discover(root)
    assert [device.id for device in inventory.devices] == ["0000:3b:02.0"]
    assert len(inventory.problems) == 2
    assert all("outside the sysfs root" in problem for problem in inventory.problems)


def test_aux_link_outside_root_is_skipped(tmp_path: Path) -> None:
    root = tmp_path / "sys"
    build_node(root, pfs=1, vfs_per_pf=0, sfs_per_pf=1)
    sf = _outside_pf(tmp_path / "outside", "0000:99:00.0") / "mlx5_core.sf.9"
    sf.mkdir()
    (sf / "sfnum").write_text("9\n")
    os.symlink(sf, root / "bus/auxiliary/devices/mlx5_core.sf.9")
    inventory = discover(root)
    assert [device.id for device in inventory.devices] == ["mlx5_core.sf.2"]
    [problem] = inventory.problems
    assert problem.startswith("bus/auxiliary/devices/mlx5_core.sf.9: link leads outside")


def test_symlinked_attribute_is_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "sys"
    sysfs = FakeSysfs(root)
    pf = sysfs.add_pf("0000:3b:00.0", "ens1f0")
    first, second = sysfs.add_vfs(pf, 2)
    secret = tmp_path / "secret"
    secret.write_text("0x15b3\n")
    for address, name in ((first, "vendor"), (second, "numa_node")):
        (pf.path.parent / address / name).unlink()
        os.symlink(secret, pf.path.parent / address / name)
    inventory = discover(root)
    assert [device.id for device in inventory.devices] == [second]
    assert inventory.devices[0].numa_node is None
    assert len(inventory.problems) == 2


def test_absolute_links_inside_root_and_symlinked_root_work(tmp_path: Path) -> None:
    root = tmp_path / "sys"
    sysfs = FakeSysfs(root)
    pf = sysfs.add_pf("0000:3b:00.0", "ens1f0")
    [address] = sysfs.add_vfs(pf, 1)
    link = pf.path / "virtfn0"
    link.unlink()
    os.symlink(pf.path.parent / address, link)
    os.symlink(root, tmp_path / "alias")
    assert [device.id for device in discover(tmp_path / "alias").devices] == [address]


def test_unreadable_entries_become_problems(tmp_path: Path) -> None:
    sysfs = FakeSysfs(tmp_path)
    pf = sysfs.add_pf("0000:3b:00.0", "ens1f0")
    good, bad_numa, fifo, gone = sysfs.add_vfs(pf, 4)
    (pf.path.parent / bad_numa / "numa_node").write_text("lots\n")
    (pf.path.parent / bad_numa / "iommu_group").unlink()
    (pf.path.parent / bad_numa / "iommu_group").symlink_to("../../../kernel/iommu_groups/x")
    (pf.path.parent / fifo / "device").unlink()
    os.mkfifo(pf.path.parent / fifo / "device")
    os.unlink(pf.path.parent / gone / "vendor")
    (pf.path / "virtfn9").symlink_to("../0000:3b:0f.7")
    (tmp_path / "bus/pci/devices/junk").mkdir()
    inventory = discover(tmp_path)
    assert [device.id for device in inventory.devices] == [good, bad_numa]
    assert inventory.devices[1].numa_node is None
    assert inventory.devices[1].iommu_group is None
    assert inventory.devices[0].iommu_group is not None
    problems = "\n".join(inventory.problems)
    assert "numa_node: 'lots' is not a number" in problems
    assert f"{fifo}" in problems and "device is missing or not a 4-digit hex ID" in problems
    assert "virtfn9" in problems
    assert "bus/pci/devices/junk: not a PCI address" in problems
    assert "iommu_group: 'x' is not a group number" in problems
    assert len(inventory.problems) == 6


def test_vf_reached_from_two_pfs_is_kept_once(tmp_path: Path) -> None:
    sysfs = FakeSysfs(tmp_path)
    first = sysfs.add_pf("0000:3b:00.0", "ens1f0")
    second = sysfs.add_pf("0000:3b:00.1", "ens1f1")
    [address] = sysfs.add_vfs(first, 1)
    (second.path / "virtfn0").symlink_to(f"../{address}")
    inventory = discover(tmp_path)
    assert [(device.id, device.pf_name) for device in inventory.devices] == [(address, "ens1f0")]
    assert inventory.problems == (f"{address}: reached twice; keeping the first",)


def test_missing_sysfs_is_a_problem_not_an_error(tmp_path: Path) -> None:
    inventory = discover(tmp_path / "nowhere")
    assert inventory.devices == ()
    assert len(inventory.problems) == 1 and "bus/pci/devices" in inventory.problems[0]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mlx5_core.sf.4", "sf"),
        ("mlx5_core.eth.0", "eth"),
        ("0000:12:34.0", None),
        ("driver.type.id", None),
        ("driver.type.-4", None),
        ("a.b.c.1", None),
    ],
)
def test_aux_type(name: str, expected: str | None) -> None:
    assert aux_type(name) == expected


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0x01, 0xF0), st.integers(0, 1), st.integers(0, 256)),
        min_size=1,
        max_size=6,
        unique_by=lambda pf: (pf[0], pf[1]),
    )
)
def test_vf_addresses_are_valid_and_unique(pfs: list[tuple[int, int, int]]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        sysfs = FakeSysfs(Path(directory))
        seen: set[str] = set()
        for bus, function, total_vfs in sorted(pfs):
            address = str(PciAddress(0, bus, 0, function))
            try:
                pf = sysfs.add_pf(address, None, total_vfs=total_vfs)
            except ValueError:
                continue
            vfs = [
                str(vf_address(PciAddress.parse(address), pf.first_vf_rid, i))
                for i in range(total_vfs)
            ]
            assert all(PCI_ADDRESS.match(vf) for vf in vfs)
            assert seen.isdisjoint(vfs) and address not in seen
            seen.update(vfs, {address})


@pytest.fixture
def big_root(tmp_path: Path) -> Iterator[Path]:
    """A scratch root on tmpfs when there is one: sysfs lives in memory, and building
    4096 VFs' worth of symlinks on a disk takes seconds."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(dir=shm, prefix="xpu-bridge-sysfs-") as directory:
        yield Path(directory)


def test_discovery_of_4096_vfs_is_fast(big_root: Path) -> None:
    build_node(big_root, pfs=16, vfs_per_pf=256, sfs_per_pf=2)
    discover(big_root)
    start = time.perf_counter()
    inventory = discover(big_root)
    elapsed = time.perf_counter() - start
    print(f"discovered {len(inventory.devices)} devices in {elapsed:.3f} s")
    assert len(inventory.devices) == 16 * 256 + 32
    assert inventory.problems == ()
    vfs = [device.id for device in inventory.devices if device.kind == "vf"]
    assert all(PCI_ADDRESS.match(vf) for vf in vfs)
    assert elapsed < 5.0
