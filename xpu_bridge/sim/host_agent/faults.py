"""Fault injection: the run-time fault plan and the interceptor that applies it to every RPC."""

from __future__ import annotations

import asyncio
import functools
import inspect
import math
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar

import grpc

ALL_METHODS = "*"
LOST_REPLY = "simulated connection lost after the call took effect"

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
Gate: TypeAlias = Callable[[Context], Awaitable[None]]
AnyHandler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


@dataclass
class _ErrorRule:
    rate: float
    code: grpc.StatusCode
    message: str


@dataclass
class Faults:
    """Run-time fault plan, consulted on every RPC. Keys are method names such as
    "CreateBridgePort" (or "Check" for health); "*" applies to every method."""

    rng: random.Random
    latency: dict[str, float] = field(default_factory=dict)
    errors: dict[str, _ErrorRule] = field(default_factory=dict)
    queued: dict[str, list[grpc.StatusCode]] = field(default_factory=dict)
    lost_replies: dict[str, int] = field(default_factory=dict)
    unavailable_until: float | None = None

    def empty(self) -> bool:
        """No fault is planned: a call may go straight to its handler."""
        return (
            not (self.latency or self.errors or self.queued or self.lost_replies)
            and self.unavailable_until is None
        )

    def unavailable(self) -> bool:
        return self.unavailable_until is not None and time.monotonic() < self.unavailable_until

    def delay(self, method: str) -> float:
        return self.latency.get(method, self.latency.get(ALL_METHODS, 0.0))

    def error(self, method: str) -> tuple[grpc.StatusCode, str] | None:
        """A queued failure first, then a roll of the seeded dice against the error rate."""
        for key in (method, ALL_METHODS):
            queue = self.queued.get(key)
            if queue:
                return queue.pop(0), f"simulated fault in {method}"
        rule = self.errors.get(method, self.errors.get(ALL_METHODS))
        if rule is not None and rule.rate > 0 and self.rng.random() < rule.rate:
            return rule.code, rule.message
        return None

    def reply_lost(self, method: str) -> bool:
        """Whether this call's reply is lost after its handler ran (one of lose_replies())."""
        for key in (method, ALL_METHODS):
            if self.lost_replies.get(key, 0) > 0:
                self.lost_replies[key] -= 1
                return True
        return False

    # edits, behind FaultControls' methods of the same names -------------------------------

    def set_latency(self, method: str, seconds: float) -> None:
        if seconds > 0:
            self.latency[method] = seconds
        else:
            self.latency.pop(method, None)

    def set_error_rate(
        self, method: str, rate: float, code: grpc.StatusCode, message: str | None
    ) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"error rate must be within 0..1, got {rate}")
        if rate == 0:
            self.errors.pop(method, None)
            return
        text = message or f"simulated fault in {method}"
        self.errors[method] = _ErrorRule(rate=rate, code=code, message=text)

    def fail_next(self, method: str, count: int, code: grpc.StatusCode) -> None:
        self.queued.setdefault(method, []).extend([code] * count)

    def lose_replies(self, method: str, count: int) -> None:
        self.lost_replies[method] = self.lost_replies.get(method, 0) + count

    def set_unavailable(self, seconds: float | None) -> None:
        self.unavailable_until = math.inf if seconds is None else time.monotonic() + seconds

    def clear(self) -> None:
        self.latency.clear()
        self.errors.clear()
        self.queued.clear()
        self.lost_replies.clear()
        self.unavailable_until = None


