"""SimVendorPlugin, the test-facing handle of the simulated VSP: state, faults, restarts."""

from __future__ import annotations

import asyncio
import functools
import random
from collections import Counter
from collections.abc import Awaitable, Callable

import grpc

from opi_protos.dpu_api import api_pb2
from opi_protos.evpn_gw import l2_xpu_infra_mgr_pb2 as pb
from xpu_bridge.sim import polling
from xpu_bridge.sim.host_agent.faults import FaultControls, FaultInterceptor, Faults
from xpu_bridge.sim.host_agent.serving import Serving
from xpu_bridge.sim.host_agent.specs import clone
from xpu_bridge.sim.sysfs import FakeSysfs, PfHandle
from xpu_bridge.sim.vendor_plugin.config import (
    DEFAULT_ADDRESS,
    DEFAULT_INIT_IP,
    DEFAULT_INIT_PORT,
    DEFAULT_INTERFACES,
    DEFAULT_MAX_VFS,
    DEFAULT_RESPONDER_ID,
    VSP_SERVICES,
    VspConfig,
)
from xpu_bridge.sim.vendor_plugin.functions import NfCall
from xpu_bridge.sim.vendor_plugin.servicers import add_vsp_servicers
from xpu_bridge.sim.vendor_plugin.state import VspState


class SimVendorPlugin(FaultControls):
    """A simulated dpu-operator VSP (Intel IPU semantics) on one grpc.aio server; the fault
    plan (latency, error rates, fail_next, unavailable) is the opi agent's, keyed by method
    name ("CreateBridgePort", "Init", "Ping", ...)."""

    def __init__(
        self,
        *,
        interfaces: int = DEFAULT_INTERFACES,
        require_init: bool = True,
        max_vfs: int = DEFAULT_MAX_VFS,
        sysfs: FakeSysfs | None = None,
        pf: PfHandle | None = None,
        init_ip: str = DEFAULT_INIT_IP,
        init_port: int = DEFAULT_INIT_PORT,
        responder_id: str = DEFAULT_RESPONDER_ID,
        seed: int | None = None,
        drop_state_on_restart: bool = False,
    ) -> None:
        self.config = VspConfig(
            interfaces=interfaces,
            require_init=require_init,
            max_vfs=max_vfs,
            init_ip=init_ip,
            init_port=init_port,
            responder_id=responder_id,
        )
        self.drop_state_on_restart = drop_state_on_restart
        self.calls: Counter[str] = Counter()
        self.faults = Faults(rng=random.Random(seed))
        self._state = VspState(self.config, sysfs, pf)
        self._server = Serving(
            "sim vendor plugin",
            functools.partial(add_vsp_servicers, self._state),
            VSP_SERVICES,
            FaultInterceptor(self.calls, self.faults),
            self.reset_state,
            default_address=DEFAULT_ADDRESS,
        )

    # lifecycle ---------------------------------------------------------------------------

    async def start(self, address: str | None = None) -> int:
        """Serve on `unix:///path` (default: the last address, else dpu-operator's socket
        path) or `host:port`. Returns the bound TCP port, 0 for unix sockets."""
        drop = self.drop_state_on_restart and self._server.started_before
        return await self._server.start(address, drop_state=drop)

    async def stop(self, grace: float | None = None) -> None:
        """Stop serving (state is kept) and remove the unix socket file."""
        await self._server.stop(grace)

    async def restart(
        self, *, drop_state: bool | None = None, downtime: float = 0.0, grace: float | None = None
    ) -> int:
        """Stop, stay down for `downtime` seconds, start on the same address. A real VSP keeps
        its ports in memory and needs Init again: pass drop_state=True for that."""
        drop = self.drop_state_on_restart if drop_state is None else drop_state
        return await self._server.restart(drop_state=drop, downtime=downtime, grace=grace)

    @property
    def target(self) -> str:
        """What a client passes to grpc.aio.insecure_channel()."""
        return self._server.target

    @property
    def serving(self) -> bool:
        return self._server.serving

    def reset_state(self) -> None:
        """What a VSP restart loses: ports, the Init flag, live network functions."""
        self._state.reset()

    async def wait_until(
        self,
        predicate: Callable[[], bool | Awaitable[bool]],
        timeout: float = 5.0,
        interval: float = 0.005,
    ) -> None:
        await polling.wait_until(predicate, timeout, interval)

    # inspection --------------------------------------------------------------------------

    @property
    def ports(self) -> dict[str, pb.BridgePort]:
        """Stored ports by name (copies), as Create answered them."""
        return {name: clone(entry.msg) for name, entry in self._state.ports.entries.items()}

    @property
    def deletions(self) -> list[tuple[float, str]]:
        """(time.monotonic(), name) of every Delete that found its port, across restarts."""
        return list(self._state.ports.deletions)

    @property
    def capacity_left(self) -> int:
        """ACC interfaces still free for new ports."""
        return self._state.ports.capacity_left

    @property
    def initialized(self) -> bool:
        return self._state.lifecycle.initialized

    @property
    def init_requests(self) -> list[api_pb2.InitRequest]:
        """Every Init request in order (copies), refused ones too, across restarts."""
        return [clone(request) for request in self._state.lifecycle.requests]

    @property
    def num_vfs(self) -> int:
        """The VF count the last SetNumVfs made (at start: the PF's present VFs)."""
        return self._state.devices.count

    @property
    def num_vfs_requests(self) -> list[int]:
        """Every count SetNumVfs was asked for, in order."""
        return list(self._state.devices.requests)

    @property
    def nf_calls(self) -> list[NfCall]:
        """Every Create/DeleteNetworkFunction that reached the VSP, in order."""
        return list(self._state.functions.calls)

    @property
    def call_log(self) -> list[tuple[str, str]]:
        """Every port and network-function call that reached the VSP's services, in order, as
        (method, what): the port's name, or "input>output" for a network function."""
        return list(self._state.journal)

    @property
    def live_functions(self) -> set[tuple[str, str]]:
        """Network functions created and not deleted, as (input, output) pairs."""
        return set(self._state.functions.live)

    # switches ----------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return self._state.healthy

    def set_healthy(self, healthy: bool) -> None:
        """What Ping answers in `healthy` (the gRPC health service is not affected)."""
        self._state.healthy = healthy

    def fail_network_functions(
        self,
        code: grpc.StatusCode = grpc.StatusCode.INTERNAL,
        message: str = "simulated network function failure",
        count: int | None = 1,
    ) -> None:
        """Fail the next `count` CreateNetworkFunction calls with `code` and `message` (None:
        every one until clear_network_function_failure()). They are recorded in nf_calls."""
        self._state.functions.fail_create(code, message, count)

    def clear_network_function_failure(self) -> None:
        self._state.functions.clear_failure()


async def serve_vendor_plugin(
    listen: str = DEFAULT_ADDRESS,
    *,
    interfaces: int = DEFAULT_INTERFACES,
    require_init: bool = True,
    max_vfs: int = DEFAULT_MAX_VFS,
    sysfs: FakeSysfs | None = None,
    pf: PfHandle | None = None,
    seed: int | None = None,
    on_started: Callable[[SimVendorPlugin], None] | None = None,
) -> None:
    """Run a simulated VSP on `listen` until cancelled (for a CLI command)."""
    vsp = SimVendorPlugin(
        interfaces=interfaces,
        require_init=require_init,
        max_vfs=max_vfs,
        sysfs=sysfs,
        pf=pf,
        seed=seed,
    )
    await vsp.start(listen)
    if on_started is not None:
        on_started(vsp)
    try:
        await asyncio.Event().wait()
    finally:
        await vsp.stop(grace=0.5)
