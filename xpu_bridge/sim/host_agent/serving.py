"""A restartable simulator server: one Listener at a time on a remembered address."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

import grpc

from xpu_bridge.common.addresses import unix_socket_path
from xpu_bridge.sim.host_agent.listener import AddServicers, Listener, ServerTLS

log = logging.getLogger(__name__)


class Serving:
    """Start, stop and restart a simulator's grpc.aio server; `reset` drops the simulator's
    state when a start is told to (a restarted process with an in-memory store)."""

    def __init__(
        self,
        what: str,
        add_servicers: AddServicers,
        services: Sequence[str],
        interceptor: grpc.aio.ServerInterceptor,
        reset: Callable[[], None],
        *,
        default_address: str,
    ) -> None:
        self.what = what  # "sim host agent": in log lines and socket errors
        self.tls: ServerTLS | None = None  # serve TLS (TCP addresses only); kept across restarts
        self._add_servicers = add_servicers
        self._services = tuple(services)
        self._interceptor = interceptor
        self._reset = reset
        self._listener: Listener | None = None
        self._address: str | None = None
        self._default = default_address
        self.started_before = False

    async def start(self, address: str | None, *, drop_state: bool) -> int:
        """Serve on `address` (default: the last one, else the default address); returns the
        bound TCP port, 0 for unix sockets."""
        if self._listener is not None:
            raise RuntimeError(f"already serving on {self._address}")
        address = address or self._address or self._default
        if unix_socket_path(address) is not None and self.tls is not None:
            raise ValueError(f"TLS applies to host:port addresses only, not {address}")
        if drop_state:
            self._reset()
        listener = await Listener.start(
            address,
            self._add_servicers,
            self._services,
            self._interceptor,
            self.tls,
            what=self.what,
        )
        self._listener, self._address = listener, listener.address
        log.info("%s serving on %s", self.what, self._address)
        return listener.port

    async def stop(self, grace: float | None) -> None:
        """Stop serving (state is kept) and remove the unix socket file."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        await listener.stop(grace)
        self.started_before = True
        log.info("%s stopped on %s", self.what, self._address)

    async def restart(self, *, drop_state: bool, downtime: float, grace: float | None) -> int:
        """Stop, stay down for `downtime` seconds, start on the same address."""
        await self.stop(grace)
        if downtime > 0:
            await asyncio.sleep(downtime)
        return await self.start(None, drop_state=drop_state)

    @property
    def target(self) -> str:
        """What a client passes to grpc.aio.insecure_channel() (secure_channel() with TLS)."""
        if self._address is None:
            raise RuntimeError(f"{self.what} was never started")
        return self._address

    @property
    def serving(self) -> bool:
        return self._listener is not None
