"""Churn: 500 pods admitted and deleted under agent faults, one agent restart, one kubelet
restart and one daemon kill -9. At the end every owned port belongs to a held device, every
held device has an UP port with its spec, and no device was ever given to two live pods.

Everything is real except the node: the simulated agent and kubelet serve real unix sockets
and the daemon is a `python -m xpu_bridge.cli run` subprocess. The pod plan, the fault points
and the agent's error dice come from one seed (XPU_BRIDGE_CHURN_SEED overrides the default);
the daemon's own timing and retry jitter are not seeded, so a seed replays the same plan, not
the same interleaving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from daemon_process import DaemonProcess, all_healthy
from invariants import pod_resources_held
from simnode import BLUE, BRIDGES, GREEN, RED, Node, node_config

from opi_protos.evpn_gw import l2_xpu_infra_mgr_pb2 as opi
from xpu_bridge.common.pci import mac_text
from xpu_bridge.config import Config, parse_config
from xpu_bridge.hostagent.port_ids import parse_port_id
from xpu_bridge.hostagent.ports import PortSpec
from xpu_bridge.node.inventory import discover
from xpu_bridge.node.pool import env_name, port_spec
from xpu_bridge.node.selection import assign
from xpu_bridge.sim.host_agent import SimHostAgent
from xpu_bridge.sim.kubelet import AdmissionError, Assignment, Container, SimKubelet
from xpu_bridge.sim.polling import wait_until
from xpu_bridge.sim.sysfs import build_node

SEED = int(os.environ.get("XPU_BRIDGE_CHURN_SEED", "20250611"))
PODS = 500
MAX_LIVE = 10
RESOURCES = (RED, BLUE, GREEN)
CAPACITY = {RED: 12, BLUE: 4, GREEN: 4}
# What the daemon calls on the agent; health and reflection it never uses.
OPI_METHODS = (
    "CreateBridgePort",
    "GetBridgePort",
    "DeleteBridgePort",
    "ListBridgePorts",
    "GetLogicalBridge",
)
ERROR_RATE = 0.10
HARD_FAULTS = 5  # CreateBridgePort answers UNKNOWN (a validation error): never retried
RELEASE = {"intervalSeconds": 0.2, "graceSeconds": 0.3, "holdoffSeconds": 1.0}
AGENT_DOWNTIME = 0.3
PR_EMPTY_FOR = 0.5
CONVERGE_TIMEOUT = 30.0
REPAIR_ALLOWANCE = 3.0  # after the agent restart: passes, retries and hard faults included
PTYPES = {"access": opi.BRIDGE_PORT_TYPE_ACCESS, "trunk": opi.BRIDGE_PORT_TYPE_TRUNK}

Key = tuple[str, str]  # (resource, device ID)


@dataclass(frozen=True)
class PodPlan:
    name: str
    init: tuple[Container, ...]
    containers: tuple[Container, ...]

    @property
    def plain_init(self) -> set[str]:
        return {c.name for c in self.init if not c.sidecar}

    def need(self) -> Counter[str]:
        """Devices the pod holds per resource: plain init containers only reuse."""
        total: Counter[str] = Counter()
        for container in (*(c for c in self.init if c.sidecar), *self.containers):
            total.update(container.requests)
        return total


def make_pod(rng: random.Random, index: int) -> PodPlan:
    """1-2 devices of one resource, or one device each of two; some pods have a plain init
    container that reuses (part of) the app container's devices, a few a sidecar."""
    first = rng.choices(RESOURCES, weights=(6, 2, 2))[0]
    if rng.random() < 0.15:
        second = rng.choice([r for r in RESOURCES if r != first])
        if rng.random() < 0.5:
            containers: tuple[Container, ...] = (Container("app", {first: 1, second: 1}),)
        else:
            containers = (Container("app", {first: 1}), Container("helper", {second: 1}))
    else:
        containers = (Container("app", {first: 2 if rng.random() < 0.3 else 1}),)
    init: tuple[Container, ...] = ()
    roll = rng.random()
    if roll < 0.25:
        init = (Container("init", {first: rng.randint(1, containers[0].requests[first])}),)
    elif roll < 0.30:
        init = (Container("sidecar", {rng.choice((RED, GREEN)): 1}, sidecar=True),)
    return PodPlan(f"churn-{index:03d}", init, containers)


