"""check-config is run minus serving: same checks, same exit codes, warnings as exit 3."""

from __future__ import annotations

import asyncio
import copy
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from simnode import BRIDGES, Node, node_config, short_root

from xpu_bridge.sim.sysfs import build_node

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "xpu_bridge.cli"]
SERVING = "passed every start-up check"  # run got as far as waiting for the host agent

__all__ = ["short_root"]


def node_flags(root: Path) -> list[str]:
    return [
        "--kubelet-dir", str(root / "dp"),
        "--pod-resources-socket", str(root / "pr.sock"),
        "--sysfs-root", str(root / "sys"),
        "--devinfo-dir", str(root / "devinfo"),
    ]  # fmt: skip


def check_config(config: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "check-config", "--config", str(config), *flags],
        capture_output=True,
        text=True,
        timeout=120,
    )


async def run_outcome(config: Path, flags: list[str]) -> int | str:
    """run's exit code, or SERVING once it waits for the (absent) host agent."""
    process = await asyncio.create_subprocess_exec(
        *CLI, "run", "--config", str(config), *flags, "--metrics-address", "",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    try:
        async with asyncio.timeout(120):
            while line := await process.stderr.readline():
                assert b"Traceback" not in line
                if b"not usable yet" in line:
                    return SERVING
            return await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


# --- the configs both commands see ------------------------------------------------------------

Edit = Callable[[dict[str, Any], Path], None]


def _typo_in_a_pf_name(raw: dict[str, Any], root: Path) -> None:
    raw["resourceList"][1]["selectors"] = [{"pfNames": ["ens1f9"]}]


def _overlap(raw: dict[str, Any], root: Path) -> None:
    raw["resourceList"][1]["selectors"] = [{"pfNames": ["ens1f1"]}]


def _missing_tls_files(raw: dict[str, Any], root: Path) -> None:
    raw["hostAgent"] = {"endpoint": "127.0.0.1:1", "tls": {"caFile": str(root / "no-ca.pem")}}


def _unknown_key(raw: dict[str, Any], root: Path) -> None:
    raw["release"] = {"graceSecs": 1}


def _unquoted_vendor(raw: dict[str, Any], root: Path) -> None:
    raw["resourceList"][0]["selectors"] = [{"vendors": [8086]}]


def _hook_dir_is_a_file(raw: dict[str, Any], root: Path) -> None:
    (root / "file").write_text("")
    raw["release"] = {"hookSocket": str(root / "file" / "release.sock")}


def _no_holdoff(raw: dict[str, Any], root: Path) -> None:
    raw["release"] = {"holdoffSeconds": 0}


def _hook_in_the_node(raw: dict[str, Any], root: Path) -> None:
    raw["release"] = {"hookSocket": str(root / "hook" / "release.sock")}


def _readme_config(index: int) -> Edit:
    """The README's index-th YAML block that is a whole config, pointed at this node."""

    def edit(raw: dict[str, Any], root: Path) -> None:
        document = readme_configs()[index]
        raw.clear()
        raw.update(copy.deepcopy(document))
        raw["hostAgent"] = {**raw.get("hostAgent", {}), "endpoint": f"unix://{root}/agent.sock"}
        raw["hostAgent"].pop("tls", None)
        if "hookSocket" in raw.get("release", {}):
            raw["release"] = {"hookSocket": str(root / "hook" / "release.sock")}

    return edit


def readme_configs() -> list[dict[str, Any]]:
    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    documents = [yaml.safe_load(block) for block in blocks]
    return [d for d in documents if isinstance(d, dict) and "resourceList" in d]


CASES: dict[str, Edit] = {
    "as simulate has it": lambda raw, root: None,
    "a pool selects nothing": _typo_in_a_pf_name,
    "two pools overlap": _overlap,
    "TLS files missing": _missing_tls_files,
    "unknown key": _unknown_key,
    "unquoted vendor ID": _unquoted_vendor,
    "hook socket under a file": _hook_dir_is_a_file,
    "no hold-off": _no_holdoff,
    "release hook": _hook_in_the_node,
    **{f"README config {i}": _readme_config(i) for i in range(len(readme_configs()))},
}


@pytest.mark.parametrize("case", list(CASES))
async def test_check_config_and_run_agree(case: str, short_root: Path) -> None:
    build_node(short_root / "sys")
    raw = node_config(short_root)
    CASES[case](raw, short_root)
    config = short_root / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    checked, ran = await asyncio.gather(
        asyncio.to_thread(check_config, config, *node_flags(short_root)),
        run_outcome(config, node_flags(short_root)),
    )
    assert "Traceback" not in checked.stderr
    if ran == SERVING:
        assert checked.returncode in (0, 3), checked.stdout + checked.stderr
    else:
        assert checked.returncode == ran, checked.stdout + checked.stderr
        assert checked.stderr.strip(), "an error has its line"


def test_readme_has_configs_for_the_agreement_test() -> None:
    assert len(readme_configs()) >= 1


def test_an_empty_pool_is_a_warning_and_exit_3(short_root: Path) -> None:
    build_node(short_root / "sys")
    raw = node_config(short_root)
    _typo_in_a_pf_name(raw, short_root)
    config = short_root / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    result = check_config(config, *node_flags(short_root))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "opi.io/blue: 0 device(s)" in result.stdout
    assert "opi.io/red: 12 device(s)" in result.stdout
    (warning,) = [line for line in result.stdout.splitlines() if "opi.io/blue selects" in line]
    assert warning.startswith("warning: opi.io/blue selects no device under ")
    assert "xpu-bridge inventory" in warning


def test_the_kubelet_sockets_and_their_flags_are_named_when_absent(short_root: Path) -> None:
    build_node(short_root / "sys")
    config = short_root / "config.yaml"
    config.write_text(yaml.safe_dump(node_config(short_root)))
    result = check_config(config, *node_flags(short_root))
    assert result.returncode == 3
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2
    assert "--kubelet-dir: no kubelet socket at" in warnings[0]
    assert "--pod-resources-socket: no kubelet socket at" in warnings[1]


def test_missing_tls_files_exit_2_naming_the_field(short_root: Path) -> None:
    raw = node_config(short_root)
    _missing_tls_files(raw, short_root)
    config = short_root / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    result = check_config(config, "--config-only")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"xpu-bridge: config {config}: hostAgent.tls.caFile: cannot read "
        f"{short_root / 'no-ca.pem'}: No such file or directory"
    )


