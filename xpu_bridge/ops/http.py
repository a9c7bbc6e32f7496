"""Operations endpoint: /metrics, /healthz, /readyz and /debug/state on one port, in the event loop.

A few GET routes do not justify a web framework; answering from the event loop itself is also
what makes /healthz meaningful (it fails when the loop is stuck).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from xpu_bridge.common.addresses import parse_host_port
from xpu_bridge.ops.metrics import Metrics
from xpu_bridge.ops.state import DebugState

log = logging.getLogger(__name__)

READ_TIMEOUT = 5.0
MAX_HEADER_LINES = 100
MAX_LINE = 8192
MAX_CONNECTIONS = 32
REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed",
           431: "Request Header Fields Too Large", 503: "Service Unavailable"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


class OpsServer:
    """Serves the four routes; at most MAX_CONNECTIONS requests at a time."""

    def __init__(
        self,
        address: str,
        metrics: Metrics,
        not_live: Callable[[], str | None],
        not_ready: Callable[[], str | None],
        state: Callable[[], DebugState],
        remote_state: bool = False,
    ) -> None:
        """/debug/state names every pod's devices and ports: it answers only clients on
        loopback unless `remote_state` (--debug-state-remote)."""
        self.host, self.port = parse_host_port(address)
        self._remote_state = remote_state
        self._metrics = metrics
        self._not_live = not_live
        self._not_ready = not_ready
        self._state = state
        self._server: asyncio.Server | None = None
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, self.host, self.port, limit=MAX_LINE
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("serving /metrics, /healthz, /readyz, /debug/state on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def route(self, method: str, path: str, local: bool = True) -> Response:
        """`local`: the client is on loopback."""
        if method not in ("GET", "HEAD"):
            return Response(405, b"only GET\n")
        path = path.split("?", 1)[0]
        if path == "/metrics":
            return Response(200, generate_latest(self._metrics.registry), CONTENT_TYPE_LATEST)
        if path == "/healthz":
            broken = self._not_live()
            return Response(503, f"{broken}\n".encode()) if broken else Response(200, b"ok\n")
        if path == "/readyz":
            reason = self._not_ready()
            return Response(503, f"{reason}\n".encode()) if reason else Response(200, b"ready\n")
        if path == "/debug/state":
            if not (local or self._remote_state):
                return Response(
                    403,
                    b"/debug/state answers on loopback only (it names every pod's devices); "
                    b"run `xpu-bridge status` on the node, or start with --debug-state-remote\n",
                )
            body = json.dumps(self._state(), indent=2, sort_keys=True).encode() + b"\n"
            return Response(200, body, "application/json")
        return Response(404, b"try /metrics, /healthz, /readyz or /debug/state\n")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._slots.locked():
            writer.close()
            return
        async with self._slots:
            await self._serve(reader, writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                local = _loopback(writer.get_extra_info("peername"))
                response, head_only = await asyncio.wait_for(
                    self._respond(reader, local), READ_TIMEOUT
                )
            except (ValueError, asyncio.LimitOverrunError):
                response, head_only = Response(431, b"request head too large\n"), False
            writer.write(
                f"HTTP/1.1 {response.status} {REASONS[response.status]}\r\n"
                f"Content-Type: {response.content_type}\r\n"
                f"Content-Length: {len(response.body)}\r\nConnection: close\r\n\r\n".encode()
            )
            if not head_only:
                writer.write(response.body)
            await writer.drain()
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader, local: bool) -> tuple[Response, bool]:
        """Parse the request head (the whole head within READ_TIMEOUT) and route it."""
        parts = (await reader.readline()).decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return Response(400, b"bad request line\n"), False
        for _ in range(MAX_HEADER_LINES):
            if (await reader.readline()).strip() == b"":
                break
        else:
            return Response(431, b"too many header lines\n"), False
        method, path = parts[0], parts[1]
        return self.route(method, path, local), method == "HEAD"


def _loopback(peer: object) -> bool:
    """Whether a TCP peer (host, port, ...) is on this machine's loopback."""
    if not isinstance(peer, tuple) or not peer or not isinstance(peer[0], str):
        return False
    try:
        address = ipaddress.ip_address(peer[0].split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback
