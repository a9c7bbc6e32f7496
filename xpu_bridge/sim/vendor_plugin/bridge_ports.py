"""BridgePortService as Intel's IPU VSP serves it (ipu-plugin/pkg/ipuplugin/bridgeport.go).

Quirks copied on purpose, since a client tested here must survive the real VSP:
- ports are keyed by `bridge_port.name` (bridge_port_id is ignored); an empty name is a key
  like any other, so clients that send no name share one port;
- Create of a known name answers the stored port, whatever the new spec says (after the
  spec checks, which come first);
- the VLAN is the first logical bridge parsed as a decimal number, the VSI the MAC's second
  byte; a small fixed number of ACC interfaces limits the ports;
- Delete of an unknown name is OK; Get answers a stub for any name; List is always empty;
  Update answers an empty port.
All errors are plain Go errors: gRPC status UNKNOWN.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from opi_protos.evpn_gw import l2_xpu_infra_mgr_pb2 as pb
from xpu_bridge.sim.host_agent.errors import unknown
from xpu_bridge.sim.host_agent.specs import clone
from xpu_bridge.sim.vendor_plugin.config import VspConfig

NOT_INITIALIZED = "{method}: AccApfs info not set, thro-> setupAccApfs"
INVALID_MAC = "invalid mac address provided"
NO_VLAN = "vlan id is not provided"
INVALID_VLAN = "invalid vlan {vlan}, vlan must be within 2-4094 range"
INVALID_VSI = "invalid VSI:{vsi} in given mac address, the value in 2nd octed must be > 0"
# allocateAccInterface's error ends in a newline, which fmt.Errorf keeps.
NO_INTERFACE = "error from allocateAccInterface->Interface not available\n"
MIN_VLAN, MAX_VLAN = 2, 4094

_GO_ATOI = re.compile(r"[+-]?[0-9]+")
_INT64 = 1 << 63


def go_atoi(text: str) -> int | None:
    """strconv.Atoi on a 64-bit platform: optional sign, ASCII digits, int64 range."""
    if not _GO_ATOI.fullmatch(text):
        return None
    value = int(text)
    return value if -_INT64 <= value < _INT64 else None


def first_vlan(bridges: list[str]) -> int:
    """Upstream's getFirstVlanID: 0 when the first bridge is not a number."""
    value = go_atoi(bridges[0])
    return 0 if value is None else value


@dataclass(slots=True)
class _Port:
    msg: pb.BridgePort
    interface: int  # which ACC interface slot the port holds


class VspPorts:
    """Bridge ports by name and the ACC interface slots they hold; `ready` says whether Init
    has run (checked only when config.require_init). Everything runs on the event loop."""

    def __init__(
        self,
        config: VspConfig,
        ready: Callable[[], bool],
        note: Callable[[str, str], None] = lambda method, name: None,
    ) -> None:
        """`note(method, port name)` is told of every Create and Delete as it arrives."""
        self._config = config
        self._ready = ready
        self._note = note
        self.entries: dict[str, _Port] = {}
        self.deletions: list[tuple[float, str]] = []
        """(time.monotonic(), name) of every DeleteBridgePort that removed a stored port."""

    @property
    def capacity_left(self) -> int:
        return max(0, self._config.interfaces - len(self.entries))

    def _check_ready(self, method: str) -> None:
        if self._config.require_init and not self._ready():
            raise unknown(NOT_INITIALIZED.format(method=method))

    def create_port(self, request: pb.CreateBridgePortRequest) -> pb.BridgePort:
        self._note("CreateBridgePort", request.bridge_port.name)
        self._check_ready("CreateBridgePort")
        # Upstream dereferences bridge_port.spec without a nil check (a missing one crashes
        # it); here a missing message reads as empty and fails the MAC check.
        port = request.bridge_port
        mac = port.spec.mac_address
        if not 1 <= len(mac) <= 6:
            raise unknown(INVALID_MAC)
        if len(mac) < 2:
            # Upstream indexes MacAddress[1] anyway: the Go runtime panics, which kills the
            # VSP unless a recovery interceptor catches it. The simulator answers the panic's
            # text instead of dying.
            raise unknown(f"runtime error: index out of range [1] with length {len(mac)}")
        vsi = mac[1]
        if not port.spec.logical_bridges:
            raise unknown(NO_VLAN)
        vlan = first_vlan(list(port.spec.logical_bridges))
        if not MIN_VLAN <= vlan <= MAX_VLAN:
            raise unknown(INVALID_VLAN.format(vlan=vlan))
        if vsi < 1:
            raise unknown(INVALID_VSI.format(vsi=vsi))
        existing = self.entries.get(port.name)
        if existing is not None:
            return clone(existing.msg)
        interface = self._free_interface()
        if interface is None:
            raise unknown(NO_INTERFACE)
        stored = clone(port)
        stored.status.CopyFrom(pb.BridgePortStatus(oper_status=pb.BP_OPER_STATUS_UP))
        self.entries[port.name] = _Port(stored, interface)
        return clone(stored)

    def _free_interface(self) -> int | None:
        """In-order allocation, as upstream's allocateAccInterface: the first free slot."""
        taken = {entry.interface for entry in self.entries.values()}
        return next((i for i in range(self._config.interfaces) if i not in taken), None)

    def delete_port(self, request: pb.DeleteBridgePortRequest) -> None:
        """allow_missing is ignored: an unknown name is always OK (upstream avoids a retry
        loop of its CNI agent that way)."""
        self._note("DeleteBridgePort", request.name)
        self._check_ready("DeleteBridgePort")
        if self.entries.pop(request.name, None) is not None:
            self.deletions.append((time.monotonic(), request.name))

    def get_port(self, request: pb.GetBridgePortRequest) -> pb.BridgePort:
        """A stub for any name, stored or not: no spec fields, no status."""
        return pb.BridgePort(name=request.name, spec=pb.BridgePortSpec())

    def list_ports(self, request: pb.ListBridgePortsRequest) -> pb.ListBridgePortsResponse:
        return pb.ListBridgePortsResponse()

    def update_port(self, request: pb.UpdateBridgePortRequest) -> pb.BridgePort:
        return pb.BridgePort()

    def clear(self) -> None:
        """A restarted VSP keeps its ports in memory only: all gone, interfaces free."""
        self.entries.clear()
