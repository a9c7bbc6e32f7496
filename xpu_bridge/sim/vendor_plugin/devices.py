"""DeviceService: the VSP's VFs (GetDevices) and SR-IOV VF creation (SetNumVfs) on a fake sysfs."""

from __future__ import annotations

from opi_protos.dpu_api import api_pb2
from xpu_bridge.sim.sysfs import FakeSysfs, PfHandle
from xpu_bridge.sim.vendor_plugin.config import HEALTHY, VspConfig


class VfDevices:
    """The VFs of one PF. With a FakeSysfs, SetNumVfs rewrites that PF's VFs in the tree, so a
    rescan of discovery sees them, and GetDevices lists the VFs the tree has (also ones a
    test unplugged). Without one, SetNumVfs only remembers the count and GetDevices is empty,
    having no addresses to report."""

    def __init__(self, config: VspConfig, sysfs: FakeSysfs | None, pf: PfHandle | None) -> None:
        if (sysfs is None) != (pf is None):
            raise ValueError("give both sysfs and the pf it acts on, or neither")
        self._config = config
        self._sysfs = sysfs
        self._pf = pf
        self.count = 0 if sysfs is None or pf is None else len(sysfs.vfs(pf))
        self.requests: list[int] = []  # every count asked for, in order

    @property
    def limit(self) -> int:
        """The most VFs SetNumVfs makes: max_vfs, and the PF's sriov_totalvfs."""
        if self._pf is None:
            return self._config.max_vfs
        return min(self._config.max_vfs, self._pf.total_vfs)

    def set_num_vfs(self, request: api_pb2.VfCount) -> api_pb2.VfCount:
        """Make min(asked, limit) VFs (a negative count makes none); answer how many."""
        self.requests.append(request.vf_cnt)
        count = max(0, min(request.vf_cnt, self.limit))
        if self._sysfs is not None and self._pf is not None:
            count = len(self._sysfs.set_num_vfs(self._pf, count))
        self.count = count
        return api_pb2.VfCount(vf_cnt=count)

    def get_devices(self, request: api_pb2.Empty) -> api_pb2.DeviceListResponse:
        """One healthy Device per present VF, keyed and named by its PCI address, on the PF's
        NUMA node. (Intel's VSP keys by netdev name; dpu-operator only needs unique IDs.)"""
        response = api_pb2.DeviceListResponse()
        if self._sysfs is None or self._pf is None:
            return response
        node = str(self._pf.numa_node)
        for address in self._sysfs.vfs(self._pf).values():
            device = response.devices[address]
            device.ID = address
            device.health = HEALTHY
            device.topology.node = node
        return response
