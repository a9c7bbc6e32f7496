"""Pieces every boundary shares: errors, addresses, sockets, background loops, PCI/MAC syntax."""
