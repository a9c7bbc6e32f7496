"""What keeps a vendor plugin's name-keyed ports safe: stable names, no shared names,
network-function pairs in a fixed order, VF creation that stays in bounds and spares every
held VF, and a heartbeat that copes with plugins that serve none."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from builders import vf

from xpu_bridge.config import ResourceConfig
from xpu_bridge.hostagent.health import AgentHealth
from xpu_bridge.hostagent.heartbeat import Heartbeat
from xpu_bridge.hostagent.port_names import TemplateNames
from xpu_bridge.hostagent.ports import PortError
from xpu_bridge.node.inventory import discover
from xpu_bridge.node.network_functions import FunctionPair, NetworkFunctions
from xpu_bridge.node.pool import DevicePool, PoolDevice, port_spec
from xpu_bridge.node.pool_set import PoolSet
from xpu_bridge.node.vf_creation import VfCreator, plan_vfs
from xpu_bridge.release.sweep import StartupSweep
from xpu_bridge.sim.sysfs import build_node

PF0, PF1 = "0000:3b:00.0", "0000:3b:00.1"
VLAN_POOL = ResourceConfig.model_validate(
    {"resourceName": "red", "selectors": [{"vendors": ["15b3"]}], "bridgePort": {"vlan": 10}}
)


def names(*pfs: str) -> TemplateNames:
    return TemplateNames("host{pf}-{vf}", {pf: position for position, pf in enumerate(pfs)})


async def test_a_devices_port_name_stays_when_a_pf_vanishes() -> None:
    pool = DevicePool("opi.io/red", VLAN_POOL, names(PF0, PF1))
    await pool.replace_devices([vf("0000:3b:02.0"), vf("0000:3b:0a.0")])
    assert pool.known_port_id("0000:3b:0a.0") == "host1-0"
    await pool.replace_devices([vf("0000:3b:0a.0")], names(PF1))  # PF0 gone: PF1 is now 0
    entry = pool.get("0000:3b:0a.0")
    assert entry is not None and entry.spec.port_id == "host1-0"


async def test_two_devices_named_alike_never_share_a_port() -> None:
    pool = DevicePool("opi.io/red", VLAN_POOL, names(PF0, PF1))
    await pool.replace_devices([vf("0000:3b:02.0")])
    pools = PoolSet([pool], pool.naming)
    await pools.claim_names()
    other = DevicePool("opi.io/blue", VLAN_POOL, names(PF1))  # PF1 at position 0: host0-0
    await other.replace_devices([vf("0000:3b:0a.0")])
    both = PoolSet([pool, other], other.naming)
    both._owners = dict(pools._owners)
    await both.claim_names()
    reason = other.unusable_reason("0000:3b:0a.0")
    assert reason is not None and "host0-0 belongs to device 0000:3b:02.0" in reason
    assert pool.unusable_reason("0000:3b:02.0") is None
    assert other.snapshot()[0].health == "Unhealthy"


def test_only_pfs_with_pooled_devices_count_for_the_pf_placeholder(tmp_path: Path) -> None:
    from xpu_bridge.config import parse_config
    from xpu_bridge.node.selection import assign

    build_node(tmp_path, pfs=2, vfs_per_pf=2)
    config = parse_config(
        {
            "hostAgent": {"api": "dpu-vendor-plugin"},
            "resourceList": [
                {"resourceName": "red", "selectors": [{"pfNames": ["ens1f1"]}],
                 "bridgePort": {"vlan": 10}}
            ],
        }
    )  # fmt: skip
    positions = assign(config, discover(tmp_path).devices).pf_positions()
    assert positions == {PF1: 0}  # as dpu-operator names its one PF: host0-<vf>


def test_the_sweep_also_covers_held_devices_whose_port_we_do_not_know() -> None:
    entries = [PoolDevice(vf(a), port_spec(vf(a), VLAN_POOL, names(PF0))) for a in
               ("0000:3b:02.0", "0000:3b:02.1")]  # fmt: skip
    pool = DevicePool("opi.io/red", VLAN_POOL, names(PF0))
    pool._devices = {entry.id: entry for entry in entries}
    sweep = StartupSweep()
    sweep.seed(PoolSet([pool]), known={"host0-0"})
    assert set(sweep.pending) == {"host0-1"}  # held or not: it goes once no container holds it


class Functions:
    """Records network-function calls; `fail_delete` makes Delete refuse."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.fail_delete = False

    async def create_network_function(self, input_mac: str, output_mac: str) -> None:
        self.calls.append(("create", input_mac, output_mac))

    async def delete_network_function(self, input_mac: str, output_mac: str) -> None:
        self.calls.append(("delete", input_mac, output_mac))
        if self.fail_delete:
            raise PortError("simulated refusal")


def entry(address: str) -> PoolDevice:
    device = vf(address)
    return PoolDevice(device, port_spec(device, VLAN_POOL, names(PF0)))


