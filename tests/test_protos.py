"""The committed stubs match the .proto files; wire names and numbers match upstream's,
as read off the upstream files by hand (their text is not copied here)."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor as F

from opi_protos.dpu_api import api_pb2 as vendor
from opi_protos.evpn_gw import component_pb2
from opi_protos.evpn_gw import l2_xpu_infra_mgr_pb2 as opi
from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2 as dp
from opi_protos.kubelet.podresources.v1 import api_pb2 as pr
from opi_protos.opinetcommon import networktypes_pb2 as net
from xpu_bridge.kubelet.pod_resources import Holder, PodResourcesClient

ROOT = Path(__file__).resolve().parents[1]


def test_regeneration_changes_nothing(tmp_path: Path) -> None:
    subprocess.run(
        [str(ROOT / "scripts" / "gen-protos"), str(tmp_path)],
        check=True,
        timeout=120,
        env={**os.environ, "PYTHON": sys.executable},
    )
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2*.py*"))
    committed = sorted(p.relative_to(ROOT) for p in (ROOT / "opi_protos").rglob("*_pb2*.py*"))
    assert generated == committed
    stale = [str(p) for p in generated if not filecmp.cmp(tmp_path / p, ROOT / p, shallow=False)]
    assert not stale, f"run scripts/gen-protos: stale stubs {stale}"


def fields(message) -> dict[str, tuple[int, int, bool]]:
    return {f.name: (f.number, f.type, f.is_repeated) for f in message.DESCRIPTOR.fields}


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            opi.BridgePort,
            {
                "name": (1, F.TYPE_STRING, False),
                "spec": (2, F.TYPE_MESSAGE, False),
                "status": (3, F.TYPE_MESSAGE, False),
            },
        ),
        (
            opi.BridgePortSpec,
            {
                "mac_address": (1, F.TYPE_BYTES, False),
                "ptype": (2, F.TYPE_ENUM, False),
                "logical_bridges": (3, F.TYPE_STRING, True),
            },
        ),
        (
            opi.BridgePortStatus,
            {"oper_status": (1, F.TYPE_ENUM, False), "components": (2, F.TYPE_MESSAGE, True)},
        ),
        (
            opi.CreateBridgePortRequest,
            {
                "bridge_port_id": (1, F.TYPE_STRING, False),
                "bridge_port": (2, F.TYPE_MESSAGE, False),
            },
        ),
        (
            opi.DeleteBridgePortRequest,
            {"name": (1, F.TYPE_STRING, False), "allow_missing": (2, F.TYPE_BOOL, False)},
        ),
        (
            opi.ListBridgePortsRequest,
            {"page_size": (1, F.TYPE_INT32, False), "page_token": (2, F.TYPE_STRING, False)},
        ),
        (
            opi.ListBridgePortsResponse,
            {
                "bridge_ports": (1, F.TYPE_MESSAGE, True),
                "next_page_token": (2, F.TYPE_STRING, False),
            },
        ),
        (
            opi.LogicalBridgeSpec,
            {
                "vlan_id": (1, F.TYPE_UINT32, False),
                "vni": (2, F.TYPE_UINT32, False),
                "vtep_ip_prefix": (3, F.TYPE_MESSAGE, False),
            },
        ),
        (
            dp.RegisterRequest,
            {
                "version": (1, F.TYPE_STRING, False),
                "endpoint": (2, F.TYPE_STRING, False),
                "resource_name": (3, F.TYPE_STRING, False),
                "options": (4, F.TYPE_MESSAGE, False),
            },
        ),
        (
            dp.Device,
            {
                "ID": (1, F.TYPE_STRING, False),
                "health": (2, F.TYPE_STRING, False),
                "topology": (3, F.TYPE_MESSAGE, False),
            },
        ),
        (
            dp.ContainerPreferredAllocationRequest,
            {
                "available_deviceIDs": (1, F.TYPE_STRING, True),
                "must_include_deviceIDs": (2, F.TYPE_STRING, True),
                "allocation_size": (3, F.TYPE_INT32, False),
            },
        ),
        (
            dp.ContainerAllocateResponse,
            {
                "envs": (1, F.TYPE_MESSAGE, True),
                "mounts": (2, F.TYPE_MESSAGE, True),
                "devices": (3, F.TYPE_MESSAGE, True),
                "annotations": (4, F.TYPE_MESSAGE, True),
                "cdi_devices": (5, F.TYPE_MESSAGE, True),
            },
        ),
        (
            pr.ContainerDevices,
            {
                "resource_name": (1, F.TYPE_STRING, False),
                "device_ids": (2, F.TYPE_STRING, True),
                "topology": (3, F.TYPE_MESSAGE, False),
            },
        ),
        (
            pr.ContainerResources,
            {
                "name": (1, F.TYPE_STRING, False),
                "devices": (2, F.TYPE_MESSAGE, True),
                "cpu_ids": (3, F.TYPE_INT64, True),
                "memory": (4, F.TYPE_MESSAGE, True),
                "dynamic_resources": (5, F.TYPE_MESSAGE, True),
            },
        ),
        (
            pr.ClaimResource,
            {
                "cdi_devices": (1, F.TYPE_MESSAGE, True),
                "driver_name": (2, F.TYPE_STRING, False),
                "pool_name": (3, F.TYPE_STRING, False),
                "device_name": (4, F.TYPE_STRING, False),
                # Kubernetes 1.35 (k8s.io/kubelet v0.35.0), a proto3 `optional` field.
                "share_id": (5, F.TYPE_STRING, False),
            },
        ),
        (pr.CDIDevice, {"name": (1, F.TYPE_STRING, False)}),
    ],
)
def test_wire_fields(message, expected: dict[str, tuple[int, int, bool]]) -> None:
    assert fields(message) == expected


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (component_pb2.Component, {"name": (1, F.TYPE_STRING, False),
                                   "status": (2, F.TYPE_ENUM, False),
                                   "details": (3, F.TYPE_STRING, False)}),
        (net.IPAddress, {"af": (1, F.TYPE_ENUM, False), "v4_addr": (2, F.TYPE_FIXED32, False),
                         "v6_addr": (3, F.TYPE_BYTES, False)}),
        (net.IPPrefix, {"addr": (1, F.TYPE_MESSAGE, False), "len": (2, F.TYPE_INT32, False)}),
        (opi.GetBridgePortRequest, {"name": (1, F.TYPE_STRING, False)}),
        (opi.UpdateBridgePortRequest, {"bridge_port": (1, F.TYPE_MESSAGE, False),
                                       "update_mask": (2, F.TYPE_MESSAGE, False),
                                       "allow_missing": (3, F.TYPE_BOOL, False)}),
        (opi.GetLogicalBridgeRequest, {"name": (1, F.TYPE_STRING, False)}),
        (opi.LogicalBridgeStatus, {"oper_status": (1, F.TYPE_ENUM, False),
                                   "components": (2, F.TYPE_MESSAGE, True)}),
        (dp.DevicePluginOptions, {"pre_start_required": (1, F.TYPE_BOOL, False),
                                  "get_preferred_allocation_available": (2, F.TYPE_BOOL, False)}),
        (dp.DeviceSpec, {"container_path": (1, F.TYPE_STRING, False),
                         "host_path": (2, F.TYPE_STRING, False),
                         "permissions": (3, F.TYPE_STRING, False)}),
        (dp.NUMANode, {"ID": (1, F.TYPE_INT64, False)}),
        (pr.PodResources, {"name": (1, F.TYPE_STRING, False),
                           "namespace": (2, F.TYPE_STRING, False),
                           "containers": (3, F.TYPE_MESSAGE, True)}),
        (pr.GetPodResourcesRequest, {"pod_name": (1, F.TYPE_STRING, False),
                                     "pod_namespace": (2, F.TYPE_STRING, False)}),
        (pr.DynamicResource, {"claim_name": (2, F.TYPE_STRING, False),
                              "claim_namespace": (3, F.TYPE_STRING, False),
                              "claim_resources": (4, F.TYPE_MESSAGE, True)}),
    ],
)  # fmt: skip
def test_more_wire_fields(message, expected: dict[str, tuple[int, int, bool]]) -> None:
    assert fields(message) == expected


def test_share_id_has_explicit_presence_as_upstream() -> None:
    """Upstream declares `optional string share_id = 5`: an empty share ID is still sent (tag
    0x2a, length 0) and reads back as set, where a plain proto3 string would be dropped."""
    share_id = pr.ClaimResource.DESCRIPTOR.fields_by_name["share_id"]
    assert share_id.has_presence
    assert share_id.containing_oneof is not None  # proto3 optional: a synthetic oneof
    assert pr.ClaimResource(share_id="").SerializeToString() == b"\x2a\x00"
    assert pr.ClaimResource(share_id="a1").SerializeToString() == b"\x2a\x02a1"
    assert pr.ClaimResource().SerializeToString() == b""
    assert pr.ClaimResource.FromString(b"\x2a\x00").HasField("share_id")
    assert not pr.ClaimResource.FromString(b"\x12\x01d").HasField("share_id")


async def test_the_reader_takes_device_plugin_devices_and_skips_dra_claims(
    tmp_path: Path,
) -> None:
    """A 1.35 kubelet's List with a shared DRA device beside our devices: the PodResources
    client decodes it and reports only the device-plugin devices of resources it owns."""
    answer = pr.ListPodResourcesResponse(
        pod_resources=[
            pr.PodResources(
                name="web-1",
                namespace="default",
                containers=[
                    pr.ContainerResources(
                        name="app",
                        devices=[
                            pr.ContainerDevices(
                                resource_name="opi.io/red", device_ids=["0000:3b:02.1"]
                            ),
                            pr.ContainerDevices(resource_name="other.io/x", device_ids=["x0"]),
                        ],
                        dynamic_resources=[
                            pr.DynamicResource(
                                claim_name="gpu",
                                claim_namespace="default",
                                claim_resources=[
                                    pr.ClaimResource(
                                        cdi_devices=[pr.CDIDevice(name="vendor.com/gpu=g0")],
                                        driver_name="gpu.vendor.com",
                                        pool_name="node-1",
                                        device_name="g0",
                                        share_id="7f1c",
                                    )
                                ],
                            )
                        ],
                    )
                ],
            )
        ]
    )

    async def list_pods(request: bytes, context: object) -> bytes:
        return answer.SerializeToString()

    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(list_pods)  # bytes in, bytes out
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("v1.PodResourcesLister", {"List": handler}),)
    )
    socket = tmp_path / "kubelet.sock"
    server.add_insecure_port(f"unix://{socket}")
    await server.start()
    client = PodResourcesClient(socket)
    try:
        held = await client.held(lambda resource: resource.startswith("opi.io/"))
    finally:
        await client.close()
        await server.stop(None)
    assert held.by_resource == {"opi.io/red": {"0000:3b:02.1": Holder("default", "web-1", "app")}}


def test_presence_and_oneofs() -> None:
    assert opi.LogicalBridgeSpec.DESCRIPTOR.fields_by_name["vni"].has_presence
    assert [f.name for f in net.IPAddress.DESCRIPTOR.oneofs_by_name["v4_or_v6"].fields] == [
        "v4_addr",
        "v6_addr",
    ]
    assert [m.name for m in opi.DESCRIPTOR.services_by_name["LogicalBridgeService"].methods] == [
        "CreateLogicalBridge",
        "ListLogicalBridges",
        "GetLogicalBridge",
        "DeleteLogicalBridge",
        "UpdateLogicalBridge",
    ]
    assert component_pb2.COMP_STATUS_ERROR == 3 and net.IP_AF_INET6 == 2


def test_service_and_enum_names() -> None:
    services = {
        s.full_name: [m.name for m in s.methods] for s in opi.DESCRIPTOR.services_by_name.values()
    }
    assert services["opi_api.network.evpn_gw.v1alpha1.BridgePortService"] == [
        "CreateBridgePort",
        "ListBridgePorts",
        "GetBridgePort",
        "DeleteBridgePort",
        "UpdateBridgePort",
    ]
    assert dp.DESCRIPTOR.services_by_name["DevicePlugin"].full_name == "v1beta1.DevicePlugin"
    assert dp.DESCRIPTOR.services_by_name["Registration"].full_name == "v1beta1.Registration"
    assert [m.name for m in pr.DESCRIPTOR.services_by_name["PodResourcesLister"].methods] == [
        "List",
        "GetAllocatableResources",
        "Get",
    ]
    assert opi.BP_OPER_STATUS_TO_BE_DELETED == 3 and opi.BRIDGE_PORT_TYPE_TRUNK == 2
    assert opi.DESCRIPTOR.package == "opi_api.network.evpn_gw.v1alpha1"


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (vendor.Empty, {}),
        (vendor.InitRequest, {"dpu_mode": (1, F.TYPE_BOOL, False),
                              "dpu_identifier": (2, F.TYPE_STRING, False)}),
        (vendor.IpPort, {"ip": (1, F.TYPE_STRING, False), "port": (2, F.TYPE_INT32, False)}),
        (vendor.NFRequest, {"input": (1, F.TYPE_STRING, False),
                            "output": (2, F.TYPE_STRING, False)}),
        (vendor.VfCount, {"vf_cnt": (1, F.TYPE_INT32, False)}),
        (vendor.TopologyInfo, {"node": (1, F.TYPE_STRING, False)}),
        (vendor.Device, {"ID": (1, F.TYPE_STRING, False), "health": (2, F.TYPE_STRING, False),
                         "topology": (3, F.TYPE_MESSAGE, False)}),
        (vendor.DeviceListResponse, {"devices": (1, F.TYPE_MESSAGE, True)}),
        (vendor.PingRequest, {"timestamp": (1, F.TYPE_INT64, False),
                              "sender_id": (2, F.TYPE_STRING, False)}),
        (vendor.PingResponse, {"timestamp": (1, F.TYPE_INT64, False),
                               "responder_id": (2, F.TYPE_STRING, False),
                               "healthy": (3, F.TYPE_BOOL, False)}),
    ],
)  # fmt: skip
def test_vendor_plugin_wire_fields(message, expected: dict[str, tuple[int, int, bool]]) -> None:
    """dpu-operator's dpu-api/api.proto, package Vendor, read off upstream by hand."""
    assert fields(message) == expected


