"""Bad config input: random YAML and JSON documents and texts, mutations of a valid config, huge
numbers, NaN, unicode, NUL characters, nesting 100 to 10,000 deep, YAML tags and aliases. The
loader answers a Config or a ConfigError of one-line problems, never another exception, and
`xpu-bridge check-config` exits 2 without a traceback."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from records import FaultResult

from xpu_bridge.config import (
    BridgePortConfig,
    Config,
    ConfigError,
    HostAgentConfig,
    PfConfig,
    ReleaseConfig,
    ResourceConfig,
    Selector,
    TLSConfig,
    load_config,
    parse_config,
)

VALID: dict[str, Any] = {
    "hostAgent": {"endpoint": "unix:///run/agent.sock", "rpcTimeoutSeconds": 2},
    "resourceList": [
        {
            "resourceName": "red",
            "selectors": [{"pfNames": ["ens1f0#0-7"]}],
            "bridgePort": {"type": "access", "logicalBridges": ["//network.opiproject.org/b/red"]},
        }
    ],
}
MODELS = (
    Config,
    HostAgentConfig,
    TLSConfig,
    ReleaseConfig,
    ResourceConfig,
    Selector,
    BridgePortConfig,
    PfConfig,
)
KEYS = sorted(
    {field.alias or name for model in MODELS for name, field in model.model_fields.items()}
)
HUGE = 10**5000
FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
INTERESTING = [
    "",
    "\x00",
    "a\x00b",
    "unix:///run/agent.sock",
    "unix:///run/a\x00b.sock",
    "unix://relative",
    "127.0.0.1:0",
    "[::1]:99999",
    "h:" + "9" * 5000,
    "opi.io",
    "kubernetes.io",
    "netDevice",
    "auxNetDevice",
    "dpu-vendor-plugin",
    "opi-evpn-bridge",
    "xpu-bridge/v1",
    "ens1f0#0-" + "9" * 5000,
    "ens1f0#٣",
    "ens1f0#7-3",
    "0000:3b:02.1",
    "../../etc/passwd",
    "{vf}",
    "{0[a]}",
    "{vf!r}",
    "host{pf}{vf}",
    "a\nb",
    "\u202e",
    "\U0001f4a5" * 50,
    "x" * 100_000,
]


def huge(negative: bool) -> int:
    """An int of 5,001 digits, which Python will not turn into a string."""
    return -HUGE if negative else HUGE


def scalars() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=-(2**64), max_value=2**64),
        st.booleans().map(huge),  # not st.just(HUGE): hypothesis would repr it
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=30),
        st.text(alphabet=st.characters(exclude_categories=()), max_size=10),  # surrogates too
        st.sampled_from(INTERESTING),
    )


keys = st.sampled_from(KEYS) | st.text(max_size=12) | st.sampled_from(["a\nb", "\x00", "", "-"])
documents = st.recursive(
    scalars(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=25,
)


def outcome(load: Callable[[], Config]) -> str:
    """ "config" or "error"; any exception but ConfigError fails the test, and so does a
    ConfigError without problems or with a problem that is not one non-empty line."""
    try:
        load()
    except ConfigError as error:
        assert error.problems
        for problem in error.problems:
            assert isinstance(problem, str) and problem.strip(), error.problems
            assert len(problem.splitlines()) == 1, problem[:300]
            assert "Traceback" not in problem
        return "error"
    return "config"


def deep(levels: int, leaf: Any = 1, mapping: bool = False) -> Any:
    value = leaf
    for _ in range(levels):
        value = {"a": value} if mapping else [value]
    return value


def at_random_path(raw: Any, steps: list[int], value: Any, delete: bool) -> Any:
    """`raw` with the node that `steps` lead to replaced by `value` (or deleted), or `value`
    added where the walk stops at a scalar's parent."""
    node = raw
    for step in steps:
        if isinstance(node, dict) and node:
            key = sorted(node, key=str)[step % len(node)]
            child = node[key]
            if not isinstance(child, dict | list) or not child:
                if delete:
                    del node[key]
                else:
                    node[key] = value
                return raw
            node = child
        elif isinstance(node, list) and node:
            index = step % len(node)
            child = node[index]
            if not isinstance(child, dict | list) or not child:
                node[index] = value
                return raw
            node = child
    if isinstance(node, dict):
        node[value[:20] if isinstance(value, str) else "added"] = value
    return raw


def test_random_documents(record: list[FaultResult]) -> None:
    seen: dict[str, int] = {"config": 0, "error": 0}

    @settings(FUZZ, max_examples=400)
    @given(documents)
    def one(raw: Any) -> None:
        seen[outcome(lambda: parse_config(raw))] += 1

    one()
    record.append(
        FaultResult(
            "config: random documents (dicts, lists, huge ints, NaN, unicode, NUL)",
            "-",
            sum(seen.values()),
            "ConfigError of one-line problems, no other exception",
        )
    )


