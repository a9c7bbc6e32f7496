"""Tests of the simulated dpu-operator vendor plugin (Intel IPU VSP) over a real unix socket."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from opi_protos.dpu_api import api_pb2
from opi_protos.dpu_api import api_pb2_grpc as vendor_grpc
from opi_protos.evpn_gw import l2_xpu_infra_mgr_pb2 as pb
from opi_protos.evpn_gw import l2_xpu_infra_mgr_pb2_grpc as pb_grpc
from xpu_bridge.common.sockets import NotASocket
from xpu_bridge.node.inventory import discover
from xpu_bridge.sim.sysfs import FakeSysfs, PfHandle, build_node
from xpu_bridge.sim.vendor_plugin import (
    ALREADY_INITIALIZED,
    CREATE,
    DEFAULT_ADDRESS,
    DEFAULT_INIT_IP,
    DEFAULT_INIT_PORT,
    DELETE,
    NO_INTERFACE,
    NfCall,
    SimVendorPlugin,
    go_atoi,
    serve_vendor_plugin,
)

WAIT = 5.0  # generous: CI machines are noisy
UNKNOWN = grpc.StatusCode.UNKNOWN
MAC = bytes.fromhex("000800000314")  # VSI 8, as upstream's own example


def _mac(index: int, vsi: int = 8) -> bytes:
    return bytes([0, vsi, 0, 0, index // 256, index % 256])


def _port(name: str, mac: bytes = MAC, bridges: tuple[str, ...] = ("100",)) -> pb.BridgePort:
    spec = pb.BridgePortSpec(
        mac_address=mac, ptype=pb.BRIDGE_PORT_TYPE_ACCESS, logical_bridges=list(bridges)
    )
    return pb.BridgePort(name=name, spec=spec)


def _create(
    name: str, mac: bytes = MAC, bridges: tuple[str, ...] = ("100",), port_id: str = ""
) -> pb.CreateBridgePortRequest:
    return pb.CreateBridgePortRequest(bridge_port_id=port_id, bridge_port=_port(name, mac, bridges))


def _up(port: pb.BridgePort) -> pb.BridgePort:
    """What upstream answers and stores: the request's port with status UP, nothing else."""
    answered = pb.BridgePort()
    answered.CopyFrom(port)
    answered.status.oper_status = pb.BP_OPER_STATUS_UP
    return answered