def expected_specs(root: Path, config: Config) -> dict[Key, PortSpec]:
    """The spec each device's port must have, as the pools compute it from sysfs."""
    assignment = assign(config, discover(root / "sys").devices)
    specs: dict[Key, PortSpec] = {}
    for resource in config.resource_list:
        name = config.full_resource_name(resource)
        for device in assignment.pools.get(name, ()):
            specs[(name, device.id)] = port_spec(device, resource, config.port_id_prefix)
    return specs


@dataclass
class Churn:
    """The test's own record of what the kubelet gave to whom, and what went wrong."""

    specs: dict[Key, PortSpec]
    raw_config: dict[str, Any]
    holder: dict[Key, str] = field(default_factory=dict)
    live: dict[str, PodPlan] = field(default_factory=dict)
    devices_of: dict[str, set[Key]] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    outages: dict[tuple[Key, str], str] = field(default_factory=dict)
    failures: Counter[str] = field(default_factory=Counter)
    admitted: int = 0

    def free(self, resource: str) -> int:
        return CAPACITY[resource] - sum(1 for res, _ in self.holder if res == resource)

    def fits(self, plan: PodPlan) -> bool:
        """The scheduler's check: never place a pod the node cannot hold."""
        return all(self.free(res) >= n for res, n in plan.need().items())

    def violation(self, index: int, text: str) -> None:
        self.violations.append(f"pod #{index}: {text}")

    def check_answer(self, index: int, plan: PodPlan, found: list[Assignment]) -> set[Key]:
        """Env and device-info answers name exactly the devices the kubelet recorded, each
        with its own port; containers of one pod share devices only by init reuse."""
        listed: dict[str, set[Key]] = {}
        init_devices: set[Key] = set()
        for a in found:
            container = next(c for c in (*plan.init, *plan.containers) if c.name == a.container)
            if len(a.device_ids) != container.requests.get(a.resource_name, 0):
                self.violation(index, f"{a.container} got {a.device_ids} for {a.resource_name}")
            self._check_envs(index, a)
            keys = {(a.resource_name, d) for d in a.device_ids}
            if a.container in plan.plain_init:
                init_devices |= keys
                continue
            for other, theirs in listed.items():
                if keys & theirs:
                    self.violation(index, f"{a.container} and {other} share {keys & theirs}")
            listed.setdefault(a.container, set()).update(keys)
        devices = set().union(*listed.values()) if listed else set()
        if not init_devices <= devices:
            self.violation(index, f"init devices {init_devices - devices} not reused")
        return devices

    def _check_envs(self, index: int, a: Assignment) -> None:
        envs = dict(a.response.envs)
        name = env_name(a.resource_name)
        if sorted(envs.get(name, "").split(",")) != sorted(a.device_ids):
            self.violation(index, f"{name}={envs.get(name)!r} but kubelet gave {a.device_ids}")
        info = json.loads(envs.get(f"{name}_INFO", "{}"))
        if sorted(info) != sorted(a.device_ids):
            self.violation(index, f"{name}_INFO names {sorted(info)}, not {a.device_ids}")
        for device_id, entry in info.items():
            spec = self.specs.get((a.resource_name, device_id))
            xpu = entry.get("xpu", {})
            if spec is None or xpu.get("bridgePort", "").rsplit("/", 1)[-1] != spec.port_id:
                self.violation(index, f"{device_id}: answer names port {xpu.get('bridgePort')}")
            elif xpu.get("mac") != mac_text(spec.mac):
                self.violation(index, f"{device_id}: answer has MAC {xpu.get('mac')}")

    def admitted_ok(self, index: int, plan: PodPlan, found: list[Assignment]) -> set[Key]:
        devices = self.check_answer(index, plan, found)
        for key in sorted(devices):
            other = self.holder.get(key)
            if other is not None:
                self.violation(index, f"{key} given to {plan.name} while {other} holds it")
            self.holder[key] = plan.name
        self.live[plan.name] = plan
        self.devices_of[plan.name] = devices
        self.admitted += 1
        return devices

    def deleted(self, name: str) -> None:
        del self.live[name]
        for key in self.devices_of.pop(name):
            if self.holder.get(key) == name:
                del self.holder[key]

    def check_held_ports(self, agent: SimHostAgent, index: int) -> None:
        """A device a live pod holds keeps an UP port: record the first time it does not."""
        ports = agent.ports
        for key, pod in self.holder.items():
            port = ports.get(self.specs[key].port_id)
            if port is not None and port.status.oper_status == opi.BP_OPER_STATUS_UP:
                continue
            state = "missing" if port is None else opi.BPOperStatus.Name(port.status.oper_status)
            self.outages.setdefault(
                (key, pod),
                f"{pod} holds {key} but its port {self.specs[key].port_id} is {state} "
                f"(seen at pod #{index}, t={time.monotonic():.3f})",
            )

    def final_problems(self, agent: SimHostAgent, held: set[Key], devinfo_dir: Path) -> list[str]:
        """The two port invariants, from the agent's state and PodResources; and every held
        device still has the device-info file that names it."""
        problems: list[str] = []
        if held != set(self.holder):
            problems.append(
                f"PodResources holds {sorted(held - set(self.holder))} the test never saw given, "
                f"misses {sorted(set(self.holder) - held)}"
            )
        by_port = {spec.port_id: key for key, spec in self.specs.items()}
        ports = agent.ports
        for port_id in sorted(ports):
            if parse_port_id(port_id) is None:
                continue
            key = by_port.get(port_id)
            if key not in held:
                problems.append(f"owned port {port_id} ({key}) belongs to no held device")
        wanted = {
            f"{self.raw_config.get('resourcePrefix', 'opi.io')}/{r['resourceName']}": r
            for r in self.raw_config["resourceList"]
        }
        for key in sorted(held):
            spec = self.specs[key]
            port = ports.get(spec.port_id)
            if port is None:
                problems.append(f"held {key} has no port {spec.port_id}")
                continue
            if port.status.oper_status != opi.BP_OPER_STATUS_UP:
                status = opi.BPOperStatus.Name(port.status.oper_status)
                problems.append(f"held {key}: port {spec.port_id} is {status}")
            bridge_port = wanted[key[0]]["bridgePort"]
            if (
                bytes(port.spec.mac_address) != spec.mac
                or port.spec.ptype != PTYPES[bridge_port["type"]]
                or sorted(port.spec.logical_bridges) != sorted(bridge_port["logicalBridges"])
                or sorted(port.spec.logical_bridges) != sorted(spec.logical_bridges)
            ):
                problems.append(f"held {key}: port {spec.port_id} has spec {port.spec}")
        for resource, device_id in sorted(held):
            path = devinfo_dir / devinfo_name(resource, device_id)
            text = path.read_text() if path.exists() else ""
            if f'"{device_id}"' not in text:
                problems.append(f"held {(resource, device_id)}: device-info file {text!r}")
        return problems


