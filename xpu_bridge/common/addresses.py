"""Addresses given on the command line or in the config: `host:port` and `unix:///path`."""

from __future__ import annotations

from pathlib import Path

UNIX_SCHEMES = ("unix://", "unix:")


def parse_host_port(text: str, *, allow_port_zero: bool = True) -> tuple[str, int]:
    """`0.0.0.0:9109`, `[::1]:9109`, `localhost:0` -> (host, port); ValueError says why not.

    Port 0 (let the kernel pick) suits listeners, not the address of a server to dial.
    """
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    lowest = 0 if allow_port_zero else 1
    if not sep or not host or not port.isdigit() or not lowest <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not host:port (e.g. 127.0.0.1:9109)")
    return host, int(port)


def unix_socket_path(target: str) -> Path | None:
    """The socket path of a `unix:///path` (or `unix:/path`) gRPC target, else None."""
    for scheme in UNIX_SCHEMES:
        if target.startswith(scheme):
            return Path(target.removeprefix(scheme))
    return None
