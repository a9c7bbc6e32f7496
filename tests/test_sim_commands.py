"""The simulators' commands as a user runs them: every command they print works, in own processes.

`simulate --duration` and `sim-kubelet --dir` print operator commands; these tests run exactly
those lines (sim-agent, a real `run`, admit, status, release, delete, ...) from subprocesses.
"""

from __future__ import annotations

import ast
import asyncio
import json
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_readme import normalise, readme_block

from xpu_bridge.config import DPU_VENDOR_PLUGIN, OPI_EVPN_BRIDGE
from xpu_bridge.sim import commands
from xpu_bridge.sim.polling import wait_until

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "xpu_bridge.cli"]
WAIT = 60.0  # generous: the machine is shared


class Process:
    """A command running in its own process, read line by line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []

    @classmethod
    async def start(cls, *args: str) -> Process:
        process = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT
        )
        return cls(process)

    async def read_until(self, done: str) -> list[str]:
        """stdout lines up to and including the first that starts with `done`."""
        assert self.process.stdout is not None
        while True:
            raw = await asyncio.wait_for(self.process.stdout.readline(), WAIT)
            if not raw:
                _, err = await self.process.communicate()
                raise AssertionError(f"exited before {done!r}: {err.decode()}")
            self.lines.append(raw.decode().rstrip("\n"))
            if self.lines[-1].startswith(done):
                return self.lines

    async def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str, str]:
        if self.process.returncode is None:
            self.process.send_signal(sig)
        out, err = await asyncio.wait_for(self.process.communicate(), WAIT)
        assert self.process.returncode is not None
        return self.process.returncode, out.decode(), err.decode()

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def sh(line: str) -> tuple[int, str, str]:
    """One printed command line, the way a user pastes it (comments and pipes included)."""
    command = line.strip().split("   # ", 1)[0]
    if command.startswith("curl") and shutil.which("curl") is None:
        url = shlex.split(command)[2]
        with urllib.request.urlopen(url, timeout=10) as answer:  # loopback only
            body = answer.read().decode()
        if "| grep " in command:
            body = "".join(x for x in body.splitlines(True) if command.split()[-1] in x)
        return 0, body, ""
    process = await asyncio.create_subprocess_shell(
        command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT
    )
    out, err = await asyncio.wait_for(process.communicate(), WAIT)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def printed(lines: list[str], *words: str) -> str:
    """The one printed command line that has every word."""
    (line,) = [x for x in lines if x.startswith("  ") and all(w in x for w in words)]
    return line


@pytest.fixture
async def processes() -> AsyncIterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in reversed(started):
        await process.kill()


def test_commands_module_imports_only_the_stdlib_and_cli_at_start() -> None:
    tree = ast.parse(Path(commands.__file__).read_text())
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            top.add(node.module)
    ours = {name for name in top if name.split(".")[0] in ("xpu_bridge", "opi_protos")}
    assert ours == {"xpu_bridge.cli"}
    assert all(name.split(".")[0] in sys.stdlib_module_names for name in top - ours)
    assert (commands.OPI_EVPN_BRIDGE, commands.DPU_VENDOR_PLUGIN) == (
        OPI_EVPN_BRIDGE,
        DPU_VENDOR_PLUGIN,
    )


async def test_every_command_simulate_prints_works_and_keep_keeps_the_files(
    processes: list[Process],
) -> None:
    simulate = await Process.start(*CLI, "simulate", "--duration", "600", "--keep")
    processes.append(simulate)
    lines = await simulate.read_until("  config ")
    root = Path(lines[0].split()[3].rstrip(":"))
    try:
        code, out, _ = await sh(printed(lines, " status --metrics-address "))
        assert code == 0 and "host agent unix://" in out
        assert any("0000:3b:02.1" in x and x.endswith("UP") for x in out.splitlines())
        code, out, _ = await sh(printed(lines, "/metrics | grep xpu_bridge_"))
        assert code == 0 and 'xpu_bridge_allocations_total{resource="opi.io/red"' in out
        assert (await sh(printed(lines, "/readyz")))[:2] == (0, "ready\n")
        code, out, _ = await sh(printed(lines, " release --socket "))
        assert code == 1
        assert out == "device 0000:3b:02.1 is held by default/web-2 container nginx\n"
        code, out, _ = await sh(printed(lines, "sim-kubelet pods "))
        assert code == 0 and "default/web-2" in out and "opi.io/green" in out
        code, out, _ = await sh(printed(lines, "sim-kubelet admit "))
        assert code == 0 and "pod default/web-4: admitted" in out
        assert "env PCIDEVICE_OPI_IO_RED=" in out
        code, out, _ = await sh(printed(lines, "sim-kubelet delete "))
        assert code == 0 and "pod default/web-2: deleted" in out

        async def released() -> bool:
            return (await sh(printed(lines, " release --socket ")))[0] == 0

        await wait_until(released, WAIT, 0.5)
        code, out, _ = await sh(printed(lines, " inventory "))
        assert code == 0 and "0000:3b:02.1" in out and "opi.io/red" in out
        code, out, err = await sh(printed(lines, " check-config "))
        assert code in (0, 3), err  # 3: valid, with warnings
        assert "opi.io/red: 12 device(s)" in out
        code, out, err = await simulate.stop()
        assert code == 0, err
        assert out.splitlines()[-1].startswith(f"kept {root}: config.yaml; device-plugins/")
        assert "Traceback" not in err
        assert (root / "config.yaml").is_file() and (root / "sys" / "bus" / "pci").is_dir()
        assert sorted(p.name for p in (root / "devinfo").iterdir())
        sockets = [p for p in root.rglob("*") if stat.S_ISSOCK(p.lstat().st_mode)]
        assert sockets == []
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def test_a_real_daemon_runs_against_sim_kubelet_and_sim_agent(
    short_root: Path, processes: list[Process]
) -> None:
    directory = short_root / "k"
    kubelet = await Process.start(*CLI, "sim-kubelet", "--dir", str(directory))
    processes.append(kubelet)
    lines = await kubelet.read_until("  " + shlex.join(CLI) + " sim-kubelet delete")
    agent = await Process.start(*shlex.split(printed(lines, " sim-agent ")))
    processes.append(agent)
    await agent.read_until("sim-agent serving on unix://")
    run_line = printed(lines, " run --config ")
    assert f"--kubelet-dir {directory}/device-plugins" in run_line
    assert f"--pod-resources-socket {directory}/pod-resources/kubelet.sock" in run_line
    daemon = await Process.start(*shlex.split(run_line))
    processes.append(daemon)

    async def registered() -> bool:
        code, out, _ = await sh(printed(lines, "sim-kubelet pods "))
        return code == 0 and all(f"opi.io/{pool} " in out for pool in ("red", "blue", "green"))

    await wait_until(registered, WAIT, 0.5)
    code, out, err = await sh(printed(lines, "sim-kubelet admit "))
    assert code == 0, err
    assert out.splitlines()[0].startswith("pod default/web-1: admitted in ")
    assert "  env PCIDEVICE_OPI_IO_RED=0000:3b:02.0" in out.splitlines()
    assert '"bridgePort":"//network.opiproject.org/ports/vf-0000-3b-02-0"' in out
    sample = "xpu-bridge sim-kubelet admit --dir /tmp/sim-node web-1 --resource opi.io/red=1"
    assert normalise(out, directory) == normalise(readme_block(sample))

    async def port_up() -> bool:  # as the daemon last saw it: within a release pass
        code, out, _ = await sh(printed(lines, " status --metrics-address "))
        return code == 0 and any(
            x.startswith("0000:3b:02.0") and x.endswith("UP") for x in out.splitlines()
        )

    await wait_until(port_up, WAIT, 0.5)
    release = printed(lines, " release --socket ").replace("DEVICE", "0000:3b:02.0")
    held = (1, "device 0000:3b:02.0 is held by default/web-1 container app\n", "")

    async def refused_while_held() -> bool:  # after release.graceSeconds (1 s)
        return await sh(release) == held

    await wait_until(refused_while_held, WAIT, 0.5)

    code, _, err = await sh(printed(lines, "sim-kubelet admit "))
    assert code == 2 and err.startswith("xpu-bridge: error: POD: pod default/web-1 already exists")
    unknown = printed(lines, "sim-kubelet admit ").replace("opi.io/red=1", "opi.io/purple=1")
    code, _, err = await sh(unknown.replace(" web-1 ", " web-2 "))
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("xpu-bridge: error: --resource: opi.io/purple is not registered")

    code, out, err = await sh(printed(lines, "sim-kubelet delete "))
    assert code == 0, err
    status = [*shlex.split(printed(lines, " status --metrics-address ")), "--json"]

    async def port_released() -> bool:
        code, out, _ = await sh(shlex.join(status))
        devices = json.loads(out)["pools"]["opi.io/red"]["devices"]
        (device,) = [d for d in devices if d["id"] == "0000:3b:02.0"]
        return code == 0 and device["portState"] is None

    await wait_until(port_released, WAIT, 0.5)
    code, out, _ = await sh(printed(lines, "sim-kubelet pods "))
    assert code == 0 and out.splitlines()[-1] == "no pods"
    code, _, err = await sh(printed(lines, "sim-kubelet delete "))
    assert code == 2 and err.startswith("xpu-bridge: error: POD: no pod default/web-1")

    for process in (daemon, kubelet, agent):
        code, _, err = await process.stop()
        assert code == 0, err
        assert "Traceback" not in err
    assert not (directory / "sim-kubelet.sock").exists()
    assert not (directory / "device-plugins" / "kubelet.sock").exists()


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["sim-kubelet", "pods", "--dir", "/tmp/xb-none"],
         "xpu-bridge: error: --dir: no sim-kubelet answers at /tmp/xb-none/sim-kubelet.sock "
         "(No such file or directory); start one with `"),
        (["sim-kubelet", "delete", "web-1"],
         "xpu-bridge: error: --dir: missing; name the sim-kubelet's directory"),
        (["sim-kubelet", "admit", "--dir", "/tmp/xb-none", "web-1", "--resource", "opi.io/red"],
         "xpu-bridge sim-kubelet admit: error: argument --resource: 'opi.io/red' must be "
         "RESOURCE=COUNT"),
        (["sim-kubelet", "--dir", "/tmp/xb-none", "admit", "web-1",
          "--resource", "opi.io/red=1", "--resource", "opi.io/red=2"],
         "xpu-bridge: error: --resource: opi.io/red is given twice; give it once"),
    ],
)  # fmt: skip
def test_sim_kubelet_usage_errors_are_one_line_exit_two(args: list[str], error: str) -> None:
    result = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=WAIT)
    assert result.returncode == 2
    assert result.stderr.startswith(error)
    assert result.stderr.count("\n") == 1 and result.stdout == ""


async def test_a_second_sim_kubelet_in_the_same_dir_is_refused(
    short_root: Path, processes: list[Process]
) -> None:
    first = await Process.start(*CLI, "sim-kubelet", "--dir", str(short_root))
    processes.append(first)
    await first.read_until("  " + shlex.join(CLI) + " sim-kubelet delete")
    second = subprocess.run(
        [*CLI, "sim-kubelet", "--dir", str(short_root)],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert second.returncode == 2
    assert second.stderr == (
        f"xpu-bridge: error: --dir: a sim-kubelet already serves in {short_root}; stop it "
        "(Ctrl-C in its shell) or choose another --dir\n"
    )
    assert (short_root / "device-plugins" / "kubelet.sock").exists()  # the first still serves
    code, _, err = await first.stop(signal.SIGINT)
    assert code == 0, err
