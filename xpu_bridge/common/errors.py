"""Errors shared across boundaries: operator-facing problems, failed calls, gRPC status text."""

from __future__ import annotations

import grpc


class ProblemsError(Exception):
    """Something cannot go on; `problems` holds one line per reason, each naming its fix."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class StartupError(ProblemsError):
    """The daemon cannot start (exit 1); a config that does not validate is a ConfigError."""


class CallFailed(Exception):
    """An operation against the host agent failed; `unreachable` says the agent was not reached
    at all (transport failure, deadline), as opposed to it refusing the request."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


def grpc_status_text(error: grpc.aio.AioRpcError) -> str:
    """`UNAVAILABLE: connection refused`: the code's name and the server's details."""
    return f"{error.code().name}: {error.details() or 'no details'}"
