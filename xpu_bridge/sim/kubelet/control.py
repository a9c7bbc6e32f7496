"""The sim-kubelet's control socket: admit, delete and list pods, as `kubectl` would make it do.

One JSON line each way (documents in control_docs.py) over a unix socket made 0600, so a
`xpu-bridge sim-kubelet admit` in another shell drives a SimKubelet another process runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from pathlib import Path
from typing import Any, cast

from xpu_bridge.common.sockets import owner_only, prepare_socket, remove_stale_socket

from .control_docs import (
    ERROR_KINDS,
    AdmitAnswer,
    AdmitRequest,
    Answer,
    ContainerDoc,
    DeleteAnswer,
    ErrorKind,
    HeldDoc,
    PodDoc,
    PodsAnswer,
    Request,
    ResourceDoc,
    allocation_doc,
    error_answer,
)
from .model import AdmissionError, Container
from .server import SimKubelet

log = logging.getLogger(__name__)

MAX_LINE = 1 << 20  # an answer carries every env var and mount of a pod
READ_TIMEOUT = 5.0
ANSWER_TIMEOUT = 120.0  # an admission waits for every Allocate, ports UP included


class ControlError(Exception):
    """The sim-kubelet answered with an error document."""

    def __init__(self, kind: ErrorKind, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.reason = reason


class ControlServer:
    """Answers control requests for one SimKubelet, one at a time per connection."""

    def __init__(self, kubelet: SimKubelet, path: Path) -> None:
        self.path = path
        self._kubelet = kubelet
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Refuses (SocketInUse) when another live sim-kubelet serves `path`."""
        prepare_socket(self.path, "sim-kubelet control socket")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with owner_only():
            listener.bind(str(self.path))
        self._server = await asyncio.start_unix_server(self._handle, sock=listener, limit=MAX_LINE)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            with contextlib.suppress(OSError):
                remove_stale_socket(self.path, "sim-kubelet control socket")

    async def answer(self, request: Request) -> Answer:
        if request["op"] == "admit":
            return await self._admit(request)
        if request["op"] == "delete":
            return self._delete(request["pod"], request["namespace"])
        return self._pods()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
                if not line:  # a probe: connected and closed (served() does that)
                    return
                answer = await self.answer(parse_request(json.loads(line)))
            except (TimeoutError, ValueError, asyncio.LimitOverrunError) as error:
                answer = error_answer("bad-request", f"{type(error).__name__}: {error}")
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except OSError as error:  # the client went away; the admission stands
            log.info("sim-kubelet control: client gone: %s", error)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _admit(self, request: AdmitRequest) -> Answer:
        pod, namespace = request["pod"], request["namespace"]
        registered = self._kubelet.resources()
        for container in request["containers"]:
            for resource in container["requests"]:
                if resource not in registered:
                    return error_answer(
                        "unknown-resource",
                        f"{resource} is not registered with the kubelet "
                        f"(registered: {', '.join(registered) or 'none yet'})",
                    )
        if any((p.namespace, p.name) == (namespace, pod) for p in self._kubelet.pods()):
            return error_answer("pod-exists", f"pod {namespace}/{pod} already exists")
        containers = [Container(c["name"], dict(c["requests"])) for c in request["containers"]]
        started = time.monotonic()
        try:
            got = await self._kubelet.admit_pod(pod, namespace, containers=containers)
        except AdmissionError as error:
            return error_answer("refused", error.message, error.reason)
        except ValueError as error:  # admitted under the same name meanwhile
            return error_answer("pod-exists", str(error))
        answer: AdmitAnswer = {
            "ok": True,
            "pod": pod,
            "namespace": namespace,
            "milliseconds": round((time.monotonic() - started) * 1000, 1),
            "allocations": [allocation_doc(item) for item in got],
        }
        return answer

    def _delete(self, pod: str, namespace: str) -> Answer:
        try:
            self._kubelet.delete_pod(pod, namespace)
        except KeyError:
            return error_answer("no-such-pod", f"no pod {namespace}/{pod}")
        answer: DeleteAnswer = {"ok": True, "pod": pod, "namespace": namespace}
        return answer

    def _pods(self) -> PodsAnswer:
        kubelet = self._kubelet
        pods: list[PodDoc] = []
        for view in kubelet.pods():
            held: list[HeldDoc] = [
                {"container": a.container, "resource": a.resource_name, "devices": [*a.device_ids]}
                for a in kubelet.assignments(view.namespace, view.name)
            ]
            pods.append(
                {
                    "namespace": view.namespace,
                    "name": view.name,
                    "deleted": view.deleted,
                    "held": held,
                }
            )
        resources: list[ResourceDoc] = []
        for name in kubelet.resources():
            devices = kubelet.devices(name)
            endpoint = kubelet.endpoint(name)
            resources.append(
                {
                    "name": name,
                    "devices": len(devices),
                    "healthy": sum(1 for d in devices if d.health == "Healthy"),
                    "socket": endpoint.socket_path if endpoint is not None else "",
                }
            )
        return {"ok": True, "resources": resources, "pods": pods}


def parse_request(raw: Any) -> Request:
    """Check a decoded request's shape; ValueError names what is wrong."""
    if not isinstance(raw, dict) or raw.get("op") not in ("admit", "delete", "pods"):
        raise ValueError('a request is an object with "op": "admit", "delete" or "pods"')
    if raw["op"] == "pods":
        return {"op": "pods"}
    for key in ("pod", "namespace"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ValueError(f"{key} must be a non-empty string")
    if raw["op"] == "delete":
        return {"op": "delete", "pod": raw["pod"], "namespace": raw["namespace"]}
    containers = raw.get("containers")
    if not isinstance(containers, list) or not containers:
        raise ValueError("containers must be a non-empty list")
    return {
        "op": "admit",
        "pod": raw["pod"],
        "namespace": raw["namespace"],
        "containers": [_container(c) for c in containers],
    }


def _container(raw: Any) -> ContainerDoc:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"]:
        raise ValueError("each container needs a non-empty name")
    requests = raw.get("requests")
    if not isinstance(requests, dict) or not all(
        isinstance(k, str) and type(v) is int and v >= 0 for k, v in requests.items()
    ):
        raise ValueError("requests maps resource names to device counts (0 or more)")
    return {"name": raw["name"], "requests": dict(requests)}


async def call(path: Path, request: Request, timeout: float = ANSWER_TIMEOUT) -> Answer:
    """Client side: send one request, return the answer; ControlError for an error answer,
    OSError or TimeoutError when nothing answers at `path`."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_unix_connection(str(path), limit=MAX_LINE), READ_TIMEOUT
    )
    try:
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
    finally:
        writer.close()
    if not line:
        raise OSError(f"{path} closed the connection without an answer")
    answer = json.loads(line)
    if not isinstance(answer, dict) or "ok" not in answer:
        raise OSError(f"{path} answered something that is not a sim-kubelet answer")
    if not answer["ok"]:
        error = answer.get("error") or {}
        kind = error.get("kind")
        raise ControlError(
            kind if kind in ERROR_KINDS else "bad-request",
            str(error.get("message", "")),
            str(error.get("reason", "")),
        )
    return cast(Answer, answer)
