"""Soak: thousands of allocate/release cycles with 5% agent errors, on either host-agent backend;
the daemon's RSS, open file descriptors and asyncio tasks, measured at quiet points, must not
grow. The daemon is a `python -m xpu_bridge.cli run` subprocess, so the figures are its own."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from daemon_process import DaemonProcess
from records import FaultResult
from simnode import (
    BLUE,
    BRIDGES,
    GREEN,
    RED,
    Node,
    VspNode,
    node_config,
    vsp_node_config,
)

from xpu_bridge.sim.host_agent import SimHostAgent
from xpu_bridge.sim.kubelet import AdmissionError, Container, SimKubelet
from xpu_bridge.sim.polling import wait_until
from xpu_bridge.sim.sysfs import build_node
from xpu_bridge.sim.vendor_plugin import SimVendorPlugin

OPI = "opi-evpn-bridge"
VSP = "dpu-vendor-plugin"
CYCLES = {OPI: 10_000, VSP: 10_000}
"""Per backend (about 170 s and 90 s on 2 cores); XPU_BRIDGE_SOAK_CYCLES overrides both, for
a quick local try."""
SAMPLE_EVERY = 1_000
BASELINE_CYCLE = 1_000
"""RSS is compared from here: the first cycles fill caches, pools and the allocator's arenas."""
ERROR_RATE = 0.05
MAX_RSS_GROWTH = 0.10
RELEASE = {"intervalSeconds": 0.1, "graceSeconds": 0, "holdoffSeconds": 0}
GROUPS = {OPI: ({RED: 32}, {BLUE: 32, GREEN: 4}), VSP: ({RED: 32}, {BLUE: 32})}
"""Devices per pool, the pools in two groups used in turns (see Soak)."""
INTERFACES = 64
"""The vendor plugin's ACC interfaces: one per device, all held at once at worst."""
READY_TIMEOUT = 60.0
QUIET_TIMEOUT = 60.0
READINGS = 15
"""Readings per quiet point, 0.1 s apart; the most frequent count of tasks and of fds is taken
(a scrape, a reconcile pass's PodResources call or a heartbeat in flight adds a task or a
socket for a moment, and a loop between two rounds lacks one), and the median RSS."""
METRICS_LINE = re.compile(r"serving /metrics\S*.* on 127\.0\.0\.1:(\d+)")


@dataclass(frozen=True)
class Sample:
    cycle: int
    rss_kib: int
    fds: int
    tasks: int

    def text(self) -> str:
        rss = self.rss_kib / 1024
        return f"cycle {self.cycle:>6,}: RSS {rss:6.1f} MiB, fds {self.fds}, tasks {self.tasks}"


