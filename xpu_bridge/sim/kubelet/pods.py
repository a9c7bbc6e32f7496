"""The pods the kubelet knows: active ones hold devices, deleted ones linger for PodResources."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

from .model import Assignment, Container, PodView, _Pod


class PodTable:
    """Pods by (namespace, name); a deleted pod frees its devices at once but stays listed
    until its linger time has passed."""

    def __init__(self, terminated_pod_linger: float) -> None:
        self.terminated_pod_linger = terminated_pod_linger
        self._pods: dict[tuple[str, str], _Pod] = {}

    def create(
        self,
        name: str,
        namespace: str,
        init_containers: Sequence[Container],
        containers: Sequence[Container],
    ) -> _Pod:
        """A new active pod without devices; ValueError if the name is taken."""
        key = (namespace, name)
        self._drop_lingering()
        if key in self._pods:
            raise ValueError(f"pod {namespace}/{name} already exists")
        pod = _Pod(
            uid=str(uuid.uuid4()),
            name=name,
            namespace=namespace,
            init_containers=tuple(init_containers),
            containers=tuple(containers),
        )
        self._pods[key] = pod
        return pod

    def reject(self, pod: _Pod) -> None:
        """Admission failed: unless it was deleted meanwhile, the pod is gone at once."""
        key = (pod.namespace, pod.name)
        if self._pods.get(key) is pod and pod.linger_until is None:
            del self._pods[key]

    def delete(self, name: str, namespace: str, linger: float | None) -> None:
        """The pod terminated: listed for `linger` seconds (default: terminated_pod_linger)."""
        pod = self._pods.get((namespace, name))
        if pod is None or pod.linger_until is not None:
            raise KeyError(f"pod {namespace}/{name} not found")
        linger = self.terminated_pod_linger if linger is None else linger
        pod.linger_until = time.monotonic() + linger
        self._drop_lingering()

    def listed(self) -> list[_Pod]:
        """Active pods and deleted ones still lingering."""
        self._drop_lingering()
        return list(self._pods.values())

    def views(self) -> list[PodView]:
        """Every listed pod, by namespace and name."""
        return [
            PodView(
                p.namespace,
                p.name,
                tuple(c.name for c in (*p.init_containers, *p.containers)),
                p.linger_until is not None,
            )
            for p in sorted(self.listed(), key=lambda p: (p.namespace, p.name))
        ]

    def held(self, resource: str) -> set[str]:
        """allocatedDevices: what containers of active pods hold (this pod's included)."""
        held: set[str] = set()
        for pod in self._pods.values():
            if pod.linger_until is not None:
                continue
            for per_resource in pod.allocations.values():
                if resource in per_resource:
                    held.update(per_resource[resource].device_ids)
        return held

    def assignments(self, namespace: str | None = None, pod: str | None = None) -> list[Assignment]:
        """Devices recorded for containers of active pods (after Allocate returned)."""
        out: list[Assignment] = []
        for p in self._pods.values():
            if p.linger_until is not None or namespace not in (None, p.namespace):
                continue
            if pod not in (None, p.name):
                continue
            for cname, per_resource in p.allocations.items():
                out.extend(
                    Assignment(p.namespace, p.name, cname, res, a.device_ids, a.response)
                    for res, a in per_resource.items()
                )
        return out

    def _drop_lingering(self) -> None:
        now = time.monotonic()
        for key, pod in list(self._pods.items()):
            if pod.linger_until is not None and pod.linger_until <= now:
                del self._pods[key]
