"""Deployment artefacts: manifests/ against the Kubernetes schemas and the daemon, Dockerfile."""

from __future__ import annotations

import argparse
import copy
import json
import re
import socket
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml

from xpu_bridge.cli import build_parser
from xpu_bridge.config import ConfigError, parse_config

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
# Kubernetes version whose OpenAPI schemas (shipped in kubernetes-validate) we validate against.
K8S_VERSION = "1.34"
NAD_API_VERSION = "k8s.cni.cncf.io/v1"
RESOURCE_NAME_ANNOTATION = "k8s.v1.cni.cncf.io/resourceName"
NETWORKS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"
CLUSTER_SCOPED = {"Namespace"}


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def manifest_files() -> list[Path]:
    return sorted(MANIFESTS.rglob("*.yaml"))


def all_docs() -> list[dict[str, Any]]:
    return [doc for path in manifest_files() for doc in load(path)]


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        doc
        for doc in all_docs()
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''} in manifests/, found {len(found)}"
    return found[0]


def daemonset_pod() -> dict[str, Any]:
    return one("DaemonSet", "xpu-bridge")["spec"]["template"]["spec"]


def daemon_container() -> dict[str, Any]:
    (container,) = daemonset_pod()["containers"]
    return container


def config_document() -> dict[str, Any]:
    return yaml.safe_load(one("ConfigMap", "xpu-bridge-config")["data"]["config.yaml"])


def mount_of(volume_name: str) -> dict[str, Any]:
    (mount,) = [m for m in daemon_container()["volumeMounts"] if m["name"] == volume_name]
    return mount


def volume_by_host_path(path: str) -> dict[str, Any]:
    found = [v for v in daemonset_pod()["volumes"] if v.get("hostPath", {}).get("path") == path]
    assert len(found) == 1, f"expected one hostPath volume for {path}, found {len(found)}"
    return found[0]


def flag_value(args: list[str], flag: str) -> str:
    assert flag in args, f"{flag} missing from {args}"
    return args[args.index(flag) + 1]


