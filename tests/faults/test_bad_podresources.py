"""Odd PodResources answers: unknown resources, IDs that are not ours, hostile, empty and
duplicate entries, unicode names, huge and undecodable answers, against both backends. The
reconciler warns instead of failing, never releases a port a real holder holds, and the daemon
keeps serving and releasing once the answers are sane again."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from records import FaultResult
from simnode import BLUE, GREEN, RED, Node, VspNode

from opi_protos.kubelet.podresources.v1 import api_pb2 as pr
from opi_protos.kubelet.podresources.v1 import api_pb2_grpc as pr_grpc
from xpu_bridge.daemon import Daemon
from xpu_bridge.release.guards import POD_RESOURCES_UNREADABLE
from xpu_bridge.sim.kubelet import Container

T = TypeVar("T")
BIG = 64 * 1024 * 1024
HOSTILE_IDS = [
    "../../etc/passwd",
    "0000:3b:02.1/../..",
    "",
    "\x00",
    "0000:3B:02.0",
    "0000:99:00.0",
    "mlx5_core.sf.999",
    "vf-0000-3b-02-0",
    "x" * 5_000,
]
RESOURCES = [RED, BLUE, GREEN, "opi.io/", "opi.io", "", "other.io/red", "opi.io/../../etc"]


class OddPodResources:
    """A PodResources server of our own in front of the sim kubelet's: it answers the
    kubelet's real List plus `extra` pods, or `raw` bytes instead when set."""

    def __init__(self, upstream: str) -> None:
        self.extra: list[pr.PodResources] = []
        self.raw: bytes | None = None
        self._upstream_channel = grpc.aio.insecure_channel(upstream)
        self._upstream = pr_grpc.PodResourcesListerStub(self._upstream_channel)
        self._server = grpc.aio.server(options=[("grpc.max_send_message_length", BIG)])

    async def start(self, socket: str) -> None:
        method = grpc.unary_unary_rpc_method_handler(self._list)  # bytes in, bytes out
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("v1.PodResourcesLister", {"List": method}),)
        )
        self._server.add_insecure_port(f"unix://{socket}")
        await self._server.start()

    async def _list(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        if self.raw is not None:
            return self.raw
        real = await self._upstream.List(pr.ListPodResourcesRequest())
        real.pod_resources.extend(self.extra)
        return real.SerializeToString()

    async def stop(self) -> None:
        await self._server.stop(None)
        await self._upstream_channel.close()


def odd_pods(free: list[str], held: list[str]) -> st.SearchStrategy[list[pr.PodResources]]:
    """Pods as no sane kubelet lists them, mixed with our free and held devices."""
    ids = st.sampled_from(HOSTILE_IDS + free + held) | st.text(max_size=30)
    topology = st.none() | st.builds(
        pr.TopologyInfo,
        nodes=st.lists(st.builds(pr.NUMANode, ID=st.integers(-(2**63), 2**63 - 1)), max_size=2),
    )
    devices = st.builds(
        pr.ContainerDevices,
        resource_name=st.sampled_from(RESOURCES) | st.text(max_size=20),
        device_ids=st.lists(ids, max_size=5),
        topology=topology,
    )
    container = st.builds(
        pr.ContainerResources, name=st.text(max_size=20), devices=st.lists(devices, max_size=4)
    )
    pod = st.builds(
        pr.PodResources,
        name=st.text(max_size=30),
        namespace=st.text(max_size=20),
        containers=st.lists(container, max_size=3),
    )
    return st.lists(pod, max_size=6)


@dataclasses.dataclass
class Session:
    node: Node
    daemon: Daemon
    odd: OddPodResources
    loop: asyncio.AbstractEventLoop
    held_ports: set[str]

    def ports(self) -> set[str]:
        return self.call(self._ports)

    async def _ports(self) -> set[str]:
        return set(self.node.agent.ports)

    def deleted(self) -> set[str]:
        return {name.rsplit("/", 1)[-1] for _, name in self.node.agent.deletions}

    def call(self, make: Callable[[], Awaitable[T]]) -> T:
        """Run on the daemon's loop from the fuzzing thread."""

        async def run() -> T:
            return await make()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=60)

    def passes(self, count: int = 3) -> None:
        for _ in range(count):
            self.call(self.daemon.reconciler.reconcile)

    def check_held(self, ports: set[str] | None = None) -> None:
        """Every port a real container holds is there and was never deleted; `ports` is the
        agent's (asked of the daemon's loop when not given, from the fuzzing thread)."""
        assert self.held_ports <= (self.ports() if ports is None else ports)
        assert not self.held_ports & self.deleted()


