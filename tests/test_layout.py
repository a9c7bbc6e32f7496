"""The package's shape: imports point down the layers, and modules and classes stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "xpu_bridge"
MAX_MODULE_LINES = 350
MAX_CLASS_ATTRIBUTES = 10

# What each part of the daemon may import (besides itself). Arrows point down: node knows only
# the port model; kubelet uses node; release uses node, hostagent and the PodResources client;
# only daemon and cli wire everything; nothing outside sim imports sim.
PORT_MODEL = {
    "xpu_bridge.hostagent.ports",
    "xpu_bridge.hostagent.port_ids",
    "xpu_bridge.hostagent.port_names",
}
BASE = {"xpu_bridge.common", "xpu_bridge.config"}
ALLOWED: dict[str, set[str]] = {
    "xpu_bridge.common": set(),
    "xpu_bridge.__init__": set(),
    "xpu_bridge.logs": set(),
    "xpu_bridge.config": {"xpu_bridge.common"},
    "xpu_bridge.hostagent": BASE | {"opi_protos.evpn_gw", "opi_protos.dpu_api"},
    "xpu_bridge.node": BASE | PORT_MODEL,
    "xpu_bridge.kubelet": BASE | PORT_MODEL | {"xpu_bridge.node", "opi_protos.kubelet"},
    "xpu_bridge.release": BASE
    | {"xpu_bridge.node", "xpu_bridge.hostagent", "xpu_bridge.kubelet.pod_resources"},
    "xpu_bridge.ops": BASE | PORT_MODEL | {"xpu_bridge.node"},
}
EVERYTHING_BUT_SIM = {"xpu_bridge", "opi_protos"}
WIRING = {
    "xpu_bridge.daemon",
    "xpu_bridge.cli",
    "xpu_bridge.backends",
    "xpu_bridge.paths",
    "xpu_bridge.checks",
    "xpu_bridge.reload",
    "xpu_bridge.reconfigure",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts == ("xpu_bridge", "__init__"):
        return "xpu_bridge.__init__"
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def imported(path: Path) -> set[str]:
    """Every module of ours or of opi_protos that `path` imports, at any depth of its code."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {n for n in names if n.split(".")[0] in ("xpu_bridge", "opi_protos")}


def within(name: str, prefixes: set[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def part_of(name: str) -> str | None:
    """The ALLOWED entry (or wiring/sim) a module belongs to."""
    if within(name, WIRING):
        return "wiring"
    if within(name, {"xpu_bridge.sim"}):
        return "sim"
    return next((p for p in ALLOWED if within(name, {p})), None)


def violations(name: str, imports: set[str]) -> list[str]:
    part = part_of(name)
    if part is None:
        return [f"{name} belongs to no layer; add it to ALLOWED in tests/test_layout.py"]
    if part == "sim":
        return []
    bad = []
    for target in sorted(imports):
        if within(target, {"xpu_bridge.sim"}):
            bad.append(f"{name} imports {target}: nothing outside sim/ imports sim/")
        elif part == "wiring" or within(target, {part}) or target == "xpu_bridge":
            continue
        elif not within(target, ALLOWED[part]):
            bad.append(f"{name} imports {target}, which {part} may not")
    return bad


def test_imports_follow_the_layers() -> None:
    problems = [
        line for path in modules() for line in violations(module_name(path), imported(path))
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("module", "target", "allowed"),
    [
        ("xpu_bridge.node.pool", "xpu_bridge.hostagent.ports", True),
        ("xpu_bridge.node.pool", "xpu_bridge.hostagent.opi_evpn", False),
        ("xpu_bridge.node.allocator", "xpu_bridge.kubelet.plugin_server", False),
        ("xpu_bridge.kubelet.plugin_server", "xpu_bridge.node.allocator", True),
        ("xpu_bridge.kubelet.plugin_server", "xpu_bridge.release.reconciler", False),
        ("xpu_bridge.release.repair", "xpu_bridge.kubelet.pod_resources", True),
        ("xpu_bridge.release.repair", "xpu_bridge.kubelet.registration", False),
        ("xpu_bridge.hostagent.opi_evpn", "xpu_bridge.node.pool", False),
        ("xpu_bridge.config", "xpu_bridge.hostagent.port_ids", False),
        ("xpu_bridge.daemon", "xpu_bridge.release.reconciler", True),
        ("xpu_bridge.daemon", "xpu_bridge.sim.kubelet", False),
        ("xpu_bridge.sim.scenario", "xpu_bridge.daemon", True),
    ],
)
def test_the_rule_itself_tells_right_from_wrong(module: str, target: str, allowed: bool) -> None:
    assert (not violations(module, {target})) is allowed


def test_every_module_says_what_it_owns_and_stays_small() -> None:
    problems = []
    for path in modules():
        text = path.read_text()
        tree = ast.parse(text)
        if not ast.get_docstring(tree):
            problems.append(f"{module_name(path)}: no module docstring saying what it owns")
        if "sim" not in path.parts and len(text.splitlines()) > MAX_MODULE_LINES:
            problems.append(f"{module_name(path)}: over {MAX_MODULE_LINES} lines")
    assert not problems, "\n".join(problems)


def is_record(cls: ast.ClassDef) -> bool:
    """A frozen dataclass or a TypedDict holds data, not a job: its size is its schema's."""
    frozen = any(
        isinstance(d, ast.Call)
        and any(k.arg == "frozen" and getattr(k.value, "value", False) for k in d.keywords)
        for d in cls.decorator_list
    )
    return frozen or any(getattr(base, "id", "") == "TypedDict" for base in cls.bases)


def instance_attributes(cls: ast.ClassDef) -> set[str]:
    names = set()
    for node in ast.walk(cls):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id == "self"
        ):
            names.add(node.attr)
    for statement in cls.body:
        if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            names.add(statement.target.id)
    return names


def test_classes_hold_one_job() -> None:
    problems = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and not is_record(node):
                count = len(instance_attributes(node))
                if count > MAX_CLASS_ATTRIBUTES:
                    problems.append(f"{module_name(path)}.{node.name}: {count} attributes")
    assert not problems, "\n".join(problems)