def test_a_pair_has_one_order_whatever_order_the_devices_come_in() -> None:
    first, second = entry("0000:3b:02.0"), entry("0000:3b:02.1")
    assert FunctionPair.of(first, second) == FunctionPair.of(second, first)
    pair = FunctionPair.of(second, first)
    assert (pair.input_id, pair.input_mac) == ("0000:3b:02.0", "0c:42:a1:00:3b:10")


async def test_a_refused_function_delete_does_not_keep_its_ports() -> None:
    agent = Functions()
    functions = NetworkFunctions(agent)
    pair = FunctionPair.of(entry("0000:3b:02.0"), entry("0000:3b:02.1"))
    assert await functions.chain(pair)
    agent.fail_delete = True
    await functions.unchain("0000:3b:02.1")  # no exception: the ports may go
    assert functions.pair_of("0000:3b:02.0") is None
    assert agent.calls[-1] == ("delete", pair.input_mac, pair.output_mac)


async def test_unchaining_an_old_pair_keeps_a_newer_pair_of_its_partner() -> None:
    functions = NetworkFunctions(Functions())
    old = FunctionPair.of(entry("0000:3b:02.0"), entry("0000:3b:02.1"))
    new = FunctionPair.of(entry("0000:3b:02.1"), entry("0000:3b:02.2"))
    functions.adopt(old)
    functions.adopt(new)  # 02.1 was chained anew with 02.2 meanwhile
    await functions.unchain("0000:3b:02.0")
    assert functions.pair_of("0000:3b:02.1") == new
    assert functions.pair_of("0000:3b:02.2") == new


async def test_after_a_restart_every_pair_is_created_again() -> None:
    agent = Functions()
    functions = NetworkFunctions(agent)
    pair = FunctionPair.of(entry("0000:3b:02.0"), entry("0000:3b:02.1"))
    functions.adopt(pair)
    await functions.rechain()
    assert agent.calls == [("create", pair.input_mac, pair.output_mac)]


async def test_vf_creation_spares_a_vf_held_under_any_resource(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from xpu_bridge.config import parse_config

    build_node(tmp_path, pfs=1, vfs_per_pf=2)
    config = parse_config(
        {
            "pfs": [{"pfName": "ens1f0", "numVfs": 4}],
            "resourceList": [
                {"resourceName": "red", "selectors": [{"pfNames": ["ens9f9"]}],
                 "bridgePort": {"logicalBridges": ["//b/red"]}}
            ],
        }
    )  # fmt: skip
    inventory = discover(tmp_path)
    plan = plan_vfs(config, inventory)
    assert [change.wanted for change in plan.changes] == [4]
    with caplog.at_level(logging.ERROR):
        # 0000:3b:02.1 is held by a pod of another device plugin: its PF is left alone.
        assert await VfCreator(tmp_path).apply(plan, inventory, {"0000:3b:02.1"}) == 0
    assert "containers hold its VF(s) 0000:3b:02.1" in caplog.text
    assert (tmp_path / "bus/pci/devices" / PF0 / "sriov_numvfs").read_text().strip() == "2"


async def test_vf_creation_never_writes_through_a_link(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from xpu_bridge.config import parse_config

    build_node(tmp_path / "sys", pfs=1, vfs_per_pf=1)
    config = parse_config(
        {
            "pfs": [{"pciAddress": PF0, "numVfs": 2}],
            "resourceList": [
                {"resourceName": "red", "selectors": [{"pfNames": ["ens1f0"]}],
                 "bridgePort": {"logicalBridges": ["//b/red"]}}
            ],
        }
    )  # fmt: skip
    inventory = discover(tmp_path / "sys")
    plan = plan_vfs(config, inventory)
    assert [change.wanted for change in plan.changes] == [2]
    # Between the plan and the write, sriov_numvfs becomes a link out of the root.
    outside = tmp_path / "outside"
    outside.write_text("untouched")
    numvfs = Path(os.path.realpath(tmp_path / "sys/bus/pci/devices" / PF0)) / "sriov_numvfs"
    numvfs.unlink()
    numvfs.symlink_to(outside)
    with caplog.at_level(logging.ERROR):
        assert await VfCreator(tmp_path / "sys").apply(plan, inventory, set()) == 0
    assert outside.read_text() == "untouched"
    assert "failed" in caplog.text  # one error line, no traceback, the daemon goes on


class NoHeartbeat:
    """A vendor plugin without HeartbeatService (most real ones: dpu-operator's daemon
    serves it); its Init answers."""

    endpoint = "unix:///run/vsp.sock"

    def __init__(self) -> None:
        self.fresh = False

    async def start(self) -> bool:
        return self.fresh

    async def ping(self) -> bool | None:
        return None


async def test_a_plugin_without_a_heartbeat_is_healthy_while_init_answers() -> None:
    agent = NoHeartbeat()
    health = AgentHealth(unhealthy_after=0)
    outages: list[bool] = []
    beat = Heartbeat(agent, health, 5)  # type: ignore[arg-type]
    beat.on_outage = outages.append
    health.record(False, 0.0)
    await beat.beat()
    assert health.down_since is None and health.unhealthy_since is None
    assert outages == []
    agent.fresh = True  # it took Init again: it restarted
    await beat.beat()
    assert outages == [True]