async def start(node: Node, holder: list[Container]) -> Session:
    """The daemon reading PodResources through OddPodResources, with release driven by hand
    (passes as often as a test wants), a pod holding devices and a deleted pod's free port."""
    node.raw_config["release"] = {"intervalSeconds": 3600, "graceSeconds": 0, "holdoffSeconds": 0}
    odd = OddPodResources(f"unix://{node.root}/pr.sock")
    await odd.start(f"{node.root}/odd-pr.sock")
    options = dataclasses.replace(node.options(), pod_resources_socket=node.root / "odd-pr.sock")
    daemon = await node.start_daemon(options=options)
    await node.kubelet.admit_pod("holder", containers=holder)
    await node.kubelet.admit_pod("gone", containers=[Container("c", {RED: 1})])
    node.kubelet.delete_pod("gone")
    held = {
        member.entry.spec.port_id
        for assignment in node.kubelet.assignments(pod="holder")
        for device_id in assignment.device_ids
        if (member := daemon.pools.find(device_id)) is not None
    }
    assert held and held <= set(node.agent.ports)
    return Session(node, daemon, odd, asyncio.get_running_loop(), held)


def free_and_held(session: Session) -> tuple[list[str], list[str]]:
    held = [d for a in session.node.kubelet.assignments(pod="holder") for d in a.device_ids]
    free = [e.id for pool in session.daemon.pools for e in pool.devices() if e.id not in held]
    return free[:6], held


def fuzz(session: Session) -> int:
    runs = 0
    free, held = free_and_held(session)

    @settings(
        max_examples=40,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(odd_pods(free, held))
    def one(pods: list[pr.PodResources]) -> None:
        nonlocal runs
        runs += 1
        session.odd.extra = pods
        session.passes()
        session.check_held()

    one()
    return runs


def undecodable_and_huge(session: Session) -> int:
    """Bytes that are no answer, then answers of 6 MB (read: as the kubelet's own client, up
    to 16 MB) and of 20 MB (not read: releases held back, nothing lost)."""
    odd = session.odd
    held_back = session.daemon.reconciler.stats.held_back
    runs = 0
    for raw in (b"\x0a\x05\x0a\x03\xff\xfe\xfd", b"\xff" * 64, b"\x0a\xff\xff\xff\xff\x0f"):
        odd.raw = raw
        before = held_back[POD_RESOURCES_UNREADABLE]
        session.passes()
        assert held_back[POD_RESOURCES_UNREADABLE] == before + 3
        session.check_held()
        runs += 1
    one_pod = pr.ListPodResourcesResponse(
        pod_resources=[
            pr.PodResources(
                name="p" * 40,
                namespace="n" * 20,
                containers=[
                    pr.ContainerResources(
                        name="c",
                        devices=[
                            pr.ContainerDevices(resource_name=RED, device_ids=HOSTILE_IDS[:8])
                        ],
                    )
                ],
            )
        ]
    ).SerializeToString()
    odd.raw = None
    real = session.call(lambda: odd._list(b"", None))  # type: ignore[arg-type]
    for megabytes, readable in ((6, True), (20, False)):
        odd.raw = real + one_pod * (megabytes * 1024 * 1024 // len(one_pod))
        before = held_back[POD_RESOURCES_UNREADABLE]
        session.passes()
        assert held_back[POD_RESOURCES_UNREADABLE] == before + (0 if readable else 3)
        session.check_held()
        runs += 1
    odd.raw = None
    return runs


async def odd_session(
    node: Node, backend: str, holder: list[Container], record: list[FaultResult]
) -> None:
    session = await start(node, holder)
    try:
        fuzzed = await asyncio.to_thread(fuzz, session)
        record.append(
            FaultResult(
                "PodResources answers with odd pods, resources and IDs (hypothesis)",
                backend,
                fuzzed,
                "warnings only; no held port released",
            )
        )
        odd_runs = await asyncio.to_thread(undecodable_and_huge, session)
        record.append(
            FaultResult(
                "PodResources answer undecodable, 6 MB, 20 MB",
                backend,
                odd_runs,
                "unreadable: releases held back with a warning; 6 MB read",
            )
        )
        # Sane again: what nobody holds goes (the deleted pod's port, ports the odd pods held).
        session.odd.extra = []

        for _ in range(20):
            await session.daemon.reconciler.reconcile()
            if set(node.agent.ports) <= session.held_ports:
                break
        assert set(node.agent.ports) == session.held_ports
        session.check_held(set(node.agent.ports))
        (admitted,) = await node.kubelet.admit_pod("after", containers=[Container("c", {RED: 1})])
        assert admitted.device_ids
    finally:
        await session.odd.stop()


def no_exceptions(records: list[logging.LogRecord]) -> None:
    bad = [r for r in records if r.exc_info or r.levelno >= logging.ERROR]
    assert not [f"{r.name}: {r.getMessage()[:300]}" for r in bad]


async def test_odd_pod_resources_opi_evpn_bridge(
    node: Node, record: list[FaultResult], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    holder = [Container("a", {RED: 2, GREEN: 1}), Container("b", {BLUE: 1})]
    await odd_session(node, "opi-evpn-bridge", holder, record)
    no_exceptions(caplog.records)
    warnings = " ".join(r.getMessage() for r in caplog.records)
    assert "not a ListPodResourcesResponse" in warnings
    assert "has not seen in sysfs" in warnings


async def test_odd_pod_resources_vendor_plugin(
    vsp_node: VspNode, record: list[FaultResult], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    await odd_session(vsp_node, "dpu-vendor-plugin", [Container("a", {RED: 2})], record)
    no_exceptions(caplog.records)
