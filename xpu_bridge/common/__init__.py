"""Pieces every boundary shares: errors, gRPC status text, addresses, sockets, background loops."""