def is_under(path: str | Path, directory: str | Path) -> bool:
    return PurePosixPath(path).is_relative_to(PurePosixPath(directory))


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """CI has no internet: schemas must come from the installed package, never a download."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


# --- Kubernetes schemas ---------------------------------------------------------------------


def test_manifests_hold_every_piece_of_the_deployment() -> None:
    kinds = sorted(doc["kind"] for doc in all_docs())
    assert kinds == sorted(
        [
            "Namespace",
            "ServiceAccount",
            "ConfigMap",
            "DaemonSet",
            "Pod",
            "NetworkAttachmentDefinition",
        ]
    )


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_manifest_matches_the_kubernetes_schema(path: Path) -> None:
    docs = [doc for doc in load(path) if doc.get("apiVersion") != NAD_API_VERSION]
    for doc in docs:
        # strict: unknown fields (typos such as `readonly:`) are errors, as kubectl's are.
        used = kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        assert used == K8S_VERSION


def test_strict_schema_catches_a_misspelt_field() -> None:
    broken = copy.deepcopy(one("DaemonSet", "xpu-bridge"))
    broken["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0]["readonly"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_apply_of_the_directory_creates_the_namespace_before_its_objects() -> None:
    """`kubectl apply -f manifests/` goes file by file in name order and does not recurse."""
    created: set[str] = set()
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for doc in load(path):
            assert doc["apiVersion"] != NAD_API_VERSION, f"{path.name}: needs Multus' CRD"
            if doc["kind"] in CLUSTER_SCOPED:
                created.add(doc["metadata"]["name"])
            else:
                namespace = doc["metadata"].get("namespace")
                assert namespace in created, f"{path.name}: namespace {namespace} not created yet"


def test_network_attachment_is_a_well_formed_nad_for_a_configured_pool() -> None:
    nad = one("NetworkAttachmentDefinition", "red-net")
    assert nad["apiVersion"] == NAD_API_VERSION
    assert set(nad) == {"apiVersion", "kind", "metadata", "spec"}
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", nad["metadata"]["name"])
    resource = nad["metadata"]["annotations"][RESOURCE_NAME_ANNOTATION]
    config = parse_config(config_document())
    assert resource in {config.full_resource_name(r) for r in config.resource_list}
    assert set(nad["spec"]) == {"config"}
    cni = json.loads(nad["spec"]["config"])
    assert cni["cniVersion"] and cni["type"] and cni["name"] == nad["metadata"]["name"]
    # Multus hands the allocated device over only to plugins that declare the capability.
    assert cni.get("capabilities", {}).get("deviceID") is True


def test_example_pod_asks_for_one_device_and_names_the_network() -> None:
    pod = one("Pod")
    nad = one("NetworkAttachmentDefinition", pod["metadata"]["annotations"][NETWORKS_ANNOTATION])
    resource = nad["metadata"]["annotations"][RESOURCE_NAME_ANNOTATION]
    assert pod["metadata"].get("namespace") == nad["metadata"].get("namespace")
    (container,) = pod["spec"]["containers"]
    assert container["resources"]["limits"][resource] == "1"
    assert container["resources"]["requests"][resource] == "1"


# --- ConfigMap ------------------------------------------------------------------------------


def test_configmap_config_is_accepted_by_the_daemon() -> None:
    try:
        config = parse_config(config_document())
    except ConfigError as error:
        pytest.fail("config.yaml in the ConfigMap is rejected: " + "; ".join(error.problems))
    names = {config.full_resource_name(r): r for r in config.resource_list}
    assert names["opi.io/red"].bridge_port.type == "access"
    assert names["opi.io/red"].bridge_port.logical_bridges == [
        "//network.opiproject.org/bridges/red"
    ]


def test_configmap_host_agent_socket_is_in_a_mounted_host_directory() -> None:
    endpoint = parse_config(config_document()).host_agent.endpoint
    socket_path = endpoint.removeprefix("unix://")
    mounts = [m["mountPath"] for m in daemon_container()["volumeMounts"]]
    assert endpoint.startswith("unix://")
    assert any(is_under(socket_path, mount) for mount in mounts), socket_path


# --- DaemonSet ------------------------------------------------------------------------------


def test_daemonset_runs_on_the_host_network_as_a_node_critical_pod() -> None:
    pod = daemonset_pod()
    assert pod["hostNetwork"] is True
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["serviceAccountName"] == one("ServiceAccount")["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is False  # it never talks to the API server


def test_daemonset_runs_as_root_without_privileges_or_capabilities() -> None:
    """Root owns the kubelet's directories and sockets; nothing else needs more than that."""
    pod = daemonset_pod()
    context = daemon_container()["securityContext"]
    assert context.get("privileged", False) is False
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}  # and none added back
    assert context["readOnlyRootFilesystem"] is True
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert context["runAsUser"] == 0 and context.get("runAsNonRoot", False) is False
    for key in ("hostPID", "hostIPC"):
        assert not pod.get(key, False), key
    assert "initContainers" not in pod  # no other container that could be privileged


def test_daemonset_writes_only_the_host_directories_it_must() -> None:
    """The kubelet's plugin directory (sockets, lock), the device-info directory and the release
    hook's; sysfs, the PodResources and host-agent socket directories are read-only (connecting
    needs no write)."""
    writable = {
        volume["hostPath"]["path"]
        for volume in daemonset_pod()["volumes"]
        if "hostPath" in volume and not mount_of(volume["name"]).get("readOnly", False)
    }
    assert writable == {
        "/var/lib/kubelet/device-plugins",
        "/var/run/k8s.cni.cncf.io/devinfo/dp",
        "/run/xpu-bridge",
    }


