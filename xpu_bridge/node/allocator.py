"""Allocate for one pool: attach every requested device's port, roll back on failure, answer."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from xpu_bridge.common.errors import CallFailed
from xpu_bridge.common.pci import mac_text
from xpu_bridge.config.document import CDI_DEVICE_NAME
from xpu_bridge.hostagent.ports import Attachment, PortAttacher, PortError, PortState
from xpu_bridge.node.devinfo import DevInfoError, DevInfoStore
from xpu_bridge.node.leases import DeviceLeases
from xpu_bridge.node.network_functions import (
    DEVICES_PER_FUNCTION,
    FunctionPair,
    NetworkFunctions,
)
from xpu_bridge.node.pool import DevicePool, PoolDevice

log = logging.getLogger(__name__)

VFIO_CONTROL = "/dev/vfio/vfio"
PLAIN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
SHOWN_IDS = 5
"""A refusal names this many unknown IDs and counts the rest: it must fit a gRPC trailer."""


def named(device_id: str) -> str:
    """An ID as a message shows it: as is when it looks like one (a PCI address, an aux
    device name), else quoted and cut short, so an empty, NUL or 70,000-character ID reads."""
    if PLAIN_ID.fullmatch(device_id):
        return device_id
    text = repr(device_id)
    return text if len(text) <= 40 else text[:37] + "..."


def listed(device_ids: list[str]) -> str:
    shown = ", ".join(named(device_id) for device_id in device_ids[:SHOWN_IDS])
    more = len(device_ids) - SHOWN_IDS
    return f"{shown} (and {more} more)" if more > 0 else shown


@dataclass(frozen=True, slots=True)
class DeviceNode:
    """A host device node the container gets (kubelet DeviceSpec)."""

    container_path: str
    host_path: str
    permissions: str = "rw"


@dataclass(frozen=True, slots=True)
class ContainerAllocation:
    envs: dict[str, str]
    device_nodes: tuple[DeviceNode, ...]
    ports: tuple[str, ...] = ()
    annotations: dict[str, str] = field(default_factory=dict)
    cdi_devices: tuple[str, ...] = ()
    """Fully qualified CDI names (`opi.io/red=0000:3b:02.0`), in place of device nodes."""


class InvalidRequest(Exception):
    """The kubelet's request cannot be served as asked; nothing was touched."""


class UnknownDevice(InvalidRequest):
    """The kubelet asked for IDs this pool does not have."""


class UnusableDevice(Exception):
    """A requested device cannot be attached by this backend (no usable MAC)."""


class AllocationError(CallFailed):
    """Attaching failed; every port this call created has been removed again."""