def test_mutated_valid_config(record: list[FaultResult]) -> None:
    seen: dict[str, int] = {"config": 0, "error": 0}

    @settings(FUZZ, max_examples=400)
    @given(
        st.lists(st.integers(0, 100), max_size=6),
        documents,
        st.booleans(),
        st.integers(0, 3),
    )
    def one(steps: list[int], value: Any, delete: bool, nesting: int) -> None:
        if nesting == 3:
            value = deep(300, value, mapping=bool(steps and steps[0] % 2))
        raw = at_random_path(copy.deepcopy(VALID), steps, value, delete)
        seen[outcome(lambda: parse_config(raw))] += 1

    one()
    assert seen["config"] and seen["error"]
    record.append(
        FaultResult(
            "config: a valid config with one field replaced, deleted or added at random",
            "-",
            sum(seen.values()),
            f"{seen['config']} valid, {seen['error']} ConfigError, no other exception",
        )
    )


YAML_FRAGMENTS = [
    "2001-13-45",
    "2001-02-30",
    "2001-12-14t21:59:43.10-99:00",
    "!!int x",
    "!!float x",
    "!!binary '@@@'",
    "!!timestamp x",
    "!!python/object:os.system x",
    "!!set {a, b}",
    "!!omap [a]",
    "&a [*a]",
    "*nowhere",
    "<<: 1",
    "{<<: [1]}",
    "9" * 5000,
    "0x" + "f" * 5000,
    "1:" + "5" * 5000,
    ".nan",
    "-.inf",
    "1e99999",
    "~",
    '"\\ud800"',
    '"\\x00"',
    "'\u2028'",
    "[" * 1200 + "]" * 1200,
    "{a: " * 1200 + "1" + "}" * 1200,
    "? [a]\n: 1",
    "\t",
    "---\n---",
    "%YAML 9.9",
    "- - - -",
]


def yaml_dump(raw: Any) -> str:
    """PyYAML cannot write an int of more than 4300 digits (nor every string)."""
    try:
        return yaml.safe_dump(raw, allow_unicode=True)
    except (ValueError, yaml.YAMLError):
        return "{}"


def yaml_texts() -> st.SearchStrategy[str]:
    """A valid config's YAML with fragments spliced in at random lines and keys, dumps of
    random documents, and text of any kind."""
    base = yaml.safe_dump(VALID).splitlines()
    spliced = st.builds(
        lambda at, key, fragment: "\n".join(
            [*base[: at % (len(base) + 1)], f"{key}: {fragment}", *base[at % (len(base) + 1) :]]
        ),
        st.integers(0, 100),
        st.sampled_from(["resourceList", "hostAgent", "apiVersion", "x", "  endpoint", "- a"]),
        st.sampled_from(YAML_FRAGMENTS),
    )
    return st.one_of(
        spliced,
        st.sampled_from(YAML_FRAGMENTS),
        documents.map(yaml_dump),
        st.text(max_size=200),
    )


JSON_FRAGMENTS = [
    "9" * 5000,
    "-" + "9" * 5000,
    "1e99999",
    "NaN",
    "-Infinity",
    '"\\u0000"',
    '"\\ud800"',
    "[" * 1000 + "]" * 1000,
    "[" * 100_000 + "]" * 100_000,
    '{"a": 1, "a": 2}',
    "[" * 900 + '{"x": 1, "x": 2}' + "]" * 900,
    "",
    "{",
    "\ufeff{}",
]


def json_texts() -> st.SearchStrategy[str]:
    spliced = st.builds(
        lambda key, fragment: json.dumps(VALID)[:-1] + f', "{key}": {fragment or 0}' + "}",
        st.sampled_from(["resourceList", "hostAgent", "apiVersion", "x"]),
        st.sampled_from(JSON_FRAGMENTS),
    )
    return st.one_of(
        spliced,
        st.sampled_from(JSON_FRAGMENTS),
        documents.map(lambda raw: json.dumps(raw, ensure_ascii=False) if abs_small(raw) else "{}"),
        st.text(max_size=200),
    )


def abs_small(raw: Any) -> bool:
    """json.dumps cannot write an int of more than 4300 digits."""
    try:
        json.dumps(raw)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize(
    ("suffix", "texts"), [(".yaml", yaml_texts()), (".json", json_texts())], ids=["yaml", "json"]
)
def test_random_files(
    suffix: str, texts: st.SearchStrategy[str], tmp_path: Path, record: list[FaultResult]
) -> None:
    path = tmp_path / f"config{suffix}"
    seen: dict[str, int] = {"config": 0, "error": 0}

    @settings(FUZZ, max_examples=300)
    @given(texts, st.booleans())
    def one(text: str, as_bytes: bool) -> None:
        encoded = text.encode("utf-8", "surrogatepass")
        path.write_bytes(encoded if not as_bytes else b"\xff" + encoded)
        seen[outcome(lambda: load_config(path))] += 1

    one()
    kind = "YAML (tags, anchors, timestamps, huge numbers)" if suffix == ".yaml" else "JSON"
    record.append(
        FaultResult(
            f"config: random {kind} files",
            "-",
            sum(seen.values()),
            "ConfigError naming the line where known, no other exception",
        )
    )


