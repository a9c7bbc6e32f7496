"""Hostile device-plugin RPCs: bad device IDs, huge and duplicate lists, junk bytes, against
both backends. Each is refused with a status naming the device and the cause, no port is
created and no path touched for it, and the daemon keeps serving."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import uuid
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from records import FaultResult
from simnode import RED, Node, VspNode

from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2 as dp
from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from xpu_bridge.kubelet.endpoint import socket_name
from xpu_bridge.sim.kubelet import Container

REFUSED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
}
MAX_DETAILS = 2_000
"""A refusal's message fits in the gRPC trailer, whatever the request held."""
SERVICE = "/v1beta1.DevicePlugin/"
JUNK_MAY_REFUSE = {"Allocate", "GetPreferredAllocation"}
"""Junk that happens to decode is a request these may refuse on its merits (an ID unknown)."""
CHANNEL_OPTIONS = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def hostile_ids(token: str) -> list[str]:
    """IDs a confused or malicious client could send; `token` marks any file they made."""
    return [
        "../../etc/passwd",
        "0000:3b:02.1/../..",
        f"0000:3b:02.1/../../xb-escape-{token}",
        f"../../../../../../tmp/xb-escape-{token}",
        f"/tmp/xb-escape-{token}",
        "",
        "\x00",
        "0000:3b:02.0\x00",
        "\x00../../etc/passwd",
        ".",
        "..",
        "/",
        "0000:3B:02.0",
        " 0000:3b:02.0",
        "0000:3b:02.0\n",
        "0000:3b:02.0,0000:3b:02.1",
        "0000:99:00.0",
        "vf-0000-3b-02-0",
        "%s%n%x",
        "$(touch /tmp/xb-escape-" + token + ")",
        "\u202e0.20:b3:0000",
        "\U0001f4a5",
        "x" * 70_000,
    ]


def tree(root: Path) -> set[tuple[str, str]]:
    """Every path under root and its kind, not following links."""
    found: set[tuple[str, str]] = set()
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            mode = path.lstat().st_mode
            kind = "socket" if stat.S_ISSOCK(mode) else "link" if stat.S_ISLNK(mode) else ""
            found.add(
                (str(path.relative_to(root)), kind or ("dir" if stat.S_ISDIR(mode) else "file"))
            )
    return found


def escaped(root: Path, token: str) -> list[str]:
    """Paths named after a hostile ID anywhere it could have landed."""
    places = {Path("/tmp"), Path("/"), Path.cwd(), root.parent, root}
    hits = [str(path) for place in places for path in place.glob(f"*{token}*")]
    return hits + [str(path) for path in root.rglob(f"*{token}*")]


def check_refusal(error: grpc.RpcError, about: str | None) -> None:
    """A clear refusal: a refusing code, a short message that names the cause (and the
    device, when there is one to name), no Python traceback."""
    code, details = error.code(), error.details() or ""
    assert code in REFUSED, (code, details[:300])
    assert details and len(details) <= MAX_DETAILS, details[:300]
    assert "Traceback" not in details and "Exception" not in details
    if about is not None:
        assert about in details, (about[:80], details[:300])


def shown(device_id: str) -> str:
    """What a refusal must contain to name an ID: its start, escaped as repr() escapes it
    (so an empty, NUL or very long ID is visible), or '' for the empty one."""
    return repr(device_id)[1:-1][:28] or "''"


class Plugin:
    """A client on one pool's plugin socket, as a kubelet (or anyone on the node) dials it."""

    def __init__(self, node: Node, resource: str) -> None:
        self.target = f"unix://{node.kubelet_dir / socket_name(resource)}"
        self.channel = grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        self.stub = dp_grpc.DevicePluginStub(self.channel)

    async def allocate(self, *containers: list[str]) -> dp.AllocateResponse:
        return await self.stub.Allocate(
            dp.AllocateRequest(
                container_requests=[dp.ContainerAllocateRequest(devices_ids=c) for c in containers]
            ),
            timeout=30,
        )

    async def refused(self, *containers: list[str]) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await self.allocate(*containers)
        return caught.value

    async def close(self) -> None:
        await self.channel.close()


def sync_stub(target: str) -> tuple[grpc.Channel, dp_grpc.DevicePluginStub]:
    channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    return channel, dp_grpc.DevicePluginStub(channel)


device_ids = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="0123456789abcdef:./-\x00", max_size=24),
    st.sampled_from(hostile_ids("fuzz")),
)