def devinfo_name(resource: str, device_id: str) -> str:
    return f"{resource.replace('/', '-')}-{device_id}-device.json"


def failure_kind(error: AdmissionError) -> str:
    for marker in ("UNKNOWN", "UNAVAILABLE", "INTERNAL", "DEADLINE_EXCEEDED", "Unavailable"):
        if marker in error.message:
            return marker.upper()
    if "unavailable for" in error.message or "no healthy devices" in error.message:
        return "NO_DEVICES"
    return error.message[:80]


async def test_churn_500_pods_with_faults_keeps_ports_and_holders_consistent(
    short_root: Path,
) -> None:
    began = time.monotonic()
    rng = random.Random(SEED)
    root = short_root
    sysfs = build_node(root / "sys", pfs=2, vfs_per_pf=8, sfs_per_pf=2)
    raw_config = node_config(root, release=RELEASE)
    config = parse_config(raw_config)
    specs = expected_specs(root, config)
    assert Counter(res for res, _ in specs) == CAPACITY
    churn = Churn(specs, raw_config)
    where = f"seed {SEED} (XPU_BRIDGE_CHURN_SEED={SEED} reproduces the plan)"

    agent = SimHostAgent(
        [BRIDGES + name for name in ("red", "blue-a", "blue-b", "green")],
        up_delay=0.01,
        delete_delay=0.01,
        seed=rng.randrange(2**32),
    )
    await agent.start(f"unix://{root}/agent.sock")
    kubelet = SimKubelet(root / "dp", root / "pr.sock")
    await kubelet.start()
    node = Node(root, sysfs, agent, kubelet, raw_config)
    daemon = DaemonProcess(node, CAPACITY)

    # Fault points, spread over the run in a seeded order; hard faults anywhere.
    events = rng.sample(["agent_restart", "kubelet_restart", "daemon_kill"], 3)
    points = [rng.randint(90, 150), rng.randint(220, 280), rng.randint(350, 410)]
    event_at = dict(zip(points, events, strict=True))
    hard_at = set(rng.sample(range(20, PODS - 40), HARD_FAULTS))
    restart_windows: list[list[float]] = []  # [start, end] of the agent restart
    agent_restart: asyncio.Task[int] | None = None
    rejected = 0
    notes: list[str] = []
    progress = [0]

    def agent_losing_ports() -> bool:
        """From the agent restart until the repairs are surely done, held ports may be gone."""
        now = time.monotonic()
        return any(start <= now <= end + REPAIR_ALLOWANCE for start, end in restart_windows)

    async def watch_held_ports() -> None:
        while True:
            if not agent_losing_ports():
                churn.check_held_ports(agent, progress[0])
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch_held_ports())
    try:
        await daemon.start()
        for method in OPI_METHODS:
            agent.set_error_rate(method, ERROR_RATE, grpc.StatusCode.UNAVAILABLE)

        for index in range(PODS):
            progress[0] = index
            plan = make_pod(rng, index)
            # Bursts and pauses, so pods live across several reconcile passes and released
            # devices come back both while their port is still there and while it is dying.
            await asyncio.sleep(0 if rng.random() < 0.3 else rng.uniform(0.01, 0.1))
            if churn.live and rng.random() < 0.5:
                name = rng.choice(sorted(churn.live))
                kubelet.delete_pod(name)
                churn.deleted(name)
            while churn.live and (len(churn.live) >= MAX_LIVE or not churn.fits(plan)):
                name = rng.choice(sorted(churn.live))
                kubelet.delete_pod(name)
                churn.deleted(name)
            if index in hard_at:
                agent.fail_next("CreateBridgePort", 1, grpc.StatusCode.UNKNOWN)

            event = event_at.get(index)
            if event == "kubelet_restart":
                after = time.monotonic()
                await kubelet.restart(pod_resources_empty_for=PR_EMPTY_FOR)
                notes.append(f"kubelet restart at pod #{index} with {len(churn.live)} live pods")
                if churn.live:  # a pod ends while List is empty: released after the hold-off
                    name = rng.choice(sorted(churn.live))
                    kubelet.delete_pod(name)
                    churn.deleted(name)
                await all_healthy(kubelet, CAPACITY, after)
            elif event == "agent_restart":
                # A real agent keeps ports in memory: a restart loses them all (drop_state),
                # and the reconciler must give the held ones back. The restart overlaps this
                # admission on purpose.
                notes.append(f"agent restart at pod #{index} with {len(churn.live)} live pods")
                window = [time.monotonic(), float("inf")]
                restart_windows.append(window)
                agent_restart = asyncio.create_task(
                    agent.restart(drop_state=True, downtime=AGENT_DOWNTIME)
                )
                agent_restart.add_done_callback(
                    lambda _t, w=window: w.__setitem__(1, time.monotonic())
                )

            admission = asyncio.create_task(
                kubelet.admit_pod(plan.name, containers=plan.containers, init_containers=plan.init)
            )
            if event == "daemon_kill":
                # kill -9 while this pod's Allocate is in flight, when the timing allows
                calls = len(kubelet.plugin_calls)
                with contextlib.suppress(TimeoutError):
                    await wait_until(
                        lambda c=calls, a=admission: (
                            a.done()
                            or any(call.method == "Allocate" for call in kubelet.plugin_calls[c:])
                        ),
                        timeout=5,
                        interval=0.001,
                    )
                in_flight = not admission.done()
                await daemon.kill()
                notes.append(
                    f"kill -9 at pod #{index} with {len(churn.live)} live pods holding "
                    f"{len(churn.holder)} devices (admission in flight: {in_flight})"
                )
            try:
                found = await admission
            except AdmissionError as error:
                rejected += 1
                churn.failures[failure_kind(error)] += 1
                notes.append(f"pod #{index} rejected: {error.message}")
                if kubelet.assignments(pod=plan.name):
                    churn.violation(index, f"rejected ({error.message}) but has assignments")
            else:
                churn.admitted_ok(index, plan, found)
                if not agent_losing_ports():
                    churn.check_held_ports(agent, index)

            if event == "daemon_kill":
                for _ in range(rng.randint(1, 2)):  # pods end while the daemon is down
                    if churn.live:
                        name = rng.choice(sorted(churn.live))
                        kubelet.delete_pod(name)
                        churn.deleted(name)
                await daemon.start()
            if agent_restart is not None and agent_restart.done():
                await agent_restart
                restart_windows[-1][1] = time.monotonic()
                agent_restart = None
        if agent_restart is not None:
            await agent_restart
            restart_windows[-1][1] = time.monotonic()

        churned = time.monotonic()
        agent.clear_faults()
        problems: list[str] = ["not checked yet"]
        deadline = time.monotonic() + CONVERGE_TIMEOUT
        while problems and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            held = await pod_resources_held(node)
            problems = churn.final_problems(agent, held, node.devinfo_dir)
        converged = time.monotonic() - churned
        # Not an invariant: a port the xPU lost while no one held it leaves its file behind
        # until the device is allocated and released again.
        stale = sorted(
            path.name
            for path in node.devinfo_dir.glob("*-device.json")
            if path.name not in {devinfo_name(*key) for key in held}
        )

        logs = daemon.log_text()
        daemon_said = {
            what: logs.count(what)
            for what in ("released port", "repaired port", "holding back releases", "failed:")
        }
        summary = (
            f"{where}: {PODS} pods, {churn.admitted} admitted, {rejected} rejected "
            f"{dict(churn.failures)}, {len(churn.live)} live pods holding {len(held)} devices "
            f"at the end, {len(stale)} stale device-info files, "
            f"agent calls {dict(agent.calls)}, daemon log {daemon_said}, "
            f"converged in {converged:.1f}s, whole run {time.monotonic() - began:.1f}s"
        )
        print(summary, *notes, sep="\n  ")
        assert not churn.violations, f"{summary}\n" + "\n".join(churn.violations)
        assert not problems, (
            f"{summary}\nnot converged after {CONVERGE_TIMEOUT:g}s:\n"
            + "\n".join(problems)
            + f"\n{daemon.log_tail()}"
        )
        assert rejected <= PODS // 20, f"{summary}: too many admissions failed"
        assert churn.failures["NO_DEVICES"] == 0, f"{summary}: kubelet ran out of devices"
        assert not churn.outages, (
            f"{summary}\nheld devices lost their port outside the agent restart:\n"
            + "\n".join(churn.outages.values())
            + f"\n{daemon.log_tail()}"
        )
        assert len(daemon.logs) == 2 and kubelet.generation == 1, summary
        assert agent.calls["CreateBridgePort"] >= churn.admitted, summary
        assert "Traceback" not in logs, f"{summary}\n{logs[-5000:]}"
        code = await daemon.stop()
        assert code == 0, f"{summary}: daemon exited {code} on SIGTERM\n{daemon.log_tail()}"
    finally:
        watcher.cancel()
        await daemon.stop()
        if agent_restart is not None:
            with contextlib.suppress(Exception):
                await agent_restart
        await node.close()
