"""The operator commands the simulators print: exact command lines that work against them.

`simulate --duration N` prints them for its node after the table; `sim-kubelet --dir DIR`
prints how to start a sim-agent and a real `xpu-bridge run` against it, and what to try next.
Every line a user may paste is indented by two spaces; `#` starts the comment after it.
"""

from __future__ import annotations

import shlex
import shutil
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from xpu_bridge.sim.layout import NodeLayout

INDENT = "  "


def program(argv0: str | None = None) -> str:
    """How to run xpu-bridge again, the way this process was run: `xpu-bridge` when that is
    what PATH finds, else the path it was run by, else `python -m xpu_bridge.cli`."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    if Path(argv0).name != "xpu-bridge":
        return f"{shlex.quote(sys.executable)} -m xpu_bridge.cli"
    found = shutil.which("xpu-bridge")
    if found is not None and Path(found).resolve() == Path(argv0).resolve():
        return "xpu-bridge"
    return shlex.quote(argv0)


def free_loopback_port() -> int:
    """A TCP port nothing listens on now (for a command the user starts a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def command(prog: str, *args: str | Path, comment: str = "") -> str:
    line = INDENT + " ".join([prog, *(shlex.quote(str(a)) for a in args)])
    return f"{line}   # {comment}" if comment else line


def daemon_path_flags(layout: NodeLayout) -> list[str | Path]:
    """The flags `run` (and `check-config`) need for the node's kubelet, sysfs and devinfo."""
    return [
        "--kubelet-dir",
        layout.kubelet_dir,
        "--pod-resources-socket",
        layout.pod_resources_socket,
        "--sysfs-root",
        layout.sysfs_root,
        "--devinfo-dir",
        layout.devinfo_dir,
    ]


def pods_command(prog: str, layout: NodeLayout) -> str:
    return command(prog, "sim-kubelet", "pods", "--dir", layout.root, comment="pods and pools")


def admit_command(prog: str, layout: NodeLayout, pod: str, resource: str) -> str:
    return command(
        prog,
        "sim-kubelet",
        "admit",
        "--dir",
        layout.root,
        pod,
        "--resource",
        f"{resource}=1",
        comment="Allocate's env, mounts, devices",
    )


def delete_command(prog: str, layout: NodeLayout, pod: str) -> str:
    return command(
        prog,
        "sim-kubelet",
        "delete",
        "--dir",
        layout.root,
        pod,
        comment="the reconciler releases its ports",
    )


def daemon_commands(prog: str, layout: NodeLayout, metrics: str) -> list[str]:
    """What an operator runs against a daemon: status, metrics, health, inventory, checks."""
    return [
        command(prog, "status", "--metrics-address", metrics),
        f"{INDENT}curl -s http://{metrics}/metrics | grep xpu_bridge_",
        f"{INDENT}curl -s http://{metrics}/readyz",
        command(prog, "inventory", "--config", layout.config, "--sysfs-root", layout.sysfs_root),
        command(prog, "check-config", "--config", layout.config, *daemon_path_flags(layout)),
    ]


def where(layout: NodeLayout) -> list[str]:
    return [
        f"{INDENT}device plugins  {layout.kubelet_dir}  (kubelet.sock, one socket per pool)",
        f"{INDENT}pod resources   {layout.pod_resources_socket}",
        f"{INDENT}device info     {layout.devinfo_dir}  (one file per attached device)",
        f"{INDENT}release hook    {layout.hook_socket}  (release.hookSocket)",
        f"{INDENT}fake sysfs      {layout.sysfs_root}",
        f"{INDENT}config          {layout.config}",
    ]


def simulate_commands(
    layout: NodeLayout,
    metrics: str,
    held: tuple[str, str],
    resource: str,
    duration: float,
    keep: bool,
    prog: str | None = None,
) -> list[str]:
    """After simulate's table: `held` is (pod, device ID) of a device a pod holds now."""
    prog = program() if prog is None else prog
    pod, device = held
    kept = "it stays after exit: --keep" if keep else "removed at exit; --keep keeps it"
    return [
        f"The node runs for {duration:g}s (Ctrl-C or SIGTERM stops it). From another shell:",
        *daemon_commands(prog, layout, metrics)[:3],
        command(
            prog,
            "release",
            "--socket",
            layout.hook_socket,
            device,
            comment=f"refused while pod {pod} holds it",
        ),
        pods_command(prog, layout),
        admit_command(prog, layout, "web-4", resource),
        delete_command(prog, layout, pod),
        *daemon_commands(prog, layout, metrics)[3:],
        f"Where things are ({kept}):",
        *where(layout),
    ]


def sim_kubelet_commands(
    layout: NodeLayout,
    agent: Sequence[str],
    resource: str,
    written: Sequence[str],
    metrics: str | None = None,
    prog: str | None = None,
) -> list[str]:
    """What `sim-kubelet --dir DIR` prints once it serves: `agent` is sim-agent's arguments."""
    prog = program() if prog is None else prog
    metrics = metrics or f"127.0.0.1:{free_loopback_port()}"
    run = ["run", "--config", layout.config, *daemon_path_flags(layout)]
    return [
        f"sim-kubelet serving in {layout.root} (Ctrl-C or SIGTERM stops it):",
        f"{INDENT}registration    {layout.kubelet_socket}",
        f"{INDENT}pod resources   {layout.pod_resources_socket}",
        f"{INDENT}control         {layout.control_socket}",
        *(f"{INDENT}wrote {line}" for line in written),
        "Start a simulated host agent and a real daemon against it, each in its own shell:",
        command(prog, "sim-agent", *agent),
        command(prog, *run, "--metrics-address", metrics),
        "Then:",
        admit_command(prog, layout, "web-1", resource),
        pods_command(prog, layout),
        command(prog, "status", "--metrics-address", metrics),
        command(
            prog,
            "release",
            "--socket",
            layout.hook_socket,
            "DEVICE",
            comment="a device admit printed: refused while a pod holds it",
        ),
        delete_command(prog, layout, "web-1"),
    ]
