"""Shared fixtures: a short temporary root and a whole simulated node (see simnode.py)."""

from simnode import node, short_root, vsp_node

__all__ = ["node", "short_root", "vsp_node"]
