"""xpu-bridge: a Kubernetes device plugin that attaches xPU VFs/SFs to OPI bridge ports."""

import os

# gRPC's C core otherwise prints its own info lines (GOAWAY, handshakes) to stderr, which breaks
# one-line CLI errors and JSON logs; GRPC_VERBOSITY set by the user still wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
