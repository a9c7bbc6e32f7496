"""Kubelet rules the parts share: API version, health values, resource names, error text.

Values and wording follow kubernetes/kubernetes, so messages read as a real kubelet's do.
"""

from __future__ import annotations

import re

import grpc

API_VERSION = "v1beta1"
KUBELET_SOCKET = "kubelet.sock"
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
UNEXPECTED_ADMISSION_ERROR = "UnexpectedAdmissionError"
PRE_START_TIMEOUT_S = 30.0  # pluginapi.KubeletPreStartContainerRPCTimeoutInSecs

_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = re.compile(rf"^{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_GO_CODE_NAMES = {grpc.StatusCode.OK: "OK", grpc.StatusCode.CANCELLED: "Canceled"}


def is_extended_resource_name(name: str) -> bool:
    """v1helper.IsExtendedResourceName: domain/name, not *kubernetes.io/, quota-name valid."""
    if "/" not in name or "kubernetes.io/" in name or name.startswith("requests."):
        return False
    parts = f"requests.{name}".split("/")
    if len(parts) != 2:
        return False
    prefix, short = parts
    if not prefix or len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix):
        return False
    return 0 < len(short) <= 63 and bool(_QUALIFIED_NAME.match(short))


def go_status_error(err: grpc.aio.AioRpcError) -> str:
    """Format a gRPC error the way grpc-go prints it, as it appears in kubelet messages."""
    code = err.code()
    name = _GO_CODE_NAMES.get(code) or "".join(p.capitalize() for p in code.name.split("_"))
    return f"rpc error: code = {name} desc = {err.details() or ''}"