def fuzz_allocate(target: str, valid: list[str]) -> int:
    """Random requests, each with at least one ID the pool does not have, from a thread (the
    daemon serves on the test's event loop); returns how many ran."""
    runs = 0
    channel, stub = sync_stub(target)

    @FUZZ
    @given(
        st.lists(st.lists(device_ids | st.sampled_from(valid), max_size=6), max_size=4),
        device_ids.filter(lambda i: i not in valid),
        st.integers(0, 3),
    )
    def one(containers: list[list[str]], bad: str, where: int) -> None:
        nonlocal runs
        runs += 1
        containers = containers or [[]]
        containers[where % len(containers)].append(bad)
        request = dp.AllocateRequest(
            container_requests=[dp.ContainerAllocateRequest(devices_ids=c) for c in containers]
        )
        with pytest.raises(grpc.RpcError) as caught:
            stub.Allocate(request, timeout=30)
        check_refusal(caught.value, None)  # type: ignore[arg-type]
        assert "unknown device" in (caught.value.details() or "")  # type: ignore[attr-defined]

    try:
        one()
    finally:
        channel.close()
    return runs


def fuzz_preferred(target: str, valid: list[str]) -> int:
    """GetPreferredAllocation with any lists and sizes: an answer drawn from what was offered
    (must_include first), never longer than asked, or INVALID_ARGUMENT for a negative size."""
    runs = 0
    channel, stub = sync_stub(target)
    ids = device_ids | st.sampled_from(valid)

    @FUZZ
    @given(
        st.lists(
            st.tuples(
                st.lists(ids, max_size=12),
                st.lists(ids, max_size=4),
                st.integers(-(2**31), 2**31 - 1) | st.integers(-2, 20),
            ),
            min_size=1,
            max_size=3,
        )
    )
    def one(requests: list[tuple[list[str], list[str], int]]) -> None:
        nonlocal runs
        runs += 1
        request = dp.PreferredAllocationRequest(
            container_requests=[
                dp.ContainerPreferredAllocationRequest(
                    available_deviceIDs=available,
                    must_include_deviceIDs=must,
                    allocation_size=size,
                )
                for available, must, size in requests
            ]
        )
        if any(size < 0 for _, _, size in requests):
            with pytest.raises(grpc.RpcError) as caught:
                stub.GetPreferredAllocation(request, timeout=30)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
            return
        answer = stub.GetPreferredAllocation(request, timeout=30)
        assert len(answer.container_responses) == len(requests)
        for (available, must, size), picked in zip(
            requests, answer.container_responses, strict=True
        ):
            chosen = list(picked.deviceIDs)
            assert len(chosen) == len(set(chosen)) <= size
            assert set(chosen) <= set(available) | set(must)
            assert chosen[: len(set(must))] == list(dict.fromkeys(must))[:size]

    try:
        one()
    finally:
        channel.close()
    return runs


def undecodable(error: grpc.RpcError) -> None:
    """INVALID_ARGUMENT saying why, where grpc.aio alone answers UNKNOWN with the exception's
    class (and logs a traceback)."""
    code, details = error.code(), error.details() or ""  # type: ignore[attr-defined]
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert details.startswith("the request does not decode: "), details


def fuzz_junk(target: str) -> int:
    """Bytes that are no protobuf message, to every method: INVALID_ARGUMENT or, for bytes
    that happen to decode, an answer; never UNKNOWN, never a dead server."""
    runs = 0
    channel = grpc.insecure_channel(target)
    methods = ["GetDevicePluginOptions", "Allocate", "GetPreferredAllocation", "PreStartContainer"]

    @FUZZ
    @given(st.sampled_from(methods), st.binary(min_size=1, max_size=200))
    def one(method: str, junk: bytes) -> None:
        nonlocal runs
        runs += 1
        call = channel.unary_unary(SERVICE + method)
        try:
            call(junk, timeout=30)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.INVALID_ARGUMENT or method not in JUNK_MAY_REFUSE:  # type: ignore[attr-defined]
                undecodable(error)

    try:
        one()
        stream = channel.unary_stream(SERVICE + "ListAndWatch")
        for junk in (b"\xff\xff\xff", b"\x0a\x05hel", b"\x08"):
            runs += 1
            with pytest.raises(grpc.RpcError) as caught:
                next(iter(stream(junk, timeout=5)))
            undecodable(caught.value)
    finally:
        channel.close()
    return runs


