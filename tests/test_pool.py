"""Preferred allocation: must_include first, exact size, spread or pack, deterministic."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import builders
from builders import resource_config, vf_address
from hypothesis import given
from hypothesis import strategies as st

from xpu_bridge.node.inventory import Device
from xpu_bridge.node.pool import DevicePool, env_name


def vf(pf: int, index: int) -> Device:
    """VF `index` of build_node's PF number `pf` (0: ens1f0, 1: ens1f1, 2: ens2f0)."""
    return builders.vf(vf_address(pf, index))


def make_pool(policy: str = "spread") -> DevicePool:
    return DevicePool("opi.io/red", resource_config("red", allocationPolicy=policy), "")


async def filled(policy: str = "spread") -> DevicePool:
    pool = make_pool(policy)
    await pool.replace_devices(vf(pf, i) for pf in range(3) for i in range(8))
    return pool


async def test_spread_balances_pfs() -> None:
    pool = await filled()
    ids = [entry.id for entry in pool.devices()]
    picked = pool.preferred(ids, [], 6)
    assert Counter(pool.get(i).device.pf_address for i in picked) == Counter(
        {"0000:3b:00.0": 2, "0000:3b:00.1": 2, "0000:4b:00.0": 2}
    )


async def test_pack_fills_the_pf_of_must_include_first() -> None:
    pool = await filled("pack")
    ids = [entry.id for entry in pool.devices()]
    picked = pool.preferred(ids, ["0000:3b:0a.5"], 4)
    assert picked[0] == "0000:3b:0a.5"
    assert {pool.get(i).device.pf_address for i in picked} == {"0000:3b:00.1"}


@given(
    st.sets(st.tuples(st.integers(0, 2), st.integers(0, 7)), min_size=1),
    st.integers(0, 30),
    st.data(),
)
async def test_properties(available: set[tuple[int, int]], size: int, data: st.DataObject) -> None:
    pool = await filled()
    ids = sorted(vf(pf, i).id for pf, i in available)
    must = data.draw(st.lists(st.sampled_from(ids), unique=True, max_size=min(size, len(ids))))
    picked = pool.preferred(ids, must, size)
    assert picked[: len(must)] == must
    assert len(picked) == min(size, len(ids))
    assert len(set(picked)) == len(picked) and set(picked) <= set(ids)
    assert picked == pool.preferred(list(reversed(ids)), must, size)


def test_env_name_follows_sriov_convention() -> None:
    assert env_name("opi.io/red") == "PCIDEVICE_OPI_IO_RED"
    assert env_name("example.com/my-pool") == "PCIDEVICE_EXAMPLE_COM_MY_POOL"


async def test_mac_survives_the_netdev_leaving_the_host() -> None:
    pool = make_pool()
    with_mac = replace(vf(0, 1), mac="0c:42:a1:00:3b:11", netdev="ens1f0v1")
    await pool.replace_devices([with_mac])
    spec = pool.get(with_mac.id).spec
    moved = replace(with_mac, mac=None, netdev=None)  # the CNI moved it into a pod
    await pool.replace_devices([moved])
    assert pool.get(with_mac.id).spec == spec
    assert spec.mac == bytes.fromhex("0c42a100 3b11".replace(" ", ""))
    rebound = replace(with_mac, mac="0c:42:a1:00:3b:99")
    await pool.replace_devices([rebound])
    assert pool.get(with_mac.id).spec.mac == bytes.fromhex("0c42a1003b99")


def test_listandwatch_messages_are_built_once_per_device_state_and_stay_exact() -> None:
    from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2 as dp
    from xpu_bridge.kubelet.plugin_server import DeviceMessages
    from xpu_bridge.node.pool import DeviceView

    messages = DeviceMessages()
    views = [DeviceView(f"0000:3b:02.{i}", "Healthy", i % 2) for i in range(4)]
    first = messages.response(views)
    assert [d.ID for d in first.devices] == [v.id for v in views]
    assert [d.topology.nodes[0].ID for d in first.devices] == [0, 1, 0, 1]
    sick = [*views[:3], DeviceView(views[3].id, "Unhealthy", 1)]
    second = messages.response(sick)
    assert [d.health for d in second.devices] == ["Healthy"] * 3 + ["Unhealthy"]
    assert [d.health for d in first.devices][-1] == "Healthy"  # the first answer is untouched
    no_numa = messages.response([DeviceView("mlx5_core.sf.2", "Healthy", None)])
    assert not no_numa.devices[0].HasField("topology")
    again = messages.response(views)
    assert again.SerializeToString() == first.SerializeToString()
    assert dp.ListAndWatchResponse.FromString(again.SerializeToString()) == first
