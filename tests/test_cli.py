"""The commands as a user runs them: own processes, real sockets, exit codes, one-line errors."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import yaml
from simnode import RED, Node, eventually

from xpu_bridge.kubelet.endpoint import socket_name
from xpu_bridge.sim.kubelet import Container

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "xpu_bridge.cli"]


def test_simulate_prints_the_table_and_exits_zero() -> None:
    result = subprocess.run(
        [*CLI, "simulate"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("POD"))
    for column in ("CONTAINER", "DEVICE", "PCI", "MAC", "XPU PORT", "STATE"):
        assert column in header
    table = lines[lines.index(header) + 1 :]
    assert any(line.startswith("web-2") and "vf-0000-3b-" in line for line in table)
    assert any(line.startswith("edge-1") and "sf-0000-3b-00-0-" in line for line in table)
    assert "pod greedy: refused as expected: asks for 20 opi.io/red, the pool has 12" in (
        result.stdout
    )
    assert "admission failed" not in result.stdout
    assert "pod web-1: port(s) released after" in result.stdout
    assert any(line.startswith("web-1") and "released (pod deleted)" in line for line in table)
    assert any(line.startswith("web-3") and line.endswith("UP") for line in table)
    assert result.stderr == ""
    assert "Traceback" not in result.stderr


async def test_run_serves_the_kubelet_and_sigterm_exits_clean(node: Node) -> None:
    process = await asyncio.create_subprocess_exec(
        *node.run_command("--log-format", "json"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await node.kubelet.wait_registered(RED, timeout=30)
        await node.kubelet.wait_for_devices(RED, timeout=30)
        (assignment,) = await node.kubelet.admit_pod("p", containers=[Container("c", {RED: 1})])
        assert assignment.device_ids == ("0000:3b:02.0",)
        assert (node.kubelet_dir / socket_name(RED)).exists()
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()
    assert not list(node.kubelet_dir.glob("xpu-bridge-*.sock"))
    logs = [json.loads(line) for line in stderr.decode().splitlines()]
    allocate = [e for e in logs if e["msg"].startswith("Allocate opi.io/red")]
    assert len(allocate) == 1 and allocate[0]["level"] == "info"
    assert "vf-0000-3b-02-0" in allocate[0]["msg"] and " ms" in allocate[0]["msg"]
    assert {"time", "level", "logger", "msg"} <= set(logs[0])


async def test_run_with_missing_bridge_exits_one_with_one_line(node: Node) -> None:
    node.raw_config["resourceList"][2]["bridgePort"]["logicalBridges"] = ["//x/bridges/none"]
    process = await asyncio.create_subprocess_exec(
        *node.run_command(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1
    errors = [line for line in stderr.decode().splitlines() if "cannot start" in line]
    assert errors == [
        "xpu-bridge: cannot start: logical bridge //x/bridges/none does not exist on the host "
        f"agent unix://{node.root}/agent.sock: create it there or fix "
        "resourceList[].bridgePort.logicalBridges"
    ]
    assert b"Traceback" not in stderr


def test_run_with_bad_sysfs_root_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "resourceList": [
                    {
                        "resourceName": "red",
                        "selectors": [{"vendors": ["15b3"]}],
                        "bridgePort": {"logicalBridges": ["//b/red"]},
                    }
                ]
            }
        )
    )
    result = subprocess.run(
        [*CLI, "run", "--config", str(config), "--sysfs-root", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"xpu-bridge: error: --sysfs-root: {tmp_path / 'nope'} is not a directory; point "
        "--sysfs-root at the host's /sys"
    )


async def test_sim_agent_command_serves_until_sigterm(short_root: Path) -> None:
    socket = short_root / "agent.sock"
    process = await asyncio.create_subprocess_exec(
        *CLI, "sim-agent", "--listen", f"unix://{socket}", stdout=asyncio.subprocess.PIPE
    )
    try:
        await eventually(socket.exists, timeout=30)
        process.send_signal(signal.SIGTERM)
        stdout, _ = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0
    assert b"sim-agent serving on unix://" in stdout
    assert not socket.exists()


def test_readme_opens_with_the_two_commands_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = readme.split("```")
    first = blocks[1].strip().splitlines()
    commands = [line for line in first if line and not line.startswith(("sh", "#"))]
    assert len(commands) == 2
    assert commands[0].endswith("xpu-bridge simulate")
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci


def test_unwritable_kubelet_dir_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "hostAgent": {
                    "endpoint": f"unix://{tmp_path}/none.sock",
                    "attachTimeoutSeconds": 1,
                },
                "resourceList": [
                    {
                        "resourceName": "red",
                        "selectors": [{"vendors": ["15b3"]}],
                        "bridgePort": {"logicalBridges": ["//b/red"]},
                    }
                ],
            }
        )
    )
    blocker = tmp_path / "file"
    blocker.write_text("")
    (tmp_path / "sys").mkdir()
    result = subprocess.run(
        [
            *CLI,
            "run",
            "--config",
            str(config),
            "--sysfs-root",
            str(tmp_path / "sys"),
            "--kubelet-dir",
            str(blocker / "dp"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in result.stderr
    assert result.returncode != 0


async def test_sigterm_while_waiting_for_the_agent_exits_clean(node: Node) -> None:
    await node.agent.stop()
    process = await asyncio.create_subprocess_exec(
        *node.run_command(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        await asyncio.sleep(1.5)  # start-up is now retrying the logical-bridge check
        assert process.returncode is None
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 15)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()
    assert b"stopping" in stderr and b"is serving" not in stderr
    assert b"Traceback" not in stderr


async def test_hook_socket_path_that_is_a_file_is_refused_not_deleted(node: Node) -> None:
    precious = node.root / "precious.txt"
    precious.write_text("keep me")
    node.raw_config["release"] = {"hookSocket": str(precious)}
    process = await asyncio.create_subprocess_exec(
        *node.run_command(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1
    assert precious.read_text() == "keep me"
    errors = [line for line in stderr.decode().splitlines() if "not a socket" in line]
    assert errors == [
        f"xpu-bridge: release.hookSocket: {precious} exists and is not a socket; not removing it"
    ]


def test_version_prints_the_package_version_and_exits_zero() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "xpu_bridge.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"xpu-bridge {version('xpu-bridge')}"
