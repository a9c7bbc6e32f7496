"""Calls to the host agent: one budget per operation, retries of transient codes, observation."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc
from google.protobuf.message import Message
from tenacity import AsyncRetrying, retry_if_exception, stop_before_delay, wait_random_exponential

from xpu_bridge.common.errors import grpc_status_text
from xpu_bridge.common.loops import loop_time
from xpu_bridge.config import HostAgentConfig
from xpu_bridge.hostagent.ports import PortError
from xpu_bridge.hostagent.tls import client_certificate_validity, handshake_hint

TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)
REFUSED = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
    }
)

TLS_TROUBLE = re.compile(r"ssl|tls|handshake|certificate", re.IGNORECASE)

Request = TypeVar("Request", bound=Message)
Reply = TypeVar("Reply", bound=Message)
RequestObserver = Callable[[str, str, float], None]
"""Told (method, status code name, seconds) after every RPC: metrics and agent health."""


def transient(error: BaseException) -> bool:
    return isinstance(error, grpc.aio.AioRpcError) and error.code() in TRANSIENT


@dataclass(frozen=True, slots=True)
class Budget:
    """Absolute deadline on the event loop clock shared by every call of one operation."""

    deadline: float

    def remaining(self) -> float:
        return self.deadline - loop_time()


class AgentCaller:
    """Makes the RPCs of one host agent: every attempt within `rpcTimeoutSeconds` and the
    operation's budget, transient failures retried with jittered backoff, each one observed."""

    def __init__(
        self,
        config: HostAgentConfig,
        observer: RequestObserver | None = None,
        refused_hint: str = "check resourceList[].bridgePort against its bridges",
    ) -> None:
        """`refused_hint` tells the operator what to check when the agent refuses a call."""
        self.config = config
        self._observer = observer
        self._refused_hint = refused_hint
        self._client_validity = client_certificate_validity(config.tls)

    @property
    def endpoint(self) -> str:
        return self.config.endpoint

    def budget(self, seconds: float | None = None) -> Budget:
        total = self.config.attach_timeout_seconds if seconds is None else seconds
        return Budget(loop_time() + total)

    async def call(
        self,
        method: str,
        rpc: grpc.aio.UnaryUnaryMultiCallable[Request, Reply],
        request: Request,
        budget: Budget,
        *,
        retry: bool = True,
    ) -> Reply:
        """The first attempt goes straight out: Allocate sits inside pod admission, and the
        retry machinery is only worth its cost once something failed. A call that is not
        idempotent passes retry=False."""
        try:
            return await self._once(method, rpc, request, budget)
        except grpc.aio.AioRpcError as error:
            if not retry or not transient(error):
                raise
        retrying = AsyncRetrying(
            retry=retry_if_exception(transient),
            wait=wait_random_exponential(multiplier=0.02, max=1.0),
            stop=stop_before_delay(max(budget.remaining(), 0.0)),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._once(method, rpc, request, budget)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(
        self,
        method: str,
        rpc: grpc.aio.UnaryUnaryMultiCallable[Request, Reply],
        request: Request,
        budget: Budget,
    ) -> Reply:
        timeout = min(self.config.rpc_timeout_seconds, budget.remaining())
        if timeout <= 0:
            raise PortError(f"no time left for {method} at {self.endpoint}", unreachable=True)
        loop = asyncio.get_running_loop()
        started = loop.time()
        code = "OK"
        try:
            return await rpc(request, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            code = error.code().name
            raise
        finally:
            if self._observer is not None:
                self._observer(method, code, loop.time() - started)

    def _tls_trouble(self, details: str) -> bool:
        """OpenSSL's words, or, over TLS, an agent that hung up before answering (what a
        server that wants a client certificate does to a client without one)."""
        if self.config.tls is None:
            return False
        return bool(TLS_TROUBLE.search(details)) or "Socket closed" in details

    def failure(self, what: str, error: grpc.aio.AioRpcError) -> PortError:
        """The message names the call, the agent's answer, and what the operator can check."""
        unreachable = error.code() in TRANSIENT
        details = error.details() or ""
        if unreachable and self.config.tls is not None and self._tls_trouble(details):
            why = handshake_hint(self.config.tls, details, self._client_validity)
            hint = f"the TLS handshake with {self.endpoint} failed: {why}"
        elif unreachable:
            hint = f"is the host agent running and reachable at {self.endpoint}?"
        elif error.code() in REFUSED:
            hint = f"the agent refused it: {self._refused_hint}"
        else:
            hint = "see the host agent's log"
        where = f" at {self.endpoint}" if unreachable else ""
        return PortError(
            f"{what} failed{where}: {grpc_status_text(error)} ({hint})", unreachable=unreachable
        )