async def _status_of(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value.code(), info.value.details() or ""


class Stubs:
    """Every service the VSP serves, over one channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.ports = pb_grpc.BridgePortServiceStub(channel)
        self.life = vendor_grpc.LifeCycleServiceStub(channel)
        self.nf = vendor_grpc.NetworkFunctionServiceStub(channel)
        self.devices = vendor_grpc.DeviceServiceStub(channel)
        self.heartbeat = vendor_grpc.HeartbeatServiceStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)

    async def init(self, dpu_mode: bool = True) -> api_pb2.IpPort:
        return await self.life.Init(api_pb2.InitRequest(dpu_mode=dpu_mode, dpu_identifier="dpu-0"))


@pytest.fixture
async def vsp(short_root: Path) -> AsyncIterator[SimVendorPlugin]:
    sim = SimVendorPlugin(seed=7)
    await sim.start(f"unix://{short_root}/vsp.sock")
    yield sim
    await sim.stop()


@pytest.fixture
async def stubs(vsp: SimVendorPlugin) -> AsyncIterator[Stubs]:
    async with grpc.aio.insecure_channel(vsp.target) as channel:
        yield Stubs(channel)


@pytest.fixture
async def ready(vsp: SimVendorPlugin, stubs: Stubs) -> Stubs:
    """Stubs of a VSP that has been initialized."""
    await stubs.init()
    assert vsp.initialized
    return stubs


# --- CreateBridgePort -----------------------------------------------------------------------


async def test_create_stores_the_request_port_up_keyed_by_name(
    vsp: SimVendorPlugin, ready: Stubs
) -> None:
    request = _create("vf-3b-02-1", port_id="ignored-id")
    created = await ready.ports.CreateBridgePort(request)
    assert created == _up(request.bridge_port)
    assert not created.status.components
    assert vsp.ports == {"vf-3b-02-1": _up(request.bridge_port)}
    assert vsp.capacity_left == 2


@pytest.mark.parametrize(
    ("mac", "bridges", "message"),
    [
        # Each case breaks the named check and every later one, so only the order tells.
        (b"", (), "invalid mac address provided"),
        (bytes(7), ("1",), "invalid mac address provided"),
        (_mac(1, vsi=0), (), "vlan id is not provided"),
        (_mac(1, vsi=0), ("red",), "invalid vlan 0, vlan must be within 2-4094 range"),
        (_mac(1, vsi=0), ("1",), "invalid vlan 1, vlan must be within 2-4094 range"),
        (_mac(1, vsi=0), ("4095",), "invalid vlan 4095, vlan must be within 2-4094 range"),
        (_mac(1, vsi=0), ("-7",), "invalid vlan -7, vlan must be within 2-4094 range"),
        (
            _mac(1, vsi=0),
            ("100",),
            "invalid VSI:0 in given mac address, the value in 2nd octed must be > 0",
        ),
    ],
)
async def test_create_checks_in_upstream_order_with_unknown(
    vsp: SimVendorPlugin, ready: Stubs, mac: bytes, bridges: tuple[str, ...], message: str
) -> None:
    code, details = await _status_of(ready.ports.CreateBridgePort(_create("p", mac, bridges)))
    assert (code, details) == (UNKNOWN, message)
    assert vsp.ports == {}
    assert vsp.capacity_left == 3


async def test_create_one_byte_mac_is_refused_like_upstreams_panic(
    vsp: SimVendorPlugin, ready: Stubs
) -> None:
    code, details = await _status_of(ready.ports.CreateBridgePort(_create("p", b"\x01")))
    assert code == UNKNOWN
    assert "index out of range [1] with length 1" in details
    assert vsp.ports == {}


async def test_only_the_first_bridge_is_the_vlan(ready: Stubs) -> None:
    created = await ready.ports.CreateBridgePort(_create("p", bridges=("4094", "red")))
    assert list(created.spec.logical_bridges) == ["4094", "red"]
    code, details = await _status_of(
        ready.ports.CreateBridgePort(_create("q", _mac(2), ("red", "100")))
    )
    assert (code, details) == (UNKNOWN, "invalid vlan 0, vlan must be within 2-4094 range")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2", 2),
        ("+100", 100),
        ("007", 7),
        ("-5", -5),
        ("9223372036854775807", 2**63 - 1),
        ("9223372036854775808", None),
        ("1_00", None),
        (" 100", None),
        ("100\n", None),
        ("0x10", None),
        ("100.0", None),
        ("", None),
        ("\u0661\u0660\u0660", None),  # Arabic-Indic 100: Python's int() takes it, Atoi not
    ],
)
def test_go_atoi(text: str, value: int | None) -> None:
    assert go_atoi(text) == value


async def test_vlan_text_is_parsed_as_go_does_over_grpc(ready: Stubs) -> None:
    await ready.ports.CreateBridgePort(_create("plus", _mac(1), ("+100",)))
    code, details = await _status_of(ready.ports.CreateBridgePort(_create("u", _mac(2), ("1_00",))))
    assert (code, details) == (UNKNOWN, "invalid vlan 0, vlan must be within 2-4094 range")


async def test_existing_name_answers_the_stored_port_whatever_the_new_spec(
    vsp: SimVendorPlugin, ready: Stubs
) -> None:
    first = await ready.ports.CreateBridgePort(_create("p", _mac(1), ("100",)))
    again = await ready.ports.CreateBridgePort(_create("p", _mac(2), ("200",), port_id="other"))
    assert again == first
    assert bytes(again.spec.mac_address) == _mac(1)
    assert list(vsp.ports) == ["p"]
    assert vsp.capacity_left == 2


async def test_spec_checks_come_before_the_name_lookup(ready: Stubs) -> None:
    await ready.ports.CreateBridgePort(_create("p"))
    code, details = await _status_of(ready.ports.CreateBridgePort(_create("p", bridges=("1",))))
    assert (code, details) == (UNKNOWN, "invalid vlan 1, vlan must be within 2-4094 range")


async def test_empty_name_is_one_key_every_nameless_device_shares(
    vsp: SimVendorPlugin, ready: Stubs
) -> None:
    first = await ready.ports.CreateBridgePort(_create("", _mac(1)))
    second = await ready.ports.CreateBridgePort(_create("", _mac(2)))
    assert second == first
    assert bytes(second.spec.mac_address) == _mac(1)
    assert list(vsp.ports) == [""]
    assert vsp.capacity_left == 2


async def test_capacity_is_three_interfaces_then_unknown(
    vsp: SimVendorPlugin, ready: Stubs
) -> None:
    for index in range(3):
        await ready.ports.CreateBridgePort(_create(f"p{index}", _mac(index)))
    assert vsp.capacity_left == 0
    code, details = await _status_of(ready.ports.CreateBridgePort(_create("p3", _mac(3))))
    assert (code, details) == (UNKNOWN, NO_INTERFACE)
    assert details == "error from allocateAccInterface->Interface not available\n"
    # A known name is answered from the store even when full.
    assert (await ready.ports.CreateBridgePort(_create("p1", _mac(1)))).name == "p1"
    await ready.ports.DeleteBridgePort(pb.DeleteBridgePortRequest(name="p1"))
    assert vsp.capacity_left == 1
    await ready.ports.CreateBridgePort(_create("p3", _mac(3)))
    assert sorted(vsp.ports) == ["p0", "p2", "p3"]


async def test_interfaces_is_a_constructor_knob(short_root: Path) -> None:
    sim = SimVendorPlugin(interfaces=1, require_init=False)
    await sim.start(f"unix://{short_root}/one.sock")
    try:
        async with grpc.aio.insecure_channel(sim.target) as channel:
            stubs = Stubs(channel)
            await stubs.ports.CreateBridgePort(_create("a", _mac(1)))
            code, details = await _status_of(stubs.ports.CreateBridgePort(_create("b", _mac(2))))
            assert (code, details) == (UNKNOWN, NO_INTERFACE)
    finally:
        await sim.stop()


# --- Delete / Get / List / Update -----------------------------------------------------------


async def test_delete_unknown_is_ok_and_known_frees_the_port(
    vsp: SimVendorPlugin, ready: Stubs
) -> None:
    await ready.ports.DeleteBridgePort(pb.DeleteBridgePortRequest(name="nobody"))
    await ready.ports.DeleteBridgePort(pb.DeleteBridgePortRequest(name="", allow_missing=False))
    await ready.ports.CreateBridgePort(_create("p"))
    assert vsp.capacity_left == 2
    await ready.ports.DeleteBridgePort(pb.DeleteBridgePortRequest(name="p"))
    assert vsp.ports == {}
    assert vsp.capacity_left == 3
    # Gone for real: a new Create with another spec is stored afresh.
    fresh = await ready.ports.CreateBridgePort(_create("p", _mac(9), ("300",)))
    assert list(fresh.spec.logical_bridges) == ["300"]


async def test_get_answers_a_stub_for_any_name(ready: Stubs) -> None:
    await ready.ports.CreateBridgePort(_create("p"))
    for name in ("p", "nobody", ""):
        got = await ready.ports.GetBridgePort(pb.GetBridgePortRequest(name=name))
        assert got == pb.BridgePort(name=name, spec=pb.BridgePortSpec())
        assert got.HasField("spec")
        assert not got.HasField("status")


async def test_list_is_always_empty_and_update_answers_an_empty_port(
    vsp: SimVendorPlugin, ready: Stubs
) -> None:
    await ready.ports.CreateBridgePort(_create("p"))
    listed = await ready.ports.ListBridgePorts(pb.ListBridgePortsRequest(page_size=10))
    assert listed == pb.ListBridgePortsResponse()
    update = pb.UpdateBridgePortRequest(bridge_port=_port("p", _mac(5), ("200",)))
    assert await ready.ports.UpdateBridgePort(update) == pb.BridgePort()
    assert bytes(vsp.ports["p"].spec.mac_address) == MAC  # Update changed nothing


# --- LifeCycleService -----------------------------------------------------------------------


async def test_init_once_then_already_initialized(vsp: SimVendorPlugin, stubs: Stubs) -> None:
    assert not vsp.initialized
    answer = await stubs.init(dpu_mode=True)
    assert answer == api_pb2.IpPort(ip=DEFAULT_INIT_IP, port=DEFAULT_INIT_PORT)
    assert vsp.initialized
    code, details = await _status_of(stubs.init(dpu_mode=False))
    assert code == UNKNOWN
    assert "already initialized" in details
    assert details == ALREADY_INITIALIZED
    assert [r.dpu_mode for r in vsp.init_requests] == [True, False]
    assert vsp.init_requests[0].dpu_identifier == "dpu-0"


async def test_bridge_ports_need_init_first(vsp: SimVendorPlugin, stubs: Stubs) -> None:
    # Refused before any spec check: this request would fail the MAC check too.
    code, details = await _status_of(stubs.ports.CreateBridgePort(_create("p", b"")))
    assert (code, details) == (
        UNKNOWN,
        "CreateBridgePort: AccApfs info not set, thro-> setupAccApfs",
    )
    code, details = await _status_of(
        stubs.ports.DeleteBridgePort(pb.DeleteBridgePortRequest(name="p"))
    )
    assert (code, details) == (
        UNKNOWN,
        "DeleteBridgePort: AccApfs info not set, thro-> setupAccApfs",
    )
    # Upstream's Get, List and Update have no such check.
    await stubs.ports.GetBridgePort(pb.GetBridgePortRequest(name="p"))
    await stubs.ports.ListBridgePorts(pb.ListBridgePortsRequest())
    await stubs.ports.UpdateBridgePort(pb.UpdateBridgePortRequest(bridge_port=_port("p")))
    assert vsp.ports == {}
    await stubs.init()
    await stubs.ports.CreateBridgePort(_create("p"))
    assert list(vsp.ports) == ["p"]


async def test_require_init_off_serves_ports_without_init(short_root: Path) -> None:
    sim = SimVendorPlugin(require_init=False)
    await sim.start(f"unix://{short_root}/noinit.sock")
    try:
        async with grpc.aio.insecure_channel(sim.target) as channel:
            stubs = Stubs(channel)
            await stubs.ports.CreateBridgePort(_create("p"))
            await stubs.ports.DeleteBridgePort(pb.DeleteBridgePortRequest(name="p"))
        assert not sim.initialized
        assert sim.calls["CreateBridgePort"] == 1
    finally:
        await sim.stop()


# --- DeviceService ----------------------------------------------------------------------


def _vfs_of(root: Path, pf: PfHandle) -> list[str]:
    """What discovery sees: the VFs of `pf`, by PCI address."""
    return [d.id for d in discover(root).devices if d.kind == "vf" and d.pf_address == pf.address]


@pytest.fixture
def sysfs(short_root: Path) -> FakeSysfs:
    return build_node(short_root / "sys", pfs=2, vfs_per_pf=2, sfs_per_pf=0)


async def test_set_num_vfs_changes_the_fake_sysfs_discovery_reads(
    short_root: Path, sysfs: FakeSysfs
) -> None:
    pf = sysfs.pfs[1]
    other = sysfs.pfs[0]
    untouched = _vfs_of(sysfs.root, other)
    sim = SimVendorPlugin(sysfs=sysfs, pf=pf, max_vfs=6)
    assert sim.num_vfs == 2
    await sim.start(f"unix://{short_root}/dev.sock")
    try:
        async with grpc.aio.insecure_channel(sim.target) as channel:
            devices = Stubs(channel).devices
            assert (await devices.SetNumVfs(api_pb2.VfCount(vf_cnt=4))).vf_cnt == 4
            four = _vfs_of(sysfs.root, pf)
            assert len(four) == 4
            assert (pf.path / "sriov_numvfs").read_text() == "4\n"
            assert sorted(p.name for p in pf.path.glob("virtfn*")) == [
                f"virtfn{i}" for i in range(4)
            ]
            assert (await devices.SetNumVfs(api_pb2.VfCount(vf_cnt=10))).vf_cnt == 6  # max_vfs
            assert len(_vfs_of(sysfs.root, pf)) == 6
            assert (await devices.SetNumVfs(api_pb2.VfCount(vf_cnt=-3))).vf_cnt == 0
            assert _vfs_of(sysfs.root, pf) == []
            assert not list(pf.path.glob("virtfn*"))
            assert not any((pf.path.parent / address).exists() for address in four)
            assert (pf.path / "sriov_numvfs").read_text() == "0\n"
        assert _vfs_of(sysfs.root, other) == untouched
        assert sim.num_vfs == 0
        assert sim.num_vfs_requests == [4, 10, -3]
    finally:
        await sim.stop()


async def test_set_num_vfs_is_capped_by_sriov_totalvfs(short_root: Path) -> None:
    sysfs = build_node(short_root / "sys", pfs=1, vfs_per_pf=0, sfs_per_pf=0, total_vfs=5)
    sim = SimVendorPlugin(sysfs=sysfs, pf=sysfs.pfs[0], max_vfs=64)
    await sim.start(f"unix://{short_root}/cap.sock")
    try:
        async with grpc.aio.insecure_channel(sim.target) as channel:
            answer = await Stubs(channel).devices.SetNumVfs(api_pb2.VfCount(vf_cnt=64))
        assert answer.vf_cnt == 5
        assert len(_vfs_of(sysfs.root, sysfs.pfs[0])) == 5
    finally:
        await sim.stop()


async def test_get_devices_lists_the_pfs_vfs_healthy_on_its_numa_node(
    short_root: Path, sysfs: FakeSysfs
) -> None:
    pf = sysfs.pfs[1]  # NUMA node 1
    sim = SimVendorPlugin(sysfs=sysfs, pf=pf)
    await sim.start(f"unix://{short_root}/get.sock")
    try:
        async with grpc.aio.insecure_channel(sim.target) as channel:
            devices = Stubs(channel).devices
            await devices.SetNumVfs(api_pb2.VfCount(vf_cnt=3))
            listed = await devices.GetDevices(api_pb2.Empty())
            expected = _vfs_of(sysfs.root, pf)
            assert len(expected) == 3
            assert sorted(listed.devices) == expected
            for key, device in listed.devices.items():
                assert key == device.ID
                assert device.health == "Healthy"
                assert device.topology.node == "1"
            sysfs.remove_vf(pf, 0)  # hot-unplug: GetDevices reads the tree
            assert sorted((await devices.GetDevices(api_pb2.Empty())).devices) == expected[1:]
    finally:
        await sim.stop()


async def test_devices_without_sysfs_only_count(vsp: SimVendorPlugin, stubs: Stubs) -> None:
    assert (await stubs.devices.SetNumVfs(api_pb2.VfCount(vf_cnt=40))).vf_cnt == 16
    assert vsp.num_vfs == 16
    assert (await stubs.devices.GetDevices(api_pb2.Empty())) == api_pb2.DeviceListResponse()


def test_sysfs_and_pf_come_together(sysfs: FakeSysfs) -> None:
    with pytest.raises(ValueError, match="both"):
        SimVendorPlugin(sysfs=sysfs)
    with pytest.raises(ValueError, match="both"):
        SimVendorPlugin(pf=sysfs.pfs[0])


def test_fake_sysfs_set_num_vfs_acts_like_the_kernel(sysfs: FakeSysfs) -> None:
    pf = sysfs.pfs[0]
    before = sysfs.vfs(pf)
    marker = pf.path.parent / before[0] / "marker"
    marker.write_text("x")
    assert sysfs.set_num_vfs(pf, 2) == list(before.values())  # same count: nothing changes
    assert marker.exists()
    grown = sysfs.set_num_vfs(pf, 3)  # another count: every VF made afresh, same addresses
    assert grown[:2] == list(before.values())
    assert not marker.exists()
    assert sysfs.vfs(pf) == dict(enumerate(grown))
    assert (pf.path / "virtfn2" / "physfn").resolve() == pf.path.resolve()
    assert (sysfs.root / "class/net" / f"{pf.ifname}v2").exists()
    with pytest.raises(ValueError, match="not within"):
        sysfs.set_num_vfs(pf, pf.total_vfs + 1)
    with pytest.raises(ValueError, match="not within"):
        sysfs.set_num_vfs(pf, -1)
    assert sysfs.set_num_vfs(pf, 0) == []
    assert not (sysfs.root / "class/net" / f"{pf.ifname}v0").exists()


# --- HeartbeatService -------------------------------------------------------------------


async def test_ping_echoes_and_reports_the_health_switch(
    vsp: SimVendorPlugin, stubs: Stubs
) -> None:
    pong = await stubs.heartbeat.Ping(api_pb2.PingRequest(timestamp=1234, sender_id="daemon"))
    assert pong == api_pb2.PingResponse(timestamp=1234, responder_id="sim-vsp", healthy=True)
    vsp.set_healthy(False)
    assert not vsp.healthy
    assert not (await stubs.heartbeat.Ping(api_pb2.PingRequest(timestamp=1))).healthy
    vsp.set_healthy(True)
    before = time.time_ns()
    now = await stubs.heartbeat.Ping(api_pb2.PingRequest())
    assert now.healthy
    assert before <= now.timestamp <= time.time_ns()
    assert vsp.calls["Ping"] == 3


# --- NetworkFunctionService -------------------------------------------------------------


async def test_network_functions_are_recorded_in_order(vsp: SimVendorPlugin, stubs: Stubs) -> None:
    ab = api_pb2.NFRequest(input="aa", output="bb")
    cd = api_pb2.NFRequest(input="cc", output="dd")
    await stubs.nf.CreateNetworkFunction(ab)
    await stubs.nf.CreateNetworkFunction(ab)  # a live pair again: OK
    await stubs.nf.CreateNetworkFunction(cd)
    await stubs.nf.DeleteNetworkFunction(api_pb2.NFRequest(input="ee", output="ff"))  # unknown
    await stubs.nf.DeleteNetworkFunction(ab)
    assert vsp.live_functions == {("cc", "dd")}
    assert vsp.nf_calls == [
        NfCall(CREATE, "aa", "bb"),
        NfCall(CREATE, "aa", "bb"),
        NfCall(CREATE, "cc", "dd"),
        NfCall(DELETE, "ee", "ff"),
        NfCall(DELETE, "aa", "bb"),
    ]


async def test_network_function_failure_switch(vsp: SimVendorPlugin, stubs: Stubs) -> None:
    ab = api_pb2.NFRequest(input="aa", output="bb")
    vsp.fail_network_functions(grpc.StatusCode.RESOURCE_EXHAUSTED, "no room on the DPU")
    code, details = await _status_of(stubs.nf.CreateNetworkFunction(ab))
    assert (code, details) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "no room on the DPU")
    assert vsp.live_functions == set()
    await stubs.nf.CreateNetworkFunction(ab)  # only the next one failed
    assert vsp.live_functions == {("aa", "bb")}
    vsp.fail_network_functions(count=None)  # every Create until cleared
    for _ in range(2):
        code, details = await _status_of(stubs.nf.CreateNetworkFunction(ab))
        assert (code, details) == (grpc.StatusCode.INTERNAL, "simulated network function failure")
    await stubs.nf.DeleteNetworkFunction(ab)  # Delete is not affected
    vsp.clear_network_function_failure()
    await stubs.nf.CreateNetworkFunction(ab)
    assert [call.code for call in vsp.nf_calls] == [
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.OK,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.OK,
        grpc.StatusCode.OK,
    ]
    assert vsp.live_functions == {("aa", "bb")}


# --- health, reflection, fault injection ------------------------------------------------


async def test_reflection_and_health_cover_every_service(
    vsp: SimVendorPlugin, stubs: Stubs, short_root: Path
) -> None:
    services = {
        "opi_api.network.evpn_gw.v1alpha1.BridgePortService",
        "Vendor.LifeCycleService",
        "Vendor.NetworkFunctionService",
        "Vendor.DeviceService",
        "Vendor.HeartbeatService",
    }
    async with grpc.aio.insecure_channel(vsp.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        responses = [r async for r in stub.ServerReflectionInfo(iter([request]))]
    names = {s.name for s in responses[0].list_services_response.service}
    assert services | {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} == names
    for service in ("", *sorted(services)):
        reply = await stubs.health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_fail_next_and_error_rate_come_from_the_shared_plan(
    vsp: SimVendorPlugin, stubs: Stubs
) -> None:
    vsp.fail_next("Init", 1, grpc.StatusCode.ABORTED)
    assert (await _status_of(stubs.init()))[0] == grpc.StatusCode.ABORTED
    assert not vsp.initialized  # the fault answered before the VSP saw the call
    assert vsp.init_requests == []
    await stubs.init()
    assert vsp.calls["Init"] == 2
    vsp.set_error_rate("CreateBridgePort", 1.0, grpc.StatusCode.RESOURCE_EXHAUSTED, "busy")
    code, details = await _status_of(stubs.ports.CreateBridgePort(_create("p")))
    assert (code, details) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "busy")
    assert vsp.ports == {}
    vsp.set_error_rate("CreateBridgePort", 0)
    await stubs.ports.CreateBridgePort(_create("p"))
    assert vsp.calls["CreateBridgePort"] == 2


async def test_latency_and_unavailable_come_from_the_shared_plan(
    vsp: SimVendorPlugin, stubs: Stubs
) -> None:
    vsp.set_latency("GetDevices", 0.2)
    started = time.monotonic()
    await stubs.devices.GetDevices(api_pb2.Empty())
    assert time.monotonic() - started >= 0.2
    slow = stubs.devices.GetDevices(api_pb2.Empty(), timeout=0.05)
    assert (await _status_of(slow))[0] == grpc.StatusCode.DEADLINE_EXCEEDED
    vsp.clear_faults()
    vsp.set_unavailable()
    ping = stubs.heartbeat.Ping(api_pb2.PingRequest())
    assert (await _status_of(ping))[0] == grpc.StatusCode.UNAVAILABLE
    check = stubs.health.Check(health_pb2.HealthCheckRequest())
    assert (await _status_of(check))[0] == grpc.StatusCode.UNAVAILABLE
    vsp.clear_unavailable()
    assert (await stubs.heartbeat.Ping(api_pb2.PingRequest(), timeout=WAIT)).healthy


# --- lifecycle of the server ------------------------------------------------------------


async def _prime(sim: SimVendorPlugin) -> None:
    """Init, one port, one network function, two VFs' worth of SetNumVfs."""
    async with grpc.aio.insecure_channel(sim.target) as channel:
        stubs = Stubs(channel)
        await stubs.init()
        await stubs.ports.CreateBridgePort(_create("kept"))
        await stubs.nf.CreateNetworkFunction(api_pb2.NFRequest(input="aa", output="bb"))
        await stubs.devices.SetNumVfs(api_pb2.VfCount(vf_cnt=2))


async def test_restart_keeps_state_by_default(short_root: Path) -> None:
    sock = short_root / "keep.sock"
    sim = SimVendorPlugin()
    assert await sim.start(f"unix://{sock}") == 0
    await _prime(sim)
    await sim.stop()
    assert not sock.exists()
    await sim.restart()
    assert sock.exists()
    # A fresh channel each time: one that saw the old server may send its first call down
    # the dead connection (UNAVAILABLE), which clients retry and this test need not.
    async with grpc.aio.insecure_channel(sim.target) as channel:
        stubs = Stubs(channel)
        again = await stubs.ports.CreateBridgePort(_create("kept", _mac(7)))
        assert bytes(again.spec.mac_address) == MAC  # the stored port
        assert (await _status_of(stubs.init()))[1] == ALREADY_INITIALIZED
    assert sim.live_functions == {("aa", "bb")}
    await sim.stop()


@pytest.mark.parametrize("how", ["restart-argument", "constructor"])
async def test_restart_with_dropped_state_is_a_fresh_vsp_process(
    short_root: Path, sysfs: FakeSysfs, how: str
) -> None:
    sock = short_root / f"drop-{how}.sock"
    sim = SimVendorPlugin(sysfs=sysfs, pf=sysfs.pfs[0], drop_state_on_restart=how == "constructor")
    await sim.start(f"unix://{sock}")
    await _prime(sim)
    sim.set_healthy(False)
    if how == "constructor":
        await sim.stop()
        await sim.start()
    else:
        await sim.restart(drop_state=True, downtime=0.05)
    assert sim.ports == {}
    assert sim.capacity_left == 3
    assert not sim.initialized
    assert sim.live_functions == set()
    # What lives outside the process, and the records, stay.
    assert len(sim.nf_calls) == 1
    assert len(sim.init_requests) == 1
    assert sim.num_vfs == 2
    assert len(_vfs_of(sysfs.root, sysfs.pfs[0])) == 2
    assert not sim.healthy
    async with grpc.aio.insecure_channel(sim.target) as channel:
        stubs = Stubs(channel)
        code, details = await _status_of(stubs.ports.CreateBridgePort(_create("kept")))
        assert (code, details[:16]) == (UNKNOWN, "CreateBridgePort")
        await stubs.init()  # a new process takes Init again
        created = await stubs.ports.CreateBridgePort(_create("kept", _mac(7)))
        assert bytes(created.spec.mac_address) == _mac(7)
    await sim.stop()
    assert not sock.exists()


async def test_start_refuses_to_remove_a_file_that_is_not_a_socket(short_root: Path) -> None:
    path = short_root / "not-a-socket"
    path.write_text("keep me")
    sim = SimVendorPlugin()
    with pytest.raises(NotASocket, match="sim vendor plugin"):
        await sim.start(f"unix://{path}")
    assert path.read_text() == "keep me"
    assert not sim.serving


async def test_start_makes_the_socket_directory(short_root: Path) -> None:
    sim = SimVendorPlugin()
    await sim.start(f"unix://{short_root}/vendor-plugin/vendor-plugin.sock")
    try:
        assert sim.serving
        assert (short_root / "vendor-plugin/vendor-plugin.sock").exists()
    finally:
        await sim.stop()


def test_default_address_is_dpu_operators_socket() -> None:
    assert DEFAULT_ADDRESS == "unix:///var/run/dpu-daemon/vendor-plugin/vendor-plugin.sock"


async def test_serve_vendor_plugin_runs_until_cancelled(short_root: Path) -> None:
    sock = short_root / "cli.sock"
    started: asyncio.Queue[SimVendorPlugin] = asyncio.Queue()
    task = asyncio.create_task(
        serve_vendor_plugin(f"unix://{sock}", interfaces=1, on_started=started.put_nowait)
    )
    sim = await asyncio.wait_for(started.get(), WAIT)
    assert sim.capacity_left == 1
    async with grpc.aio.insecure_channel(f"unix://{sock}") as channel:
        stubs = Stubs(channel)
        await stubs.init()
        await stubs.ports.CreateBridgePort(_create("cli"))
    assert list(sim.ports) == ["cli"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not sock.exists()
