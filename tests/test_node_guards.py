"""Holes a new user found: a second daemon, a file as --devinfo-dir, a kubelet that never
comes, sockets open to others for a moment. Each is closed, as a user sees it."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import sys
from pathlib import Path

import pytest
from simnode import RED, Node, eventually

from xpu_bridge.common.errors import StartupError
from xpu_bridge.common.sockets import SocketInUse, owner_only, prepare_socket
from xpu_bridge.daemon import Daemon
from xpu_bridge.kubelet.endpoint import socket_name

CLI = [sys.executable, "-m", "xpu_bridge.cli"]


async def test_a_second_daemon_on_one_kubelet_dir_exits_naming_the_first(node: Node) -> None:
    first = await asyncio.create_subprocess_exec(
        *node.run_command(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        await node.kubelet.wait_registered(RED, timeout=30)
        second = await asyncio.create_subprocess_exec(
            *node.run_command(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        _, stderr = await asyncio.wait_for(second.communicate(), 60)
        assert second.returncode == 1
        lines = [line for line in stderr.decode().splitlines() if "cannot start" in line]
        assert lines == [
            f"xpu-bridge: cannot start: --kubelet-dir: another xpu-bridge (pid {first.pid}) "
            f"serves {node.kubelet_dir} (it holds xpu-bridge.lock); stop it first: one daemon "
            "per node"
        ]
        assert b"Traceback" not in stderr
        assert (node.kubelet_dir / socket_name(RED)).exists()  # the first still serves
        assert first.returncode is None
    finally:
        first.kill()
        await first.wait()


async def test_the_lock_goes_with_the_daemon_so_the_next_one_starts(node: Node) -> None:
    await node.start_daemon()
    with pytest.raises(StartupError, match="another xpu-bridge"):
        await Daemon.create(node.options())
    await node.stop_daemon()
    await node.start_daemon()


async def test_a_file_as_devinfo_dir_stops_the_start_with_one_line(node: Node) -> None:
    node.devinfo_dir.write_text("not a directory")
    process = await asyncio.create_subprocess_exec(
        *node.run_command(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1
    assert stderr.decode().strip().splitlines()[-1] == (
        f"xpu-bridge: cannot start: --devinfo-dir: {node.devinfo_dir} exists and is not a "
        "directory; point --devinfo-dir at a directory"
    )
    assert not list(node.kubelet_dir.glob("xpu-bridge-*.sock"))
    assert node.agent.calls["CreateBridgePort"] == 0


async def test_a_kubelet_that_never_comes_is_named_in_a_warning(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    await node.kubelet.stop()
    (node.kubelet_dir / "kubelet.sock").unlink(missing_ok=True)
    with caplog.at_level(logging.WARNING, logger="xpu_bridge.kubelet.kubelet_socket"):
        daemon = await node.start_daemon(wait=False)
        await eventually(lambda: "no kubelet socket at" in caplog.text, timeout=15)
    assert str(node.kubelet_dir / "kubelet.sock") in caplog.text
    assert "not registered with the kubelet" in (daemon.status.not_ready() or "")


async def test_plugin_and_hook_sockets_are_owner_only(node: Node) -> None:
    node.raw_config["release"] = {"hookSocket": str(node.root / "hook" / "release.sock")}
    await node.start_daemon()
    for path in (node.kubelet_dir / socket_name(RED), node.root / "hook" / "release.sock"):
        info = path.lstat()
        assert stat.S_ISSOCK(info.st_mode), path
        assert stat.S_IMODE(info.st_mode) == 0o600, path
        assert info.st_uid == os.geteuid(), path  # the daemon's own user, no one else


def test_a_socket_bound_under_owner_only_is_0600_from_its_first_moment(tmp_path: Path) -> None:
    os.umask(0o022)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with owner_only():
            listener.bind(str(tmp_path / "s.sock"))
        info = (tmp_path / "s.sock").lstat()
        assert stat.S_IMODE(info.st_mode) == 0o600  # no chmod came
        assert info.st_uid == os.geteuid()
    finally:
        listener.close()
    assert os.umask(0o022) == 0o022  # the process's umask is back


def test_a_live_socket_is_never_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "live.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    try:
        with pytest.raises(SocketInUse, match="served by another live process"):
            prepare_socket(path, "test socket")
        assert path.exists()
    finally:
        listener.close()
    prepare_socket(path, "test socket")  # nobody serves it now: a stale file, removed
    assert not path.exists()


async def test_sim_agent_refuses_a_socket_another_one_serves(short_root: Path) -> None:
    path = short_root / "agent.sock"
    first = await asyncio.create_subprocess_exec(
        *CLI, "sim-agent", "--listen", f"unix://{path}", stdout=asyncio.subprocess.PIPE
    )
    try:
        await eventually(path.exists, timeout=30)
        second = await asyncio.create_subprocess_exec(
            *CLI,
            "sim-agent",
            "--listen",
            f"unix://{path}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(second.communicate(), 30)
        assert second.returncode == 2, stderr
        (line,) = stderr.decode().strip().splitlines()
        assert line == (
            f"xpu-bridge: error: --listen: cannot serve on unix://{path}: "
            f"sim host agent: {path} is served by another live process; not taking it over "
            "(stop that process, or choose another path)"
        ), line
        assert path.exists() and first.returncode is None
    finally:
        first.kill()
        await first.wait()
