"""The release hook's socket: root-only, one JSON line each way, for a CNI's DEL.

The protocol is one JSON line each way: `{"deviceId": "0000:3b:02.1"}` in, and
`{"released": true|false, "message": "...", "port": "..."}` out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from xpu_bridge.common.sockets import owner_only, prepare_socket, remove_stale_socket
from xpu_bridge.release.hook import ReleaseResult

log = logging.getLogger(__name__)

MAX_REQUEST = 4096
READ_TIMEOUT = 5.0


class ReleaseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    device_id: str = Field(alias="deviceId", min_length=1, max_length=128)


def encode(result: ReleaseResult) -> bytes:
    body = {"released": result.released, "message": result.message, "port": result.port}
    return json.dumps(body).encode() + b"\n"


class ReleaseHookServer:
    """Serves the hook; the socket is made 0600 so only root (the CNI) can use it."""

    def __init__(self, path: Path, release: Callable[[str], Awaitable[ReleaseResult]]) -> None:
        self.path = path
        self._release = release
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        prepare_socket(self.path, "release.hookSocket")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with owner_only():
            listener.bind(str(self.path))  # 0600 from the moment it exists
        self._server = await asyncio.start_unix_server(
            self._handle, sock=listener, limit=MAX_REQUEST
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            with contextlib.suppress(OSError):  # not ours any more: leave it be
                remove_stale_socket(self.path, "release.hookSocket")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            result = await self._answer(reader)
            writer.write(encode(result))
            await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> ReleaseResult:
        try:
            line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
            request = ReleaseRequest.model_validate_json(line)
        except (TimeoutError, ValueError, asyncio.LimitOverrunError) as error:
            message = _request_error(error)
            log.warning("release hook: bad request: %s", message)
            return ReleaseResult(False, f"bad request: {message}")
        result = await self._release(request.device_id)
        log.info("release hook: device %s: %s", request.device_id, result.message)
        return result


def _request_error(error: Exception) -> str:
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "request"
        return f'{where}: {first["msg"]}; send one line like {{"deviceId": "0000:3b:02.1"}}'
    if isinstance(error, TimeoutError):
        return f"no request line within {READ_TIMEOUT:g}s"
    return f"request longer than {MAX_REQUEST} bytes"


async def request_release(path: Path, device_id: str, timeout: float = 30.0) -> ReleaseResult:
    """Client side, used by `xpu-bridge release`."""
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), timeout)
    try:
        writer.write(json.dumps({"deviceId": device_id}).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
    finally:
        writer.close()
    answer = json.loads(line)
    return ReleaseResult(bool(answer["released"]), str(answer["message"]), answer.get("port"))
