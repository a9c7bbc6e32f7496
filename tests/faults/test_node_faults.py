"""Node faults on both host-agent backends: the kubelet restarted during pod admission, the
daemon killed with SIGKILL at random points of a churn, the devinfo dir full or read-only.

After each fault the node must converge (invariants.py): every owned port held, every held
device with an UP port of its spec and its device-info file, no device in two live pods, no
held port ever deleted. Admissions that fail while the fault lasts are expected and counted;
recovery runs from the fault's end (kubelet back, daemon respawned, disk writable) to
convergence. Delays and pod plans come from seeded RNGs (XPU_BRIDGE_FAULTS_SEED overrides the
seed); the daemon's own timing is not seeded, so a seed replays the plan, not the interleaving.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from daemon_process import DaemonProcess, all_healthy
from invariants import Holds, converge, expected_ports
from records import FaultResult
from simnode import Node, VspNode

from opi_protos.evpn_gw import l2_xpu_infra_mgr_pb2 as opi
from xpu_bridge.sim.kubelet import AdmissionError, Assignment, Container
from xpu_bridge.sim.polling import wait_until

SEED = int(os.environ.get("XPU_BRIDGE_FAULTS_SEED", "20250612"))
BACKENDS = {"node": "opi-evpn-bridge", "vsp_node": "dpu-vendor-plugin"}
"""Fixture name (tests/simnode.py) -> the backend's name in the record."""
RELEASE = {"intervalSeconds": 0.2, "graceSeconds": 0, "holdoffSeconds": 0}
SLACK = 2
"""Devices per resource the churn keeps free, so the kubelet never runs out while a release
is pending."""
READY_TIMEOUT = 30.0

KUBELET_RESTARTS = 3
PR_EMPTY_FOR = 0.8
"""After a kubelet restart, PodResources lists nothing for this long (a real one can)."""
KUBELET_HOLDOFF = 2.0
"""The kubelet-restart test needs the hold-off to outlast the empty List, as the default
(120 s) does on a real node: with 0 the guard is off and an empty List releases every port."""
SLOW_ALLOCATE = 0.2
"""Agent latency during the restarted admission, so the restart lands inside its Allocate."""

KILLS = {"node": 20, "vsp_node": 20}
KILL_AFTER = (0.05, 1.0)
"""Seconds of churn between the daemon being ready and SIGKILL."""
DOWN_FOR = (0.0, 0.3)
"""Seconds of churn while the daemon is dead, before it is started again."""
CHURN_LATENCY = 0.05
"""Agent latency during the churn, so that some kills land inside an Allocate."""

ATTEMPTS = 3
"""Allocates tried while the devinfo dir is full, and again while it is read-only."""


@pytest.fixture(params=list(BACKENDS))
def faulted(request: pytest.FixtureRequest) -> Node:
    """`node` (opi-evpn-bridge) or `vsp_node` (dpu-operator vendor plugin), quick release."""
    node: Node = request.getfixturevalue(request.param)
    if not isinstance(node, VspNode):
        node.raw_config["release"] = dict(RELEASE)
    return node


def backend_of(node: Node) -> str:
    return BACKENDS["vsp_node" if isinstance(node, VspNode) else "node"]


def capacity_of(node: Node) -> dict[str, int]:
    """Devices per pool, as sysfs and the config give them."""
    return dict(Counter(resource for resource, _ in expected_ports(node)))


def failure_kind(error: AdmissionError) -> str:
    """The gRPC code of a failed Allocate as grpc-go prints it, or why there was none."""
    for code in ("Unavailable", "Canceled", "Internal", "Unknown", "DeadlineExceeded"):
        if f"code = {code} " in error.message:
            return code
    if "healthy devices" in error.message or "unregistered" in error.message:
        return "NO_DEVICES"
    return error.message[:60]


