"""Host-agent faults during an Allocate storm, on both backends (opi-evpn-bridge and a dpu-operator
vendor plugin): the agent killed and restarted with its state kept or dropped, slower than the
RPC deadline, answering UNKNOWN or RESOURCE_EXHAUSTED, dropping connections mid-call, losing
replies after the call took effect. After each fault the node converges (invariants.py), every
failed admission names its device and the cause, and new admissions succeed again.

Each test runs its fault RUNS times in one storm, the fault's timing drawn from an RNG seeded
with SEED and the fault's and the backend's names; the daemon runs in process. Timing is
recorded, not asserted: the figures go to RELIABILITY.md through the `record` fixture. The
last two tests admit one pod at a time, where a storm would hide what they look for: the port
of a Create whose reply was lost past the attach budget, and a pod admitted the moment the
agent is back without its state.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import pytest
from invariants import Holds, converge, expected_ports
from records import FaultResult
from simnode import BLUE, GREEN, RED, Node, VspNode

from xpu_bridge.sim.host_agent.faults import LOST_REPLY
from xpu_bridge.sim.kubelet import AdmissionError, Container
from xpu_bridge.sim.polling import wait_until

SEED = os.environ.get("XPU_BRIDGE_FAULTS_SEED", "1")
"""Seeds every test's RNG, with the fault's and the backend's names (override to explore)."""
BACKENDS = {"node": "opi-evpn-bridge", "vsp_node": "dpu-vendor-plugin"}
RELEASE = {"intervalSeconds": 0.2, "graceSeconds": 0, "holdoffSeconds": 0}
"""The opi node's release settings (vsp_node_config has the same): quick, no hold-off."""
RUNS = 3
BEFORE_FAULT = (6, 14)
"""Admissions of each storm before its fault starts (drawn from the seeded RNG)."""
AFTER_FAULT = 8
"""Admissions after each fault has converged: every one must succeed."""
WEIGHTS = {RED: 6, BLUE: 2, GREEN: 2}
"""How often a storm's pod asks for each pool the node has."""
TWO_DEVICES = 0.2
"""Share of pods that ask for two devices of their pool (one Allocate, two ports)."""
DELETE = 0.4
"""Before each admission, live pods are deleted while the dice say so (and while the pool
would be too full): deletions interleave with admissions."""
HEADROOM = 2
"""Devices of each pool kept free, so that the kubelet never refuses a pod for capacity."""
RPC_TIMEOUT = 1.0
ATTACH_TIMEOUT = 3.0
"""hostAgent.rpcTimeoutSeconds and attachTimeoutSeconds of both node configs."""
SLOWER = 1.5 * RPC_TIMEOUT
"""A slow method's latency: every attempt misses its deadline."""
HEARTBEAT = 2.0
"""hostAgent.heartbeatSeconds where the test needs the heartbeat to be slower than a pod."""
CONVERGE_TIMEOUT = 60.0
WAIT = 30.0  # generous: CI machines are noisy
CAUSE = re.compile(
    r"\b(UNAVAILABLE|DEADLINE_EXCEEDED|UNKNOWN|RESOURCE_EXHAUSTED|ABORTED|CANCELLED|INTERNAL)\b"
    r"|no time left|still [A-Z_]+ after|vanished while coming UP"
)
"""What a failed Allocate's message must say besides the device: the agent's answer (a status
code), the attach budget that ran out, or the port lost while it came UP."""

Inject = Callable[[Node, random.Random], Awaitable[None]]
"""Applies a fault to the node's agent and returns once the fault is over (agent back, faults
cleared)."""


@dataclass(frozen=True)
class Failure:
    """An admission that a failed Allocate rejected."""

    pod: str
    devices: tuple[str, ...]
    cause: str
    message: str


