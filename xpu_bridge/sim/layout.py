"""Where a simulated node keeps its files and sockets, all under one directory.

`xpu-bridge simulate` and `xpu-bridge sim-kubelet --dir DIR` use the same layout, so the
`sim-kubelet admit/delete/pods` commands work against either.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONTROL_SOCKET = "sim-kubelet.sock"


@dataclass(frozen=True, slots=True)
class NodeLayout:
    """The paths a real node has in /var/lib/kubelet, /sys, /run, ... under `root`."""

    root: Path

    @property
    def kubelet_dir(self) -> Path:
        """The kubelet's device-plugin directory: its Registration socket and ours."""
        return self.root / "device-plugins"

    @property
    def kubelet_socket(self) -> Path:
        return self.kubelet_dir / "kubelet.sock"

    @property
    def pod_resources_socket(self) -> Path:
        return self.root / "pod-resources" / "kubelet.sock"

    @property
    def control_socket(self) -> Path:
        """The simulated kubelet's own socket: admit, delete and list pods (JSON lines)."""
        return self.root / CONTROL_SOCKET

    @property
    def sysfs_root(self) -> Path:
        return self.root / "sys"

    @property
    def devinfo_dir(self) -> Path:
        return self.root / "devinfo"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def hook_socket(self) -> Path:
        return self.root / "release.sock"

    def agent_socket(self, vendor_plugin: bool) -> Path:
        return self.root / ("vendor-plugin.sock" if vendor_plugin else "agent.sock")
