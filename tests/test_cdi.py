"""CDI: spec files per pool checked against the CDI spec's rules, and Allocate's CDI answer."""

from __future__ import annotations

import copy
import json
import os
import re
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from builders import resource_config, sf, vf
from simnode import BLUE, GREEN, RED, Node, eventually

from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2 as dp
from xpu_bridge.config import ConfigError, parse_config
from xpu_bridge.config.changes import config_changes
from xpu_bridge.kubelet.endpoint import PluginEndpoint
from xpu_bridge.node.cdi import CdiError, CdiSpecs, spec_document, spec_file_name
from xpu_bridge.node.pool import DevicePool
from xpu_bridge.sim.kubelet import Container

# ------------------------------------------------------------ the CDI spec's rules
# Written from SPEC.md and pkg/cdi, pkg/parser, specs-go/version.go of
# cncf-tags/container-device-interface, independently of xpu_bridge/node/cdi.py.

KNOWN_VERSIONS = (
    "0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0",
)  # fmt: skip
VENDOR_OR_CLASS = re.compile(r"[A-Za-z]([A-Za-z0-9_.-]*[A-Za-z0-9])?")
DEVICE_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.:-]*[A-Za-z0-9])?")
SPEC_KEYS = {"cdiVersion", "kind", "annotations", "devices", "containerEdits"}
DEVICE_KEYS = {"name", "annotations", "containerEdits"}
EDIT_KEYS = {
    "env", "deviceNodes", "mounts", "hooks", "intelRdt", "additionalGids", "netDevices",
}  # fmt: skip
NODE_KEYS = {"path", "hostPath", "type", "major", "minor", "fileMode", "permissions", "uid", "gid"}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def _minimum_version(spec: dict[str, Any]) -> str:
    """What the fields used need (specs-go/version.go), for those a spec of ours could use."""
    devices = spec.get("devices") or []
    nodes = [
        node
        for device in devices
        if isinstance(device, dict)
        for node in (device.get("containerEdits") or {}).get("deviceNodes") or []
    ]
    if "." in str(spec.get("kind", "")).partition("/")[2] or spec.get("annotations"):
        return "0.6.0"
    if any(isinstance(d, dict) and d.get("annotations") for d in devices):
        return "0.6.0"
    names = [str(d.get("name", "")) for d in devices if isinstance(d, dict)]
    if any(name[:1].isdigit() for name in names) or any("hostPath" in n for n in nodes):
        return "0.5.0"
    return "0.3.0"


def _edit_problems(where: str, edits: object) -> list[str]:
    if not isinstance(edits, dict):
        return [f"{where}: containerEdits must be an object"]
    problems = [f"{where}: unknown key {key}" for key in sorted(set(edits) - EDIT_KEYS)]
    if not any(edits.get(key) for key in EDIT_KEYS):
        problems.append(f"{where}: empty device edits")
    for env in edits.get("env") or []:
        if not isinstance(env, str) or env.find("=") <= 0:
            problems.append(f"{where}: invalid environment variable {env!r}")
    for index, node in enumerate(edits.get("deviceNodes") or []):
        at = f"{where}.deviceNodes[{index}]"
        if not isinstance(node, dict):
            problems.append(f"{at}: must be an object")
            continue
        problems += [f"{at}: unknown key {key}" for key in sorted(set(node) - NODE_KEYS)]
        for key in ("path", "hostPath"):
            value = node.get(key)
            if (key == "path" or value is not None) and not (
                isinstance(value, str) and value.startswith("/")
            ):
                problems.append(f"{at}.{key}: {value!r} is not an absolute path")
        permissions = node.get("permissions", "")
        if permissions not in ("", "none") and (
            not isinstance(permissions, str) or permissions.strip("rwm")
        ):
            problems.append(f"{at}.permissions: {permissions!r} is not a subset of rwm")
        if node.get("type", "") not in ("", "b", "c", "u", "p"):
            problems.append(f"{at}.type: {node['type']!r} is not b, c, u or p")
    return problems