def test_the_hook_socket_the_configmap_suggests_is_on_a_host_mount() -> None:
    """Uncommenting release.hookSocket works: its directory is the host's, at the same path."""
    text = (ROOT / "manifests/02-configmap.yaml").read_text()
    (path,) = re.findall(r"# hookSocket: (\S+)", text)
    directory = str(Path(path).parent)
    volume = volume_by_host_path(directory)
    assert mount_of(volume["name"])["mountPath"] == directory


def test_the_namespace_admits_the_host_network_and_host_paths() -> None:
    labels = one("Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"


def test_daemonset_mounts_the_pod_resources_directory_not_the_socket() -> None:
    volume = volume_by_host_path("/var/lib/kubelet/pod-resources")
    assert volume["hostPath"]["type"] == "Directory"
    assert mount_of(volume["name"])["mountPath"] == "/var/lib/kubelet/pod-resources"


def test_daemonset_mounts_sys_read_only() -> None:
    mount = mount_of(volume_by_host_path("/sys")["name"])
    assert mount["mountPath"] == "/sys"
    assert mount["readOnly"] is True


def test_daemonset_host_paths_are_where_the_run_defaults_look() -> None:
    """Args pass no path flags, so each default must sit in a host directory mounted in place."""
    defaults = build_parser().parse_args(["run", "--config", "/unused"])
    for path in (
        defaults.kubelet_dir,
        defaults.pod_resources_socket,
        defaults.sysfs_root,
        defaults.devinfo_dir,
    ):
        volume = next(
            (
                v
                for v in daemonset_pod()["volumes"]
                if "hostPath" in v and is_under(path, v["hostPath"]["path"])
            ),
            None,
        )
        assert volume is not None, f"{path} is not on a mounted host path"
        assert mount_of(volume["name"])["mountPath"] == volume["hostPath"]["path"]
    for volume in daemonset_pod()["volumes"]:
        if "hostPath" in volume:
            assert mount_of(volume["name"])["mountPath"] == volume["hostPath"]["path"]


def test_daemonset_args_read_the_config_from_the_configmap_mount() -> None:
    args = daemon_container()["args"]
    config_path = PurePosixPath(flag_value(args, "--config"))
    (volume,) = [v for v in daemonset_pod()["volumes"] if "configMap" in v]
    configmap = one("ConfigMap")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert str(config_path.parent) == mount_of(volume["name"])["mountPath"]
    assert config_path.name in configmap["data"]
    assert args.index("--log-format") < args.index("run") < args.index("--config")


def test_daemonset_probes_and_scrape_annotations_use_the_metrics_port() -> None:
    container = daemon_container()
    port = int(flag_value(container["args"], "--metrics-address").rpartition(":")[2])
    liveness = container["livenessProbe"]["httpGet"]
    readiness = container["readinessProbe"]["httpGet"]
    assert (liveness["path"], liveness["port"]) == ("/healthz", port)
    assert (readiness["path"], readiness["port"]) == ("/readyz", port)
    annotations = one("DaemonSet")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"
    assert [p["containerPort"] for p in container["ports"]] == [port]


def test_daemonset_selects_its_own_pods_and_updates_one_node_at_a_time() -> None:
    spec = one("DaemonSet")["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert spec["updateStrategy"]["type"] == "RollingUpdate"
    rolling = spec["updateStrategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 1
    # Two pods on one node would fight over the plugin sockets and the host port.
    assert rolling.get("maxSurge", 0) == 0
    resources = daemon_container()["resources"]
    assert set(resources) == {"requests", "limits"}


def test_daemonset_args_parse_with_the_cli() -> None:
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    known = set(parser._option_string_actions) | set(commands.choices["run"]._option_string_actions)
    missing = {"--log-format", "--metrics-address"} - known
    if missing:
        pytest.skip(f"the CLI does not have {sorted(missing)} yet")
    args = parser.parse_args(daemon_container()["args"])
    assert args.command == "run"
    assert args.config == Path("/etc/xpu-bridge/config.yaml")


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
    assert str(args.config) == flag_value(daemon_container()["args"], "--config")


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