class SoakDaemon(DaemonProcess):
    """The daemon subprocess, with its metrics port read from its log."""

    ready_timeout = READY_TIMEOUT
    metrics_port: int | None = None

    async def start(self) -> None:
        await super().start()
        await wait_until(lambda: METRICS_LINE.search(self.log.read_text()), READY_TIMEOUT)
        match = METRICS_LINE.search(self.log.read_text())
        assert match is not None
        self.metrics_port = int(match.group(1))

    async def metrics(self) -> Counter[str]:
        """Each series by name, summed over its labels; and each labelled one by
        `name{labels}` as exposed, e.g. `xpu_bridge_devices{resource="opi.io/red",state="free"}`."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"

        def get() -> str:
            with urllib.request.urlopen(url, timeout=10) as reply:
                text: str = reply.read().decode()
                return text

        values: Counter[str] = Counter()
        for line in (await asyncio.to_thread(get)).splitlines():
            if line and not line.startswith("#"):
                series, value = line.rsplit(" ", 1)
                values[series.split("{", 1)[0]] += float(value)
                if "{" in series:
                    values[series] += float(value)
        return values

    def rss_kib(self) -> int:
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        assert match is not None, status
        return int(match.group(1))

    def fds(self) -> int:
        assert self.process is not None
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    async def sample(self, cycle: int) -> Sample:
        rss: list[int] = []
        fds: Counter[int] = Counter()
        tasks: Counter[int] = Counter()
        for _ in range(READINGS):
            await asyncio.sleep(0.1)
            tasks[int((await self.metrics())["xpu_bridge_event_loop_tasks"])] += 1
            fds[self.fds()] += 1
            rss.append(self.rss_kib())
        rss_kib = sorted(rss)[len(rss) // 2]
        return Sample(cycle, rss_kib, fds.most_common(1)[0][0], tasks.most_common(1)[0][0])


@dataclass
class Soak:
    """The pools in two groups, used in turns: a phase fills one group's devices with pods
    (one device each) while the other group's deleted pods are released; a group is used again
    only once every port of its last phase is gone from the agent. So each cycle creates a
    port and the reconciler releases it, instead of a new pod taking over a port whose
    release is pending."""

    backend: str
    node: Node
    daemon: SoakDaemon
    groups: tuple[dict[str, int], dict[str, int]]
    """Resource -> devices, per group."""
    cycles: int = 0
    """Pods admitted and deleted again."""
    failures: Counter[str] = field(default_factory=Counter)
    samples: list[Sample] = field(default_factory=list)
    pending: list[set[str]] = field(default_factory=lambda: [set(), set()])
    """Per group, the ports of the pods its last phase deleted."""
    live: list[str] = field(default_factory=list)
    pods: int = 0

    def faults_on(self) -> None:
        """5% of every agent RPC fails: UNAVAILABLE (retried) everywhere, and Create refused
        with UNKNOWN (not retried: the admission fails and the Allocate rolls back)."""
        self.node.agent.set_error_rate("*", ERROR_RATE, grpc.StatusCode.UNAVAILABLE)
        self.node.agent.set_error_rate("CreateBridgePort", ERROR_RATE, grpc.StatusCode.UNKNOWN)

    async def admit(self, resource: str) -> set[str]:
        """One pod with one device of `resource`, retried until admitted; its port names."""
        while True:
            self.pods += 1
            pod = f"soak-{self.pods:06d}"
            try:
                found = await self.node.kubelet.admit_pod(
                    pod, containers=[Container("app", {resource: 1})]
                )
            except AdmissionError as error:
                self.failures[failure_kind(error.message)] += 1
                continue
            self.live.append(pod)
            return {
                entry["xpu"]["bridgePort"].rsplit("/", 1)[-1]
                for assignment in found
                for name, value in assignment.response.envs.items()
                if name.endswith("_INFO")
                for entry in json.loads(value).values()
            }

    async def phase(self, group: int, budget: int) -> None:
        """Up to `budget` pods on the group's devices, then all of them deleted."""
        pending = self.pending[group]
        try:
            await wait_until(
                lambda: not pending & self.node.agent.ports.keys(), QUIET_TIMEOUT, interval=0.01
            )
        except TimeoutError:
            raise AssertionError(
                f"{self.backend}: ports {sorted(pending & self.node.agent.ports.keys())} "
                f"not released within {QUIET_TIMEOUT:g} s\n{self.log_tail()}"
            ) from None
        ports: set[str] = set()
        for resource, count in self.groups[group].items():
            for _ in range(min(count, budget - len(self.live))):
                ports |= await self.admit(resource)
        self.delete_all()
        self.pending[group] = ports

    def delete_all(self) -> None:
        for pod in self.live:
            self.node.kubelet.delete_pod(pod)
        self.cycles += len(self.live)
        self.live.clear()

    async def quiet(self) -> None:
        """Faults off, every port released and gone from the agent, no device-info file
        left, and no device allocated in the daemon's view: the same state at every sample."""
        self.node.agent.clear_faults()
        try:
            await wait_until(
                lambda: not self.node.agent.ports and not self.devinfo_files(),
                QUIET_TIMEOUT,
                interval=0.05,
            )
        except TimeoutError:
            raise AssertionError(
                f"{self.backend}: after {self.cycles} cycles, ports "
                f"{sorted(self.node.agent.ports)} and device-info files "
                f"{self.devinfo_files()} stay\n{self.log_tail()}"
            ) from None
        await wait_until(self.daemon_idle, QUIET_TIMEOUT, interval=0.05)

    async def daemon_idle(self) -> bool:
        metrics = await self.daemon.metrics()
        return not any(v for series, v in metrics.items() if 'state="allocated"' in series)

    def devinfo_files(self) -> list[str]:
        return sorted(p.name for p in self.node.devinfo_dir.glob("*"))

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.daemon.log.read_text(errors="replace").splitlines()[-lines:])

    async def run(self, total: int) -> None:
        next_sample = min(SAMPLE_EVERY, total)
        self.faults_on()
        group = 0
        while self.cycles < total:
            await self.phase(group, total - self.cycles)
            group = 1 - group
            if self.cycles >= next_sample:
                await self.quiet()
                self.samples.append(await self.daemon.sample(self.cycles))
                print(f"{self.backend}: {self.samples[-1].text()}", flush=True)
                next_sample = min(next_sample + SAMPLE_EVERY, total)
                self.faults_on()


