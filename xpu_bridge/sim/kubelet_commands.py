"""`xpu-bridge sim-kubelet`: serve a simulated kubelet alone, and admit, delete and list pods.

`serve` runs a SimKubelet in DIR (the layout of layout.py) with its control socket; the
other commands talk to that socket. Errors name the flag or argument, the problem and the fix.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import cast

from xpu_bridge.cli import UsageError
from xpu_bridge.common.sockets import SocketInUse
from xpu_bridge.config import DPU_VENDOR_PLUGIN, AgentApi
from xpu_bridge.ops.reports import table
from xpu_bridge.sim.kubelet import SimKubelet
from xpu_bridge.sim.kubelet.control import ControlError, ControlServer, call
from xpu_bridge.sim.kubelet.control_docs import (
    AdmitAnswer,
    AllocationDoc,
    Answer,
    PodsAnswer,
    Request,
)
from xpu_bridge.sim.layout import NodeLayout
from xpu_bridge.sim.node import RED, VSP_INTERFACES, write_node_files
from xpu_bridge.sim.operator import program, sim_kubelet_commands

EXIT_REFUSED = 1


async def serve(directory: Path, api: AgentApi, stop: asyncio.Event) -> int:
    """Serve until `stop`; the fake sysfs and config are written unless they exist."""
    layout = NodeLayout(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        kubelet = SimKubelet(layout.kubelet_dir, layout.pod_resources_socket)
    except (OSError, ValueError) as error:
        raise UsageError(
            f"--dir: cannot serve in {directory}: {error}; choose a shorter or writable --dir"
        ) from None
    control = ControlServer(kubelet, layout.control_socket)
    try:
        await control.start()
    except SocketInUse:
        raise UsageError(
            f"--dir: a sim-kubelet already serves in {directory}; stop it (Ctrl-C in its "
            "shell) or choose another --dir"
        ) from None
    try:
        await kubelet.start()
        written = write_node_files(layout, api)
        vendor = api == DPU_VENDOR_PLUGIN
        agent = ["--listen", f"unix://{layout.agent_socket(vendor)}"]
        if vendor:
            agent = ["--api", DPU_VENDOR_PLUGIN, "--interfaces", str(VSP_INTERFACES), *agent]
        for line in sim_kubelet_commands(layout, agent, RED, written):
            print(line, flush=True)
        await stop.wait()
    finally:
        await kubelet.stop()
        await control.stop()
    return 0


async def admit(
    directory: Path,
    pod: str,
    namespace: str,
    container: str,
    requests: dict[str, int],
    as_json: bool = False,
) -> int:
    """Admit a pod with one container; 1 when the kubelet refuses it."""
    request: Request = {
        "op": "admit",
        "pod": pod,
        "namespace": namespace,
        "containers": [{"name": container, "requests": requests}],
    }
    try:
        answer = await _call(directory, request)
    except ControlError as error:
        if error.kind != "refused":
            raise _usage(directory, pod, error) from None
        print(f"pod {namespace}/{pod}: refused by the kubelet ({error.reason}): {error.message}")
        return EXIT_REFUSED
    print(json.dumps(answer, indent=2) if as_json else _admitted(cast(AdmitAnswer, answer)))
    return 0


async def delete(directory: Path, pod: str, namespace: str) -> int:
    try:
        await _call(directory, {"op": "delete", "pod": pod, "namespace": namespace})
    except ControlError as error:
        raise _usage(directory, pod, error) from None
    print(
        f"pod {namespace}/{pod}: deleted; PodResources no longer lists it, and the daemon "
        "releases its ports within two release passes"
    )
    return 0


async def pods(directory: Path, as_json: bool = False) -> int:
    try:
        answer = await _call(directory, {"op": "pods"})
    except ControlError as error:
        raise _usage(directory, "", error) from None
    print(json.dumps(answer, indent=2) if as_json else _pods(cast(PodsAnswer, answer)))
    return 0


async def _call(directory: Path, request: Request) -> Answer:
    """The answer of the sim-kubelet serving in `directory` (ControlError for an error)."""
    socket = NodeLayout(directory).control_socket
    try:
        answer = await call(socket, request)
    except (OSError, TimeoutError, ValueError) as error:
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        raise UsageError(
            f"--dir: no sim-kubelet answers at {socket} ({reason}); start one with "
            f"`{program()} sim-kubelet --dir {directory}`"
        ) from None
    return answer


def _usage(directory: Path, pod: str, error: ControlError) -> UsageError:
    prog = program()
    where = f"the sim-kubelet in {directory}"
    if error.kind == "unknown-resource":
        return UsageError(
            f"--resource: {error.message}; ask for a registered resource, or start "
            f"`{prog} run` with --kubelet-dir {NodeLayout(directory).kubelet_dir} "
            f"(`{prog} sim-kubelet --dir {directory}` prints the whole command) first"
        )
    if error.kind == "pod-exists":
        return UsageError(
            f"POD: {error.message} in {where}; delete it first "
            f"(`{prog} sim-kubelet delete --dir {directory} {pod}`) or choose another name"
        )
    if error.kind == "no-such-pod":
        return UsageError(
            f"POD: {error.message} in {where}; "
            f"`{prog} sim-kubelet pods --dir {directory}` lists the pods"
        )
    return UsageError(f"--dir: {where} refused the request: {error.message}")


def _admitted(answer: AdmitAnswer) -> str:
    lines = [
        f"pod {answer['namespace']}/{answer['pod']}: admitted in {answer['milliseconds']:.0f} ms"
    ]
    for item in answer["allocations"]:
        lines.extend(_allocation(item))
    return "\n".join(lines)


def _allocation(item: AllocationDoc) -> list[str]:
    lines = [f"container {item['container']}, {item['resource']}: {', '.join(item['devices'])}"]
    lines += [f"  env {name}={value}" for name, value in item["envs"].items()]
    lines += [
        f"  mount {m['hostPath']} -> {m['containerPath']}{' (read-only)' if m['readOnly'] else ''}"
        for m in item["mounts"]
    ]
    lines += [
        f"  device {d['hostPath']} -> {d['containerPath']} ({d['permissions']})"
        for d in item["deviceNodes"]
    ]
    lines += [f"  annotation {name}={value}" for name, value in item["annotations"].items()]
    return lines


def _pods(answer: PodsAnswer) -> str:
    resources = [
        (r["name"], str(r["devices"]), str(r["healthy"]), r["socket"]) for r in answer["resources"]
    ]
    lines = [
        table(("RESOURCE", "DEVICES", "HEALTHY", "PLUGIN SOCKET"), resources)
        if resources
        else "no resources registered yet: start `xpu-bridge run` against this kubelet"
    ]
    held = [
        (
            f"{pod['namespace']}/{pod['name']}" + (" (deleted)" if pod["deleted"] else ""),
            h["container"],
            h["resource"],
            ", ".join(h["devices"]),
        )
        for pod in answer["pods"]
        for h in pod["held"] or [{"container": "-", "resource": "-", "devices": ["-"]}]
    ]
    lines.append("")
    lines.append(table(("POD", "CONTAINER", "RESOURCE", "DEVICES"), held) if held else "no pods")
    return "\n".join(lines)
