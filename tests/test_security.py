"""No shell-outs: nothing that ships (xpu_bridge/, simulators included, and opi_protos/) starts
a process, so no config value, device ID or sysfs name can ever reach a shell or an exec."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = [ROOT / "xpu_bridge", ROOT / "opi_protos"]
# Modules whose only job is to run other programs (or to fork onto a terminal).
PROCESS_MODULES = {"subprocess", "pty", "asyncio.subprocess", "multiprocessing"}
# os functions that run a program, or fork one: os.system, os.popen, os.exec*, os.spawn*, ...
OS_PROCESS = re.compile(r"^(system|popen|exec\w*|spawn\w*|posix_spawnp?|fork|forkpty)$")
# asyncio.create_subprocess_*, loop.subprocess_exec/subprocess_shell, whatever they hang on.
SUBPROCESS_ATTRIBUTES = re.compile(r"^(create_subprocess_\w+|subprocess_(exec|shell))$")


def _process_module(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in PROCESS_MODULES)


def shell_outs(source: str) -> list[str]:
    """`line N: what` for every import, name or call in `source` that can start a process."""
    tree = ast.parse(source)
    os_names = {"os"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            os_names |= {a.asname or a.name for a in node.names if a.name == "os"}
    found: list[str] = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            found += [
                f"line {line}: import {a.name}" for a in node.names if _process_module(a.name)
            ]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if (
                    _process_module(node.module)
                    or _process_module(full)
                    or (node.module == "os" and OS_PROCESS.match(alias.name))
                    or SUBPROCESS_ATTRIBUTES.match(alias.name)
                ):
                    found.append(f"line {line}: from {node.module} import {alias.name}")
        elif isinstance(node, ast.Attribute):
            on_os = isinstance(node.value, ast.Name) and node.value.id in os_names
            if (on_os and OS_PROCESS.match(node.attr)) or SUBPROCESS_ATTRIBUTES.match(node.attr):
                found.append(f"line {line}: {ast.unparse(node)}")
        elif isinstance(node, ast.Call) and node.args:
            callee = ast.unparse(node.func)
            first = node.args[0]
            if (
                callee.split(".")[-1] in {"__import__", "import_module"}
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
                and _process_module(first.value)
            ):
                found.append(f"line {line}: {callee}({first.value!r})")
    return sorted(set(found), key=lambda text: int(text.split()[1].rstrip(":")))


def shipped_modules() -> list[Path]:
    return sorted(path for package in SHIPPED for path in package.rglob("*.py"))


# `xpu-bridge bench` measures `run`, `sim-agent` and `--help` as processes: one module, argv of
# this interpreter with fixed flags and paths the bench made, no shell; only the bench uses it.
BENCH_PROCESSES = ROOT / "xpu_bridge/sim/bench/processes.py"


def test_nothing_that_ships_starts_a_process() -> None:
    assert len(shipped_modules()) > 50
    offenders = {
        str(path.relative_to(ROOT)): found
        for path in shipped_modules()
        if path != BENCH_PROCESSES and (found := shell_outs(path.read_text(encoding="utf-8")))
    }
    assert offenders == {}, "shell-outs (none allowed, simulators included): " + repr(offenders)


def test_only_the_bench_reaches_its_process_module() -> None:
    assert shell_outs(BENCH_PROCESSES.read_text(encoding="utf-8"))  # the exception is real
    users = {
        str(path.relative_to(ROOT))
        for path in shipped_modules()
        if "xpu_bridge.sim.bench.processes" in path.read_text(encoding="utf-8")
        or "from xpu_bridge.sim.bench import processes" in path.read_text(encoding="utf-8")
    }
    assert users and all(user.startswith("xpu_bridge/sim/bench/") for user in users), users
    assert "shell=True" not in BENCH_PROCESSES.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ("import subprocess", ["line 1: import subprocess"]),
        ("import subprocess as sp", ["line 1: import subprocess"]),
        ("from subprocess import run", ["line 1: from subprocess import run"]),
        ("import pty", ["line 1: import pty"]),
        ("import multiprocessing.pool", ["line 1: import multiprocessing.pool"]),
        ("import os\nos.system('ls')", ["line 2: os.system"]),
        ("import os as o\nf = o.popen", ["line 2: o.popen"]),
        ("import os\nos.execvp('x', ['x'])", ["line 2: os.execvp"]),
        ("import os\nos.spawnl(0, 'x')", ["line 2: os.spawnl"]),
        ("import os\nos.posix_spawn('x', [], {})", ["line 2: os.posix_spawn"]),
        ("import os\nos.fork()", ["line 2: os.fork"]),
        ("from os import execv", ["line 1: from os import execv"]),
        (
            "import asyncio\nasyncio.create_subprocess_exec('x')",
            ["line 2: asyncio.create_subprocess_exec"],
        ),
        ("from asyncio import create_subprocess_shell", ["line 1: from asyncio import create_"]),
        ("from asyncio import subprocess", ["line 1: from asyncio import subprocess"]),
        ("loop.subprocess_shell(p, 'x')", ["line 1: loop.subprocess_shell"]),
        ("import importlib\nimportlib.import_module('subprocess')", ["line 2: importlib.imp"]),
        ("__import__('pty')", ["line 1: __import__('pty')"]),
        # What the daemon does use: files, sockets, signals, its own event loop.
        ("import os\nos.chmod(p, 0o600)\nos.umask(0o177)\nos.getpid()", []),
        ("import asyncio\nasyncio.create_task(f())\nasyncio.subprocess_like = 1", []),
        ("from os import path, environ", []),
        ("import importlib\nimportlib.import_module('xpu_bridge.sim')", []),
    ],
)
def test_the_scan_tells_a_shell_out_from_ordinary_os_use(source: str, found: list[str]) -> None:
    result = shell_outs(source)
    assert len(result) == len(found), result
    for line, prefix in zip(result, found, strict=True):
        assert line.startswith(prefix), result