def test_vendor_plugin_services_and_map_entry() -> None:
    assert vendor.DESCRIPTOR.package == "Vendor"
    services = {
        s.full_name: [(m.name, m.input_type.full_name, m.output_type.full_name) for m in s.methods]
        for s in vendor.DESCRIPTOR.services_by_name.values()
    }
    assert services == {
        "Vendor.LifeCycleService": [("Init", "Vendor.InitRequest", "Vendor.IpPort")],
        "Vendor.NetworkFunctionService": [
            ("CreateNetworkFunction", "Vendor.NFRequest", "Vendor.Empty"),
            ("DeleteNetworkFunction", "Vendor.NFRequest", "Vendor.Empty"),
        ],
        "Vendor.DeviceService": [
            ("GetDevices", "Vendor.Empty", "Vendor.DeviceListResponse"),
            ("SetNumVfs", "Vendor.VfCount", "Vendor.VfCount"),
        ],
        "Vendor.HeartbeatService": [("Ping", "Vendor.PingRequest", "Vendor.PingResponse")],
    }
    entry = vendor.DeviceListResponse.DESCRIPTOR.fields_by_name["devices"].message_type
    assert entry.GetOptions().map_entry
    assert fields_of(entry) == {
        "key": (1, F.TYPE_STRING, False),
        "value": (2, F.TYPE_MESSAGE, False),
    }
    assert entry.fields_by_name["value"].message_type.full_name == "Vendor.Device"


def fields_of(descriptor) -> dict[str, tuple[int, int, bool]]:
    return {f.name: (f.number, f.type, f.is_repeated) for f in descriptor.fields}
