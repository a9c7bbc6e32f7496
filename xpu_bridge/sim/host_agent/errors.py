"""Errors the agent answers with: a gRPC status code and upstream's message text."""

from __future__ import annotations

import grpc


class AgentError(Exception):
    """A gRPC status the agent answers with; domain code raises it, the servicer aborts with it."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def unknown(message: str) -> AgentError:
    """Upstream returns plain Go errors for these, which gRPC sends as UNKNOWN."""
    return AgentError(grpc.StatusCode.UNKNOWN, message)


def invalid(message: str) -> AgentError:
    return AgentError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> AgentError:
    return AgentError(grpc.StatusCode.NOT_FOUND, message)
