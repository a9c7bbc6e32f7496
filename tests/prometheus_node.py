"""A real Prometheus scraping a real `xpu-bridge run` on a simulated node, for the tests of the
exported series, the rules and the dashboard (tests/test_prometheus.py, tests/test_dashboard.py).

The simulated kubelet and host agent run in an event loop of their own thread, so they answer
the daemon (a subprocess, as on a node) between the tests too; Prometheus is Debian's binary.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import yaml
from prometheus_client.parser import text_string_to_metric_families
from simnode import BLUE, GREEN, RED, Node, started_node

from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2 as dp
from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from xpu_bridge.kubelet.endpoint import socket_name
from xpu_bridge.sim.kubelet import Container

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MONITORING = ROOT / "manifests" / "monitoring"
RULES = MONITORING / "xpu-bridge.rules.yaml"
DASHBOARD = MONITORING / "dashboard.json"
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
JOB = "xpu-bridge"
NODE_NAME = "sim-node"
TARGET_LABELS = frozenset({"job", "instance", "node"})
"""What the scrape config adds to every series, as servicemonitor.yaml does."""
SERIES_ENTRY = re.compile(r"`(xpu_bridge_\w+)(?:\{([\w,]*)\})?`")

T = TypeVar("T")


def documented_series() -> dict[str, frozenset[str]]:
    """Series name -> labels, from the README's "Series:" list in "Running it on a node": the
    list operators read is the one the tests hold the daemon to."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("\n## Running it on a node") :]
    section = section[: section.index("\n## ", 1)]
    assert "Series:" in section, "README.md's 'Running it on a node' lost its 'Series:' list"
    listing = section[section.index("Series:") :].split("\n\n", 1)[0]
    series = {
        name: frozenset(label for label in (labels or "").split(",") if label)
        for name, labels in SERIES_ENTRY.findall(listing)
    }
    assert len(series) >= 10, f"too few series parsed from README.md: {sorted(series)}"
    return series


def documented_values(series: str) -> set[str]:
    """The backquoted words of the parentheses right after `series` in the "Series:" list:
    the label values documented for it (`result` of allocations, `reason` of releases)."""
    text = README.read_text(encoding="utf-8")
    match = re.search(re.escape(series) + r"\{[\w,]*\}`\s*\(([^)]*)\)", text)
    assert match is not None, f"README.md documents no values for {series}"
    return set(re.findall(r"`(\w+)`", match.group(1)))


def free_port() -> int:
    """A loopback port nobody listens on now (the OS picks it; a race is possible but rare)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def http_get(url: str, timeout: float = 10.0) -> tuple[int, str]:
    """Status and body; an HTTP error status is returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def poll(
    what: str, predicate: Callable[[], bool], timeout: float, diagnose: Callable[[], str]
) -> None:
    """Wait until predicate() holds; generous timeouts, since the machine is shared."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s\n{diagnose()}")
        time.sleep(0.25)


class LoopThread:
    """An asyncio loop in a thread of its own, serving the simulators while tests run."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="sim-loop", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def call(self, function: Callable[[], T], timeout: float = 10.0) -> T:
        """function() in the loop's thread: the simulators' state is the loop's alone."""

        async def inside() -> T:
            return function()

        return self.run(inside(), timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)
        self.loop.close()


class PrometheusError(AssertionError):
    """The query API refused a query (it does not parse) or failed evaluating it."""


@dataclass
class Prometheus:
    """Debian's `prometheus` on loopback, scraping one target every second as job xpu-bridge
    with the rules file loaded (evaluated every second)."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    @classmethod
    def start(cls, directory: Path, target: str) -> Prometheus:
        assert PROMETHEUS is not None
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {
                    "job_name": JOB,
                    "static_configs": [{"targets": [target], "labels": {"node": NODE_NAME}}],
                }
            ],
        }
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
        address = f"127.0.0.1:{free_port()}"
        log = directory / "prometheus.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={directory / 'prometheus.yml'}",
                    f"--storage.tsdb.path={directory / 'data'}",
                    f"--web.listen-address={address}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        prometheus = cls(process, f"http://{address}", log)
        try:
            poll("Prometheus ready", prometheus.ready, 90, prometheus.log_tail)
        except BaseException:
            prometheus.stop()
            raise
        return prometheus

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited {self.process.returncode}\n{self.log_tail()}")
        try:
            return http_get(self.url + "/-/ready", timeout=2)[0] == 200
        except OSError:
            return False

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def api(self, path: str, **params: str | list[str]) -> Any:
        """`data` of a /api/v1 answer; PrometheusError with Prometheus' own error otherwise."""
        query = urllib.parse.urlencode(params, doseq=True)
        status, body = http_get(f"{self.url}/api/v1/{path}?{query}", timeout=30)
        answer = json.loads(body)
        if status != 200 or answer.get("status") != "success":
            raise PrometheusError(
                f"{path} {params}: {answer.get('errorType')}: {answer.get('error')}"
            )
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query at now: its vector (a scalar comes as one unlabelled sample)."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def values(self, expr: str, *by: str) -> dict[tuple[str, ...], float]:
        """The instant vector of `expr` as {values of the `by` labels: sample value}."""
        found: dict[tuple[str, ...], float] = {}
        for sample in self.query(expr):
            key = tuple(sample["metric"].get(label, "") for label in by)
            assert key not in found, f"{expr}: two samples for {key}; group by more labels"
            found[key] = float(sample["value"][1])
        return found

    def value(self, expr: str) -> float | None:
        """The one sample of `expr`, or None when it has none."""
        found = self.values(expr)
        return found.get((), None)

    def stop(self) -> None:
        stop_process(self.process)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 30 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(30)
    if process.poll() is None:
        process.kill()
        process.wait(30)


