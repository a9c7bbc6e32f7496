"""Deployment artefacts: the kustomize base and every overlay in manifests/, as `kubectl
kustomize` renders them, against the Kubernetes schemas and the daemon; manifests/examples/;
the Dockerfile.

The overlays are rendered with `kubectl kustomize` (kustomize v5). Without kubectl, or with an
older kustomize, the overlay tests are skipped, and the base is checked from its files as
written (its kustomization only adds labels, which test_rendered_base_is_its_files_plus_labels
pins where kubectl is there)."""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import re
import shutil
import socket
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml

from xpu_bridge.cli import build_parser
from xpu_bridge.config import ConfigError, parse_config
from xpu_bridge.config.host_agent import DEFAULT_ENDPOINTS, DPU_VENDOR_PLUGIN

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
BASE = MANIFESTS / "base"
OVERLAYS = MANIFESTS / "overlays"
EXAMPLES = MANIFESTS / "examples"
KUSTOMIZATION = "kustomization.yaml"
# Kubernetes version whose OpenAPI schemas (shipped in kubernetes-validate) we validate against.
K8S_VERSION = "1.34"
NAD_API_VERSION = "k8s.cni.cncf.io/v1"
RESOURCE_NAME_ANNOTATION = "k8s.v1.cni.cncf.io/resourceName"
NETWORKS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"
CLUSTER_SCOPED = {"Namespace"}
NAMESPACE = "xpu-bridge"
BASE_KINDS = ["Namespace", "ServiceAccount", "ConfigMap", "DaemonSet"]
# What each overlay adds to the base's objects (the others patch the base's).
EXTRA_KINDS = {"monitoring": ["Service", "ServiceMonitor", "PrometheusRule", "ConfigMap"]}
# prometheus-operator's CRDs, which kubernetes-validate has no schema for: checked by hand, the
# spec's keys against the operator's API types (monitoring.coreos.com/v1).
CRD_SPEC_KEYS = {
    "ServiceMonitor": {
        "jobLabel", "targetLabels", "podTargetLabels", "endpoints", "selector",
        "selectorMechanism", "namespaceSelector", "sampleLimit", "scrapeProtocols",
        "fallbackScrapeProtocol", "targetLimit", "labelLimit", "labelNameLengthLimit",
        "labelValueLengthLimit", "scrapeClassicHistograms", "nativeHistogramBucketLimit",
        "nativeHistogramMinBucketFactor", "convertClassicHistogramsToNHCB",
        "keepDroppedTargets", "attachMetadata", "scrapeClass", "bodySizeLimit",
        "serviceDiscoveryRole",
    },
    "PrometheusRule": {"groups"},
}  # fmt: skip
CRD_GROUP = "monitoring.coreos.com"
# The host directories the base's container writes; an overlay may add its own.
WRITABLE_HOST_PATHS = {
    "/var/lib/kubelet/device-plugins",
    "/var/run/k8s.cni.cncf.io/devinfo/dp",
    "/run/xpu-bridge",
}
EXTRA_WRITABLE_HOST_PATHS = {"cdi": {"/var/run/cdi"}}
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def kustomization(directory: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((directory / KUSTOMIZATION).read_text())
    return document


def overlay_names() -> list[str]:
    return sorted(p.parent.name for p in OVERLAYS.glob(f"*/{KUSTOMIZATION}"))


VARIANTS = ["base", *overlay_names()]


def variant_dir(variant: str) -> Path:
    return BASE if variant == "base" else OVERLAYS / variant


@functools.cache
def kustomize_problem() -> str | None:
    """Why the overlays cannot be rendered here, or None when `kubectl kustomize` can."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return "kubectl is not on PATH"
    try:
        answer = subprocess.run(
            [kubectl, "version", "--client", "-o", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        version = str(json.loads(answer.stdout).get("kustomizeVersion", ""))
    except (OSError, subprocess.SubprocessError, ValueError) as error:
        return f"`kubectl version --client` failed: {error}"
    match = re.match(r"v(\d+)\.", version)
    if match is None or int(match[1]) < 5:
        return f"kubectl's kustomize is {version or 'unknown'}; the overlays need v5 or newer"
    return None


SKIP_REASON = (
    "the overlays are rendered with `kubectl kustomize` (kustomize v5), which is not usable "
    f"here: {kustomize_problem()}"
)
needs_kustomize = pytest.mark.skipif(kustomize_problem() is not None, reason=SKIP_REASON)


@functools.cache
def kustomize_build(directory: Path) -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl")
    assert kubectl is not None
    answer = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120
    )
    assert answer.returncode == 0, f"kubectl kustomize {directory}: {answer.stderr.strip()}"
    return tuple(doc for doc in yaml.safe_load_all(answer.stdout) if doc is not None)


def base_files() -> list[dict[str, Any]]:
    """The base's objects as its files hold them, in the kustomization's order."""
    return [doc for name in kustomization(BASE)["resources"] for doc in load(BASE / name)]


def rendered(variant: str) -> list[dict[str, Any]]:
    """The objects `kubectl apply -k` would send for this variant (a copy, safe to change)."""
    if kustomize_problem() is None:
        return copy.deepcopy(list(kustomize_build(variant_dir(variant))))
    if variant == "base":
        return base_files()
    pytest.skip(SKIP_REASON)


@dataclass(frozen=True)
class Deployment:
    """One variant's rendered objects, and the parts of them the checks look at."""

    variant: str
    docs: list[dict[str, Any]]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [
            doc
            for doc in self.docs
            if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)
        ]
        assert len(found) == 1, f"{self.variant}: expected one {kind} {name or ''}, found {found}"
        return found[0]

    def daemonset(self) -> dict[str, Any]:
        return self.one("DaemonSet", "xpu-bridge")

    def pod(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.daemonset()["spec"]["template"]["spec"]
        return spec

    def container(self) -> dict[str, Any]:
        (container,) = self.pod()["containers"]
        return container

    def config_text(self) -> str:
        text: str = self.one("ConfigMap", "xpu-bridge-config")["data"]["config.yaml"]
        return text

    def config_document(self) -> dict[str, Any]:
        document: dict[str, Any] = yaml.safe_load(self.config_text())
        return document

    def mount_of(self, volume_name: str) -> dict[str, Any]:
        (mount,) = [m for m in self.container()["volumeMounts"] if m["name"] == volume_name]
        return mount

    def volume_by_host_path(self, path: str) -> dict[str, Any]:
        found = [v for v in self.pod()["volumes"] if v.get("hostPath", {}).get("path") == path]
        assert len(found) == 1, f"expected one hostPath volume for {path}, found {len(found)}"
        return found[0]

    def host_paths(self, *, writable: bool) -> set[str]:
        return {
            volume["hostPath"]["path"]
            for volume in self.pod()["volumes"]
            if "hostPath" in volume
            and self.mount_of(volume["name"]).get("readOnly", False) is not writable
        }


def deployment_of(variant: str) -> Deployment:
    return Deployment(variant, rendered(variant))


@pytest.fixture(
    params=[
        pytest.param(name, id=name, marks=[] if name == "base" else [needs_kustomize])
        for name in VARIANTS
    ]
)
def deployment(request: pytest.FixtureRequest) -> Deployment:
    """The base and every overlay, each rendered as `kubectl apply -k` would send it."""
    return deployment_of(request.param)


@pytest.fixture
def base() -> Deployment:
    return deployment_of("base")


def examples() -> list[dict[str, Any]]:
    return [doc for path in sorted(EXAMPLES.glob("*.yaml")) for doc in load(path)]


def example(kind: str, name: str | None = None) -> dict[str, Any]:
    return Deployment("examples", examples()).one(kind, name)


def flag_value(args: list[str], flag: str) -> str:
    assert flag in args, f"{flag} missing from {args}"
    return args[args.index(flag) + 1]


def is_under(path: str | Path, directory: str | Path) -> bool:
    return PurePosixPath(path).is_relative_to(PurePosixPath(directory))


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= labels.items()


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """CI has no internet: schemas must come from the installed package, never a download."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


# --- Layout: base, overlays, examples -------------------------------------------------------


def test_every_file_of_the_base_and_the_overlays_is_used_by_its_kustomization() -> None:
    """A manifest left out of `resources` (or a patch out of `patches`) would never deploy, and
    kustomization.yaml itself is not an object to validate."""
    for directory in [BASE, *(OVERLAYS / name for name in overlay_names())]:
        document = kustomization(directory)
        used = {r for r in document.get("resources", []) if (directory / r).is_file()}
        used |= {p["path"] for p in document.get("patches", []) if "path" in p}
        for generator in document.get("configMapGenerator", []):
            used |= {f.rpartition("=")[2] for f in generator.get("files", [])}
        files = {p.name for p in directory.iterdir() if p.is_file()} - {KUSTOMIZATION}
        assert files == used, f"{directory.relative_to(ROOT)}: unused {files - used}"
        assert document["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
        assert document["kind"] == "Kustomization"


def builds_on_the_base(directory: Path) -> bool:
    if directory == BASE:
        return True
    resources = kustomization(directory).get("resources", [])
    parents = [(directory / r).resolve() for r in resources if (directory / r).is_dir()]
    return any(p != MANIFESTS / "monitoring" and builds_on_the_base(p) for p in parents)


def test_each_overlay_builds_on_the_base() -> None:
    """Directly or through another overlay (dpu on vendor-plugin), never on a copy."""
    for name in overlay_names():
        assert builds_on_the_base(OVERLAYS / name), name


def test_every_overlay_has_its_own_checks() -> None:
    """A new overlay needs its facts checked below, not only the schema."""
    assert set(overlay_names()) == set(OVERLAY_CHECKS)


@needs_kustomize
def test_rendered_base_is_its_files_plus_labels() -> None:
    """What the base's files hold is what `kubectl apply -k manifests/base` sends, plus the
    kustomization's labels on every object and the pod template (and none in selectors)."""
    (label_set,) = kustomization(BASE)["labels"]
    assert label_set["includeSelectors"] is False
    expected = base_files()
    for doc in expected:
        doc["metadata"].setdefault("labels", {}).update(label_set["pairs"])
        if doc["kind"] == "DaemonSet":
            doc["spec"]["template"]["metadata"]["labels"].update(label_set["pairs"])

    def key(doc: dict[str, Any]) -> tuple[str, str]:
        return doc["kind"], doc["metadata"]["name"]

    assert sorted(rendered("base"), key=key) == sorted(expected, key=key)


def test_deployment_holds_every_piece(deployment: Deployment) -> None:
    kinds = sorted(doc["kind"] for doc in deployment.docs)
    assert kinds == sorted(BASE_KINDS + EXTRA_KINDS.get(deployment.variant, []))
    assert sorted(doc["kind"] for doc in examples()) == ["NetworkAttachmentDefinition", "Pod"]


# --- Kubernetes schemas ---------------------------------------------------------------------


def check_custom_resource(doc: dict[str, Any]) -> None:
    """kubernetes-validate has no schema for CRDs: their shape, by hand."""
    assert doc["apiVersion"] == f"{CRD_GROUP}/v1", doc["apiVersion"]
    assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
    assert doc["kind"] in CRD_SPEC_KEYS, doc["kind"]
    metadata = doc["metadata"]
    assert set(metadata) <= {"name", "namespace", "labels", "annotations"}, metadata
    assert DNS_LABEL.fullmatch(metadata["name"]), metadata["name"]
    assert metadata["namespace"] == NAMESPACE
    for key, value in metadata.get("labels", {}).items():
        assert isinstance(value, str) and LABEL_VALUE.fullmatch(value), (key, value)
    for value in metadata.get("annotations", {}).values():
        assert isinstance(value, str)
    spec = doc["spec"]
    assert isinstance(spec, dict) and spec, doc["kind"]
    unknown = set(spec) - CRD_SPEC_KEYS[doc["kind"]]
    assert not unknown, f"{doc['kind']} {metadata['name']}: unknown spec keys {unknown}"


def test_deployment_matches_the_kubernetes_schemas(deployment: Deployment) -> None:
    for doc in deployment.docs:
        if doc["apiVersion"].startswith(f"{CRD_GROUP}/"):
            check_custom_resource(doc)
            continue
        # strict: unknown fields (typos such as `readonly:`) are errors, as kubectl's are.
        used = kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        assert used == K8S_VERSION


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_matches_the_kubernetes_schema(path: Path) -> None:
    for doc in load(path):
        if doc["apiVersion"] != NAD_API_VERSION:  # Multus' CRD: checked below
            assert kubernetes_validate.validate(doc, K8S_VERSION, strict=True) == K8S_VERSION


def test_strict_schema_catches_a_misspelt_field(base: Deployment) -> None:
    broken = copy.deepcopy(base.daemonset())
    broken["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0]["readonly"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_custom_resource_check_catches_a_misspelt_spec_key() -> None:
    monitor = {
        "apiVersion": f"{CRD_GROUP}/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "xpu-bridge", "namespace": NAMESPACE},
        "spec": {"selector": {}, "endpoint": [{"port": "metrics"}]},
    }
    with pytest.raises(AssertionError, match="unknown spec keys"):
        check_custom_resource(monitor)


def test_apply_creates_the_namespace_before_its_objects(deployment: Deployment) -> None:
    """`kubectl apply -k` sends the objects in the rendered order; all of them in the
    namespace, none needing Multus' CRD."""
    created: set[str] = set()
    for doc in deployment.docs:
        assert doc["apiVersion"] != NAD_API_VERSION, "needs Multus' CRD"
        if doc["kind"] in CLUSTER_SCOPED:
            created.add(doc["metadata"]["name"])
        else:
            namespace = doc["metadata"].get("namespace")
            assert namespace == NAMESPACE and namespace in created, doc["metadata"]


def test_network_attachment_is_a_well_formed_nad_for_a_configured_pool(
    deployment: Deployment,
) -> None:
    """The examples work with every variant: each offers the pool red-net names."""
    nad = example("NetworkAttachmentDefinition", "red-net")
    assert nad["apiVersion"] == NAD_API_VERSION
    assert set(nad) == {"apiVersion", "kind", "metadata", "spec"}
    assert DNS_LABEL.fullmatch(nad["metadata"]["name"])
    resource = nad["metadata"]["annotations"][RESOURCE_NAME_ANNOTATION]
    config = parse_config(deployment.config_document())
    assert resource in {config.full_resource_name(r) for r in config.resource_list}
    assert set(nad["spec"]) == {"config"}
    cni = json.loads(nad["spec"]["config"])
    assert cni["cniVersion"] and cni["type"] and cni["name"] == nad["metadata"]["name"]
    # Multus hands the allocated device over only to plugins that declare the capability.
    assert cni.get("capabilities", {}).get("deviceID") is True


def test_example_pod_asks_for_one_device_and_names_the_network() -> None:
    pod = example("Pod")
    nad = example(
        "NetworkAttachmentDefinition", pod["metadata"]["annotations"][NETWORKS_ANNOTATION]
    )
    resource = nad["metadata"]["annotations"][RESOURCE_NAME_ANNOTATION]
    assert pod["metadata"].get("namespace") == nad["metadata"].get("namespace")
    (container,) = pod["spec"]["containers"]
    assert container["resources"]["limits"][resource] == "1"
    assert container["resources"]["requests"][resource] == "1"


# --- ConfigMap ------------------------------------------------------------------------------


def test_configmap_config_is_accepted_by_the_daemon(deployment: Deployment) -> None:
    try:
        parse_config(deployment.config_document())
    except ConfigError as error:
        pytest.fail(
            f"{deployment.variant}: config.yaml in the ConfigMap is rejected: "
            + "; ".join(error.problems)
        )


def test_base_config_attaches_red_as_an_access_port(base: Deployment) -> None:
    config = parse_config(base.config_document())
    names = {config.full_resource_name(r): r for r in config.resource_list}
    assert names["opi.io/red"].bridge_port.type == "access"
    assert names["opi.io/red"].bridge_port.logical_bridges == [
        "//network.opiproject.org/bridges/red"
    ]


def test_configmap_host_agent_socket_is_in_a_read_only_host_mount(deployment: Deployment) -> None:
    """The agent's socket directory is the host's, at the same path, read-only (connecting
    needs no write); the other backend's directory is not mounted."""
    endpoint = parse_config(deployment.config_document()).host_agent.endpoint
    assert endpoint.startswith("unix://")
    directory = str(PurePosixPath(endpoint.removeprefix("unix://")).parent)
    volume = deployment.volume_by_host_path(directory)
    assert deployment.mount_of(volume["name"]) == {
        "name": volume["name"],
        "mountPath": directory,
        "readOnly": True,
    }
    assert deployment.host_paths(writable=False) == {
        "/sys",
        "/var/lib/kubelet/pod-resources",
        directory,
    }


# --- DaemonSet ------------------------------------------------------------------------------


def test_daemonset_runs_on_the_host_network_as_a_node_critical_pod(deployment: Deployment) -> None:
    pod = deployment.pod()
    assert pod["hostNetwork"] is True
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["serviceAccountName"] == deployment.one("ServiceAccount")["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is False  # it never talks to the API server


def test_daemonset_runs_as_root_without_privileges_or_capabilities(
    deployment: Deployment,
) -> None:
    """Root owns the kubelet's directories and sockets; nothing else needs more than that."""
    pod = deployment.pod()
    context = deployment.container()["securityContext"]
    assert context.get("privileged", False) is False
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}  # and none added back
    assert context["readOnlyRootFilesystem"] is True
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert context["runAsUser"] == 0 and context.get("runAsNonRoot", False) is False
    for key in ("hostPID", "hostIPC"):
        assert not pod.get(key, False), key
    assert "initContainers" not in pod  # no other container that could be privileged


def test_daemonset_writes_only_the_host_directories_it_must(deployment: Deployment) -> None:
    """The kubelet's plugin directory (sockets, lock), the device-info directory and the release
    hook's, and what an overlay adds (cdi: the CDI spec directory); sysfs, the PodResources and
    host-agent socket directories are read-only (connecting needs no write)."""
    assert deployment.host_paths(writable=True) == WRITABLE_HOST_PATHS | (
        EXTRA_WRITABLE_HOST_PATHS.get(deployment.variant, set())
    )


def test_every_volume_is_mounted_once_and_every_mount_has_its_volume(
    deployment: Deployment,
) -> None:
    """A patch that drops one of the two (or renames one) leaves a pod the API refuses or a
    host directory mounted for nothing."""
    volumes = [v["name"] for v in deployment.pod()["volumes"]]
    mounts = [m["name"] for m in deployment.container()["volumeMounts"]]
    assert sorted(volumes) == sorted(mounts)
    assert len(set(volumes)) == len(volumes)
    paths = [m["mountPath"] for m in deployment.container()["volumeMounts"]]
    assert len(set(paths)) == len(paths)


def test_the_hook_socket_the_configmap_suggests_is_on_a_host_mount(deployment: Deployment) -> None:
    """Uncommenting release.hookSocket works: its directory is the host's, at the same path."""
    (path,) = re.findall(r"# hookSocket: (\S+)", deployment.config_text())
    directory = str(Path(path).parent)
    volume = deployment.volume_by_host_path(directory)
    assert deployment.mount_of(volume["name"])["mountPath"] == directory


def test_the_namespace_admits_the_host_network_and_host_paths(deployment: Deployment) -> None:
    labels = deployment.one("Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"


def test_daemonset_mounts_the_pod_resources_directory_not_the_socket(
    deployment: Deployment,
) -> None:
    volume = deployment.volume_by_host_path("/var/lib/kubelet/pod-resources")
    assert volume["hostPath"]["type"] == "Directory"
    assert deployment.mount_of(volume["name"])["mountPath"] == "/var/lib/kubelet/pod-resources"


def test_daemonset_mounts_sys_read_only(deployment: Deployment) -> None:
    mount = deployment.mount_of(deployment.volume_by_host_path("/sys")["name"])
    assert mount["mountPath"] == "/sys"
    assert mount["readOnly"] is True


def test_daemonset_host_paths_are_where_the_run_defaults_look(deployment: Deployment) -> None:
    """Args pass no path flags, so each default must sit in a host directory mounted in place."""
    defaults = build_parser().parse_args(["run", "--config", "/unused"])
    volumes = deployment.pod()["volumes"]
    for path in (
        defaults.kubelet_dir,
        defaults.pod_resources_socket,
        defaults.sysfs_root,
        defaults.devinfo_dir,
    ):
        volume = next(
            (v for v in volumes if "hostPath" in v and is_under(path, v["hostPath"]["path"])),
            None,
        )
        assert volume is not None, f"{path} is not on a mounted host path"
        assert deployment.mount_of(volume["name"])["mountPath"] == volume["hostPath"]["path"]
    for volume in volumes:
        if "hostPath" in volume:
            assert deployment.mount_of(volume["name"])["mountPath"] == volume["hostPath"]["path"]


def test_daemonset_args_read_the_config_from_the_configmap_mount(deployment: Deployment) -> None:
    args = deployment.container()["args"]
    config_path = PurePosixPath(flag_value(args, "--config"))
    (volume,) = [v for v in deployment.pod()["volumes"] if "configMap" in v]
    configmap = deployment.one("ConfigMap", "xpu-bridge-config")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    # A directory mount, not subPath: only then does a ConfigMap update reach the daemon.
    mount = deployment.mount_of(volume["name"])
    assert "subPath" not in mount and str(config_path.parent) == mount["mountPath"]
    assert config_path.name in configmap["data"]
    assert args.index("--log-format") < args.index("run") < args.index("--config")


def test_daemonset_probes_and_scrape_annotations_use_the_metrics_port(
    deployment: Deployment,
) -> None:
    container = deployment.container()
    port = int(flag_value(container["args"], "--metrics-address").rpartition(":")[2])
    liveness = container["livenessProbe"]["httpGet"]
    readiness = container["readinessProbe"]["httpGet"]
    assert (liveness["path"], liveness["port"]) == ("/healthz", port)
    assert (readiness["path"], readiness["port"]) == ("/readyz", port)
    annotations = deployment.daemonset()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"
    assert [p["containerPort"] for p in container["ports"]] == [port]


def test_daemonset_selects_its_own_pods_and_updates_one_node_at_a_time(
    deployment: Deployment,
) -> None:
    spec = deployment.daemonset()["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert labels_match(spec["selector"]["matchLabels"], labels)
    # The selector is immutable: no variant may change it, or switching to it fails to apply.
    assert spec["selector"] == {"matchLabels": {"app.kubernetes.io/name": "xpu-bridge"}}
    assert spec["updateStrategy"]["type"] == "RollingUpdate"
    rolling = spec["updateStrategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 1
    # Two pods on one node would fight over the plugin sockets and the host port.
    assert rolling.get("maxSurge", 0) == 0
    resources = deployment.container()["resources"]
    assert set(resources) == {"requests", "limits"}


def test_daemonset_args_parse_with_the_cli(deployment: Deployment) -> None:
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    known = set(parser._option_string_actions) | set(commands.choices["run"]._option_string_actions)
    missing = {"--log-format", "--metrics-address"} - known
    if missing:
        pytest.skip(f"the CLI does not have {sorted(missing)} yet")
    args = parser.parse_args(deployment.container()["args"])
    assert args.command == "run"
    assert args.config == Path("/etc/xpu-bridge/config.yaml")


def test_overlays_keep_what_they_do_not_change(deployment: Deployment) -> None:
    """The namespace, the account and the container's image, args, probes and security are
    the base's in every variant: an overlay changes only what it is for."""
    base = deployment_of("base")
    for kind in ("Namespace", "ServiceAccount"):
        assert deployment.one(kind) == base.one(kind)
    for key in ("image", "args", "livenessProbe", "readinessProbe", "securityContext", "ports"):
        assert deployment.container()[key] == base.container()[key], key


# --- What each overlay is for ---------------------------------------------------------------


def check_vendor_plugin_socket(deployment: Deployment) -> None:
    """hostAgent.api dpu-vendor-plugin on the plugin's usual socket, whose directory is
    mounted read-only in place; the OPI host agent's directory is not mounted."""
    config = parse_config(deployment.config_document())
    assert config.vendor_plugin
    assert config.host_agent.endpoint == DEFAULT_ENDPOINTS[DPU_VENDOR_PLUGIN]
    directory = str(PurePosixPath(config.host_agent.endpoint.removeprefix("unix://")).parent)
    assert directory == "/var/run/dpu-daemon/vendor-plugin"
    volume = deployment.volume_by_host_path(directory)
    assert volume["hostPath"]["type"] == "DirectoryOrCreate"
    assert deployment.mount_of(volume["name"])["readOnly"] is True
    host_paths = {v["hostPath"]["path"] for v in deployment.pod()["volumes"] if "hostPath" in v}
    assert "/var/run/xpu-host-agent" not in host_paths
    assert all(r.bridge_port.vlan is not None for r in config.resource_list)


def check_vendor_plugin(deployment: Deployment) -> None:
    check_vendor_plugin_socket(deployment)
    config = parse_config(deployment.config_document())
    assert config.mode == "host"
    assert deployment.pod()["nodeSelector"] == deployment_of("base").pod()["nodeSelector"]


def check_dpu(deployment: Deployment) -> None:
    """mode: dpu (which needs the vendor plugin), a network-function pool, and DPU nodes."""
    check_vendor_plugin_socket(deployment)
    config = parse_config(deployment.config_document())
    assert config.mode == "dpu"
    assert any(r.network_function for r in config.resource_list)
    assert deployment.pod()["nodeSelector"] == {
        "opi.io/dpu": "true",
        "kubernetes.io/arch": "arm64",
    }


def check_cdi(deployment: Deployment) -> None:
    """cdi on with the spec directory the runtimes read, mounted read-write in place; the
    rest of the config is the base's, so the two cannot drift apart."""
    document = deployment.config_document()
    assert document["cdi"] == {"enabled": True, "specDir": "/var/run/cdi"}
    volume = deployment.volume_by_host_path("/var/run/cdi")
    assert volume["hostPath"]["type"] == "DirectoryOrCreate"
    mount = deployment.mount_of(volume["name"])
    assert mount["mountPath"] == "/var/run/cdi" and not mount.get("readOnly", False)
    assert {k: v for k, v in document.items() if k != "cdi"} == deployment_of(
        "base"
    ).config_document()


def check_monitoring(deployment: Deployment) -> None:
    """The ServiceMonitor selects the Service, whose selector picks the DaemonSet's pods on
    their metrics port; a PrometheusRule with alerts; the dashboard ConfigMap; the base as it
    is."""
    for doc in deployment_of("base").docs:
        assert doc in deployment.docs, f"{doc['kind']} {doc['metadata']['name']} changed"
    service = deployment.one("Service")
    monitor = deployment.one("ServiceMonitor")
    pod_labels = deployment.daemonset()["spec"]["template"]["metadata"]["labels"]
    assert set(monitor["spec"]["selector"]) == {"matchLabels"}
    assert labels_match(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert labels_match(service["spec"]["selector"], pod_labels)
    namespaces = monitor["spec"].get("namespaceSelector", {}).get("matchNames", [NAMESPACE])
    assert service["metadata"]["namespace"] in namespaces
    container_ports = {p["name"]: p["containerPort"] for p in deployment.container()["ports"]}
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        target = service_ports[endpoint["port"]]["targetPort"]
        assert target in container_ports or target in container_ports.values(), target
        assert endpoint.get("path", "/metrics") == "/metrics"
    rule = deployment.one("PrometheusRule")
    rules = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    assert rules and all(r.get("expr") for r in rules)
    assert all(("alert" in r) != ("record" in r) for r in rules)
    assert any("alert" in r for r in rules)
    dashboards = [
        d
        for d in deployment.docs
        if d["kind"] == "ConfigMap" and d["metadata"].get("labels", {}).get("grafana_dashboard")
    ]
    assert len(dashboards) == 1
    assert dashboards[0]["data"]
    for text in dashboards[0]["data"].values():
        assert isinstance(json.loads(text), dict)  # the panels have tests of their own


OVERLAY_CHECKS = {
    "vendor-plugin": check_vendor_plugin,
    "dpu": check_dpu,
    "cdi": check_cdi,
    "monitoring": check_monitoring,
}


@needs_kustomize
@pytest.mark.parametrize("overlay", sorted(OVERLAY_CHECKS))
def test_overlay_does_what_it_is_for(overlay: str) -> None:
    OVERLAY_CHECKS[overlay](deployment_of(overlay))


# --- README ---------------------------------------------------------------------------------


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_readme_deploying_names_every_overlay_with_its_command() -> None:
    section = readme_section("Deploying")
    for name in overlay_names():
        assert f"kubectl apply -k manifests/overlays/{name}" in section, name


def test_readme_kustomize_commands_name_directories_that_render() -> None:
    """Every `kubectl ... -k DIR` in the README names a kustomization that renders, and every
    `-f` path exists."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.findall(r"kubectl (?:apply|delete|kustomize|diff) -k (\S+)", text)
    directories = {d.rstrip("`'\").,;") for d in found}
    assert Path("manifests/base") in {Path(d) for d in directories}
    for directory in directories:
        if directory.startswith("manifests/"):
            assert (ROOT / directory / KUSTOMIZATION).is_file(), directory
            if kustomize_problem() is None:
                assert kustomize_build(ROOT / directory), directory
    for path in re.findall(r"kubectl (?:apply|delete) -f (\S+)", text):
        path = path.rstrip("`'\").,;")
        if path.startswith("manifests/"):
            assert (ROOT / path).exists(), path
            assert not (ROOT / path / KUSTOMIZATION).exists(), f"{path}: use -k"


@needs_kustomize
def test_readme_own_overlay_sets_the_image_and_the_pools(tmp_path: Path) -> None:
    """The README's "Your own overlay", written out as it says (its path to the base made
    relative to where the test writes it) with a config.yaml of its own, renders: the image is
    the one it names, the ConfigMap keeps its name and holds that config, the rest is the
    base's."""
    section = readme_section("Deploying")
    own = section[section.index("### Your own overlay") :].split("\n### ")[0]
    (block,) = re.findall(r"```yaml\n(.*?)```", own, re.S)
    site = tmp_path / "site"
    site.mkdir()
    relative = os.path.relpath(BASE, site)
    (site / KUSTOMIZATION).write_text(block.replace("../manifests/base", relative))
    config = copy.deepcopy(deployment_of("base").config_document())
    config["resourceList"] = config["resourceList"][:1]
    config["resourceList"][0]["resourceName"] = "site-red"
    (site / "config.yaml").write_text(yaml.safe_dump(config))
    own_site = Deployment("site", list(kustomize_build(site)))
    image = yaml.safe_load(block)["images"][0]
    assert own_site.container()["image"] == f"{image['newName']}:{image['newTag']}"
    assert own_site.config_document() == config
    assert parse_config(own_site.config_document()).resource_list[0].resource_name == "site-red"
    (volume,) = [v for v in own_site.pod()["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == "xpu-bridge-config"
    base = deployment_of("base")
    assert own_site.pod()["volumes"] == base.pod()["volumes"]
    assert own_site.container()["args"] == base.container()["args"]


# --- Dockerfile -----------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    instructions = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, rest in dockerfile_instructions():
        if keyword == "FROM":
            stages.append([])
        assert stages, f"{keyword} before the first FROM"
        stages[-1].append((keyword, rest))
    return stages


def last(stage: list[tuple[str, str]], keyword: str) -> str:
    values = [rest for k, rest in stage if k == keyword]
    assert values, f"no {keyword} in stage {stage[0][1]}"
    return values[-1]


def test_dockerfile_builds_as_non_root_and_runs_as_root() -> None:
    build, final = dockerfile_stages()
    _, _, name = build[0][1].partition(" AS ")
    assert name and f"from={name}" in last(final, "RUN")
    build_keywords = [k for k, _ in build]
    build_user_at = build_keywords.index("USER")
    assert build[build_user_at][1] not in {"root", "0"}
    wheel_at = next(i for i, (k, rest) in enumerate(build) if k == "RUN" and "wheel" in rest)
    assert build_user_at < wheel_at
    assert last(final, "USER") == "root"
    # Both stages on a Python that requires-python allows (>=3.11).
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = tuple(int(x) for x in requires.removeprefix(">=").split("."))
    for stage in (build, final):
        version = re.match(r"python:(\d+)\.(\d+)-slim", stage[0][1].split()[0])
        assert version, stage[0][1]
        assert tuple(int(x) for x in version.groups()) >= minimum


def test_dockerfile_entrypoint_is_the_console_script_and_cmd_parses() -> None:
    _, final = dockerfile_stages()
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert json.loads(last(final, "ENTRYPOINT")) == ["xpu-bridge"]
    assert "xpu-bridge" in scripts
    cmd = json.loads(last(final, "CMD"))
    args = build_parser().parse_args(cmd)
    assert args.command == "run"
    assert str(args.config) == flag_value(deployment_of("base").container()["args"], "--config")


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.removeprefix("!").strip("/")
        regex = ""
        for token in re.split(r"(\*\*/|\*\*|\*|\?)", body):
            regex += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
                token, re.escape(token)
            )
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_what_the_build_copies_and_nothing_else() -> None:
    build, _ = dockerfile_stages()
    sources = [
        source
        for keyword, rest in build
        if keyword == "COPY"
        for source in [w for w in rest.split() if not w.startswith("--")][:-1]
    ]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in packages:
        assert package.removesuffix("*") in sources, f"package {package} is not copied"
    assert pyproject["project"]["readme"] in sources
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for source in sources:
        files = [source] if (ROOT / source).is_file() else []
        files += [
            str(p.relative_to(ROOT))
            for p in (ROOT / source).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        ]
        assert files, source
        for path in files:
            assert not dockerignore_excludes(path, patterns), f"{path} is left out of the context"
    for path in (".venv/bin/python", ".git/HEAD", "tests/test_cli.py", "xpu_bridge/__pycache__/x"):
        assert dockerignore_excludes(path, patterns), f"{path} is sent to the build"
