"""The installed package's version, for `--version` and the build-info metric."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    try:
        return version("xpu-bridge")
    except PackageNotFoundError:
        return "unknown"