def cdi_problems(spec: object) -> list[str]:
    """Every rule a CDI spec breaks (empty: valid)."""
    if not isinstance(spec, dict):
        return ["a spec must be an object"]
    problems = [f"unknown key {key}" for key in sorted(set(spec) - SPEC_KEYS)]
    problems += [
        f"{key} is required" for key in ("cdiVersion", "kind", "devices") if key not in spec
    ]
    version = spec.get("cdiVersion")
    if version is not None:
        if version not in KNOWN_VERSIONS:
            problems.append(f"cdiVersion: {version!r} is not a released CDI version")
        elif _version(version) < _version(_minimum_version(spec)):
            problems.append(f"cdiVersion: must be at least {_minimum_version(spec)}")
    kind = spec.get("kind")
    if kind is not None:
        vendor, slash, cls = str(kind).partition("/")
        if not slash or not VENDOR_OR_CLASS.fullmatch(vendor) or len(vendor) > 253:
            problems.append(f"kind: {kind!r} has no valid vendor")
        if not slash or not VENDOR_OR_CLASS.fullmatch(cls) or len(cls) > 63:
            problems.append(f"kind: {kind!r} has no valid class")
    devices = spec.get("devices")
    if "devices" in spec and (not isinstance(devices, list) or not devices):
        problems.append("devices: a spec needs at least one device")
    seen: set[str] = set()
    for index, device in enumerate(devices if isinstance(devices, list) else []):
        where = f"devices[{index}]"
        if not isinstance(device, dict):
            problems.append(f"{where}: must be an object")
            continue
        problems += [f"{where}: unknown key {key}" for key in sorted(set(device) - DEVICE_KEYS)]
        name = device.get("name")
        if not isinstance(name, str) or not DEVICE_NAME.fullmatch(name):
            problems.append(f"{where}.name: {name!r} is not a valid device name")
        elif name in seen:
            problems.append(f"{where}.name: {name} is listed twice")
        else:
            seen.add(name)
        if "containerEdits" not in device:
            problems.append(f"{where}: containerEdits is required")
        else:
            problems += _edit_problems(where, device["containerEdits"])
    return problems


GOOD: dict[str, Any] = {  # schema/testdata/good/minimal.json of the CDI repository
    "cdiVersion": "0.3.0",
    "kind": "vendor.com/device",
    "devices": [{"name": "myDevice", "containerEdits": {"deviceNodes": [{"path": "/dev/card1"}]}}],
}


def changed(**edits: Any) -> dict[str, Any]:
    spec = copy.deepcopy(GOOD)
    device = spec["devices"][0]
    for key, value in edits.items():
        if key.startswith("device_"):
            device[key.removeprefix("device_")] = value
        elif key.startswith("node_"):
            device["containerEdits"]["deviceNodes"][0][key.removeprefix("node_")] = value
        else:
            spec[key] = value
    return spec


def test_the_validator_passes_the_cdi_example() -> None:
    assert cdi_problems(GOOD) == []
    assert cdi_problems(changed(cdiVersion="0.5.0", device_name="0000:3b:02.0")) == []


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({k: v for k, v in GOOD.items() if k != "cdiVersion"}, "cdiVersion is required"),
        (changed(cdiVersion="0.9.0"), "not a released CDI version"),
        (changed(cdiVersion="v0.5"), "not a released CDI version"),
        (changed(device_name="0000:3b:02.0"), "must be at least 0.5.0"),
        (changed(kind="vendor.com/red.v2"), "must be at least 0.6.0"),
        (changed(kind="vendor.com"), "no valid vendor"),
        (changed(kind="vendor.com/foo/bar"), "no valid class"),
        (changed(kind="1vendor.com/foo"), "no valid vendor"),
        (changed(kind="vendor.com/foo-"), "no valid class"),
        (changed(devices=[]), "at least one device"),
        (changed(device_name="bad/name"), "not a valid device name"),
        (changed(device_name="-x"), "not a valid device name"),
        (changed(devices=GOOD["devices"] * 2), "listed twice"),
        (changed(device_containerEdits={}), "empty device edits"),
        (changed(device_containerEdits={"env": ["=x"]}), "invalid environment variable"),
        (changed(node_path="dev/card1"), "not an absolute path"),
        (changed(node_hostPath="card1", cdiVersion="0.5.0"), "hostPath: 'card1' is not"),
        (changed(node_permissions="rwx"), "not a subset of rwm"),
        (changed(node_type="x"), "is not b, c, u or p"),
        (changed(extra=1), "unknown key extra"),
    ],
)
def test_the_validator_rejects_what_cdi_refuses(spec: dict[str, Any], problem: str) -> None:
    problems = cdi_problems(spec)
    assert any(problem in line for line in problems), problems


def without_name(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec["devices"][0].items() if k != "name"}


# ------------------------------------------------------------ specs of pools, without a node


