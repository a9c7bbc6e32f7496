"""Port IDs are deterministic, reversible and valid AIP IDs; MACs are 6 bytes and stable."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xpu_bridge.common.pci import mac_text
from xpu_bridge.hostagent.port_ids import (
    PortKey,
    derived_mac,
    mac_bytes,
    parse_port_id,
    port_id_for,
    port_id_from_name,
)

AIP_ID = re.compile(r"^[a-z][a-z0-9-]{2,61}[a-z0-9]$")

pci = st.builds(
    lambda d, b, s, f: f"{d:04x}:{b:02x}:{s:02x}.{f}",
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 0xFF),
    st.integers(0, 0x1F),
    st.integers(0, 7),
)
prefixes = st.sampled_from(["", "node7", "n", "worker-12", "a" * 20])


def test_examples_from_design() -> None:
    assert port_id_for(PortKey("vf", "0000:3b:02.1")) == "vf-0000-3b-02-1"
    assert port_id_for(PortKey("sf", "0000:3b:00.0", 4)) == "sf-0000-3b-00-0-4"
    assert port_id_for(PortKey("vf", "0000:3b:02.1"), "node7") == "node7-vf-0000-3b-02-1"


@given(pci, prefixes, st.one_of(st.none(), st.integers(0, 2**31)))
def test_round_trip_and_valid(address: str, prefix: str, sfnum: int | None) -> None:
    key = PortKey("vf", address) if sfnum is None else PortKey("sf", address, sfnum)
    port_id = port_id_for(key, prefix)
    assert AIP_ID.match(port_id)
    assert parse_port_id(port_id, prefix) == key


@pytest.mark.parametrize(
    ("port_id", "prefix"),
    [
        ("vf-0000-3b-02-1", "node7"),  # someone else's (no prefix)
        ("node8-vf-0000-3b-02-1", "node7"),  # another host's
        ("vf-0000-3b-02-9", ""),  # function > 7
        ("vf-0000-3b-20-1", ""),  # device > 0x1f
        ("vf-0000-3b-02-1-4", ""),  # a VF never has an sfnum
        ("sf-0000-3b-00-0", ""),  # an SF always has one
        ("my-port", ""),
        ("node7-vf-0000-3b-02-1", ""),  # prefixed IDs are not ours without the prefix
    ],
)
def test_foreign_ids_are_not_ours(port_id: str, prefix: str) -> None:
    assert parse_port_id(port_id, prefix) is None


def test_bad_pci_address_is_rejected() -> None:
    with pytest.raises(ValueError, match="not a PCI address"):
        port_id_for(PortKey("vf", "3b:02.1"))


def test_name_last_segment() -> None:
    assert port_id_from_name("//network.opiproject.org/ports/vf-0000-3b-02-1") == "vf-0000-3b-02-1"
    assert port_id_from_name("bridgePorts/vf-0000-3b-02-1") == "vf-0000-3b-02-1"
    assert port_id_from_name("vf-0000-3b-02-1") == "vf-0000-3b-02-1"


@given(st.text(min_size=4, max_size=63))
def test_derived_mac_is_local_unicast(port_id: str) -> None:
    mac = derived_mac(port_id)
    assert len(mac) == 6
    assert mac[0] & 0x02 and not mac[0] & 0x01
    assert derived_mac(port_id) == mac


def test_sysfs_mac_used_unless_absent_or_zero() -> None:
    assert mac_bytes("AA:bb:cc:00:11:22", "vf-x") == bytes.fromhex("aabbcc001122")
    assert mac_bytes("00:00:00:00:00:00", "vf-x") == derived_mac("vf-x")
    assert mac_bytes(None, "vf-x") == derived_mac("vf-x")
    assert mac_bytes("garbage", "vf-x") == derived_mac("vf-x")
    assert mac_text(bytes.fromhex("aabbcc001122")) == "aa:bb:cc:00:11:22"
