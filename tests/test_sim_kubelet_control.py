"""The sim-kubelet's control socket, in-process: a real daemon, kubelet and JSON-lines socket."""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from simnode import BLUE, RED, Node

from xpu_bridge.sim.kubelet.control import ControlError, ControlServer, call


@pytest.fixture
async def control(node: Node) -> AsyncIterator[Path]:
    """The node's kubelet with its control socket, and a daemon registered with it."""
    await node.start_daemon()
    server = ControlServer(node.kubelet, node.root / "ctl.sock")
    await server.start()
    yield server.path
    await server.stop()
    assert not server.path.exists()


async def admit(path: Path, pod: str, requests: dict[str, int]) -> dict[str, object]:
    answer = await call(
        path,
        {
            "op": "admit",
            "pod": pod,
            "namespace": "default",
            "containers": [{"name": "app", "requests": requests}],
        },
    )
    return dict(answer)


async def test_admit_answers_the_devices_and_the_plugins_allocate_answer(
    node: Node, control: Path
) -> None:
    assert stat.S_IMODE(control.stat().st_mode) == 0o600
    answer = await admit(control, "web-1", {RED: 1})
    assert answer["ok"] is True and answer["pod"] == "web-1"
    (allocation,) = answer["allocations"]  # type: ignore[misc]
    assert allocation["container"] == "app" and allocation["resource"] == RED
    assert allocation["devices"] == ["0000:3b:02.0"]
    assert allocation["envs"]["PCIDEVICE_OPI_IO_RED"] == "0000:3b:02.0"
    info = json.loads(allocation["envs"]["PCIDEVICE_OPI_IO_RED_INFO"])
    assert info["0000:3b:02.0"]["xpu"]["bridgePort"].endswith("/vf-0000-3b-02-0")
    assert "vf-0000-3b-02-0" in node.agent.ports  # Allocate attached it before answering
    calls = [c.method for c in node.kubelet.calls() if c.pod == "web-1"]
    assert calls == ["GetPreferredAllocation", "Allocate"]


async def test_pods_lists_resources_and_what_each_pod_holds(control: Path) -> None:
    await admit(control, "web-1", {RED: 2})
    answer = await call(control, {"op": "pods"})
    assert answer["ok"] is True and "resources" in answer
    by_name = {r["name"]: r for r in answer["resources"]}
    assert set(by_name) == {"opi.io/red", "opi.io/blue", "opi.io/green"}
    assert by_name[RED]["devices"] == by_name[RED]["healthy"] == 12
    assert by_name[RED]["socket"].endswith("/dp/xpu-bridge-opi.io-red.sock")
    (pod,) = answer["pods"]
    assert (pod["namespace"], pod["name"], pod["deleted"]) == ("default", "web-1", False)
    assert pod["held"] == [
        {"container": "app", "resource": RED, "devices": ["0000:3b:02.0", "0000:3b:0a.0"]}
    ]


async def test_delete_frees_the_devices_and_podresources_stops_listing_the_pod(
    node: Node, control: Path
) -> None:
    await admit(control, "web-1", {RED: 1})
    answer = await call(control, {"op": "delete", "pod": "web-1", "namespace": "default"})
    assert answer == {"ok": True, "pod": "web-1", "namespace": "default"}
    assert node.kubelet.pods() == []
    pods = await call(control, {"op": "pods"})
    assert "pods" in pods and pods["pods"] == []


@pytest.mark.parametrize(
    ("request_doc", "kind", "words"),
    [
        (
            {"op": "admit", "pod": "p", "namespace": "default",
             "containers": [{"name": "app", "requests": {"opi.io/purple": 1}}]},
            "unknown-resource",
            "opi.io/purple is not registered with the kubelet (registered: opi.io/blue, "
            "opi.io/green, opi.io/red)",
        ),
        (
            {"op": "admit", "pod": "p", "namespace": "default",
             "containers": [{"name": "app", "requests": {RED: 13}}]},
            "refused",
            "requested number of devices unavailable for opi.io/red. Requested: 13, Available: 12",
        ),
        ({"op": "delete", "pod": "ghost", "namespace": "default"}, "no-such-pod",
         "no pod default/ghost"),
        ({"op": "admit", "pod": "p", "namespace": "default", "containers": []}, "bad-request",
         "containers must be a non-empty list"),
        ({"op": "reboot"}, "bad-request", '"op": "admit", "delete" or "pods"'),
    ],
)  # fmt: skip
async def test_errors_name_their_kind_and_cause(
    control: Path, request_doc: dict[str, object], kind: str, words: str
) -> None:
    with pytest.raises(ControlError) as caught:
        await call(control, request_doc)  # type: ignore[arg-type]
    assert caught.value.kind == kind
    assert words in caught.value.message


async def test_a_refused_pod_carries_the_kubelets_reason_and_is_gone(
    node: Node, control: Path
) -> None:
    with pytest.raises(ControlError) as caught:
        await admit(control, "greedy", {BLUE: 5})
    assert caught.value.reason == "UnexpectedAdmissionError"
    assert node.kubelet.pods() == []


async def test_a_second_pod_of_the_same_name_is_refused(node: Node, control: Path) -> None:
    await admit(control, "web-1", {RED: 1})
    with pytest.raises(ControlError) as caught:
        await admit(control, "web-1", {RED: 1})
    assert caught.value.kind == "pod-exists"
    assert caught.value.message == "pod default/web-1 already exists"
    assert len(node.kubelet.assignments(pod="web-1")) == 1


async def test_a_line_that_is_not_json_gets_a_bad_request_answer(control: Path) -> None:
    reader, writer = await asyncio.open_unix_connection(str(control))
    writer.write(b"hello\n")
    await writer.drain()
    answer = json.loads(await asyncio.wait_for(reader.readline(), 10))
    writer.close()
    assert answer["ok"] is False and answer["error"]["kind"] == "bad-request"


async def test_a_second_server_on_a_live_socket_is_refused(node: Node, control: Path) -> None:
    with pytest.raises(OSError, match="served by another live process"):
        await ControlServer(node.kubelet, control).start()
    assert (await call(control, {"op": "pods"}))["ok"] is True


async def test_nothing_serving_is_an_oserror(short_root: Path) -> None:
    with pytest.raises(OSError):
        await call(short_root / "none.sock", {"op": "pods"})