class FaultControls:
    """The fault-injection methods of a simulator handle, over its `faults` plan."""

    faults: Faults

    def set_latency(self, method: str, seconds: float) -> None:
        """Add `seconds` before `method` (or "*") is handled; 0 removes it."""
        self.faults.set_latency(method, seconds)

    def set_error_rate(
        self,
        method: str,
        rate: float,
        code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
        message: str | None = None,
    ) -> None:
        """Fail `rate` (0..1) of calls to `method` (or "*") with `code`; 0 removes it."""
        self.faults.set_error_rate(method, rate, code, message)

    def fail_next(
        self, method: str, count: int = 1, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    ) -> None:
        """Fail exactly the next `count` calls to `method` (or "*"): deterministic retries."""
        self.faults.fail_next(method, count, code)

    def lose_replies(self, method: str, count: int = 1) -> None:
        """The next `count` calls to `method` (or "*", unary ones) take effect, then the
        connection drops before the reply: the caller gets UNAVAILABLE (LOST_REPLY) for a
        call that did happen, as when an agent or the link dies between commit and answer."""
        self.faults.lose_replies(method, count)

    def set_unavailable(self, seconds: float | None = None) -> None:
        """Every RPC answers UNAVAILABLE for `seconds`, or until clear_unavailable()."""
        self.faults.set_unavailable(seconds)

    def clear_unavailable(self) -> None:
        self.faults.unavailable_until = None

    def clear_faults(self) -> None:
        self.faults.clear()


def _gated_unary(
    inner: Callable[..., Any], gate: Gate, after: Gate
) -> Callable[[Any, Context], Awaitable[Any]]:
    async def handle(request: Any, context: Context) -> Any:
        await gate(context)
        result = inner(request, context)
        reply = await result if inspect.isawaitable(result) else result
        await after(context)
        return reply

    return handle


def _gated_stream(inner: Callable[..., Any], gate: Gate) -> Callable[[Any, Context], Any]:
    """Keep the handler's shape: grpc.aio dispatches on coroutine vs async generator."""
    if inspect.iscoroutinefunction(inner):

        async def handle_writer(request: Any, context: Context) -> None:
            await gate(context)
            await inner(request, context)

        return handle_writer

    async def handle_generator(request: Any, context: Context) -> AsyncIterator[Any]:
        await gate(context)
        responses = inner(request, context)
        if inspect.isasyncgen(responses):
            async for response in responses:
                yield response
        else:
            for response in responses:
                yield response

    return handle_generator


def _wrap_handler(
    handler: grpc.RpcMethodHandler[Req, Resp], gate: Gate, after: Gate
) -> grpc.RpcMethodHandler[Req, Resp]:
    """The same handler with `gate` run first (and, for unary replies, `after` once it has
    run), rebuilt with the factory grpc built it with."""
    decode, encode = handler.request_deserializer, handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _gated_unary(handler.unary_unary, gate, after), decode, encode
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _gated_unary(handler.stream_unary, gate, after), decode, encode
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _gated_stream(handler.unary_stream, gate), decode, encode
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            _gated_stream(handler.stream_stream, gate), decode, encode
        )
    return handler


class FaultInterceptor(grpc.aio.ServerInterceptor):
    """Counts every RPC and applies the fault plan before the real handler runs (and loses
    the reply after it ran, when told to). With no fault planned a call goes straight to its
    handler: a simulator must not be the slow part of the benchmarks run against it."""

    def __init__(self, calls: Counter[str], faults: Faults) -> None:
        self._calls = calls
        self._faults = faults
        self._gated: dict[str, tuple[AnyHandler, AnyHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Req, Resp] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Req, Resp] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        self._calls[method] += 1
        if self._faults.empty():
            return handler
        return self._gated_handler(method, handler)

    def _gated_handler(self, method: str, handler: AnyHandler) -> AnyHandler:
        """The handler behind the fault gate, built once per method and handler."""
        cached = self._gated.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        gated = _wrap_handler(
            handler, functools.partial(self._gate, method), functools.partial(self._after, method)
        )
        self._gated[method] = (handler, gated)
        return gated

    async def _gate(self, method: str, context: Context) -> None:
        if self._faults.unavailable():
            await context.abort(grpc.StatusCode.UNAVAILABLE, "simulated agent unavailable")
        delay = self._faults.delay(method)
        if delay > 0:
            await asyncio.sleep(delay)
        failure = self._faults.error(method)
        if failure is not None:
            await context.abort(*failure)

    async def _after(self, method: str, context: Context) -> None:
        if self._faults.reply_lost(method):
            await context.abort(grpc.StatusCode.UNAVAILABLE, LOST_REPLY)