NESTING = [100, 1_000, 10_000]


def nested_texts(levels: int) -> dict[str, str]:
    return {
        "yaml-flow.yaml": "x: " + "[" * levels + "]" * levels,
        "yaml-block.yaml": "".join(" " * i + "a:\n" for i in range(levels)) + " " * levels + "b",
        "yaml-list.yaml": "x:\n" + "".join(" " * i + "-\n" for i in range(levels)) + "  1",
        "json-list.json": '{"x": ' + "[" * levels + "]" * levels + "}",
        "json-map.json": '{"x": ' + '{"a": ' * levels + "1" + "}" * levels + "}",
    }


def test_deep_nesting(tmp_path: Path, record: list[FaultResult]) -> None:
    runs = 0
    for levels in NESTING:
        for name, text in nested_texts(levels).items():
            path = tmp_path / f"{levels}-{name}"
            path.write_text(text)
            assert outcome(lambda path=path: load_config(path)) == "error", name
            runs += 1
        for mapping in (False, True):
            raw = copy.deepcopy(VALID)
            raw["hostAgent"] = deep(levels, mapping=mapping)
            raw["resourceList"][0]["selectors"][0]["pfNames"] = deep(levels, mapping=mapping)
            assert outcome(lambda raw=raw: parse_config(raw)) == "error"
            runs += 1
    record.append(
        FaultResult(
            "config: nesting 100, 1,000 and 10,000 deep (YAML flow/block, JSON, documents)",
            "-",
            runs,
            "ConfigError (not valid / nested too deeply / wrong type), no RecursionError",
        )
    )


# Each of these raised a ValueError or RecursionError (a traceback from the CLI), took a NUL
# into a path, or printed a problem over two lines, before the loader was fixed.
FIXED = {
    "timestamp.yaml": "resourceList: []\nwhen: 2001-13-45\n",
    "tagged.yaml": "rescanIntervalSeconds: !!float many\n",
    "huge.yaml": "rescanIntervalSeconds: " + "9" * 5000 + "\n",
    "hex-version.yaml": "apiVersion: 0x" + "f" * 5000 + "\n",
    "huge.json": '{"rescanIntervalSeconds": ' + "9" * 5000 + "}",
    "deep.json": '{"x": ' + "[" * 2000 + "]" * 2000 + "}",
    "nul-path.json": json.dumps({**VALID, "hostAgent": {"endpoint": "unix:///run/a\x00.sock"}}),
    "newline-key.json": json.dumps({**VALID, "bad\nkey": 1}),
    "not-utf8.yaml": "",
}


def test_check_config_cli_exits_2_without_traceback(
    tmp_path: Path, record: list[FaultResult]
) -> None:
    """A handful, run at once: each is a process (about half a second)."""
    processes = {}
    for name, text in FIXED.items():
        path = tmp_path / name
        path.write_bytes(b"\xff\xfe" if name == "not-utf8.yaml" else text.encode())
        processes[name] = subprocess.Popen(
            [sys.executable, "-m", "xpu_bridge.cli", "check-config", "--config", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    for name, process in processes.items():
        out, err = process.communicate(timeout=60)
        assert process.returncode == 2, (name, out, err)
        assert "Traceback" not in err, (name, err)
        lines = err.splitlines()
        assert lines and all(line.startswith(f"xpu-bridge: config {tmp_path}") for line in lines)
    record.append(
        FaultResult(
            "xpu-bridge check-config on bad files (timestamp, !!float, huge/hex numbers, "
            "deep JSON, NUL, newline key, not UTF-8)",
            "-",
            len(processes),
            "exit 2, one line per problem, no traceback",
        )
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({**VALID, "apiVersion": HUGE}, "apiVersion: a number too long to show is not supported"),
        ({**VALID, "bad\nkey": 1}, "'bad\\nkey': unknown key"),
        ({**VALID, "hostAgent": {"": 1}}, "hostAgent.'': unknown key"),
        (
            {**VALID, "hostAgent": {"endpoint": "unix:///run/a\x00.sock"}},
            "hostAgent.endpoint: must not contain a NUL character",
        ),
        (
            {**VALID, "release": {"hookSocket": "/run/x\x00/hook.sock"}},
            "release.hookSocket: must not contain a NUL character",
        ),
    ],
    ids=["huge-api-version", "newline-key", "empty-key", "nul-endpoint", "nul-hook-socket"],
)
def test_fixed_problems_read_clearly(raw: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    assert any(problem.startswith(expected) for problem in caught.value.problems), (
        caught.value.problems
    )