@pytest.mark.parametrize("command", ["check-config", "inventory"])
def test_a_root_that_is_not_a_sysfs_is_refused(command: str, short_root: Path) -> None:
    config = short_root / "config.yaml"
    config.write_text(yaml.safe_dump(node_config(short_root)))
    (short_root / "not-sys").mkdir()
    result = subprocess.run(
        [*CLI, command, "--config", str(config), "--sysfs-root", str(short_root / "not-sys")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"xpu-bridge: error: --sysfs-root: {short_root / 'not-sys'} has no bus/pci/devices, so "
        "it is not a sysfs; point --sysfs-root at the host's /sys (in a container, a hostPath "
        "mount of /sys)"
    )


def test_config_only_checks_the_file_alone(short_root: Path) -> None:
    config = short_root / "config.yaml"
    config.write_text(yaml.safe_dump(node_config(short_root)))
    result = check_config(config, "--config-only", "--sysfs-root", str(short_root / "nowhere"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"config {config}: valid",
        f"opi.io/red: netDevice, access port on {BRIDGES}red",
        f"opi.io/blue: netDevice, trunk port on {BRIDGES}blue-a, {BRIDGES}blue-b",
        f"opi.io/green: auxNetDevice, access port on {BRIDGES}green",
    ]


def test_no_holdoff_is_a_warning_run_logs_too(short_root: Path) -> None:
    raw = node_config(short_root)
    _no_holdoff(raw, short_root)
    config = short_root / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    result = check_config(config, "--config-only")
    assert result.returncode == 3
    assert "warning: release.holdoffSeconds: 0 turns off the hold-off" in result.stdout


async def test_agent_check_against_the_simulated_agent(node: Node) -> None:
    config = node.root / "config.yaml"
    config.write_text(yaml.safe_dump(node.raw_config))
    result = await asyncio.to_thread(check_config, config, "--config-only", "--agent")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == (
        f"host agent unix://{node.root}/agent.sock: reachable, logical bridges present: 4"
    )
    node.raw_config["resourceList"][0]["bridgePort"]["logicalBridges"] = ["//x/bridges/none"]
    config.write_text(yaml.safe_dump(node.raw_config))
    result = await asyncio.to_thread(check_config, config, "--config-only", "--agent")
    assert result.returncode == 1  # as run exits for it
    assert "logical bridge //x/bridges/none does not exist on the host agent" in result.stderr


def test_agent_check_names_an_unreachable_agent(short_root: Path) -> None:
    config = short_root / "config.yaml"
    config.write_text(yaml.safe_dump(node_config(short_root)))
    result = check_config(config, "--config-only", "--agent", "--agent-timeout", "5")
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    endpoint = f"unix://{short_root}/agent.sock"
    assert line.startswith("xpu-bridge: cannot start: hostAgent.endpoint: GetLogicalBridge ")
    assert line.endswith(f"(is the host agent running and reachable at {endpoint}?)")


def test_ctrl_c_interrupts_loading_a_large_config(tmp_path: Path) -> None:
    """A huge config used to ignore Ctrl-C until it had been read (asyncio.run swallows it)."""
    pool = (
        "- resourceName: pool{i}\n"
        "  selectors: [{{pciAddresses: [{addresses}]}}]\n"
        "  bridgePort: {{logicalBridges: ['{bridges}b{i}']}}\n"
    )
    addresses = ", ".join(f"'0000:3b:{j:02x}.0'" for j in range(32))
    config = tmp_path / "big.yaml"
    config.write_text(
        "resourceList:\n"
        + "".join(pool.format(i=i, addresses=addresses, bridges=BRIDGES) for i in range(10000))
    )
    process = subprocess.Popen(
        [*CLI, "check-config", "--config-only", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, _ = process.communicate(timeout=1.5)
        pytest.skip("the config was read before the interrupt could be sent")
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert stdout == ""