@dataclass
class Pods:
    """Admits one-device pods and deletes them, recording both in `holds`, within capacity."""

    node: Node
    holds: Holds
    rng: random.Random
    capacity: dict[str, int]
    failures: Counter[str] = field(default_factory=Counter)
    admitted: int = 0
    made: int = 0

    def free(self, resource: str) -> int:
        used = sum(1 for held, _ in self.holds.holder if held == resource)
        return self.capacity[resource] - used

    def roomy(self) -> list[str]:
        return sorted(r for r in self.capacity if self.free(r) > SLACK)

    async def admit(self, resource: str | None = None) -> list[Assignment] | AdmissionError:
        """One pod with one device of `resource` (default: a random one with room)."""
        name = f"pod-{self.made:04d}"
        self.made += 1
        chosen = resource or self.rng.choice(self.roomy())
        try:
            found = await self.node.kubelet.admit_pod(
                name, containers=[Container("app", {chosen: 1})]
            )
        except AdmissionError as error:
            self.failures[failure_kind(error)] += 1
            return error
        self.holds.admitted(name, found)
        self.admitted += 1
        return found

    def delete(self, pod: str | None = None) -> None:
        name = pod or self.rng.choice(self.holds.live_pods)
        self.holds.deleted(name)
        self.node.kubelet.delete_pod(name)

    async def step(self) -> None:
        """Delete a random live pod, or admit one where there is room."""
        room = self.roomy()
        if self.holds.live_pods and (not room or self.rng.random() < 0.45):
            self.delete()
        elif room:
            await self.admit(self.rng.choice(room))

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


class Churn:
    """Runs Pods.step in the background, with short random pauses, until paused."""

    def __init__(self, pods: Pods) -> None:
        self.pods = pods
        self._go = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def resume(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        self._go.set()

    async def pause(self) -> None:
        """Returns once no step is in flight and none will start until resume()."""
        self._go.clear()
        await self._idle.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await self._go.wait()
            self._idle.clear()
            try:
                await self.pods.step()
            finally:
                self._idle.set()
            await asyncio.sleep(self.pods.rng.uniform(0.0, 0.03))


# ---------------------------------------------------------------- (a) kubelet restart


def slow_allocate(node: Node, seconds: float) -> None:
    """Slow the call an Allocate waits on after the port exists (opi: Get until UP) or makes
    it (vendor plugin: Create, synchronous)."""
    method = "CreateBridgePort" if isinstance(node, VspNode) else "GetBridgePort"
    node.agent.set_latency(method, seconds)


async def test_kubelet_restart_during_admission_keeps_held_ports(
    faulted: Node, record: list[FaultResult]
) -> None:
    node = faulted
    rng = random.Random(SEED)
    node.raw_config["release"] = {**RELEASE, "holdoffSeconds": KUBELET_HOLDOFF}
    await node.start_daemon()
    capacity = capacity_of(node)
    holds = Holds()
    pods = Pods(node, holds, rng, capacity)
    for _ in range(4):
        assert not isinstance(await pods.admit(), AdmissionError), pods.failures
    await converge(node, holds)

    recoveries: list[float] = []
    registered: list[float] = []
    in_flight = 0
    for _ in range(KUBELET_RESTARTS):
        slow_allocate(node, SLOW_ALLOCATE)
        calls = len(node.kubelet.plugin_calls)
        admission = asyncio.create_task(pods.admit())
        await wait_until(
            lambda c=calls, a=admission: (
                a.done() or any(p.method == "Allocate" for p in node.kubelet.plugin_calls[c:])
            ),
            timeout=10,
            interval=0.001,
        )
        await asyncio.sleep(rng.uniform(0.0, SLOW_ALLOCATE * 0.75))
        in_flight += not admission.done()
        await node.kubelet.restart(pod_resources_empty_for=PR_EMPTY_FOR)
        back = time.monotonic()
        node.agent.clear_faults()
        # While List is empty: a pod ends (released after the hold-off), another is tried.
        pods.delete()
        await admission
        await pods.admit()
        await all_healthy(node.kubelet, capacity, after=back)
        registered.append(time.monotonic() - back)
        await converge(node, holds)
        recoveries.append(time.monotonic() - back)
        outcome = await pods.admit()
        assert not isinstance(outcome, AdmissionError), f"after the restart: {outcome}"
        await converge(node, holds)

    registrations = Counter(r.resource_name for r in node.kubelet.registrations if r.connected)
    assert all(registrations[r] >= 1 + KUBELET_RESTARTS for r in capacity), registrations
    record.append(
        FaultResult(
            fault="kubelet restarted during pod admission (PodResources empty "
            f"{PR_EMPTY_FOR:g} s, hold-off {KUBELET_HOLDOFF:g} s)",
            backend=backend_of(node),
            runs=KUBELET_RESTARTS,
            outcome=f"re-registered (in {max(registered):.2f} s at most) and converged after "
            f"every restart, held ports kept; {in_flight} restarts cut an Allocate in flight; "
            f"{pods.failed} admissions failed {dict(pods.failures)}; recovery includes the "
            "hold-off before the port of a pod deleted meanwhile goes",
            recovery_seconds=recoveries,
        )
    )


# ---------------------------------------------------------------- (b) daemon SIGKILL


def allocate_in_flight(node: Node) -> bool:
    """The kubelet sent an Allocate that has neither answered nor failed."""
    return any(
        c.method == "Allocate" and c.response is None and c.error is None
        for c in node.kubelet.plugin_calls[-3:]
    )


async def test_daemon_sigkill_at_random_points_of_a_churn(
    faulted: Node, record: list[FaultResult]
) -> None:
    node = faulted
    kills = KILLS["vsp_node" if isinstance(node, VspNode) else "node"]
    timing = random.Random(SEED)
    capacity = capacity_of(node)
    holds = Holds()
    pods = Pods(node, holds, random.Random(SEED + 1), capacity)
    churn = Churn(pods)
    daemon = DaemonProcess(node, capacity)
    recoveries: list[float] = []
    in_flight = 0
    failed_while_down = 0
    try:
        await daemon.start()
        slow_allocate(node, CHURN_LATENCY)
        for _ in range(kills):
            churn.resume()
            await asyncio.sleep(timing.uniform(*KILL_AFTER))
            in_flight += allocate_in_flight(node)
            await daemon.kill()
            failed_before = pods.failed
            await asyncio.sleep(timing.uniform(*DOWN_FOR))
            respawned = time.monotonic()
            await daemon.start()  # the churn goes on while it starts
            failed_while_down += pods.failed - failed_before
            await churn.pause()
            await converge(node, holds)
            recoveries.append(time.monotonic() - respawned)
        await churn.pause()
        assert await daemon.stop() == 0, daemon.log_tail()
        logs = daemon.log_text()
        assert "Traceback" not in logs, logs[-5000:]
    finally:
        await churn.stop()
        await daemon.stop()
    assert pods.admitted > kills, f"only {pods.admitted} admissions: {dict(pods.failures)}"
    record.append(
        FaultResult(
            fault="daemon killed with SIGKILL at random points of a churn",
            backend=backend_of(node),
            runs=kills,
            outcome=f"converged after every kill ({in_flight} hit an Allocate in flight); "
            f"{pods.admitted} admitted, {pods.failed} admissions failed, "
            f"{failed_while_down} of them while it was down or starting "
            f"{dict(pods.failures)}; recovery counted from the respawn",
            recovery_seconds=recoveries,
        )
    )


# ---------------------------------------------------------------- (c) devinfo disk


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)