class Allocator:
    """Turns device IDs into attached ports plus the container's env, devices and files."""

    def __init__(
        self,
        pool: DevicePool,
        attacher: PortAttacher,
        devinfo: DevInfoStore,
        leases: DeviceLeases,
        functions: NetworkFunctions | None = None,
        on_attached: Callable[[PortState], None] | None = None,
        cdi: bool = False,
    ) -> None:
        """`functions` chains a network-function pool's device pairs (the DPU side);
        `on_attached` hears of each port an Allocate handed out, so status is live; with
        `cdi`, devices with device nodes are answered as CDI devices (cdi_name)."""
        self.pool = pool
        self._attacher = attacher
        self._devinfo = devinfo
        self._leases = leases
        self._functions = functions if pool.resource.network_function else None
        self._on_attached = on_attached
        self._cdi = cdi

    def resolve(self, containers: list[list[str]]) -> list[list[PoolDevice]]:
        resolved: list[list[PoolDevice]] = []
        unknown: set[str] = set()
        for ids in containers:
            entries = [(device_id, self.pool.get(device_id)) for device_id in dict.fromkeys(ids)]
            unknown.update(device_id for device_id, entry in entries if entry is None)
            resolved.append([entry for _, entry in entries if entry is not None])
        if unknown:
            raise UnknownDevice(
                f"unknown device(s) {listed(sorted(unknown))} for {self.pool.resource_name}: "
                "not in this pool (was it removed from the node or the config?)"
            )
        if self.pool.resource.network_function:
            for devices in resolved:
                if len(devices) != DEVICES_PER_FUNCTION:
                    raise InvalidRequest(
                        f"{self.pool.resource_name} is a network-function pool: each container "
                        f"takes exactly {DEVICES_PER_FUNCTION} devices (input, output), "
                        f"not {len(devices)}: request {self.pool.resource_name}: 2"
                    )
        unusable = [r for ids in resolved for e in ids if (r := self.pool.unusable_reason(e.id))]
        if unusable:
            raise UnusableDevice("; ".join(dict.fromkeys(unusable)))
        return resolved

    async def allocate(self, containers: list[list[str]]) -> list[ContainerAllocation]:
        """All containers of one kubelet request succeed together or not at all."""
        resolved = self.resolve(containers)
        wanted = list({entry.id: entry for ids in resolved for entry in ids}.values())
        async with self._leases.attaching(entry.id for entry in wanted):
            attachments = await self._attach_all(wanted)
            try:
                for entry in wanted:
                    self._devinfo.write(self.pool.resource_name, entry.device)
                await self._chain(resolved)
            except (DevInfoError, PortError) as error:
                await self._roll_back(wanted, attachments)
                raise AllocationError(
                    str(error), unreachable=isinstance(error, PortError) and error.unreachable
                ) from None
        if self._on_attached is not None:
            for attachment in attachments.values():
                self._on_attached(attachment.port)
        return [self._answer(ids, attachments) for ids in resolved]

    async def _chain(self, resolved: list[list[PoolDevice]]) -> None:
        """Each container's two ports, UP by now, become one network function; on a failure
        the functions this call made go again (and the failed one, if it may exist)."""
        if self._functions is None:
            return
        made: list[FunctionPair] = []
        for first, second in resolved:
            pair = FunctionPair.of(first, second)
            try:
                if await self._functions.chain(pair):
                    made.append(pair)
            except PortError as error:
                if error.unreachable:  # a timed-out Create may have taken effect
                    self._functions.adopt(pair)
                    made.append(pair)
                for undo in made:
                    await self._functions.unchain(undo.input_id)
                raise PortError(
                    f"network function {pair}: {error}", unreachable=error.unreachable
                ) from None

    async def _attach_all(self, wanted: list[PoolDevice]) -> dict[str, Attachment]:
        results = await self._ensure_ports(wanted)
        attachments = {
            entry.id: result
            for entry, result in zip(wanted, results, strict=True)
            if isinstance(result, Attachment)
        }
        failures = [
            (entry, result)
            for entry, result in zip(wanted, results, strict=True)
            if isinstance(result, BaseException)
        ]
        if not failures:
            return attachments
        await self._roll_back(wanted, attachments)
        for entry, error in failures:
            if not isinstance(error, PortError | asyncio.CancelledError):
                log.error("device %s: unexpected attach error", entry.id, exc_info=error)
        raise AllocationError(
            "; ".join(f"device {entry.id}: {_cause(error)}" for entry, error in failures),
            unreachable=all(
                isinstance(error, CallFailed) and error.unreachable for _, error in failures
            ),
        )

    async def _ensure_ports(self, wanted: list[PoolDevice]) -> list[Attachment | BaseException]:
        """Concurrently; a single device (the common case) skips the task machinery."""
        if len(wanted) == 1:
            try:
                return [await self._attacher.ensure_port(wanted[0].spec)]
            except Exception as error:
                return [error]
        return await asyncio.gather(
            *(self._attacher.ensure_port(entry.spec) for entry in wanted),
            return_exceptions=True,
        )

    async def _roll_back(
        self, wanted: list[PoolDevice], attachments: dict[str, Attachment]
    ) -> None:
        """Remove only what this call created: a port an earlier container holds stays."""
        for entry in wanted:
            attachment = attachments.get(entry.id)
            if attachment is None or not attachment.created:
                continue
            try:
                self._devinfo.remove(self.pool.resource_name, entry.id)
            except DevInfoError as error:
                log.error("device %s: rollback: %s", entry.id, error)
            try:
                await self._attacher.delete_port(attachment.port.name)
            except PortError as error:
                # The port stays among those the agent lists (or the plugin client knows):
                # no container holds it, so a release pass deletes it.
                log.error(
                    "device %s: rollback could not delete port %s: %s (the reconciler will retry)",
                    entry.id,
                    attachment.port.name,
                    error,
                )

    def _answer(
        self, entries: list[PoolDevice], attachments: dict[str, Attachment]
    ) -> ContainerAllocation:
        info = {entry.id: self._info(entry, attachments[entry.id]) for entry in entries}
        named = {
            entry.id: name
            for entry in entries
            if self._cdi and (name := cdi_name(self.pool.resource_name, entry)) is not None
        }
        return ContainerAllocation(
            envs={
                self.pool.env_name: ",".join(entry.id for entry in entries),
                f"{self.pool.env_name}_INFO": json.dumps(info, separators=(",", ":")),
            },
            device_nodes=tuple(
                dict.fromkeys(
                    node
                    for entry in entries
                    if entry.id not in named
                    for node in device_nodes(entry)
                )
            ),
            ports=tuple(attachments[entry.id].port.name for entry in entries),
            cdi_devices=tuple(named.values()),
        )

    @staticmethod
    def _info(entry: PoolDevice, attachment: Attachment) -> dict[str, object]:
        device = entry.device
        info: dict[str, object] = {
            "generic": {"deviceID": device.id},
            "xpu": {
                "bridgePort": attachment.port.name,
                "mac": mac_text(entry.spec.mac),
                "logicalBridges": list(entry.spec.logical_bridges),
            },
        }
        group = _vfio_group(entry)
        if group is not None:
            info["vfio"] = {"mount": VFIO_CONTROL, "dev-mount": group}
        return info


def _vfio_group(entry: PoolDevice) -> str | None:
    """The device node of a VF bound to vfio-pci (its IOMMU group), else None."""
    device = entry.device
    if device.driver != "vfio-pci" or not device.iommu_group:
        return None
    return f"/dev/vfio/{device.iommu_group}"


def device_nodes(entry: PoolDevice) -> list[DeviceNode]:
    """The host device nodes a container needs for the device: a vfio VF's, else none."""
    group = _vfio_group(entry)
    if group is None:
        return []
    return [DeviceNode(VFIO_CONTROL, VFIO_CONTROL), DeviceNode(group, group)]


def cdi_name(kind: str, entry: PoolDevice) -> str | None:
    """The device's fully qualified CDI name (`opi.io/red=0000:3b:02.0`) when, with cdi on,
    Allocate answers it as a CDI device: it has device nodes and a valid CDI device name
    (node/cdi.py writes every such device into its pool's spec, with these nodes)."""
    if not device_nodes(entry) or not CDI_DEVICE_NAME.match(entry.id):
        return None
    return f"{kind}={entry.id}"


def _cause(error: BaseException) -> str:
    if isinstance(error, PortError):
        return str(error)
    if isinstance(error, asyncio.CancelledError):
        return "attach was cancelled"
    return f"internal error: {type(error).__name__}: {error}"
