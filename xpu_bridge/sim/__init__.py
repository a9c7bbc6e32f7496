"""Simulators for tests, benchmarks and `xpu-bridge simulate`: OPI host agent, kubelet, sysfs."""