def failure_kind(message: str) -> str:
    for marker in ("UNKNOWN", "UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL"):
        if marker in message:
            return marker
    if "healthy devices" in message or "unavailable for" in message:
        return "NO_DEVICES"
    return message[:60]


async def make_node(backend: str, root: Path) -> Node:
    """32 VFs and 2 SFs per PF, the pools in two groups (see GROUPS), quick release."""
    sysfs = build_node(root / "sys", pfs=2, vfs_per_pf=32, sfs_per_pf=2)
    kubelet = SimKubelet(root / "dp", root / "pr.sock")
    if backend == OPI:
        agent = SimHostAgent(
            [BRIDGES + name for name in ("red", "blue-a", "blue-b", "green")],
            up_delay=0.002,
            delete_delay=0.002,
            seed=9,
        )
        await agent.start(f"unix://{root}/agent.sock")
        await kubelet.start()
        raw = node_config(root, release=RELEASE)
        red = next(r for r in raw["resourceList"] if r["resourceName"] == "red")
        red["selectors"] = [{"pfNames": ["ens1f0"]}]
        blue = next(r for r in raw["resourceList"] if r["resourceName"] == "blue")
        blue["selectors"] = [{"pfNames": ["ens1f1"]}]
        return Node(root, sysfs, agent, kubelet, raw)
    vsp = SimVendorPlugin(interfaces=INTERFACES, seed=9)
    await vsp.start(f"unix://{root}/vsp.sock")
    await kubelet.start()
    raw = vsp_node_config(root, release=RELEASE)
    raw["resourceList"] = [
        {
            "resourceName": "red",
            "selectors": [{"pfNames": ["ens1f0"]}],
            "bridgePort": {"vlan": 10},
        },
        {
            "resourceName": "blue",
            "selectors": [{"pfNames": ["ens1f1"]}],
            "bridgePort": {"vlan": 20},
        },
    ]
    return VspNode(root, sysfs, vsp, kubelet, raw)


@pytest.mark.parametrize("backend", [OPI, VSP])
async def test_soak_allocate_release_cycles_leak_nothing(
    backend: str, short_root: Path, record: list[Any]
) -> None:
    total = int(os.environ.get("XPU_BRIDGE_SOAK_CYCLES", CYCLES[backend]))
    groups = GROUPS[backend]
    node = await make_node(backend, short_root)
    daemon = SoakDaemon(node, {**groups[0], **groups[1]})
    soak = Soak(backend, node, daemon, groups)
    began = time.monotonic()
    try:
        await daemon.start()
        await soak.run(total)
        seconds = time.monotonic() - began
        figures = await daemon.metrics()
        log = daemon.log.read_text(errors="replace")
        code = await daemon.stop()
    finally:
        await daemon.stop()
        await node.kubelet.stop()
        await node.agent.stop()

    baseline = next(s for s in soak.samples if s.cycle >= min(BASELINE_CYCLE, total))
    end = soak.samples[-1]
    growth = (end.rss_kib - baseline.rss_kib) / baseline.rss_kib
    outcome = (
        f"{soak.cycles:,} cycles in {seconds:.0f} s, "
        f"{sum(soak.failures.values())} admissions failed {dict(soak.failures)}; "
        f"RSS {growth:+.1%} (cycle {baseline.cycle:,} to {end.cycle:,}: "
        f"{baseline.rss_kib / 1024:.1f} to {end.rss_kib / 1024:.1f} MiB), "
        f"fds {baseline.fds} to {end.fds}, tasks {baseline.tasks} to {end.tasks}; "
        f"{figures.get('xpu_bridge_releases_total', 0):.0f} releases, "
        f"{figures.get('xpu_bridge_opi_requests_total', 0):.0f} agent calls"
    )
    print(f"{backend} soak: {outcome}")
    for sample in soak.samples:
        print(f"  {sample.text()}")
    assert code == 0, f"{outcome}: daemon exited {code} on SIGTERM\n{soak.log_tail()}"
    assert "Traceback" not in log, f"{outcome}\n{log[-5000:]}"
    assert soak.cycles == total, outcome
    assert soak.failures.keys() <= {"UNKNOWN"}, outcome
    assert sum(soak.failures.values()) < total * ERROR_RATE * 3, outcome
    assert growth < MAX_RSS_GROWTH, outcome
    assert end.fds == baseline.fds, outcome
    assert end.tasks == baseline.tasks, outcome
    assert figures["xpu_bridge_releases_total"] >= soak.cycles, outcome
    record.append(
        FaultResult(
            fault="soak: allocate/release cycles, 5% agent errors",
            backend=backend,
            runs=soak.cycles,
            outcome=outcome,
        )
    )