@dataclass
class Storm:
    """Pods admitted back to back (the kubelet admits one at a time) with deletions between
    them, every outcome recorded in `holds` (successes) or `failures` and `refused`."""

    node: Node
    holds: Holds
    rng: random.Random
    capacity: dict[str, int]
    attempted: int = 0
    admitted: int = 0
    failures: list[Failure] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    """Admissions the kubelet refused without calling Allocate (devices Unhealthy)."""
    unclear: list[str] = field(default_factory=list)
    """Failed Allocates whose message does not name the device or the cause: must stay empty."""

    def live(self, resource: str) -> int:
        return sum(1 for held, _ in self.holds.holder if held == resource)

    def delete(self, pod: str) -> None:
        self.holds.deleted(pod)
        self.node.kubelet.delete_pod(pod)

    async def step(self, must_succeed: bool = False, delete: bool = True) -> None:
        """One admission, after deleting pods (unless `delete` is off and the pool has room)."""
        resources = sorted(self.capacity)
        resource = self.rng.choices(resources, [WEIGHTS[r] for r in resources])[0]
        count = 2 if self.rng.random() < TWO_DEVICES else 1
        limit = self.capacity[resource] - HEADROOM
        while self.holds.live_pods and (
            self.live(resource) + count > limit or (delete and self.rng.random() < DELETE)
        ):
            self.delete(self.rng.choice(self.holds.live_pods))
        pod = f"storm-{self.attempted:04d}"
        self.attempted += 1
        try:
            assignments = await self.node.kubelet.admit_pod(
                pod, containers=[Container("app", {resource: count})]
            )
        except AdmissionError as error:
            if must_succeed:
                raise AssertionError(f"{pod} failed after the fault: {error.message}") from None
            self.failed(pod, error)
            return
        self.holds.admitted(pod, assignments)
        self.admitted += 1

    def failed(self, pod: str, error: AdmissionError) -> None:
        calls = [call for call in self.node.kubelet.calls("Allocate") if call.pod == pod]
        if not calls or calls[-1].error is None:
            self.refused.append(error.message)
            return
        request = calls[-1].request
        devices = tuple(
            device
            for container in getattr(request, "container_requests", ())
            for device in container.devices_ids
        )
        cause = CAUSE.search(error.message)
        if cause is None or not any(device in error.message for device in devices):
            self.unclear.append(f"{pod} {devices}: {error.message}")
        self.failures.append(Failure(pod, devices, cause.group(0) if cause else "?", error.message))

    def reached(self, attempted: int, storming: asyncio.Task[None]) -> bool:
        """The storm made `attempted` admissions, or ended (broke) before."""
        return storming.done() or self.attempted >= attempted

    async def until(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.step()

    async def recovered(self) -> None:
        """The kubelet sees every device Healthy again, and new pods are admitted."""
        for resource in self.capacity:
            await self.node.kubelet.wait_for_devices(
                resource, lambda ds: bool(ds) and all(d.health == "Healthy" for d in ds), WAIT
            )
        for _ in range(AFTER_FAULT):
            await self.step(must_succeed=True)

    def outcome(self, runs: int) -> str:
        causes = Counter(failure.cause for failure in self.failures)
        text = (
            f"converged {runs} of {runs}; {len(self.failures)} of {self.attempted} admissions "
            "failed naming the device"
        )
        if causes:
            text += " (" + ", ".join(f"{n} {cause}" for cause, n in causes.most_common()) + ")"
        if self.refused:
            text += f"; {len(self.refused)} refused by the kubelet (devices Unhealthy)"
        return text + f"; {AFTER_FAULT * runs} admissions after the faults all succeeded"


def capacity(node: Node) -> dict[str, int]:
    """Devices per pool, for the storm to keep within."""
    return dict(Counter(resource for resource, _ in expected_ports(node)))


def backend(node: Node) -> str:
    return BACKENDS["vsp_node" if isinstance(node, VspNode) else "node"]


@pytest.fixture(params=list(BACKENDS))
def any_node(request: pytest.FixtureRequest) -> Node:
    """Both backends' nodes, each with quick releases and no hold-off, daemon not started."""
    node: Node = request.getfixturevalue(request.param)
    if not isinstance(node, VspNode):
        node.raw_config["release"] = dict(RELEASE)
    return node


async def storm_through(
    node: Node, record: list[FaultResult], fault: str, inject: Inject, runs: int = RUNS
) -> Storm:
    """Start the daemon, then `runs` times: a storm, the fault in the middle of it, the storm
    stopped once the fault is over, convergence (timed from the fault's end), and admissions
    that must all succeed. Records the figures and answers the storm for fault-specific checks."""
    rng = random.Random(f"{SEED} / {fault} / {backend(node)}")
    await node.start_daemon()
    holds = Holds()
    storm = Storm(node, holds, rng, capacity(node))
    recoveries: list[float] = []
    for _ in range(runs):
        stop = asyncio.Event()
        storming = asyncio.create_task(storm.until(stop))
        start_at = storm.attempted + rng.randint(*BEFORE_FAULT)
        await wait_until(functools.partial(storm.reached, start_at, storming), WAIT)
        if storming.done():
            await storming  # the storm broke: show why
        try:
            await inject(node, rng)
        finally:
            node.agent.clear_faults()
        ended = time.monotonic()
        stop.set()
        await storming
        await converge(node, holds, CONVERGE_TIMEOUT)
        recoveries.append(time.monotonic() - ended)
        await storm.recovered()
        await converge(node, holds, CONVERGE_TIMEOUT)
    assert not storm.unclear, "failed Allocates that do not name their device and cause:\n" + (
        "\n".join(storm.unclear)
    )
    record.append(
        FaultResult(
            fault=fault,
            backend=backend(node),
            runs=runs,
            outcome=storm.outcome(runs),
            recovery_seconds=[round(seconds, 3) for seconds in recoveries],
        )
    )
    return storm


# --- the faults ------------------------------------------------------------------------------


def killed(drop_state: bool) -> Inject:
    """The agent dies at once (calls in flight aborted) and comes back after a while, with its
    ports or without them (an in-memory store; a vendor plugin then needs Init again)."""

    async def inject(node: Node, rng: random.Random) -> None:
        await node.agent.restart(drop_state=drop_state, downtime=rng.uniform(0.2, 1.0))

    return inject


def slow(*methods: str) -> Inject:
    """`methods` answer only after the RPC deadline has passed, for longer than an Allocate's
    attach budget (a shorter slowness is ridden out by retries)."""

    async def inject(node: Node, rng: random.Random) -> None:
        for method in methods:
            node.agent.set_latency(method, SLOWER)
        await asyncio.sleep(ATTACH_TIMEOUT + rng.uniform(0.5, 1.5))

    return inject


def answering(code: grpc.StatusCode, rate: float) -> Inject:
    """Every method fails with `code` at `rate` (the next two Creates surely) for a while."""

    async def inject(node: Node, rng: random.Random) -> None:
        node.agent.set_error_rate("*", rate, code)
        node.agent.fail_next("CreateBridgePort", 2, code)
        await asyncio.sleep(rng.uniform(0.8, 1.5))

    return inject


async def dropped_mid_call(node: Node, rng: random.Random) -> None:
    """Creates and Deletes take a while (under the deadline); while a Create is in flight the
    agent stops without grace, dropping every connection, and comes back soon after."""
    for method in ("CreateBridgePort", "DeleteBridgePort"):
        node.agent.set_latency(method, 0.3 * RPC_TIMEOUT)
    creates = node.agent.calls["CreateBridgePort"]
    await wait_until(lambda: node.agent.calls["CreateBridgePort"] > creates, WAIT)
    await asyncio.sleep(rng.uniform(0.0, 0.2))
    await node.agent.stop(grace=0)
    await asyncio.sleep(rng.uniform(0.1, 0.5))
    node.agent.clear_faults()
    await node.agent.start()


async def replies_lost(node: Node, rng: random.Random) -> None:
    """A few Creates and Deletes take effect, and then their connection drops before the
    reply (the caller sees UNAVAILABLE for a call that happened)."""
    node.agent.lose_replies("CreateBridgePort", rng.randint(2, 4))
    node.agent.lose_replies("DeleteBridgePort", rng.randint(1, 3))
    lost = node.agent.faults.lost_replies
    await wait_until(lambda: not lost["CreateBridgePort"], WAIT)
    with contextlib.suppress(TimeoutError):  # Deletes come with releases, less often
        await wait_until(lambda: not lost["DeleteBridgePort"], 2.0)


# --- the tests -------------------------------------------------------------------------------


async def test_agent_killed_and_restarted_during_a_storm_keeping_its_state(
    any_node: Node, record: list[FaultResult]
) -> None:
    await storm_through(
        any_node,
        record,
        "agent killed and restarted during an Allocate storm (state kept)",
        killed(drop_state=False),
    )


async def test_agent_killed_and_restarted_during_a_storm_dropping_its_state(
    any_node: Node, record: list[FaultResult]
) -> None:
    await storm_through(
        any_node,
        record,
        "agent killed and restarted during an Allocate storm (state dropped)",
        killed(drop_state=True),
    )


async def test_create_slower_than_the_rpc_deadline(
    any_node: Node, record: list[FaultResult]
) -> None:
    storm = await storm_through(
        any_node,
        record,
        "CreateBridgePort slower than the RPC deadline",
        slow("CreateBridgePort"),
    )
    assert storm.failures, "a Create slower than every attempt's deadline fails its Allocate"
    assert {failure.cause for failure in storm.failures} <= {"DEADLINE_EXCEEDED", "no time left"}


async def test_get_and_delete_slower_than_the_rpc_deadline(
    any_node: Node, record: list[FaultResult]
) -> None:
    storm = await storm_through(
        any_node,
        record,
        "GetBridgePort and DeleteBridgePort slower than the RPC deadline",
        slow("GetBridgePort", "DeleteBridgePort"),
    )
    if not isinstance(any_node, VspNode):  # Allocate waits for UP with Get
        assert storm.failures, "waiting for UP with a Get slower than its deadline fails"


async def test_agent_answering_unknown(any_node: Node, record: list[FaultResult]) -> None:
    storm = await storm_through(
        any_node,
        record,
        "agent answering UNKNOWN (30% of calls, never retried)",
        answering(grpc.StatusCode.UNKNOWN, 0.3),
    )
    assert any(failure.cause == "UNKNOWN" for failure in storm.failures)


async def test_agent_answering_resource_exhausted(
    any_node: Node, record: list[FaultResult]
) -> None:
    await storm_through(
        any_node,
        record,
        "agent answering RESOURCE_EXHAUSTED (50% of calls, retried)",
        answering(grpc.StatusCode.RESOURCE_EXHAUSTED, 0.5),
    )


async def test_connections_dropped_mid_call(any_node: Node, record: list[FaultResult]) -> None:
    await storm_through(
        any_node,
        record,
        "connections dropped mid-call (agent stopped without grace during a Create)",
        dropped_mid_call,
    )


async def test_replies_lost_after_the_call_took_effect(
    any_node: Node, record: list[FaultResult]
) -> None:
    storm = await storm_through(
        any_node,
        record,
        "replies lost after Create or Delete took effect (UNAVAILABLE, retried)",
        replies_lost,
    )
    assert not any(LOST_REPLY in failure.message for failure in storm.failures), (
        "a lost reply is retried, and the retry finds the port"
    )


async def test_a_create_that_took_effect_but_lost_its_reply_leaves_no_port(
    any_node: Node, record: list[FaultResult]
) -> None:
    """Every Create takes effect and loses its reply for longer than the attach budget (an
    agent that commits, then dies before it answers): the Allocate fails, and the port it made
    must not stay behind, although the kubelet never asks for that device again. A storm would
    hide a leak (the next pod gets the same device), so one admission at a time here, of a
    device that has no port."""
    node = any_node
    fault = "every Create's reply lost past the attach budget (the port made, the Allocate failed)"
    await node.start_daemon()
    holds = Holds()
    storm = Storm(node, holds, random.Random(f"{SEED} / {fault} / {backend(node)}"), capacity(node))
    await storm.recovered()
    recoveries: list[float] = []
    for run in range(RUNS):
        await converge(node, holds, CONVERGE_TIMEOUT)  # no port but the held ones
        node.agent.lose_replies("CreateBridgePort", 1_000_000)
        try:
            await storm.step(delete=False)
        finally:
            node.agent.clear_faults()
        ended = time.monotonic()
        assert len(storm.failures) == run + 1 and LOST_REPLY in storm.failures[-1].message
        await converge(node, holds, CONVERGE_TIMEOUT)
        recoveries.append(time.monotonic() - ended)
        await storm.recovered()
    assert not storm.unclear, "\n".join(storm.unclear)
    record.append(
        FaultResult(
            fault=fault,
            backend=backend(node),
            runs=RUNS,
            outcome=storm.outcome(RUNS),
            recovery_seconds=[round(seconds, 3) for seconds in recoveries],
        )
    )


async def test_a_pod_admitted_the_moment_the_agent_is_back_without_its_state(
    any_node: Node, record: list[FaultResult]
) -> None:
    """The agent restarts with its state dropped and a pod comes at once. A vendor plugin then
    refuses every Create until it gets Init again, which the heartbeat (every 5 s by default;
    HEARTBEAT here) sends only later: the Allocate must not fail for that, and the pod held
    across the restart must get its port back although the heartbeat's Init is not the one
    that found the plugin fresh."""
    node = any_node
    fault = "agent restarted with its state dropped, a pod admitted the moment it is back"
    if isinstance(node, VspNode):
        node.raw_config["hostAgent"]["heartbeatSeconds"] = HEARTBEAT
    await node.start_daemon()
    holds = Holds()
    rng = random.Random(f"{SEED} / {fault} / {backend(node)}")
    storm = Storm(node, holds, rng, capacity(node))
    recoveries: list[float] = []
    for _ in range(RUNS):
        for pod in holds.live_pods[1:]:
            storm.delete(pod)
        await converge(node, holds, CONVERGE_TIMEOUT)
        await node.agent.restart(drop_state=True, downtime=rng.uniform(0.1, 0.3))
        ended = time.monotonic()
        await storm.step(must_succeed=True, delete=False)
        await converge(node, holds, CONVERGE_TIMEOUT)
        recoveries.append(time.monotonic() - ended)
        await storm.recovered()
    record.append(
        FaultResult(
            fault=fault,
            backend=backend(node),
            runs=RUNS,
            outcome=storm.outcome(RUNS),
            recovery_seconds=[round(seconds, 3) for seconds in recoveries],
        )
    )
