"""Operating it: /metrics series and values, /healthz, /readyz, /debug/state and `status`."""

from __future__ import annotations

import asyncio
import json
import sys

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from simnode import BLUE, RED, Node, eventually

from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2 as dp
from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from xpu_bridge.common.version import package_version
from xpu_bridge.kubelet.endpoint import socket_name
from xpu_bridge.sim.kubelet import AdmissionError, Container


async def http_get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = await http_get(port, "/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def ops_node(node: Node) -> Node:
    node.metrics_address = "127.0.0.1:0"
    node.raw_config["release"] = {"intervalSeconds": 0.2, "graceSeconds": 0.3, "holdoffSeconds": 1}
    node.raw_config["hostAgent"]["unhealthyAfterSeconds"] = 0.5
    return node


async def test_metrics_readiness_and_state_through_a_day_of_work(ops_node: Node) -> None:
    node = ops_node
    daemon = await node.start_daemon()
    port = daemon.ops.port
    assert await http_get(port, "/healthz") == (200, "ok\n")
    await eventually(lambda: daemon.status.not_ready() is None)
    assert await http_get(port, "/readyz") == (200, "ready\n")

    await node.kubelet.admit_pod("web", containers=[Container("c", {RED: 1})])
    await node.kubelet.admit_pod("db", containers=[Container("c", {BLUE: 1})])
    async with grpc.aio.insecure_channel(f"unix://{node.kubelet_dir / socket_name(RED)}") as ch:
        with pytest.raises(grpc.aio.AioRpcError):
            await dp_grpc.DevicePluginStub(ch).Allocate(
                dp.AllocateRequest(
                    container_requests=[dp.ContainerAllocateRequest(devices_ids=["nope"])]
                )
            )
    await asyncio.sleep(0.3)
    node.kubelet.delete_pod("web")
    await eventually(lambda: daemon.reconciler.stats.releases[(RED, "unheld")] == 1)

    samples = await scrape(port)
    assert value(samples, "xpu_bridge_allocations_total", resource=RED, result="success") == 1
    assert (
        value(samples, "xpu_bridge_allocations_total", resource=RED, result="unknown_device") == 1
    )
    assert value(samples, "xpu_bridge_allocations_total", resource=BLUE, result="success") == 1
    assert value(samples, "xpu_bridge_allocate_duration_seconds_count", resource=RED) == 2
    assert (
        value(samples, "xpu_bridge_allocate_duration_seconds_bucket", resource=RED, le="30.0") == 2
    )
    assert ("xpu_bridge_allocate_duration_seconds_bucket",
            (("le", "0.001"), ("resource", RED))) in samples  # fmt: skip
    assert (
        value(samples, "xpu_bridge_opi_requests_total", method="CreateBridgePort", code="OK") == 2
    )
    assert (
        value(samples, "xpu_bridge_opi_requests_total", method="DeleteBridgePort", code="OK") == 1
    )
    assert (
        value(samples, "xpu_bridge_opi_request_duration_seconds_count", method="CreateBridgePort")
        == 2
    )
    assert value(samples, "xpu_bridge_releases_total", resource=RED, reason="unheld") == 1
    assert value(samples, "xpu_bridge_release_held_back_total", guard="mass_release") == 0
    assert value(samples, "xpu_bridge_kubelet_registrations_total", resource=RED) == 1
    assert value(samples, "xpu_bridge_devices", resource=RED, state="allocated") == 0
    assert value(samples, "xpu_bridge_devices", resource=RED, state="free") == 12
    assert value(samples, "xpu_bridge_devices", resource=BLUE, state="allocated") == 1
    assert value(samples, "xpu_bridge_devices", resource=BLUE, state="free") == 3
    assert value(samples, "xpu_bridge_host_agent_up") == 1
    assert value(samples, "xpu_bridge_ready") == 1
    assert value(samples, "xpu_bridge_build_info", version=package_version()) == 1

    await node.agent.stop()
    await eventually(lambda: daemon.status.not_ready() is not None, timeout=15)
    status, body = await http_get(port, "/readyz")
    assert status == 503
    assert body == f"host agent unix://{node.root}/agent.sock unreachable\n"
    await eventually(lambda: all(d.health == "Unhealthy" for d in node.kubelet.devices(RED)))
    samples = await scrape(port)
    assert value(samples, "xpu_bridge_host_agent_up") == 0
    assert value(samples, "xpu_bridge_ready") == 0
    assert value(samples, "xpu_bridge_devices", resource=RED, state="unhealthy") == 12
    assert value(samples, "xpu_bridge_opi_requests_total", method="ListBridgePorts",
                 code="UNAVAILABLE") >= 1  # fmt: skip

    await node.agent.start()
    await eventually(lambda: daemon.status.not_ready() is None, timeout=15)
    assert (await http_get(port, "/readyz"))[0] == 200
    assert value(await scrape(port), "xpu_bridge_host_agent_up") == 1

    status, body = await http_get(port, "/debug/state")
    state = json.loads(body)
    assert state["ready"] and state["pools"][BLUE]["registered"]
    held = [d for d in state["pools"][BLUE]["devices"] if d["portState"] == "UP"]
    assert [d["port"] for d in held] == ["vf-0000-3b-0a-4"]

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "xpu_bridge.cli", "status", "--metrics-address",
        f"127.0.0.1:{port}", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    report = stdout.decode()
    assert "host agent unix://" in report and "reachable" in report
    assert "opi.io/blue: registered, 4 device(s), 1 with a port" in report


async def test_readyz_is_503_until_registered_and_404_elsewhere(ops_node: Node) -> None:
    await ops_node.kubelet.stop()
    daemon = await ops_node.start_daemon(wait=False)
    port = daemon.ops.port
    assert (await http_get(port, "/nope"))[0] == 404
    status, body = await http_get(port, "/readyz")
    assert status == 503
    assert body.startswith("not registered with the kubelet: opi.io/blue, opi.io/green, opi.io/red")
    assert (await http_get(port, "/healthz"))[0] == 200
    await ops_node.kubelet.start()
    await eventually(lambda: daemon.status.not_ready() is None, timeout=15)
    assert (await http_get(port, "/readyz"))[0] == 200


async def test_status_shows_a_port_the_moment_allocate_attached_it(node: Node) -> None:
    """Not only after the next reconcile pass (an hour away here)."""
    node.metrics_address = "127.0.0.1:0"
    node.raw_config["release"] = {"intervalSeconds": 3600}
    daemon = await node.start_daemon()
    assert daemon.ops is not None
    await eventually(lambda: daemon.status.not_ready() is None)
    (assignment,) = await node.kubelet.admit_pod("web", containers=[Container("c", {RED: 1})])
    (device,) = assignment.device_ids
    _, body = await http_get(daemon.ops.port, "/debug/state")
    (entry,) = [d for d in json.loads(body)["pools"][RED]["devices"] if d["id"] == device]
    assert entry["portState"] == "UP"
    samples = await scrape(daemon.ops.port)
    assert value(samples, "xpu_bridge_devices", resource=RED, state="allocated") == 1


def test_status_without_a_daemon_is_one_line() -> None:
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "xpu_bridge.cli", "status", "--metrics-address", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "no daemon answers at 127.0.0.1:1" in result.stderr


async def test_oversized_request_head_is_431_and_the_server_keeps_serving(ops_node: Node) -> None:
    daemon = await ops_node.start_daemon()
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.ops.port)
    writer.write(b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n")
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert raw.startswith(b"HTTP/1.1 431 ")
    assert (await http_get(daemon.ops.port, "/healthz"))[0] == 200


async def test_healthz_fails_when_a_daemon_loop_dies(ops_node: Node) -> None:
    daemon = await ops_node.start_daemon()

    async def crash() -> None:
        raise RuntimeError("boom")

    daemon.loops.spawn("reconciler", crash())
    await eventually(lambda: daemon.status.not_live() is not None)
    status, body = await http_get(daemon.ops.port, "/healthz")
    assert status == 503
    assert body == "reconciler loop stopped: RuntimeError('boom')\n"


async def test_a_run_of_failing_creates_makes_the_node_not_ready(ops_node: Node) -> None:
    ops_node.raw_config["hostAgent"]["failingCreatesUnready"] = 3
    daemon = await ops_node.start_daemon()
    port = daemon.ops.port
    await eventually(lambda: daemon.status.not_ready() is None)
    ops_node.agent.set_error_rate(
        "CreateBridgePort", 1.0, grpc.StatusCode.INVALID_ARGUMENT, "simulated refusal"
    )
    for index in range(3):
        with pytest.raises(AdmissionError):
            await ops_node.kubelet.admit_pod(f"p{index}", containers=[Container("c", {RED: 1})])
    reason = daemon.status.not_ready()
    assert (
        reason is not None and "refuses ports: the last 3 CreateBridgePort calls failed" in reason
    )
    assert "INVALID_ARGUMENT" in reason
    status, body = await http_get(port, "/readyz")
    assert status == 503 and "refuses ports" in body
    assert value(await scrape(port), "xpu_bridge_host_agent_failing_creates") == 3
    ops_node.agent.clear_faults()
    await ops_node.kubelet.admit_pod("ok", containers=[Container("c", {RED: 1})])
    assert daemon.status.not_ready() is None
    assert value(await scrape(port), "xpu_bridge_host_agent_failing_creates") == 0


async def test_debug_state_answers_loopback_only_unless_told_otherwise(ops_node: Node) -> None:
    daemon = await ops_node.start_daemon()
    assert (await http_get(daemon.ops.port, "/debug/state"))[0] == 200  # from 127.0.0.1
    refused = daemon.ops.route("GET", "/debug/state", local=False)
    assert refused.status == 403 and b"loopback only" in refused.body
    assert daemon.ops.route("GET", "/metrics", local=False).status == 200
    assert daemon.ops.route("GET", "/readyz", local=False).status in (200, 503)


@pytest.mark.parametrize(
    ("peer", "local"),
    [
        (("127.0.0.1", 5000), True),
        (("127.8.9.10", 5000), True),
        (("::1", 5000, 0, 0), True),
        (("::ffff:127.0.0.1", 5000, 0, 0), True),
        (("10.0.0.7", 5000), False),
        (("::ffff:10.0.0.7", 5000, 0, 0), False),
        (("fe80::1%eth0", 5000, 0, 2), False),
        (None, False),
        ("garbage", False),
    ],
)
def test_who_counts_as_loopback(peer: object, local: bool) -> None:
    from xpu_bridge.ops.http import _loopback

    assert _loopback(peer) is local
