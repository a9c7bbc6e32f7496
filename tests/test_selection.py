"""Pool selection: selector semantics, first-match-wins with conflicts, and explanations."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from builders import PF0, vf
from hypothesis import given
from hypothesis import strategies as st

from xpu_bridge.config import Config, parse_config
from xpu_bridge.node.inventory import Device, discover
from xpu_bridge.node.selection import PoolMatcher, assign, explain
from xpu_bridge.sim.sysfs import build_node


def pool(name: str, *selectors: dict[str, Any], device_type: str = "netDevice") -> dict:
    return {
        "resourceName": name,
        "deviceType": device_type,
        "selectors": list(selectors),
        "bridgePort": {"logicalBridges": ["lb-" + name]},
    }


def config(*pools: dict) -> Config:
    return parse_config({"resourceList": list(pools)})


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Device]:
    """2 PFs x 8 VFs (ens1f0: 0000:3b:02.x, ens1f1: 0000:3b:0a.x) and 2 SFs each."""
    root = tmp_path_factory.mktemp("sys")
    build_node(root)
    return {device.id: device for device in discover(root).devices}


VF = "0000:3b:02.1"
SF = "mlx5_core.sf.2"


def ids(devices: tuple[Device, ...]) -> list[str]:
    return [device.id for device in devices]


def members(cfg: Config, devices: dict[str, Device], name: str = "opi.io/red") -> list[str]:
    return ids(assign(cfg, devices.values()).pools[name])


@pytest.mark.parametrize(
    ("selector", "vf_matches"),
    [
        ({"vendors": ["15b3"]}, True),
        ({"vendors": ["0x8086"]}, False),
        ({"devices": ["101e"]}, True),
        ({"devices": ["101d"]}, False),
        ({"drivers": ["mlx5_core"]}, True),
        ({"drivers": ["vfio-pci"]}, False),
        ({"pfNames": ["ens1f0"]}, True),
        ({"pfNames": ["ens1f1"]}, False),
        ({"pfNames": ["ens1f0#0-3"]}, True),
        ({"pfNames": ["ens1f0#2-7"]}, False),
        ({"pciAddresses": [VF]}, True),
        ({"pciAddresses": ["0000:3b:02.2"]}, False),
        ({"rootDevices": ["0000:3b:00.0"]}, True),
        ({"rootDevices": ["0000:3b:00.1"]}, False),
        ({"auxTypes": ["sf"]}, False),
    ],
)
def test_each_field(node: dict[str, Device], selector: dict, vf_matches: bool) -> None:
    assert (VF in members(config(pool("red", selector)), node)) is vf_matches


def test_fields_are_anded_and_values_ored(node: dict[str, Device]) -> None:
    both = {"vendors": ["15b3"], "drivers": ["vfio-pci"]}
    assert members(config(pool("red", both)), node) == []
    either = {"vendors": ["15b3"], "drivers": ["vfio-pci", "mlx5_core"]}
    assert len(members(config(pool("red", either)), node)) == 16


def test_any_selector_of_a_pool_matches(node: dict[str, Device]) -> None:
    cfg = config(pool("red", {"pfNames": ["ens1f0#0"]}, {"pciAddresses": ["0000:3b:0a.3"]}))
    assert members(cfg, node) == ["0000:3b:02.0", "0000:3b:0a.3"]


def test_pf_names_ranges_and_several_entries(node: dict[str, Device]) -> None:
    cfg = config(pool("red", {"pfNames": ["ens1f0#0-2,7", "ens1f1#5"]}))
    assert members(cfg, node) == [
        "0000:3b:02.0",
        "0000:3b:02.1",
        "0000:3b:02.2",
        "0000:3b:02.7",
        "0000:3b:0a.5",
    ]


def test_device_type_picks_vfs_or_sfs(node: dict[str, Device]) -> None:
    cfg = config(
        pool("red", {"pfNames": ["ens1f0"]}),
        pool("blue", {"pfNames": ["ens1f0"]}, device_type="auxNetDevice"),
    )
    result = assign(cfg, node.values())
    assert {device.kind for device in result.pools["opi.io/red"]} == {"vf"}
    assert ids(result.pools["opi.io/blue"]) == ["mlx5_core.sf.2", "mlx5_core.sf.3"]
    assert result.conflicts == ()


def test_sf_selectors(node: dict[str, Device]) -> None:
    def sfs(selector: dict) -> list[str]:
        cfg = config(pool("red", selector, device_type="auxNetDevice"))
        return members(cfg, node)

    assert sfs({"auxTypes": ["sf"]}) == [
        "mlx5_core.sf.2",
        "mlx5_core.sf.3",
        "mlx5_core.sf.4",
        "mlx5_core.sf.5",
    ]
    assert sfs({"pfNames": ["ens1f1#1"]}) == ["mlx5_core.sf.5"]
    assert sfs({"rootDevices": ["0000:3b:00.1"]}) == ["mlx5_core.sf.4", "mlx5_core.sf.5"]
    assert sfs({"drivers": ["mlx5_core.sf"], "devices": ["101d"]}) == sfs({"auxTypes": ["sf"]})
    assert sfs({"pciAddresses": ["0000:3b:00.0"]}) == []


def test_every_pool_present_and_unmatched_listed(node: dict[str, Device]) -> None:
    cfg = config(
        pool("red", {"pfNames": ["ens1f0"]}),
        pool("empty", {"vendors": ["8086"]}),
    )
    result = assign(cfg, reversed(list(node.values())))
    assert list(result.pools) == ["opi.io/red", "opi.io/empty"]
    assert result.pools["opi.io/empty"] == ()
    assert ids(result.pools["opi.io/red"]) == sorted(ids(result.pools["opi.io/red"]))
    assert len(result.pools["opi.io/red"]) == 8
    assert ids(result.unmatched) == sorted(set(node) - set(ids(result.pools["opi.io/red"])))


def test_resource_prefix_is_part_of_the_key(node: dict[str, Device]) -> None:
    red = pool("red", {"pfNames": ["ens1f0"]}) | {"resourcePrefix": "example.com"}
    assert list(assign(config(red), node.values()).pools) == ["example.com/red"]


def test_overlap_is_a_conflict_naming_both_pools_the_device_and_the_fix(
    node: dict[str, Device],
) -> None:
    cfg = config(
        pool("red", {"pciAddresses": [VF]}),
        pool("blue", {"pfNames": ["ens1f0#1"]}),
    )
    result = assign(cfg, node.values())
    assert ids(result.pools["opi.io/red"]) == [VF]
    assert result.pools["opi.io/blue"] == ()
    assert result.conflicts == (
        f"opi.io/red (resourceList[0]) and opi.io/blue (resourceList[1]) both select device "
        f"{VF}, and a device joins one pool only: narrow the selectors of one of them "
        "(pfNames ranges such as ens1f0#0-3 and ens1f0#4-7 split a PF's VFs); "
        "`xpu-bridge inventory --config ...` shows what each device matches",
    )
    assert "first match wins" not in result.conflicts[0]


def test_overlap_on_many_devices_is_one_line_per_pair_of_pools(node: dict[str, Device]) -> None:
    cfg = config(pool("red", {"pfNames": ["ens1f0"]}), pool("blue", {"pfNames": ["ens1f0#0-5"]}))
    [line] = assign(cfg, node.values()).conflicts
    assert line.startswith(
        "opi.io/red (resourceList[0]) and opi.io/blue (resourceList[1]) both select 6 devices "
        "(0000:3b:02.0, 0000:3b:02.1, 0000:3b:02.2 and 3 more)"
    )


def test_three_way_conflict_names_all_pools(node: dict[str, Device]) -> None:
    cfg = config(
        pool("a", {"pciAddresses": [VF]}),
        pool("b", {"pciAddresses": [VF]}),
        pool("c", {"pciAddresses": [VF]}),
    )
    [line] = assign(cfg, node.values()).conflicts
    assert "opi.io/a (resourceList[0]), opi.io/b (resourceList[1]) and opi.io/c" in line


@given(
    ranges=st.lists(st.tuples(st.integers(0, 300), st.integers(0, 20)), min_size=1, max_size=5),
    index=st.integers(0, 330),
)
def test_pf_name_ranges_match_exactly_their_indexes(
    ranges: list[tuple[int, int]], index: int
) -> None:
    text = ",".join(f"{low}-{low + width}" if width else str(low) for low, width in ranges)
    wanted = {i for low, width in ranges for i in range(low, low + width + 1)}
    cfg = config(pool("red", {"pfNames": [f"ens1f0#{text}"]}))
    device = vf(index=index)
    assert bool(assign(cfg, [device]).pools["opi.io/red"]) is (index in wanted)


def test_unbound_device_never_matches_a_driver(node: dict[str, Device]) -> None:
    device = vf(driver=None)
    cfg = config(pool("red", {"drivers": ["mlx5_core"]}))
    assert ids(assign(cfg, [device]).unmatched) == [device.id]
    assert "driver (none) not in [mlx5_core]" in explain(cfg, device)


def test_explain_joining(node: dict[str, Device]) -> None:
    cfg = config(
        pool("red", {"pfNames": ["ens1f0"]}), pool("blue", {"rootDevices": ["0000:3b:00.0"]})
    )
    assert explain(cfg, node["0000:3b:02.3"]) == (
        "0000:3b:02.3 joins opi.io/red (resourceList[0]); it also matches "
        "opi.io/blue (resourceList[1]): a conflict, which run and check-config refuse until "
        "only one pool's selectors match it"
    )
    assert explain(cfg, node["0000:3b:0a.0"]).startswith("0000:3b:0a.0 joins no pool: ")


def test_explain_why_not(node: dict[str, Device]) -> None:
    cfg = config(
        pool("red", {"drivers": ["mlx5_core"], "vendors": ["15b3"]}),
        pool("blue", {"auxTypes": ["sf"]}, device_type="auxNetDevice"),
        pool("green", {"vendors": ["8086"]}, {"pfNames": ["ens1f1#0-3,7"]}),
    )
    device = vf(driver="vfio-pci", index=9)
    assert explain(cfg, device) == (
        "0000:3b:02.0 joins no pool: "
        "opi.io/red (resourceList[0]): driver vfio-pci not in [mlx5_core]; "
        "opi.io/blue (resourceList[1]): takes auxNetDevice (SFs), 0000:3b:02.0 is a VF; "
        "opi.io/green (resourceList[2]): selectors[0] vendor 15b3 not in [8086], "
        "selectors[1] pf ens1f0 VF index 9 not in pfNames [ens1f1#0-3,7]"
    )


def test_explain_sf_and_vf_only_fields(node: dict[str, Device]) -> None:
    cfg = config(
        pool("red", {"pciAddresses": ["0000:3b:00.0"]}, device_type="auxNetDevice"),
        pool("blue", {"auxTypes": ["sf"], "pfNames": ["ens1f1"]}, device_type="auxNetDevice"),
    )
    text = explain(cfg, node[SF])
    assert "opi.io/red (resourceList[0]): PCI address applies to VFs only" in text
    assert "pf ens1f0 sfnum 0 not in pfNames [ens1f1]" in text
    assert "aux type" not in text


def test_assigning_4096_devices_is_fast() -> None:
    devices = [
        vf(
            f"0000:{bus:02x}:{slot:02x}.{fn}",
            pf=PF0,
            pf_name=f"ens{bus}f0",
            index=slot * 8 + fn,
            driver="vfio-pci" if fn % 2 else "mlx5_core",
        )
        for bus in range(16)
        for slot in range(32)
        for fn in range(8)
    ]
    cfg = config(
        pool("red", {"drivers": ["vfio-pci"], "pfNames": ["ens1f0#0-100", "ens2f0"]}),
        pool("blue", {"drivers": ["mlx5_core"], "vendors": ["15b3"]}),
        pool("green", {"pfNames": [f"ens{bus}f0#0-255" for bus in range(16)]}),
    )
    matcher = PoolMatcher(cfg)
    start = time.perf_counter()
    result = matcher.assign(devices)
    elapsed = time.perf_counter() - start
    print(f"assigned {len(devices)} devices in {elapsed * 1000:.1f} ms")
    assert sum(len(members) for members in result.pools.values()) + len(result.unmatched) == 4096
    assert elapsed < 2.0


def test_assign_on_discovered_node(tmp_path: Path) -> None:
    sysfs = build_node(tmp_path, pfs=2, vfs_per_pf=4, sfs_per_pf=1, vf_driver="vfio-pci")
    sysfs.set_vf_driver(sysfs.pfs[1], 0, "mlx5_core")
    cfg = config(
        pool("dpdk", {"drivers": ["vfio-pci"]}),
        pool("kernel", {"drivers": ["mlx5_core"]}),
        pool("sf", {"auxTypes": ["sf"]}, device_type="auxNetDevice"),
    )
    result = assign(cfg, discover(tmp_path).devices)
    assert len(result.pools["opi.io/dpdk"]) == 7
    assert ids(result.pools["opi.io/kernel"]) == ["0000:3b:0a.0"]
    assert ids(result.pools["opi.io/sf"]) == ["mlx5_core.sf.2", "mlx5_core.sf.3"]
    assert result.unmatched == () and result.conflicts == ()
