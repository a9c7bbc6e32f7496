"""NetworkFunctionService: a record of Create/Delete calls, the live functions, failure switch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import grpc

from opi_protos.dpu_api import api_pb2
from xpu_bridge.sim.host_agent.errors import AgentError

CREATE = "CreateNetworkFunction"
DELETE = "DeleteNetworkFunction"


@dataclass(frozen=True, slots=True)
class NfCall:
    """One call as the VSP saw it; `code` is what it answered (OK or the injected failure)."""

    method: str
    input: str
    output: str
    code: grpc.StatusCode = grpc.StatusCode.OK


@dataclass(slots=True)
class _Failure:
    code: grpc.StatusCode
    message: str
    remaining: int | None  # None: every Create until cleared


class NetworkFunctions:
    """Live functions as (input, output) MAC pairs. Create of a live pair and Delete of an
    unknown pair are OK: a choice of the simulator, since what a network function is (and
    whether these are errors) differs per vendor upstream."""

    def __init__(self, note: Callable[[str, str], None] = lambda method, pair: None) -> None:
        """`note(method, "input>output")` is told of every call as it arrives."""
        self._note = note
        self.calls: list[NfCall] = []
        self.live: set[tuple[str, str]] = set()
        self._failure: _Failure | None = None

    def fail_create(self, code: grpc.StatusCode, message: str, count: int | None) -> None:
        """Fail the next `count` Creates (None: all until clear_failure()); 0 clears."""
        if count is not None and count < 0:
            raise ValueError(f"count must be >= 0 or None, got {count}")
        self._failure = None if count == 0 else _Failure(code, message, count)

    def clear_failure(self) -> None:
        self._failure = None

    def create(self, request: api_pb2.NFRequest) -> api_pb2.Empty:
        self._note(CREATE, f"{request.input}>{request.output}")
        failure = self._failure
        if failure is not None:
            self.calls.append(NfCall(CREATE, request.input, request.output, failure.code))
            if failure.remaining is not None:
                failure.remaining -= 1
                if failure.remaining <= 0:
                    self._failure = None
            raise AgentError(failure.code, failure.message)
        self.calls.append(NfCall(CREATE, request.input, request.output))
        self.live.add((request.input, request.output))
        return api_pb2.Empty()

    def delete(self, request: api_pb2.NFRequest) -> api_pb2.Empty:
        self._note(DELETE, f"{request.input}>{request.output}")
        self.calls.append(NfCall(DELETE, request.input, request.output))
        self.live.discard((request.input, request.output))
        return api_pb2.Empty()

    def reset(self) -> None:
        """A restarted VSP forgets its live functions (the call record stays)."""
        self.live.clear()
