"""How the kernel writes the names we read and accept: PCI addresses, hex IDs, MAC addresses."""

from __future__ import annotations

import re

# Domains can have up to 8 hex digits (Intel VMD uses 10000+); devices stop at 0x1f.
PCI_ADDRESS = re.compile(r"^([0-9a-f]{4,8}):([0-9a-f]{2}):([01][0-9a-f])\.([0-7])\Z")
HEX_ID = re.compile(r"^[0-9a-f]{4}\Z")
MAC_TEXT = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}\Z")


def mac_text(raw: bytes) -> str:
    """6 raw bytes as `0c:42:a1:00:3b:10`."""
    return ":".join(f"{b:02x}" for b in raw)