# --- the node and its scenario -----------------------------------------------------------


@dataclass
class ScrapedNode:
    """What the scenario did, for the tests to hold Prometheus' answers against."""

    prometheus: Prometheus
    metrics_url: str
    capacity: dict[str, int]
    """Pool -> devices it has."""
    allocations: dict[tuple[str, str], int]
    """(pool, result) -> Allocates the kubelet made with that result."""
    held: dict[str, int]
    """Pool -> devices the pods still running hold."""
    config_sha256: str
    started: float
    """time.time() when Prometheus started scraping."""
    daemon_log: Path

    def window(self) -> str:
        """A range that covers the whole scenario, for rate() and *_over_time()."""
        return f"{int(time.time() - self.started) + 60}s"

    def daemon_metrics(self) -> str:
        status, body = http_get(self.metrics_url)
        assert status == 200, body
        return body

    def daemon_sample(self, name: str, **labels: str) -> float | None:
        """One sample of the daemon's /metrics, as the daemon answers now."""
        for family in text_string_to_metric_families(self.daemon_metrics()):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return None

    def daemon_has(self, name: str, value: float, **labels: str) -> Callable[[], bool]:
        """Whether the daemon's /metrics has that sample at that value now."""
        return lambda: self.daemon_sample(name, **labels) == value

    def prometheus_has(self, *checks: tuple[str, float | None]) -> Callable[[], bool]:
        """Whether every query answers its value now (None: no sample)."""
        return lambda: all(self.prometheus.value(expr) == value for expr, value in checks)

    def wait(self, what: str, predicate: Callable[[], bool], timeout: float = 90) -> None:
        poll(what, predicate, timeout, self.diagnose)

    def diagnose(self) -> str:
        daemon = "\n".join(self.daemon_log.read_text(errors="replace").splitlines()[-30:])
        return f"--- daemon log\n{daemon}\n--- prometheus log\n{self.prometheus.log_tail()}"


async def _build_node(root: Path) -> Node:
    """The `node` fixture's node (tests/simnode.py) with quick releases, a quick Unhealthy,
    and one prewarmed port on blue; made in the loop that serves it."""
    node = await started_node(root)
    raw = node.raw_config
    raw["release"] = {"intervalSeconds": 0.2, "graceSeconds": 0.3, "holdoffSeconds": 1}
    raw["hostAgent"]["unhealthyAfterSeconds"] = 0.5
    (blue,) = [pool for pool in raw["resourceList"] if pool["resourceName"] == "blue"]
    blue["bridgePort"]["prewarm"] = 1
    return node


async def _allocate_unknown_device(kubelet_dir: Path, resource: str) -> None:
    """An Allocate of a device the pool does not have, as a confused kubelet would send."""
    async with grpc.aio.insecure_channel(f"unix://{kubelet_dir / socket_name(resource)}") as ch:
        request = dp.AllocateRequest(
            container_requests=[dp.ContainerAllocateRequest(devices_ids=["nope"])]
        )
        try:
            await dp_grpc.DevicePluginStub(ch).Allocate(request)
        except grpc.aio.AioRpcError:
            return
    raise AssertionError("an Allocate of an unknown device succeeded")


