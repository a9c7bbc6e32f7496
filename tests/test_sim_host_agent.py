"""Tests of the simulated OPI host agent over real gRPC on a unix socket."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from opi_protos.evpn_gw import component_pb2
from opi_protos.evpn_gw import l2_xpu_infra_mgr_pb2 as pb
from opi_protos.evpn_gw import l2_xpu_infra_mgr_pb2_grpc as pb_grpc
from xpu_bridge.sim.host_agent import BRIDGE_PREFIX, PORT_PREFIX, SimHostAgent, serve_host_agent
from xpu_bridge.sim.polling import wait_until

RED = BRIDGE_PREFIX + "red"
BLUE = BRIDGE_PREFIX + "blue"
MAC = bytes.fromhex("02aabbccdd01")
WAIT = 5.0  # generous: CI machines are noisy


def _spec(
    mac: bytes = MAC,
    bridges: tuple[str, ...] = (RED,),
    ptype: int = pb.BRIDGE_PORT_TYPE_ACCESS,
) -> pb.BridgePortSpec:
    return pb.BridgePortSpec(mac_address=mac, ptype=ptype, logical_bridges=list(bridges))


def _create(port_id: str, spec: pb.BridgePortSpec | None = None) -> pb.CreateBridgePortRequest:
    return pb.CreateBridgePortRequest(
        bridge_port_id=port_id, bridge_port=pb.BridgePort(spec=spec or _spec())
    )


def _mac(index: int) -> bytes:
    return bytes([2, 0, 0, 0, index // 256, index % 256])


@pytest.fixture
async def agent(short_root: Path) -> AsyncIterator[SimHostAgent]:
    sim = SimHostAgent(["red", BLUE], seed=7)
    await sim.start(f"unix://{short_root}/agent.sock")
    yield sim
    await sim.stop()


@pytest.fixture
async def channel(agent: SimHostAgent) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(agent.target) as chan:
        yield chan


@pytest.fixture
def ports(channel: grpc.aio.Channel) -> pb_grpc.BridgePortServiceStub:
    return pb_grpc.BridgePortServiceStub(channel)


@pytest.fixture
def bridges(channel: grpc.aio.Channel) -> pb_grpc.LogicalBridgeServiceStub:
    return pb_grpc.LogicalBridgeServiceStub(channel)


async def _status_of(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value.code(), info.value.details() or ""


async def _wait_oper(agent: SimHostAgent, port_id: str, oper: int) -> None:
    def reached() -> bool:
        port = agent.port(port_id)
        return port is not None and port.status.oper_status == oper

    await agent.wait_until(reached, timeout=WAIT)


# --- create / get / delete lifecycle ------------------------------------------------------


async def test_create_is_async_down_pending_then_up(
    agent: SimHostAgent, ports: pb_grpc.BridgePortServiceStub
) -> None:
    agent.up_delay = 0.2
    created = await ports.CreateBridgePort(_create("vf-0000-3b-02-1"))
    assert created.name == PORT_PREFIX + "vf-0000-3b-02-1"
    assert created.spec == _spec()
    assert created.status.oper_status == pb.BP_OPER_STATUS_DOWN
    assert [c.status for c in created.status.components] == [component_pb2.COMP_STATUS_PENDING]
    await _wait_oper(agent, "vf-0000-3b-02-1", pb.BP_OPER_STATUS_UP)
    got = await ports.GetBridgePort(pb.GetBridgePortRequest(name=created.name))
    assert got.status.oper_status == pb.BP_OPER_STATUS_UP
    assert [c.status for c in got.status.components] == [component_pb2.COMP_STATUS_SUCCESS]


async def test_zero_up_delay_means_next_loop_iteration(
    agent: SimHostAgent, ports: pb_grpc.BridgePortServiceStub
) -> None:
    agent.up_delay = 0
    created = await ports.CreateBridgePort(_create("port-zero"))
    assert created.status.oper_status == pb.BP_OPER_STATUS_DOWN
    await _wait_oper(agent, "port-zero", pb.BP_OPER_STATUS_UP)


async def test_create_is_idempotent_and_returns_existing_spec(
    agent: SimHostAgent, ports: pb_grpc.BridgePortServiceStub
) -> None:
    first = await ports.CreateBridgePort(_create("port-one"))
    other = _spec(mac=_mac(9), bridges=(BLUE,))
    again = await ports.CreateBridgePort(_create("port-one", other))
    assert again.spec == first.spec
    assert list(agent.ports) == ["port-one"]


async def test_create_during_to_be_deleted_returns_dying_port(
    agent: SimHostAgent, ports: pb_grpc.BridgePortServiceStub
) -> None:
    await ports.CreateBridgePort(_create("port-dying"))
    agent.delete_delay = 0.3
    await ports.DeleteBridgePort(pb.DeleteBridgePortRequest(name=PORT_PREFIX + "port-dying"))
    again = await ports.CreateBridgePort(_create("port-dying"))
    assert again.status.oper_status == pb.BP_OPER_STATUS_TO_BE_DELETED
    await agent.wait_until(lambda: agent.port("port-dying") is None, timeout=WAIT)
    fresh = await ports.CreateBridgePort(_create("port-dying"))
    assert fresh.status.oper_status == pb.BP_OPER_STATUS_DOWN


async def test_delete_is_async_and_port_vanishes(
    agent: SimHostAgent, ports: pb_grpc.BridgePortServiceStub
) -> None:
    name = PORT_PREFIX + "port-gone"
    await ports.CreateBridgePort(_create("port-gone"))
    agent.delete_delay = 0.2
    await ports.DeleteBridgePort(pb.DeleteBridgePortRequest(name=name))
    dying = await ports.GetBridgePort(pb.GetBridgePortRequest(name=name))
    assert dying.status.oper_status == pb.BP_OPER_STATUS_TO_BE_DELETED
    assert dying.status.components[0].status == component_pb2.COMP_STATUS_PENDING
    # Deleting a dying port succeeds (upstream re-queues the deletion).
    await ports.DeleteBridgePort(pb.DeleteBridgePortRequest(name=name))
    await agent.wait_until(lambda: agent.port("port-gone") is None, timeout=WAIT)
    code, message = await _status_of(ports.GetBridgePort(pb.GetBridgePortRequest(name=name)))
    assert code == grpc.StatusCode.NOT_FOUND
    assert message == f"unable to find key {name}"


async def test_delete_missing_not_found_unless_allow_missing(
    ports: pb_grpc.BridgePortServiceStub,
) -> None:
    name = PORT_PREFIX + "nope-1"
    code, message = await _status_of(ports.DeleteBridgePort(pb.DeleteBridgePortRequest(name=name)))
    assert (code, message) == (grpc.StatusCode.NOT_FOUND, f"unable to find key {name}")
    await ports.DeleteBridgePort(pb.DeleteBridgePortRequest(name=name, allow_missing=True))


async def test_get_takes_full_name_only(
    agent: SimHostAgent, ports: pb_grpc.BridgePortServiceStub
) -> None:
    await ports.CreateBridgePort(_create("port-full"))
    bare = await _status_of(ports.GetBridgePort(pb.GetBridgePortRequest(name="port-full")))
    assert bare == (grpc.StatusCode.NOT_FOUND, "unable to find key port-full")
    bad = await _status_of(ports.GetBridgePort(pb.GetBridgePortRequest(name="-ABC-DEF")))
    assert bad == (grpc.StatusCode.UNKNOWN, "segment '-ABC-DEF': not a valid DNS name")
    empty = await _status_of(ports.GetBridgePort(pb.GetBridgePortRequest()))
    assert empty == (grpc.StatusCode.UNKNOWN, "missing required field: name")


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("port_id", "message"),
    [
        ("abc", "user-settable ID must be between 4 and 63 characters"),
        ("a" * 64, "user-settable ID must be between 4 and 63 characters"),
        ("-abc", "user-settable ID must not start with a hyphen"),
        (
            "CapitalLettersNotAllowed",
            "user-settable ID must only contain lowercase, numbers and hyphens "
            "(got: 'C' in position 0)",
        ),
        ("daf1cb3e-f33b-43f1-81cc-e65fda51efa5", "user-settable ID must not be a valid UUIDv4"),
        ("1abc", "user-settable ID must start with a lowercase letter"),
        ("abcd-", "user-settable ID must not end with a hyphen"),
    ],
)
async def test_bad_port_id_is_unknown(
    ports: pb_grpc.BridgePortServiceStub, port_id: str, message: str
) -> None:
    assert await _status_of(ports.CreateBridgePort(_create(port_id))) == (
        grpc.StatusCode.UNKNOWN,
        message,
    )


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (
            pb.CreateBridgePortRequest(bridge_port_id="port-x"),
            "missing required field: bridge_port",
        ),
        (
            pb.CreateBridgePortRequest(bridge_port_id="port-x", bridge_port=pb.BridgePort()),
            "missing required field: bridge_port.spec",
        ),
        (_create("port-x", _spec(mac=b"")), "missing required field: bridge_port.spec.mac_address"),
        (
            _create("port-x", _spec(ptype=pb.BRIDGE_PORT_TYPE_UNSPECIFIED)),
            "missing required field: bridge_port.spec.ptype",
        ),
    ],
)
async def test_missing_required_fields_are_unknown(
    ports: pb_grpc.BridgePortServiceStub, request_: pb.CreateBridgePortRequest, message: str
) -> None:
    assert await _status_of(ports.CreateBridgePort(request_)) == (grpc.StatusCode.UNKNOWN, message)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            _spec(bridges=()),
            "LogicalBridges field cannot be empty when the Bridge Port is of type ACCESS",
        ),
        (_spec(bridges=(RED, BLUE)), "ACCESS type must have single LogicalBridge and not (2)"),
        (_spec(mac=MAC[:5]), "Invalid format of MAC Address: want 6 bytes, got 5"),
        (
            _spec(bridges=("-bad",)),
            "Logical Bridge -bad has invalid name, error: segment '-bad': not a valid DNS name",
        ),
    ],
)
async def test_spec_errors_are_invalid_argument(
    ports: pb_grpc.BridgePortServiceStub, spec: pb.BridgePortSpec, message: str
) -> None:
    assert await _status_of(ports.CreateBridgePort(_create("port-bad", spec))) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        message,
    )


async def test_missing_logical_bridge_is_unknown(
    agent: SimHostAgent, ports: pb_grpc.BridgePortServiceStub
) -> None:
    for bridge in (BRIDGE_PREFIX + "green", "red"):  # a bare ID is not a bridge name
        status = await _status_of(
            ports.CreateBridgePort(_create("port-lb", _spec(bridges=(bridge,))))
        )
        assert status == (
            grpc.StatusCode.UNKNOWN,
            "the referenced Logical Bridge has not been found",
        )
    assert agent.ports == {}


async def test_mac_unique_per_logical_bridge(
    agent: SimHostAgent, ports: pb_grpc.BridgePortServiceStub
) -> None:
    await ports.CreateBridgePort(_create("port-a"))
    code, message = await _status_of(ports.CreateBridgePort(_create("port-b")))
    assert code == grpc.StatusCode.UNKNOWN
    assert message == (
        f"AddBridgePort(): the logical bridge {RED} is already associated "
        "with the bridge port mac: 02:aa:bb:cc:dd:01"
    )
    await ports.CreateBridgePort(_create("port-c", _spec(bridges=(BLUE,))))  # other bridge: fine
    # The MAC stays taken while the first port dies, and is free once it is gone.
    await ports.DeleteBridgePort(pb.DeleteBridgePortRequest(name=PORT_PREFIX + "port-a"))
    await agent.wait_until(lambda: agent.port("port-a") is None, timeout=WAIT)
    await ports.CreateBridgePort(_create("port-b"))


async def test_transparent_trunk_joins_every_bridge(
    agent: SimHostAgent,
    ports: pb_grpc.BridgePortServiceStub,
    bridges: pb_grpc.LogicalBridgeServiceStub,
) -> None:
    trunk = _spec(bridges=(), ptype=pb.BRIDGE_PORT_TYPE_TRUNK)
    created = await ports.CreateBridgePort(_create("port-trunk", trunk))
    assert list(created.spec.logical_bridges) == []
    status = await _status_of(ports.CreateBridgePort(_create("port-blue", _spec(bridges=(BLUE,)))))
    assert status[0] == grpc.StatusCode.UNKNOWN  # same MAC already on blue via the trunk
    code, message = await _status_of(
        bridges.DeleteLogicalBridge(pb.DeleteLogicalBridgeRequest(name=RED))
    )
    assert (code, message) == (grpc.StatusCode.UNKNOWN, "the LogicalBridge is not empty")


# --- list and pagination ------------------------------------------------------------------


async def _fill(ports: pb_grpc.BridgePortServiceStub, count: int) -> list[str]:
    ids = [f"port-{i:04d}" for i in range(count)]
    await asyncio.gather(
        *(ports.CreateBridgePort(_create(pid, _spec(mac=_mac(i)))) for i, pid in enumerate(ids))
    )
    return [PORT_PREFIX + pid for pid in ids]


async def test_list_page_sizes(agent: SimHostAgent, ports: pb_grpc.BridgePortServiceStub) -> None:
    await _fill(ports, 300)
    default = await ports.ListBridgePorts(pb.ListBridgePortsRequest())
    assert len(default.bridge_ports) == 50 and default.next_page_token
    clamped = await ports.ListBridgePorts(pb.ListBridgePortsRequest(page_size=1000))
    assert len(clamped.bridge_ports) == 250 and clamped.next_page_token
    negative = await _status_of(ports.ListBridgePorts(pb.ListBridgePortsRequest(page_size=-1)))
    assert negative == (grpc.StatusCode.INVALID_ARGUMENT, "negative PageSize is not allowed")
    bad = await _status_of(ports.ListBridgePorts(pb.ListBridgePortsRequest(page_token="nope")))
    assert bad == (grpc.StatusCode.NOT_FOUND, "unable to find pagination token nope")


async def test_list_walks_all_pages_in_name_order(
    agent: SimHostAgent, ports: pb_grpc.BridgePortServiceStub
) -> None:
    names = await _fill(ports, 300)
    seen: list[str] = []
    token, pages = "", 0
    while True:
        page = await ports.ListBridgePorts(pb.ListBridgePortsRequest(page_size=0, page_token=token))
        seen += [p.name for p in page.bridge_ports]
        pages += 1
        if pages == 1:  # deleting an already-listed port must not make the walk skip one
            agent.delete_port_now("port-0000")
        token = page.next_page_token
        if not token:
            break
    assert pages == 6
    assert seen == sorted(names)


async def test_list_exact_multiple_has_empty_last_token(
    ports: pb_grpc.BridgePortServiceStub,
) -> None:
    await _fill(ports, 4)
    first = await ports.ListBridgePorts(pb.ListBridgePortsRequest(page_size=2))
    second = await ports.ListBridgePorts(
        pb.ListBridgePortsRequest(page_size=2, page_token=first.next_page_token)
    )
    assert len(second.bridge_ports) == 2 and second.next_page_token == ""


async def test_list_before_any_create_is_not_found_like_upstream(
    agent: SimHostAgent, ports: pb_grpc.BridgePortServiceStub
) -> None:
    status = await _status_of(ports.ListBridgePorts(pb.ListBridgePortsRequest()))
    assert status == (grpc.StatusCode.NOT_FOUND, "Error: key not found")
    await ports.CreateBridgePort(_create("port-once"))
    agent.delete_port_now("port-once")
    empty = await ports.ListBridgePorts(pb.ListBridgePortsRequest())
    assert list(empty.bridge_ports) == [] and empty.next_page_token == ""


# --- logical bridges ----------------------------------------------------------------------


async def test_logical_bridge_service(
    agent: SimHostAgent, bridges: pb_grpc.LogicalBridgeServiceStub
) -> None:
    seeded = await bridges.GetLogicalBridge(pb.GetLogicalBridgeRequest(name=RED))
    assert seeded.status.oper_status == pb.LB_OPER_STATUS_UP
    request = pb.CreateLogicalBridgeRequest(
        logical_bridge_id="green",
        logical_bridge=pb.LogicalBridge(spec=pb.LogicalBridgeSpec(vlan_id=7, vni=70)),
    )
    created = await bridges.CreateLogicalBridge(request)
    assert created.name == BRIDGE_PREFIX + "green"
    assert created.status.oper_status == pb.LB_OPER_STATUS_DOWN
    await agent.wait_until(
        lambda: agent.bridges["green"].status.oper_status == pb.LB_OPER_STATUS_UP, timeout=WAIT
    )
    listed = await bridges.ListLogicalBridges(pb.ListLogicalBridgesRequest())
    assert [b.name for b in listed.logical_bridges] == sorted([RED, BLUE, created.name])
    request.logical_bridge_id = "green-two"
    vni = await _status_of(bridges.CreateLogicalBridge(request))
    assert vni == (grpc.StatusCode.UNKNOWN, "the VNI is already in use")
    request.logical_bridge.spec.vlan_id = 5000
    vlan = await _status_of(bridges.CreateLogicalBridge(request))
    assert vlan == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "VlanId value (5000) have to be between 1 and 4095",
    )
    await bridges.DeleteLogicalBridge(pb.DeleteLogicalBridgeRequest(name=created.name))
    await agent.wait_until(lambda: "green" not in agent.bridges, timeout=WAIT)
    update = await _status_of(bridges.UpdateLogicalBridge(pb.UpdateLogicalBridgeRequest()))
    assert update[0] == grpc.StatusCode.UNIMPLEMENTED


async def test_update_bridge_port(
    agent: SimHostAgent, ports: pb_grpc.BridgePortServiceStub
) -> None:
    name = PORT_PREFIX + "port-upd"
    missing = pb.UpdateBridgePortRequest(bridge_port=pb.BridgePort(name=name, spec=_spec()))
    assert (await _status_of(ports.UpdateBridgePort(missing)))[0] == grpc.StatusCode.NOT_FOUND
    missing.allow_missing = True
    await ports.UpdateBridgePort(missing)
    await _wait_oper(agent, "port-upd", pb.BP_OPER_STATUS_UP)
    moved = pb.UpdateBridgePortRequest(
        bridge_port=pb.BridgePort(name=name, spec=_spec(bridges=(BLUE,)))
    )
    updated = await ports.UpdateBridgePort(moved)
    assert list(updated.spec.logical_bridges) == [BLUE]
    assert updated.status.oper_status == pb.BP_OPER_STATUS_DOWN
    await ports.CreateBridgePort(_create("port-red"))  # MAC is free on red again


# --- reflection and health ----------------------------------------------------------------


async def test_reflection_lists_services(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = [r async for r in stub.ServerReflectionInfo(iter([request]))]
    names = {s.name for s in responses[0].list_services_response.service}
    assert {
        "opi_api.network.evpn_gw.v1alpha1.BridgePortService",
        "opi_api.network.evpn_gw.v1alpha1.LogicalBridgeService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names


async def test_health_serving(channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "opi_api.network.evpn_gw.v1alpha1.BridgePortService"):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


# --- fault injection ----------------------------------------------------------------------


async def test_error_rate_one_gives_the_code_and_counts_calls(
    agent: SimHostAgent, ports: pb_grpc.BridgePortServiceStub
) -> None:
    agent.set_error_rate("CreateBridgePort", 1.0, grpc.StatusCode.RESOURCE_EXHAUSTED)
    for _ in range(3):
        status = await _status_of(ports.CreateBridgePort(_create("port-err")))
        assert status[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert agent.calls["CreateBridgePort"] == 3
    assert agent.ports == {}
    agent.set_error_rate("CreateBridgePort", 0)
    await ports.CreateBridgePort(_create("port-err"))
    assert agent.calls["CreateBridgePort"] == 4


async def test_calls_are_counted_and_faults_apply_from_the_next_call_on_and_off(
    agent: SimHostAgent, ports: pb_grpc.BridgePortServiceStub
) -> None:
    """With no fault planned a call skips the fault gate; it must still be counted, and a
    fault planned between two calls (and cleared again) must hold for the very next one."""
    await ports.CreateBridgePort(_create("port-gate"))
    agent.fail_next("CreateBridgePort", 1, grpc.StatusCode.ABORTED)
    status = await _status_of(ports.CreateBridgePort(_create("port-gate")))
    assert status[0] == grpc.StatusCode.ABORTED
    agent.lose_replies("CreateBridgePort", 1)
    status = await _status_of(ports.CreateBridgePort(_create("port-gate")))
    assert status[0] == grpc.StatusCode.UNAVAILABLE
    agent.clear_faults()
    await ports.CreateBridgePort(_create("port-gate"))
    assert agent.calls["CreateBridgePort"] == 4


async def test_error_rate_default_is_unavailable_and_seeded(
    short_root: Path,
) -> None:
    outcomes: list[list[bool]] = []
    for run in range(2):
        sim = SimHostAgent(["red"], seed=42)
        sim.set_error_rate("*", 0.5)
        await sim.start(f"unix://{short_root}/seeded{run}.sock")
        async with grpc.aio.insecure_channel(sim.target) as chan:
            stub = pb_grpc.LogicalBridgeServiceStub(chan)
            results = []
            for _ in range(20):
                try:
                    await stub.GetLogicalBridge(pb.GetLogicalBridgeRequest(name=RED))
                    results.append(True)
                except grpc.aio.AioRpcError as err:
                    assert err.code() == grpc.StatusCode.UNAVAILABLE
                    results.append(False)
        await sim.stop()
        outcomes.append(results)
    assert outcomes[0] == outcomes[1]
    assert 0 < sum(outcomes[0]) < 20


async def test_fail_next_is_deterministic(
    agent: SimHostAgent, ports: pb_grpc.BridgePortServiceStub
) -> None:
    agent.fail_next("CreateBridgePort", 2, grpc.StatusCode.ABORTED)
    assert (await _status_of(ports.CreateBridgePort(_create("port-fn"))))[
        0
    ] == grpc.StatusCode.ABORTED
    assert (await _status_of(ports.CreateBridgePort(_create("port-fn"))))[
        0
    ] == grpc.StatusCode.ABORTED
    await ports.CreateBridgePort(_create("port-fn"))


async def test_latency(agent: SimHostAgent, bridges: pb_grpc.LogicalBridgeServiceStub) -> None:
    agent.set_latency("GetLogicalBridge", 0.2)
    started = time.monotonic()
    await bridges.GetLogicalBridge(pb.GetLogicalBridgeRequest(name=RED))
    assert time.monotonic() - started >= 0.2
    call = bridges.GetLogicalBridge(pb.GetLogicalBridgeRequest(name=RED), timeout=0.05)
    assert (await _status_of(call))[0] == grpc.StatusCode.DEADLINE_EXCEEDED
    agent.clear_faults()
    await bridges.GetLogicalBridge(pb.GetLogicalBridgeRequest(name=RED), timeout=WAIT)


async def test_unavailable_window(
    agent: SimHostAgent, channel: grpc.aio.Channel, bridges: pb_grpc.LogicalBridgeServiceStub
) -> None:
    get = pb.GetLogicalBridgeRequest(name=RED)
    agent.set_unavailable(0.2)
    assert (await _status_of(bridges.GetLogicalBridge(get)))[0] == grpc.StatusCode.UNAVAILABLE
    check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert (await _status_of(check))[0] == grpc.StatusCode.UNAVAILABLE

    async def answers() -> bool:
        try:
            await bridges.GetLogicalBridge(get)
        except grpc.aio.AioRpcError:
            return False
        return True

    await wait_until(answers, timeout=WAIT, interval=0.02)
    agent.set_unavailable()  # until cleared
    assert (await _status_of(bridges.GetLogicalBridge(get)))[0] == grpc.StatusCode.UNAVAILABLE
    agent.clear_unavailable()
    await bridges.GetLogicalBridge(get)


async def test_drop_all_ports(agent: SimHostAgent, ports: pb_grpc.BridgePortServiceStub) -> None:
    await _fill(ports, 3)
    assert agent.drop_all_ports() == 3
    assert agent.ports == {}
    name = PORT_PREFIX + "port-0001"
    code, _ = await _status_of(ports.GetBridgePort(pb.GetBridgePortRequest(name=name)))
    assert code == grpc.StatusCode.NOT_FOUND
    await _fill(ports, 3)  # MACs were released


async def test_port_error_and_out_of_band_delete(
    agent: SimHostAgent, ports: pb_grpc.BridgePortServiceStub
) -> None:
    name = PORT_PREFIX + "port-sick"
    await ports.CreateBridgePort(_create("port-sick"))
    await _wait_oper(agent, "port-sick", pb.BP_OPER_STATUS_UP)
    agent.set_port_error("port-sick", "lvm: no such VF")
    sick = await ports.GetBridgePort(pb.GetBridgePortRequest(name=name))
    assert sick.status.oper_status == pb.BP_OPER_STATUS_DOWN
    assert sick.status.components[0].status == component_pb2.COMP_STATUS_ERROR
    assert sick.status.components[0].details == "lvm: no such VF"
    agent.clear_port_error("port-sick")
    assert agent.ports["port-sick"].status.oper_status == pb.BP_OPER_STATUS_UP
    assert agent.delete_port_now("port-sick") is True
    code, _ = await _status_of(ports.GetBridgePort(pb.GetBridgePortRequest(name=name)))
    assert code == grpc.StatusCode.NOT_FOUND
    assert agent.delete_port_now("port-sick") is False


# --- lifecycle ----------------------------------------------------------------------------


async def test_restart_on_same_socket_keeps_or_drops_state(short_root: Path) -> None:
    sock = short_root / "restart.sock"
    sim = SimHostAgent(["red"])
    assert await sim.start(f"unix://{sock}") == 0
    async with grpc.aio.insecure_channel(sim.target) as chan:
        await pb_grpc.BridgePortServiceStub(chan).CreateBridgePort(_create("port-kept"))
    await sim.stop()
    assert not sock.exists()
    await sim.start()
    assert sock.exists()
    # A fresh channel each time: a channel that saw the old server may send its first call
    # down the dead connection (UNAVAILABLE), which clients retry and this test need not.
    async with grpc.aio.insecure_channel(sim.target) as chan:
        stub = pb_grpc.BridgePortServiceStub(chan)
        kept = await stub.GetBridgePort(pb.GetBridgePortRequest(name=PORT_PREFIX + "port-kept"))
        assert kept.name.endswith("port-kept")
    await sim.restart(drop_state=True)
    async with grpc.aio.insecure_channel(sim.target) as chan:
        stub = pb_grpc.BridgePortServiceStub(chan)
        code, _ = await _status_of(
            stub.GetBridgePort(pb.GetBridgePortRequest(name=PORT_PREFIX + "port-kept"))
        )
        assert code == grpc.StatusCode.NOT_FOUND
        assert list(sim.bridges) == ["red"]
    await sim.stop()
    assert not sock.exists()


async def test_tcp_returns_bound_port() -> None:
    sim = SimHostAgent(["red"])
    port = await sim.start("127.0.0.1:0")
    try:
        assert port > 0 and sim.target == f"127.0.0.1:{port}"
        async with grpc.aio.insecure_channel(sim.target) as chan:
            stub = pb_grpc.LogicalBridgeServiceStub(chan)
            await stub.GetLogicalBridge(pb.GetLogicalBridgeRequest(name=RED))
    finally:
        await sim.stop()


async def test_serve_host_agent_runs_until_cancelled(short_root: Path) -> None:
    sock = short_root / "cli.sock"
    started: asyncio.Queue[SimHostAgent] = asyncio.Queue()
    task = asyncio.create_task(
        serve_host_agent(f"unix://{sock}", ["red", BLUE], 0.01, on_started=started.put_nowait)
    )
    sim = await asyncio.wait_for(started.get(), WAIT)
    assert sorted(sim.bridges) == ["blue", "red"]
    async with grpc.aio.insecure_channel(f"unix://{sock}") as chan:
        stub = pb_grpc.BridgePortServiceStub(chan)
        await stub.CreateBridgePort(_create("port-cli"))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not sock.exists()


def test_bad_seed_bridge_is_refused() -> None:
    with pytest.raises(ValueError, match="bad_one"):
        SimHostAgent(["bad_one!"])


async def test_port_error_while_dying_holds_the_deletion(
    agent: SimHostAgent, ports: pb_grpc.BridgePortServiceStub
) -> None:
    await ports.CreateBridgePort(_create("port-stuck"))
    agent.delete_delay = 0.05
    await ports.DeleteBridgePort(pb.DeleteBridgePortRequest(name=PORT_PREFIX + "port-stuck"))
    agent.set_port_error("port-stuck")
    await asyncio.sleep(0.15)
    stuck = agent.ports["port-stuck"]
    assert stuck.status.oper_status == pb.BP_OPER_STATUS_TO_BE_DELETED
    assert stuck.status.components[0].status == component_pb2.COMP_STATUS_ERROR
    agent.clear_port_error("port-stuck")
    await agent.wait_until(lambda: agent.port("port-stuck") is None, timeout=WAIT)