def _umount(path: Path) -> None:
    done = subprocess.run(["umount", str(path)], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:  # busy: detach it anyway, so the next test starts clean
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def can_mount() -> None:
    """Skip unless this process may mount a tmpfs and remount it read-only."""
    if os.geteuid() != 0:
        pytest.skip("the devinfo disk faults mount a tmpfs: run as root")
    probe = Path(tempfile.mkdtemp(prefix="xb-mount-"))
    try:
        done = _mount("-t", "tmpfs", "-o", "size=64k", "xb-probe", str(probe))
        if done.returncode != 0:
            pytest.skip(f"mount -t tmpfs does not work here: {done.stderr.strip()}")
        try:
            done = _mount("-o", "remount,ro", str(probe))
            if done.returncode != 0:
                pytest.skip(f"mount -o remount,ro does not work here: {done.stderr.strip()}")
        finally:
            _umount(probe)
    finally:
        probe.rmdir()


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[None]:
    """A small tmpfs over `path` for the duration; always unmounted again."""
    path.mkdir(parents=True, exist_ok=True)
    done = _mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "xb-devinfo", str(path))
    assert done.returncode == 0, done.stderr
    try:
        yield
    finally:
        _umount(path)


def remount(path: Path, mode: str) -> None:
    done = _mount("-o", f"remount,{mode}", str(path))
    assert done.returncode == 0, done.stderr


def fill(directory: Path) -> Path:
    """Write a file until the file system is full (ENOSPC); return it."""
    filler = directory / ".filler"
    chunk = b"\0" * 65536
    with filler.open("ab", buffering=0) as out:
        try:
            while True:
                out.write(chunk)
        except OSError as error:
            assert error.errno == errno.ENOSPC, error
    return filler


def port_left(node: Node, name: str) -> str | None:
    """The state of port `name` if it is still there and not on its way out."""
    port = node.agent.ports.get(name)
    if port is None or port.status.oper_status == opi.BP_OPER_STATUS_TO_BE_DELETED:
        return None
    return opi.BPOperStatus.Name(port.status.oper_status)