@contextlib.contextmanager
def scraped_node(directory: Path) -> Iterator[ScrapedNode]:
    """Start the node, the daemon and Prometheus, run the scenario (four pods admitted, one
    unknown device asked for, one pod deleted, one held port lost on the agent, the agent
    down until Prometheus has seen it and the alert pending), then yield with all of it
    still running and scraped."""
    with contextlib.ExitStack() as stack:
        root = Path(tempfile.mkdtemp(prefix="xb-", dir="/tmp"))  # unix socket paths stay short
        stack.callback(shutil.rmtree, root, ignore_errors=True)
        loop = LoopThread()
        stack.callback(loop.close)
        node = loop.run(_build_node(root))
        stack.callback(loop.run, node.close())

        port = free_port()
        command = [
            f"127.0.0.1:{port}" if arg == "127.0.0.1:0" else arg for arg in node.run_command()
        ]
        config_sha256 = hashlib.sha256((root / "config.yaml").read_bytes()).hexdigest()
        daemon_log = root / "daemon.log"
        with daemon_log.open("wb") as out:
            daemon = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=out)
        stack.callback(stop_process, daemon)

        def daemon_log_tail() -> str:
            lines = daemon_log.read_text(errors="replace").splitlines()[-40:]
            return f"daemon exit code {daemon.poll()}\n" + "\n".join(lines)

        kubelet = node.kubelet
        for resource in node.resources:
            try:
                loop.run(kubelet.wait_registered(resource, timeout=90), timeout=100)
                loop.run(
                    kubelet.wait_for_devices(
                        resource,
                        lambda ds: bool(ds) and all(d.health == "Healthy" for d in ds),
                        timeout=90,
                    ),
                    timeout=100,
                )
            except TimeoutError:
                raise AssertionError(f"{resource} never served\n{daemon_log_tail()}") from None
        capacity = {}
        for resource in node.resources:
            devices = loop.call(functools.partial(kubelet.devices, resource))
            capacity[resource] = len(devices)

        started = time.time()
        prometheus = Prometheus.start(directory, f"127.0.0.1:{port}")
        stack.callback(prometheus.stop)
        scraped = ScrapedNode(
            prometheus,
            f"http://127.0.0.1:{port}/metrics",
            capacity,
            {},
            {},
            config_sha256,
            started,
            daemon_log,
        )
        daemon_has, prometheus_has = scraped.daemon_has, scraped.prometheus_has
        wait = scraped.wait
        up = f'up{{job="{JOB}"}}'
        wait("the daemon scraped", prometheus_has((up, 1)))
        wait("a prewarmed port on blue", daemon_has("xpu_bridge_prewarmed_ports", 1, resource=BLUE))

        pods = {"web": RED, "db": RED, "cache": BLUE, "sf": GREEN}
        for pod, resource in pods.items():
            loop.run(kubelet.admit_pod(pod, containers=[Container("c", {resource: 1})]))
            key = (resource, "success")
            scraped.allocations[key] = scraped.allocations.get(key, 0) + 1
        loop.run(_allocate_unknown_device(node.kubelet_dir, RED))
        scraped.allocations[(RED, "unknown_device")] = 1

        loop.call(functools.partial(kubelet.delete_pod, "web"))
        del pods["web"]
        scraped.held = {resource: list(pods.values()).count(resource) for resource in capacity}
        wait(
            "web's device released",
            daemon_has("xpu_bridge_releases_total", 1, resource=RED, reason="unheld"),
        )

        (db,) = loop.call(functools.partial(kubelet.assignments, pod="db"))
        port_id = "vf-" + db.device_ids[0].replace(":", "-").replace(".", "-")
        loop.run(node.agent_client_delete(loop.call(lambda: node.agent.ports[port_id].name)))
        wait("db's lost port repaired", daemon_has("xpu_bridge_repairs_total", 1, resource=RED))
        wait("blue prewarmed again", daemon_has("xpu_bridge_prewarmed_ports", 1, resource=BLUE))
        wait(
            "Prometheus has the scenario",
            prometheus_has(
                ("sum(xpu_bridge_allocations_total)", sum(scraped.allocations.values())),
                ("sum(xpu_bridge_repairs_total)", 1),
                ("sum(xpu_bridge_releases_total)", 1),
                ("sum(xpu_bridge_allocations_prewarmed_total)", 1),
            ),
        )

        alert = 'ALERTS{alertname="XpuBridgeHostAgentDown"}'
        pending = 'ALERTS{alertname="XpuBridgeHostAgentDown", alertstate="pending"}'
        unhealthy = 'sum(xpu_bridge_devices{state="unhealthy"})'
        loop.run(node.agent.stop())
        wait(
            "the outage seen, the alert pending",
            prometheus_has(
                ("xpu_bridge_host_agent_up", 0),
                (unhealthy, sum(capacity.values())),
                (f"count({pending})", 1),
            ),
        )
        loop.run(node.agent.start())
        wait(
            "the agent back, the alert gone",
            prometheus_has(
                ("xpu_bridge_host_agent_up", 1), (unhealthy, 0), (up, 1), (f"count({alert})", None)
            ),
        )
        yield scraped