async def test_spec_of_a_pool_lists_vfio_nodes_and_netdev_env() -> None:
    pool = DevicePool("opi.io/red", resource_config("red"))
    await pool.replace_devices(
        [vf("0000:3b:02.0", driver="vfio-pci", iommu_group="7"), vf("0000:3b:02.1")]
    )
    spec = spec_document(pool)
    assert spec is not None and cdi_problems(spec) == []
    assert (spec["cdiVersion"], spec["kind"]) == ("0.5.0", "opi.io/red")
    vfio, netdev = spec["devices"]
    assert vfio == {
        "name": "0000:3b:02.0",
        "containerEdits": {
            "deviceNodes": [
                {"path": "/dev/vfio/vfio", "permissions": "rw"},
                {"path": "/dev/vfio/7", "permissions": "rw"},
            ]
        },
    }
    assert netdev == {
        "name": "0000:3b:02.1",
        "containerEdits": {"env": ["PCIDEVICE_OPI_IO_RED_CDI_0000_3B_02_1=0000:3b:02.1"]},
    }


async def test_spec_versions_and_pools_without_devices() -> None:
    dotted = DevicePool("opi.io/red.v2", resource_config("red.v2"))
    await dotted.replace_devices([vf("0000:3b:02.0")])
    spec = spec_document(dotted)
    assert spec is not None and spec["cdiVersion"] == "0.6.0" and cdi_problems(spec) == []
    sfs = DevicePool("opi.io/green", resource_config("green", deviceType="auxNetDevice"))
    await sfs.replace_devices([sf("mlx5_core.sf.2"), sf("mlx5_core.sf.3")])
    spec = spec_document(sfs)
    assert spec is not None and spec["cdiVersion"] == "0.3.0" and cdi_problems(spec) == []
    assert spec_document(DevicePool("opi.io/empty", resource_config("empty"))) is None


def test_spec_file_names_stay_in_the_spec_dir(tmp_path: Path) -> None:
    assert spec_file_name("opi.io/red") == "opi.io-red.json"
    for kind in ("opi.io", "../x/red", "opi.io/../red", "opi.io/a/b", ".x/red", "opi.io/"):
        with pytest.raises(CdiError):
            CdiSpecs(tmp_path).path_for(kind)


# ------------------------------------------------------------ the daemon, end to end


def spec_dir(node: Node) -> Path:
    return node.root / "cdi"


def with_cdi(node: Node, enabled: bool = True) -> Node:
    node.raw_config["cdi"] = {"enabled": enabled, "specDir": str(spec_dir(node))}
    return node