async def failing_allocates(node: Node, pods: Pods, cause: str) -> None:
    """ATTEMPTS admissions must fail with the device, the cause and what to do; the port each
    Allocate made must be deleted by that Allocate (rolled back), not left to the reconciler.
    Every device tried has no port before (no pod was deleted just before)."""
    ports = expected_ports(node)
    resource = sorted(pods.capacity)[0]
    for _ in range(ATTEMPTS):
        calls = len(node.kubelet.calls("Allocate"))
        deletions = len(node.agent.deletions)
        before = {name for name in node.agent.ports if port_left(node, name)}
        outcome = await pods.admit(resource)
        assert isinstance(outcome, AdmissionError), f"admitted with a {cause} devinfo dir"
        (call,) = node.kubelet.calls("Allocate")[calls:]
        (device,) = call.request.container_requests[0].devices_ids
        message = outcome.message
        assert device in message and cause in message and "--devinfo-dir" in message, message
        port = ports[(resource, device)].name
        assert port not in before, f"{device} was given while its old port {port} was there"
        assert port in [name for _, name in node.agent.deletions[deletions:]], (
            f"the failed Allocate of {device} did not delete its port {port}: {message}"
        )
        assert port_left(node, port) is None, f"{port} is {port_left(node, port)}"


async def test_devinfo_dir_full_or_read_only(
    faulted: Node, can_mount: None, record: list[FaultResult]
) -> None:
    """The tmpfs is mounted (writable) before the daemon starts, which checks it; the faults
    come after: filled to ENOSPC, then remounted read-only."""
    node = faulted
    backend = backend_of(node)
    devinfo = node.devinfo_dir
    with tmpfs(devinfo, "1m"):
        await node.start_daemon()
        holds = Holds()
        pods = Pods(node, holds, random.Random(SEED), capacity_of(node))
        for _ in range(3):
            assert not isinstance(await pods.admit(), AdmissionError), pods.failures
        await converge(node, holds)

        filler = fill(devinfo)
        await failing_allocates(node, pods, "No space left on device")
        await converge(node, holds)  # nothing leaked, held devices untouched
        assert not list(devinfo.glob(".*.tmp")), "a failed write left its temporary file"
        filler.unlink()
        writable = time.monotonic()
        outcome = await pods.admit()
        assert not isinstance(outcome, AdmissionError), f"space is back: {outcome.message}"
        await converge(node, holds)
        full = time.monotonic() - writable
        record.append(
            FaultResult(
                fault="devinfo dir full (ENOSPC)",
                backend=backend,
                runs=ATTEMPTS,
                outcome="each Allocate failed naming the device, the cause and --devinfo-dir; "
                "the port it made rolled back; Allocates succeed once there is space",
                recovery_seconds=[full],
            )
        )

        remount(devinfo, "ro")
        try:
            await failing_allocates(node, pods, "Read-only file system")
            pods.delete()  # released though its device-info file cannot be removed
            await converge(node, holds)
        finally:
            remount(devinfo, "rw")
        writable = time.monotonic()
        outcome = await pods.admit()
        assert not isinstance(outcome, AdmissionError), f"writable again: {outcome.message}"
        await converge(node, holds)
        read_only = time.monotonic() - writable
        await node.stop_daemon()
    record.append(
        FaultResult(
            fault="devinfo dir read-only (EROFS)",
            backend=backend,
            runs=ATTEMPTS,
            outcome="each Allocate failed naming the device, the cause and --devinfo-dir; "
            "the port it made rolled back; a pod deleted meanwhile released; Allocates "
            "succeed once writable",
            recovery_seconds=[read_only],
        )
    )


async def test_start_on_read_only_devinfo_dir_exits_1(
    faulted: Node, can_mount: None, record: list[FaultResult]
) -> None:
    node = faulted
    with tmpfs(node.devinfo_dir, "64k"):
        remount(node.devinfo_dir, "ro")
        process = await asyncio.create_subprocess_exec(
            *node.run_command(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        try:
            _, err = await asyncio.wait_for(process.communicate(), 60)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    lines = [line for line in err.decode().splitlines() if line.startswith("xpu-bridge:")]
    assert process.returncode == 1, (process.returncode, err.decode())
    assert len(lines) == 1, err.decode()  # besides log lines (holdoffSeconds 0 is warned of)
    assert "--devinfo-dir" in lines[0] and "Read-only file system" in lines[0], lines
    record.append(
        FaultResult(
            fault="daemon started on a read-only devinfo dir",
            backend=backend_of(node),
            runs=1,
            outcome=f"exit 1, one line: {lines[0].replace(str(node.root), '<root>')}",
        )
    )
