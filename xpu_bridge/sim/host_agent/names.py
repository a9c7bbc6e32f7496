"""Resource names and IDs as einride/aip-go checks them (resourceid, resourcename)."""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import TypeVar

from xpu_bridge.sim.host_agent.errors import AgentError, not_found, unknown

Entry = TypeVar("Entry")

PORT_PREFIX = "//network.opiproject.org/ports/"
BRIDGE_PREFIX = "//network.opiproject.org/bridges/"
_ID_CHARS = frozenset(string.ascii_lowercase + string.digits + "-")
_HEX = frozenset(string.hexdigits)
_UUID_DASHES = (8, 13, 18, 23)


def port_name(port: str) -> str:
    """Full resource name of a port given its ID or full name."""
    return port if port.startswith(PORT_PREFIX) else PORT_PREFIX + port


def bridge_name(bridge: str) -> str:
    """Full resource name of a logical bridge given its ID or full name."""
    return bridge if bridge.startswith(BRIDGE_PREFIX) else BRIDGE_PREFIX + bridge


def resource_id(name: str) -> str:
    """Last path segment: clients match on it, as DESIGN.md says."""
    return name.rsplit("/", 1)[-1]


def _looks_like_uuid(text: str) -> bool:
    """The forms google/uuid.Parse accepts that an ID made of [a-z0-9-] could take."""
    if len(text) == 36:
        return all(text[i] == "-" for i in _UUID_DASHES) and all(
            c in _HEX for i, c in enumerate(text) if i not in _UUID_DASHES
        )
    return len(text) == 32 and all(c in _HEX for c in text)


def validate_user_settable_id(value: str, *, strict: bool = True) -> None:
    """resourceid.ValidateUserSettable; `strict` adds AIP-122's leading-letter and
    no-trailing-hyphen rules, which upstream does not check on Create (but a trailing
    hyphen later fails resourcename.Validate on Get/Delete)."""
    if not 4 <= len(value) <= 63:
        raise unknown("user-settable ID must be between 4 and 63 characters")
    if value[0] == "-":
        raise unknown("user-settable ID must not start with a hyphen")
    if _looks_like_uuid(value):
        raise unknown("user-settable ID must not be a valid UUIDv4")
    for position, char in enumerate(value):
        if char not in _ID_CHARS:
            raise unknown(
                "user-settable ID must only contain lowercase, numbers and hyphens "
                f"(got: '{char}' in position {position})"
            )
    if strict and not value[0].isalpha():
        raise unknown("user-settable ID must start with a lowercase letter")
    if strict and value.endswith("-"):
        raise unknown("user-settable ID must not end with a hyphen")


def _is_domain_name(text: str) -> bool:
    """Port of Go's net isDomainName, which resourcename.Validate applies to each segment."""
    if not text or len(text) > 254 or (len(text) == 254 and text[-1] != "."):
        return False
    last, part_len = ".", 0
    for char in text:
        if char.isascii() and (char.isalnum() or char == "_"):
            part_len += 1
        elif char == "-":
            if last == ".":
                return False
            part_len += 1
        elif char == ".":
            if last in ".-" or part_len > 63 or part_len == 0:
                return False
            part_len = 0
        else:
            return False
        last = char
    return last != "-" and part_len <= 63


def _split_name(name: str) -> tuple[str | None, list[str]]:
    """Service (for `//service/...` full names) and segments, as resourcename.Scanner sees them."""
    if not name.startswith("//"):
        return None, name.split("/")
    rest = name[2:]
    slash = rest.find("/")
    if slash == -1:
        return rest, []
    return rest[:slash], rest[slash + 1 :].split("/")


def validate_resource_name(name: str) -> None:
    """resourcename.Validate: every segment a DNS label, no variables; errors are UNKNOWN."""
    if name == "":
        raise unknown("empty")
    if name == "/":
        return
    service, segments = _split_name(name)
    for index, segment in enumerate(segments, start=1):
        if segment == "":
            raise unknown(f"segment {index} is empty")
        if segment == "-":
            continue
        if segment.startswith("{") and segment.endswith("}"):
            raise unknown(f"segment '{segment}': valid resource names must not contain variables")
        if not _is_domain_name(segment):
            raise unknown(f"segment '{segment}': not a valid DNS name")
    if service is not None and not _is_domain_name(service):
        raise unknown(f"service '{service}': not a valid DNS name")


def check_name(name: str) -> None:
    """Get/Delete request checks: required field, then AIP-122 syntax (not existence)."""
    if not name:
        raise unknown("missing required field: name")
    validate_resource_name(name)


def seed_name(bridge: str) -> str:
    """Accept `red` or `//network.opiproject.org/bridges/red`. Seeds skip the 4-63 character
    rule of CreateLogicalBridge (they were configured out of band) but must be valid names."""
    name = bridge_name(bridge)
    try:
        if "/" in name[len(BRIDGE_PREFIX) :]:
            raise unknown("a logical bridge ID must not contain '/'")
        validate_resource_name(name)
    except AgentError as err:
        raise ValueError(f"bad logical bridge {bridge!r}: {err.message}") from None
    return name


def lookup(entries: Mapping[str, Entry], name: str, *, allow_missing: bool = False) -> Entry | None:
    """Get/Delete: the name's syntax first, then NOT_FOUND unless `allow_missing`."""
    check_name(name)
    entry = entries.get(name)
    if entry is None and not allow_missing:
        raise not_found(f"unable to find key {name}")
    return entry
