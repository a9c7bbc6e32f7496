"""Tests of the simulated kubelet, through real gRPC on unix sockets, with a tiny plugin."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import tempfile
import time
from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2 as dp
from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from opi_protos.kubelet.podresources.v1 import api_pb2 as pr
from opi_protos.kubelet.podresources.v1 import api_pb2_grpc as pr_grpc
from xpu_bridge.sim.kubelet import (
    HEALTHY,
    UNEXPECTED_ADMISSION_ERROR,
    UNHEALTHY,
    AdmissionError,
    Container,
    PodView,
    SimKubelet,
    is_extended_resource_name,
)

RES = "opi.io/pool-a"
WAIT = 10.0  # generous: machines are noisy


def device(dev_id: str, numa: int | None = 0, health: str = HEALTHY) -> dp.Device:
    topology = dp.TopologyInfo(nodes=[dp.NUMANode(ID=numa)]) if numa is not None else None
    return dp.Device(ID=dev_id, health=health, topology=topology)


class FakePlugin(dp_grpc.DevicePluginServicer):
    """A device plugin serving a fixed list; tests push updates or end the stream."""

    def __init__(
        self,
        kubelet_dir: str,
        endpoint: str,
        devices: list[dp.Device],
        *,
        preferred: bool = False,
        pre_start: bool = False,
    ) -> None:
        self.socket_path = os.path.join(kubelet_dir, endpoint)
        self.endpoint = endpoint
        self.devices = devices
        self.options = dp.DevicePluginOptions(
            get_preferred_allocation_available=preferred, pre_start_required=pre_start
        )
        self.updates: asyncio.Queue[list[dp.Device] | None] = asyncio.Queue()
        self.streams_opened = 0
        self.stream_closed = asyncio.Event()
        self.preferred_answer: Callable[[dp.ContainerPreferredAllocationRequest], list[str]] = (
            lambda r: (
                list(r.must_include_deviceIDs)
                + [d for d in r.available_deviceIDs if d not in r.must_include_deviceIDs]
            )
        )
        self.fail_allocate_for: set[str] = set()
        self.allocate_gate: asyncio.Event | None = None  # when set, Allocate waits for it
        self.allocate_entered = asyncio.Event()
        self.server: grpc.aio.Server | None = None

    async def GetDevicePluginOptions(self, request, context):
        return self.options

    async def ListAndWatch(self, request, context) -> AsyncIterator[dp.ListAndWatchResponse]:
        self.streams_opened += 1
        try:
            yield dp.ListAndWatchResponse(devices=self.devices)
            while (update := await self.updates.get()) is not None:
                yield dp.ListAndWatchResponse(devices=update)
        finally:
            self.stream_closed.set()

    async def GetPreferredAllocation(self, request, context):
        answers = []
        for req in request.container_requests:
            ids = self.preferred_answer(req)[: req.allocation_size]
            answers.append(dp.ContainerPreferredAllocationResponse(deviceIDs=ids))
        return dp.PreferredAllocationResponse(container_responses=answers)

    async def Allocate(self, request, context):
        self.allocate_entered.set()
        if self.allocate_gate is not None:
            await self.allocate_gate.wait()
        responses = []
        for req in request.container_requests:
            if self.fail_allocate_for & set(req.devices_ids):
                await context.abort(grpc.StatusCode.UNKNOWN, "bridge port create failed")
            envs = {"PCIDEVICE_OPI_IO_POOL_A": ",".join(req.devices_ids)}
            responses.append(dp.ContainerAllocateResponse(envs=envs))
        return dp.AllocateResponse(container_responses=responses)

    async def PreStartContainer(self, request, context):
        return dp.PreStartContainerResponse()

    async def serve(self) -> None:
        self.server = grpc.aio.server()
        dp_grpc.add_DevicePluginServicer_to_server(self, self.server)
        self.server.add_insecure_port(f"unix:{self.socket_path}")
        await self.server.start()

    async def register(
        self, kubelet: SimKubelet, resource: str = RES, version: str = "v1beta1"
    ) -> None:
        async with grpc.aio.insecure_channel(f"unix:{kubelet.socket_path}") as channel:
            await dp_grpc.RegistrationStub(channel).Register(
                dp.RegisterRequest(
                    version=version,
                    endpoint=self.endpoint,
                    resource_name=resource,
                    options=self.options,
                ),
                timeout=WAIT,
            )

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(grace=None)


@pytest.fixture
async def env() -> AsyncIterator[tuple[str, SimKubelet, list[FakePlugin]]]:
    """A short temp dir, a running kubelet, and a list where tests put their plugins."""
    root = tempfile.mkdtemp(dir="/tmp", prefix="sk")
    kubelet = SimKubelet(
        os.path.join(root, "dp"), os.path.join(root, "pr", "kubelet.sock"), dial_timeout=2.0
    )
    await kubelet.start()
    plugins: list[FakePlugin] = []
    yield os.path.join(root, "dp"), kubelet, plugins
    for plugin in plugins:
        await plugin.stop()
    await kubelet.stop()
    shutil.rmtree(root, ignore_errors=True)


async def start_plugin(
    env: tuple[str, SimKubelet, list[FakePlugin]],
    devices: list[dp.Device],
    endpoint: str = "a.sock",
    resource: str = RES,
    **kwargs: bool,
) -> FakePlugin:
    kdir, kubelet, plugins = env
    plugin = FakePlugin(kdir, endpoint, devices, **kwargs)
    plugins.append(plugin)
    await plugin.serve()
    await plugin.register(kubelet, resource)
    await kubelet.wait_for_devices(resource, lambda d: len(d) == len(devices), WAIT)
    return plugin


def three() -> list[dp.Device]:
    return [device("d0", 0), device("d1", 0), device("d2", 1)]


async def pod_resources(kubelet: SimKubelet) -> pr_grpc.PodResourcesListerStub:
    channel = grpc.aio.insecure_channel(f"unix:{kubelet.pod_resources_socket}")
    return pr_grpc.PodResourcesListerStub(channel)


# ---------------------------------------------------------------- registration


async def test_registration_dials_back_and_shows_devices(env) -> None:
    _, kubelet, _ = env
    t0 = time.monotonic()
    plugin = await start_plugin(env, three(), preferred=True)

    record = await kubelet.wait_registered(RES, after=t0, timeout=WAIT)
    assert record.accepted and record.connected and record.error is None
    assert [(d.id, d.health, d.numa_nodes) for d in kubelet.devices(RES)] == [
        ("d0", HEALTHY, (0,)),
        ("d1", HEALTHY, (0,)),
        ("d2", HEALTHY, (1,)),
    ]
    ep = kubelet.endpoint(RES)
    assert ep is not None and ep.socket_path == plugin.socket_path and not ep.stopped
    assert ep.options.get_preferred_allocation_available
    assert plugin.streams_opened == 1


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("opi.io/pool-a", True),
        ("example.com/pool_1.x", True),
        ("pool", False),
        ("kubernetes.io/pool", False),
        ("foo.kubernetes.io/pool", False),
        ("requests.opi.io/pool", False),
        ("opi.io/a/b", False),
        ("Opi.io/pool", False),
        ("opi.io/", False),
        ("opi.io/-pool", False),
        ("opi.io/" + "x" * 64, False),
    ],
)
def test_extended_resource_name(name: str, valid: bool) -> None:
    assert is_extended_resource_name(name) is valid


@pytest.mark.parametrize(
    ("version", "resource", "message"),
    [
        ("v1alpha", RES, 'requested API version "v1alpha" is not supported by kubelet'),
        ("v1beta1", "kubernetes.io/pool", 'the ResourceName "kubernetes.io/pool" is invalid'),
        ("v1beta1", "pool", 'the ResourceName "pool" is invalid'),
    ],
)
async def test_invalid_registration_is_rejected(env, version, resource, message) -> None:
    kdir, kubelet, plugins = env
    plugin = FakePlugin(kdir, "a.sock", three())
    plugins.append(plugin)
    await plugin.serve()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await plugin.register(kubelet, resource, version)
    assert err.value.code() == grpc.StatusCode.UNKNOWN
    assert message in err.value.details()
    assert kubelet.registrations[-1].error is not None
    assert not kubelet.registrations[-1].accepted
    assert plugin.streams_opened == 0


async def test_registration_fails_when_plugin_not_serving(env) -> None:
    kdir, kubelet, _ = env
    kubelet.dial_timeout = 0.3
    plugin = FakePlugin(kdir, "absent.sock", three())  # never served
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await plugin.register(kubelet)
    assert err.value.details() == "failed to dial device plugin: context deadline exceeded"
    assert kubelet.endpoint(RES) is None


async def test_background_dial_back_returns_before_connecting(env) -> None:
    kdir, kubelet, plugins = env
    kubelet.dial_back_in_background = True
    plugin = FakePlugin(kdir, "a.sock", three())
    plugins.append(plugin)
    await plugin.register(kubelet)  # accepted although nothing serves yet
    assert kubelet.registrations[-1].accepted and not kubelet.registrations[-1].connected
    await plugin.serve()
    await kubelet.wait_registered(RES, timeout=WAIT)
    await kubelet.wait_for_devices(RES, lambda d: len(d) == 3, WAIT)


async def test_update_replaces_whole_set(env) -> None:
    _, kubelet, _ = env
    plugin = await start_plugin(env, three())
    await plugin.updates.put([device("d0", 0, UNHEALTHY), device("d3", None)])
    devices = await kubelet.wait_for_devices(RES, lambda d: [x.id for x in d] == ["d0", "d3"])
    assert [(d.id, d.health, d.numa_nodes) for d in devices] == [
        ("d0", UNHEALTHY, (0,)),
        ("d3", HEALTHY, ()),
    ]


async def test_stream_end_marks_unhealthy_and_never_reconnects(env) -> None:
    _, kubelet, _ = env
    plugin = await start_plugin(env, three())
    await plugin.updates.put(None)  # plugin ends ListAndWatch

    devices = await kubelet.wait_for_devices(
        RES, lambda d: all(x.health == UNHEALTHY for x in d), WAIT
    )
    assert len(devices) == 3
    assert kubelet.endpoint(RES).stopped
    await asyncio.sleep(0.2)
    assert plugin.streams_opened == 1
    with pytest.raises(AdmissionError, match="no healthy devices present"):
        await kubelet.admit_pod("p", containers=[Container("c", {RES: 1})])

    # Registering again brings the devices back.
    await plugin.register(kubelet)
    await kubelet.wait_for_devices(RES, lambda d: all(x.health == HEALTHY for x in d), WAIT)
    assert plugin.streams_opened == 2


async def test_new_registration_replaces_old_endpoint(env) -> None:
    _, kubelet, _ = env
    old = await start_plugin(env, three(), endpoint="old.sock")
    new = await start_plugin(env, [device("n0", 1)], endpoint="new.sock")

    await asyncio.wait_for(old.stream_closed.wait(), WAIT)
    assert kubelet.endpoint(RES).socket_path == new.socket_path
    await asyncio.sleep(0.1)
    assert [(d.id, d.health) for d in kubelet.devices(RES)] == [("n0", HEALTHY)]


# ---------------------------------------------------------------- admission


async def test_preferred_allocation_used_and_recorded(env) -> None:
    _, kubelet, _ = env
    plugin = await start_plugin(env, three(), preferred=True)
    plugin.preferred_answer = lambda r: ["d2"]

    assignments = await kubelet.admit_pod("p", "ns", containers=[Container("c", {RES: 1})])

    assert [(a.container, a.device_ids) for a in assignments] == [("c", ("d2",))]
    assert assignments[0].response.envs == {"PCIDEVICE_OPI_IO_POOL_A": "d2"}
    (pref,) = kubelet.calls("GetPreferredAllocation")
    req = pref.request.container_requests[0]
    assert list(req.available_deviceIDs) == ["d0", "d1", "d2"]
    assert list(req.must_include_deviceIDs) == [] and req.allocation_size == 1
    (alloc,) = kubelet.calls("Allocate")
    assert list(alloc.request.container_requests[0].devices_ids) == ["d2"]
    assert alloc.response.container_responses[0].envs["PCIDEVICE_OPI_IO_POOL_A"] == "d2"


async def test_bad_preferred_answer_falls_back(env) -> None:
    _, kubelet, _ = env
    plugin = await start_plugin(env, three(), preferred=True)
    plugin.preferred_answer = lambda r: ["nope"]
    assignments = await kubelet.admit_pod("p", containers=[Container("c", {RES: 2})])
    assert assignments[0].device_ids == ("d0", "d1")


async def test_no_preferred_call_without_option(env) -> None:
    _, kubelet, _ = env
    await start_plugin(env, three(), preferred=False)
    await kubelet.admit_pod("p", containers=[Container("c", {RES: 1})])
    assert kubelet.calls("GetPreferredAllocation") == []
    assert len(kubelet.calls("Allocate")) == 1


async def test_preferred_called_even_without_choice_like_upstream(env) -> None:
    """Without a topology hint, devicesToAllocate asks whenever reuse did not cover it."""
    _, kubelet, _ = env
    await start_plugin(env, three(), preferred=True)
    await kubelet.admit_pod("p", containers=[Container("c", {RES: 3})])
    (pref,) = kubelet.calls("GetPreferredAllocation")
    assert pref.request.container_requests[0].allocation_size == 3


async def test_init_container_devices_are_reused_with_must_include(env) -> None:
    _, kubelet, _ = env
    plugin = await start_plugin(env, three(), preferred=True)
    plugin.preferred_answer = lambda r: ["d2", "d1", "d0"]

    await kubelet.admit_pod(
        "p",
        init_containers=[Container("init", {RES: 1})],
        containers=[Container("app", {RES: 2})],
    )

    init_pref, app_pref = kubelet.calls("GetPreferredAllocation")
    assert init_pref.container == "init"
    init_dev = list(kubelet.calls("Allocate")[0].request.container_requests[0].devices_ids)
    assert init_dev == ["d2"]
    app_req = app_pref.request.container_requests[0]
    assert list(app_req.must_include_deviceIDs) == ["d2"]
    assert sorted(app_req.available_deviceIDs) == ["d0", "d1", "d2"]
    assert app_req.allocation_size == 2
    app_alloc = kubelet.calls("Allocate")[1].request.container_requests[0]
    assert list(app_alloc.devices_ids) == ["d2", "d1"]  # the same device arrives twice

    # A second pod cannot get the devices held by p (init and app containers).
    await kubelet.admit_pod("q", containers=[Container("c", {RES: 1})])
    assert kubelet.assignments(pod="q")[0].device_ids == ("d0",)


async def test_full_reuse_skips_preferred_but_calls_allocate(env) -> None:
    _, kubelet, _ = env
    await start_plugin(env, three(), preferred=True)
    await kubelet.admit_pod(
        "p", init_containers=[Container("init", {RES: 1})], containers=[Container("app", {RES: 1})]
    )
    assert [c.container for c in kubelet.calls("GetPreferredAllocation")] == ["init"]
    init_alloc, app_alloc = kubelet.calls("Allocate")
    assert init_alloc.request == app_alloc.request


async def test_allocate_error_fails_pod_and_frees_devices(env) -> None:
    _, kubelet, _ = env
    plugin = await start_plugin(env, three())
    plugin.fail_allocate_for = {"d1"}

    with pytest.raises(AdmissionError) as err:
        await kubelet.admit_pod(
            "p", containers=[Container("a", {RES: 1}), Container("b", {RES: 1})]
        )
    assert err.value.reason == UNEXPECTED_ADMISSION_ERROR
    assert err.value.message == (
        "Allocate failed due to rpc error: code = Unknown desc = bridge port create failed, "
        "which is unexpected"
    )
    assert kubelet.assignments() == []
    assert kubelet.calls("Allocate")[-1].error is not None

    plugin.fail_allocate_for = set()
    assignments = await kubelet.admit_pod("q", containers=[Container("c", {RES: 3})])
    assert assignments[0].device_ids == ("d0", "d1", "d2")


async def test_not_enough_devices(env) -> None:
    _, kubelet, _ = env
    await start_plugin(env, [device("d0"), device("d1", health=UNHEALTHY)])
    with pytest.raises(AdmissionError, match=r"Requested: 2, Available: 1"):
        await kubelet.admit_pod("p", containers=[Container("c", {RES: 2})])
    with pytest.raises(AdmissionError, match=r"cannot allocate unregistered device opi\.io/other"):
        await kubelet.admit_pod("p", containers=[Container("c", {"opi.io/other": 1})])


async def test_pre_start_called_when_required(env) -> None:
    _, kubelet, _ = env
    await start_plugin(env, three(), pre_start=True)
    await kubelet.admit_pod("p", containers=[Container("c", {RES: 1})])
    (call,) = kubelet.calls("PreStartContainer")
    assert list(call.request.devices_ids) == ["d0"] and call.error is None


# ---------------------------------------------------------------- PodResources


async def test_pod_resources_list_get_allocatable(env) -> None:
    _, kubelet, _ = env
    await start_plugin(env, [*three(), device("d3", None)])
    await kubelet.admit_pod(
        "p",
        "ns",
        init_containers=[Container("init", {RES: 1}), Container("side", {RES: 1}, sidecar=True)],
        containers=[Container("app", {RES: 1}), Container("plain")],
    )
    stub = await pod_resources(kubelet)

    listed = await stub.List(pr.ListPodResourcesRequest(), timeout=WAIT)
    (pod,) = listed.pod_resources
    assert (pod.name, pod.namespace) == ("p", "ns")
    # Plain init containers are not listed; sidecars and app containers are.
    assert [c.name for c in pod.containers] == ["side", "app", "plain"]
    side, app, plain = pod.containers
    # The sidecar reuses the plain init container's device and keeps it: app gets another.
    assert [(d.resource_name, list(d.device_ids)) for d in side.devices] == [(RES, ["d0"])]
    assert [list(d.device_ids) for d in app.devices] == [["d1"]]
    assert [n.ID for n in app.devices[0].topology.nodes] == [0]
    assert list(plain.devices) == []

    got = await stub.Get(pr.GetPodResourcesRequest(pod_name="p", pod_namespace="ns"))
    assert got.pod_resources == pod
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Get(pr.GetPodResourcesRequest(pod_name="x", pod_namespace="ns"))
    assert err.value.code() == grpc.StatusCode.UNKNOWN
    assert err.value.details() == "pod x in namespace ns not found"

    allocatable = await stub.GetAllocatableResources(pr.AllocatableResourcesRequest())
    by_id = {d.device_ids[0]: d for d in allocatable.devices}
    assert sorted(by_id) == ["d0", "d1", "d2", "d3"]
    assert [n.ID for n in by_id["d2"].topology.nodes] == [1]
    assert not by_id["d3"].HasField("topology")


async def test_admission_in_progress_lists_pod_without_devices(env) -> None:
    """Devices are recorded only after Allocate returns; pods are admitted one at a time."""
    _, kubelet, _ = env
    plugin = await start_plugin(env, three())
    plugin.allocate_gate = asyncio.Event()
    stub = await pod_resources(kubelet)
    first = asyncio.create_task(kubelet.admit_pod("p", containers=[Container("c", {RES: 1})]))
    second = asyncio.create_task(kubelet.admit_pod("q", containers=[Container("c", {RES: 1})]))
    await asyncio.wait_for(plugin.allocate_entered.wait(), WAIT)

    listed = await stub.List(pr.ListPodResourcesRequest(), timeout=WAIT)
    assert [(p.name, [list(c.devices) for c in p.containers]) for p in listed.pod_resources] == [
        ("p", [[]])
    ]
    assert kubelet.assignments() == []
    assert len(kubelet.calls("Allocate")) == 1  # q waits behind p

    plugin.allocate_gate.set()
    await asyncio.wait_for(asyncio.gather(first, second), WAIT)
    assert [a.device_ids for a in kubelet.assignments()] == [("d0",), ("d1",)]


async def test_deleted_pod_frees_devices_and_may_linger(env) -> None:
    _, kubelet, _ = env
    await start_plugin(env, [device("d0")])
    stub = await pod_resources(kubelet)
    await kubelet.admit_pod("p", containers=[Container("c", {RES: 1})])

    kubelet.delete_pod("p", linger=0.5)
    assert kubelet.assignments() == []
    await kubelet.admit_pod("q", containers=[Container("c", {RES: 1})])  # d0 is free again
    listed = await stub.List(pr.ListPodResourcesRequest())
    assert sorted(p.name for p in listed.pod_resources) == ["p", "q"]

    await asyncio.sleep(0.6)
    listed = await stub.List(pr.ListPodResourcesRequest())
    assert [p.name for p in listed.pod_resources] == ["q"]


async def test_pods_and_resources_show_what_podresources_lists(env) -> None:
    _, kubelet, _ = env
    assert kubelet.resources() == [] and kubelet.pods() == []
    await start_plugin(env, [device("d0"), device("d1")])
    assert kubelet.resources() == [RES]
    await kubelet.admit_pod(
        "p", init_containers=[Container("init", {RES: 1})], containers=[Container("c", {RES: 1})]
    )
    await kubelet.admit_pod("q", namespace="other", containers=[Container("c", {RES: 1})])
    kubelet.delete_pod("q", namespace="other", linger=30)
    assert kubelet.pods() == [
        PodView("default", "p", ("init", "c"), deleted=False),
        PodView("other", "q", ("c",), deleted=True),
    ]


# ---------------------------------------------------------------- restart


async def test_restart_deletes_sockets_and_empties_list_for_a_while(env) -> None:
    kdir, kubelet, _ = env
    plugin = await start_plugin(env, three())
    await kubelet.admit_pod("p", containers=[Container("c", {RES: 2})])
    open(os.path.join(kdir, "kubelet_internal_checkpoint"), "w").close()
    # A hard link outside the directory pins the old inode, so a re-created socket differs.
    pinned = os.path.join(os.path.dirname(kdir), "old-kubelet.sock")
    os.link(kubelet.socket_path, pinned)
    stub = await pod_resources(kubelet)
    t0 = time.monotonic()

    await kubelet.restart(pod_resources_empty_for=0.5)

    assert not os.path.exists(plugin.socket_path)
    assert stat.S_ISSOCK(os.stat(kubelet.socket_path).st_mode)
    assert os.stat(kubelet.socket_path).st_ino != os.stat(pinned).st_ino
    assert os.path.exists(os.path.join(kdir, "kubelet_internal_checkpoint"))
    await asyncio.wait_for(plugin.stream_closed.wait(), WAIT)
    assert kubelet.endpoint(RES) is None and kubelet.devices(RES) == []
    assert [a.device_ids for a in kubelet.assignments()] == [("d0", "d1")]
    assert (await stub.List(pr.ListPodResourcesRequest(), timeout=WAIT)).pod_resources == []

    # The plugin notices, serves its socket again and re-registers.
    await plugin.stop()
    await plugin.serve()
    await plugin.register(kubelet)
    record = await kubelet.wait_registered(RES, after=t0, timeout=WAIT)
    assert record.generation == 1
    await kubelet.wait_for_devices(RES, lambda d: len(d) == 3, WAIT)
    with pytest.raises(AdmissionError, match="Available: 1"):
        await kubelet.admit_pod("q", containers=[Container("c", {RES: 2})])

    await asyncio.sleep(max(0.0, t0 + 0.6 - time.monotonic()))
    listed = await stub.List(pr.ListPodResourcesRequest())
    assert [p.name for p in listed.pod_resources] == ["p"]