def specs(node: Node) -> dict[str, dict[str, Any]]:
    """Every spec in the spec dir by kind, each checked against CDI's rules; nothing else
    (no temporary file) may be there."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(spec_dir(node).iterdir()):
        assert path.suffix == ".json" and not path.name.startswith("."), path
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        spec = json.loads(path.read_text())
        assert cdi_problems(spec) == [], (path, cdi_problems(spec))
        assert path.name == spec["kind"].replace("/", "-", 1) + ".json"
        found[spec["kind"]] = spec
    return found


def devices_of(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {device["name"]: device["containerEdits"] for device in spec["devices"]}


@pytest.fixture
def endpoint_starts(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """By resource: the spec files the spec dir of the node (`<root>/cdi`, the socket's
    grandparent) held when the pool's endpoint started serving, which is before it
    registers. PluginEndpoint.start is otherwise unchanged."""
    record: dict[str, list[str]] = {}
    original = PluginEndpoint.start

    async def start(self: PluginEndpoint) -> None:
        directory = self.path.parent.parent / "cdi"
        record[self.resource_name] = sorted(p.name for p in directory.glob("*.json"))
        await original(self)

    monkeypatch.setattr(PluginEndpoint, "start", start)
    return record


async def test_specs_are_written_before_registration_and_removed_at_stop(
    node: Node, endpoint_starts: dict[str, list[str]]
) -> None:
    pf0, _ = node.sysfs.pfs
    node.sysfs.set_vf_driver(pf0, 0, "vfio-pci")
    await with_cdi(node).start_daemon()
    files = ["opi.io-blue.json", "opi.io-green.json", "opi.io-red.json"]
    assert endpoint_starts == {RED: files, BLUE: files, GREEN: files}
    found = specs(node)
    assert sorted(found) == sorted([RED, BLUE, GREEN])
    red = devices_of(found[RED])
    assert len(red) == 12 and found[RED]["cdiVersion"] == "0.5.0"
    group = (node.root / "sys/bus/pci/devices/0000:3b:02.0/iommu_group").resolve().name
    assert red["0000:3b:02.0"] == {
        "deviceNodes": [
            {"path": "/dev/vfio/vfio", "permissions": "rw"},
            {"path": f"/dev/vfio/{group}", "permissions": "rw"},
        ]
    }
    assert red["0000:3b:02.1"] == {"env": ["PCIDEVICE_OPI_IO_RED_CDI_0000_3B_02_1=0000:3b:02.1"]}
    assert all("env" in edits for edits in devices_of(found[GREEN]).values())
    await node.stop_daemon()
    assert list(spec_dir(node).iterdir()) == []


async def test_allocate_answers_vfio_vfs_as_cdi_devices(node: Node) -> None:
    pf0, _ = node.sysfs.pfs
    node.sysfs.set_vf_driver(pf0, 0, "vfio-pci")
    await with_cdi(node).start_daemon()
    (vfio,) = await node.kubelet.admit_pod("dpdk", containers=[Container("c", {RED: 1})])
    assert vfio.device_ids == ("0000:3b:02.0",)
    assert list(vfio.response.cdi_devices) == [dp.CDIDevice(name="opi.io/red=0000:3b:02.0")]
    assert list(vfio.response.devices) == []
    envs = dict(vfio.response.envs)
    assert envs["PCIDEVICE_OPI_IO_RED"] == "0000:3b:02.0"
    group = (node.root / "sys/bus/pci/devices/0000:3b:02.0/iommu_group").resolve().name
    info = json.loads(envs["PCIDEVICE_OPI_IO_RED_INFO"])["0000:3b:02.0"]
    assert info["vfio"] == {"mount": "/dev/vfio/vfio", "dev-mount": f"/dev/vfio/{group}"}
    assert (node.devinfo_dir / "opi.io-red-0000:3b:02.0-device.json").exists()
    # The name Allocate gives is a device of the pool's spec.
    assert "0000:3b:02.0" in devices_of(specs(node)[RED])
    (plain,) = await node.kubelet.admit_pod("web", containers=[Container("c", {RED: 1})])
    (device,) = plain.device_ids
    assert device != "0000:3b:02.0"
    assert list(plain.response.cdi_devices) == [] and list(plain.response.devices) == []
    assert dict(plain.response.envs)["PCIDEVICE_OPI_IO_RED"] == device
    (sfs,) = await node.kubelet.admit_pod("sf", containers=[Container("c", {GREEN: 1})])
    assert list(sfs.response.cdi_devices) == [] and list(sfs.response.devices) == []


async def test_cdi_disabled_writes_nothing_and_answers_device_nodes(node: Node) -> None:
    pf0, _ = node.sysfs.pfs
    node.sysfs.set_vf_driver(pf0, 0, "vfio-pci")
    await with_cdi(node, enabled=False).start_daemon()
    (vfio,) = await node.kubelet.admit_pod("dpdk", containers=[Container("c", {RED: 1})])
    assert list(vfio.response.cdi_devices) == []
    assert {d.container_path for d in vfio.response.devices} >= {"/dev/vfio/vfio"}
    await node.stop_daemon()
    assert not spec_dir(node).exists()


def identity(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_ino, info.st_mtime_ns


async def test_rescan_rewrites_only_a_changed_spec(node: Node) -> None:
    pf0, pf1 = node.sysfs.pfs
    daemon = await with_cdi(node).start_daemon()
    red, blue = (spec_dir(node) / spec_file_name(name) for name in (RED, BLUE))
    before = {path: identity(path) for path in (red, blue)}
    await daemon.rescanner.rescan()
    assert {path: identity(path) for path in (red, blue)} == before
    (added,) = node.sysfs.add_vfs(pf0, 1, driver="vfio-pci")  # red takes every VF of ens1f0
    gone = node.sysfs.vfs(pf1)[7]  # blue has ens1f1#4-15
    node.sysfs.remove_vf(pf1, 7)
    await daemon.rescanner.rescan()
    found = specs(node)
    assert "deviceNodes" in devices_of(found[RED])[added] and identity(red) != before[red]
    assert gone not in devices_of(found[BLUE]) and len(devices_of(found[BLUE])) == 3
    assert identity(blue) != before[blue]
    # The pool's last devices go: no spec (CDI refuses a spec without devices).
    for index in (4, 5, 6):
        node.sysfs.remove_vf(pf1, index)
    await daemon.rescanner.rescan()
    assert BLUE not in specs(node) and RED in specs(node)


async def test_reload_writes_a_new_pool_before_it_registers_and_drops_the_old(
    node: Node, endpoint_starts: dict[str, list[str]]
) -> None:
    with_cdi(node).raw_config["release"] = {
        "intervalSeconds": 0.1,
        "graceSeconds": 0,
        "holdoffSeconds": 0,
    }
    path = node.root / "config.yaml"
    path.write_text(yaml.safe_dump(node.raw_config))
    options = replace(node.options(), config_path=path, config_poll_seconds=0.05)
    daemon = await node.start_daemon(options=options)
    await node.kubelet.admit_pod("held", containers=[Container("c", {GREEN: 1})])
    raw = copy.deepcopy(node.raw_config)
    raw["resourceList"][1]["resourceName"] = "cyan"
    del raw["resourceList"][2]  # green: one device in use
    raw["cdi"] = {"enabled": False, "specDir": "/var/run/cdi"}  # only a restart applies it
    path.write_text(yaml.safe_dump(raw))
    daemon.request_reload()
    await node.kubelet.wait_registered("opi.io/cyan", timeout=20)
    assert "opi.io-cyan.json" in endpoint_starts["opi.io/cyan"]
    await eventually(lambda: BLUE not in specs(node))
    assert daemon.config.cdi.enabled and daemon.config.cdi.spec_dir == str(spec_dir(node))
    # The removed pool's spec keeps its device in use (a restarting container needs it),
    # until it is released.
    (held,) = node.kubelet.assignments(pod="held")
    assert sorted(specs(node)) == ["opi.io/cyan", GREEN, RED]
    assert list(devices_of(specs(node)[GREEN])) == list(held.device_ids)
    node.kubelet.delete_pod("held")
    await eventually(lambda: GREEN not in specs(node), timeout=20)
    assert sorted(specs(node)) == ["opi.io/cyan", RED]


async def test_an_unwritable_spec_dir_stops_the_start(node: Node) -> None:
    spec_dir(with_cdi(node)).write_text("not a directory")
    with pytest.raises(Exception, match=r"cdi\.specDir: .* is not a directory"):
        await node.start_daemon()
    os.unlink(spec_dir(node))


# ------------------------------------------------------------ config


def raw_config(**cdi: Any) -> dict[str, Any]:
    return {
        "hostAgent": {"endpoint": "unix:///run/agent.sock"},
        "cdi": cdi,
        "resourceList": [
            {
                "resourceName": "red",
                "selectors": [{"pfNames": ["ens1f0"]}],
                "bridgePort": {"type": "access", "logicalBridges": ["//b/red"]},
            }
        ],
    }


def problems_of(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    return caught.value.problems


def test_cdi_config_defaults_and_errors() -> None:
    default = parse_config({k: v for k, v in raw_config().items() if k != "cdi"})
    assert (default.cdi.enabled, default.cdi.spec_dir) == (False, "/var/run/cdi")
    assert problems_of(raw_config(enabled=True, specDir="run/cdi")) == [
        "cdi.specDir: 'run/cdi' is not an absolute path; use the directory the container "
        "runtime reads CDI specs from, such as /var/run/cdi"
    ]
    assert problems_of(raw_config(enabled=True, specdir="/x")) == ["cdi.specdir: unknown key"]
    assert problems_of(raw_config(enabled="sure")) == [
        "cdi.enabled: Input should be a valid boolean, unable to interpret input"
    ]


def test_pool_names_must_be_cdi_names_when_cdi_is_on() -> None:
    raw = raw_config(enabled=True)
    raw["resourceList"][0]["resourceName"] = "5g"
    (problem,) = problems_of(raw)
    assert problem.startswith(
        "resourceList[0].resourceName: 5g is not a valid CDI class (cdi.enabled makes "
        "opi.io/5g a CDI kind): start with a letter"
    )
    raw["resourceList"][0]["resourceName"] = "red"
    raw["resourcePrefix"] = "5g.example.com"
    (problem,) = problems_of(raw)
    assert problem.startswith("resourcePrefix: 5g.example.com is not a valid CDI vendor")
    raw["cdi"]["enabled"] = False
    assert parse_config(raw).resource_prefix == "5g.example.com"


def test_cdi_is_restart_only() -> None:
    running = parse_config(raw_config(enabled=True))
    changes = config_changes(running, parse_config(raw_config(enabled=False)))
    assert changes.restart_only == ("cdi",) and not changes.applies
    assert changes.config.cdi.enabled
