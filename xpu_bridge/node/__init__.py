"""The node side: sysfs inventory, pool selection, pools, leases, the allocator, device-info."""