async def hostile_session(
    node: Node, backend: str, other_pool_id: str, record: list[FaultResult]
) -> None:
    """Everything hostile against one running daemon, then proof it still serves."""
    await node.start_daemon()
    valid = [view.id for view in node.kubelet.devices(RED)]
    token = uuid.uuid4().hex
    before = tree(node.root)
    ports_before = set(node.agent.ports)
    creates_before = node.agent.calls["CreateBridgePort"]
    plugin = Plugin(node, RED)
    try:
        runs = 0
        for bad in [*hostile_ids(token), other_pool_id]:
            for containers in ([[bad]], [[valid[0], bad]], [[bad, bad], [valid[1]]]):
                check_refusal(await plugin.refused(*containers), shown(bad))
                runs += 1
        record.append(
            FaultResult(
                "Allocate with a hostile device ID (path, NUL, empty, 70,000 chars, other pool)",
                backend,
                runs,
                "INVALID_ARGUMENT naming the ID, no port, no file",
            )
        )

        many = [f"../../xb-escape-{token}/{index}" for index in range(10_000)]
        error = await plugin.refused(many)
        check_refusal(error, shown(many[0]))
        assert "(and 9995 more)" in (error.details() or "")
        error = await plugin.refused([valid[0]] * 5_000 + many[:1] * 5_000)
        check_refusal(error, shown(many[0]))
        error = await plugin.refused(*([[valid[0]]] * 999 + [[many[0]]]))
        check_refusal(error, shown(many[0]))
        record.append(
            FaultResult(
                "Allocate with 10,000 IDs, 10,000 duplicates, 1,000 containers",
                backend,
                3,
                "INVALID_ARGUMENT in one short message, no port",
            )
        )

        pre_start = await plugin.stub.PreStartContainer(
            dp.PreStartContainerRequest(devices_ids=[*hostile_ids(token), *many])
        )
        assert pre_start == dp.PreStartContainerResponse()
        options = await plugin.stub.GetDevicePluginOptions(dp.Empty())
        assert options.get_preferred_allocation_available

        fuzzed = await asyncio.to_thread(fuzz_allocate, plugin.target, valid)
        record.append(
            FaultResult(
                "Allocate with random ID lists (hypothesis)",
                backend,
                fuzzed,
                "INVALID_ARGUMENT, no port",
            )
        )
        preferred = await asyncio.to_thread(fuzz_preferred, plugin.target, valid)
        record.append(
            FaultResult(
                "GetPreferredAllocation with random lists and sizes (hypothesis)",
                backend,
                preferred,
                "a pick from what was offered, or INVALID_ARGUMENT",
            )
        )
        junk = await asyncio.to_thread(fuzz_junk, plugin.target)
        record.append(
            FaultResult(
                "every device-plugin RPC with undecodable bytes (hypothesis)",
                backend,
                junk,
                "INVALID_ARGUMENT: the request does not decode",
            )
        )

        assert set(node.agent.ports) == ports_before
        assert node.agent.calls["CreateBridgePort"] == creates_before
        assert tree(node.root) == before
        assert escaped(node.root, token) == []

        # Still serving: duplicates of one of ours are one device, one port.
        answer = await plugin.allocate([valid[2]] * 10_000)
        (container,) = answer.container_responses
        assert container.envs["PCIDEVICE_OPI_IO_RED"] == valid[2]
        assert node.agent.calls["CreateBridgePort"] == creates_before + 1
    finally:
        await plugin.close()
    (assignment,) = await node.kubelet.admit_pod("after", containers=[Container("c", {RED: 1})])
    assert assignment.device_ids


def no_tracebacks(records: list[logging.LogRecord]) -> None:
    """What was logged (the daemon, gRPC): warnings for refusals, never an exception."""
    bad = [r for r in records if r.exc_info or r.levelno >= logging.ERROR]
    assert not [f"{r.name}: {r.getMessage()[:200]}" for r in bad]


async def test_hostile_rpcs_opi_evpn_bridge(
    node: Node, record: list[FaultResult], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    # A device of the node's green pool (SFs), asked of the red pool.
    await hostile_session(node, "opi-evpn-bridge", "mlx5_core.sf.2", record)
    no_tracebacks(caplog.records)


async def test_hostile_rpcs_vendor_plugin(
    vsp_node: VspNode, record: list[FaultResult], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    # A device of the node that the vendor plugin's pool does not take: an SF.
    await hostile_session(vsp_node, "dpu-vendor-plugin", "mlx5_core.sf.2", record)
    no_tracebacks(caplog.records)
