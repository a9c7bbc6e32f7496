"""Reading a config file: YAML or JSON in, a Config or one line per problem out."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode

from xpu_bridge.config.base import FIELD_ERROR, ConfigError
from xpu_bridge.config.document import (
    API_VERSION,
    SUPPORTED_API_VERSIONS,
    Config,
    shown,
    unsupported_version,
)

# A message that names its own path (checks across sections), e.g. `resourceList[0].vlan: ...`.
NAMES_ITS_PATH = re.compile(r"^[a-zA-Z]+(\[\d+\])?(\.[a-zA-Z]+(\[\d+\])?)*: ")
YAML_MERGE_TAG = "tag:yaml.org,2002:merge"


def _location(loc: tuple[int | str, ...]) -> str:
    """Render a pydantic error location as `resourceList[0].bridgePort.type`."""
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item.startswith(("function-", "literal[")) or item in {"list[str]", "str"}:
            continue
        else:
            # A key with a newline or other control character would break the one line, and
            # an empty one would not show.
            plain = item.isprintable() and item.strip() == item != ""
            parts.append(("." if parts else "") + (item if plain else shown(item)))
    return "".join(parts) or "(top level)"


def _message(error: ErrorDetails) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "is required"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def validation_problems(error: ValidationError) -> list[str]:
    problems = []
    for details in error.errors():
        loc = details["loc"]
        if details["type"] == FIELD_ERROR:  # a check across fields names its field (base.py)
            loc = (*loc, *details.get("ctx", {})["field"])
        where, message = _location(loc), _message(details)
        lines = message.splitlines()
        if where == "(top level)" and all(NAMES_ITS_PATH.match(line) for line in lines):
            problems.extend(lines)
        else:
            problems.append(f"{where}: {message}")
    return problems


def _check_api_version(raw: dict[str, object]) -> None:
    """Checked before anything else: a document of another version would only add noise."""
    version = raw.get("apiVersion", raw.get("api_version", API_VERSION))
    if version not in SUPPORTED_API_VERSIONS:
        raise ConfigError([f"apiVersion: {unsupported_version(version)}"])


def parse_config(raw: object) -> Config:
    """Validate an already-decoded document; raises ConfigError with one line per problem."""
    if not isinstance(raw, dict):
        raise ConfigError(["(top level): must be a mapping with hostAgent, resourceList, ..."])
    _check_api_version(raw)
    try:
        config = Config.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(validation_problems(error)) from None
    problems = _nul_problems(config.model_dump(mode="json", by_alias=True))
    if problems:
        raise ConfigError(problems)
    return config


def _nul_problems(document: object) -> list[str]:
    """A NUL in a string (JSON can write one as \\u0000) is no path, endpoint or name, and
    only fails later, when the daemon uses it; the validated document is walked, so no deeper
    than the schema."""
    problems: list[str] = []
    pending: list[tuple[str, object]] = [("", document)]
    while pending:
        where, value = pending.pop()
        if isinstance(value, dict):
            pending.extend((f"{where}.{key}" if where else key, v) for key, v in value.items())
        elif isinstance(value, list):
            pending.extend((f"{where}[{index}]", v) for index, v in enumerate(value))
        elif isinstance(value, str) and "\0" in value:
            problems.append(f"{where}: must not contain a NUL character")
    return sorted(problems)


def load_config(path: Path) -> Config:
    """Read a YAML or JSON file and validate it; messages leave the file name to the caller."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError([f"cannot read: {error.strerror or error}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(["is not UTF-8 text"]) from None
    return parse_config(_decode_json(text) if path.suffix == ".json" else _decode_yaml(text))


class UnreadableValue(Exception):
    """A value YAML resolves (or is tagged) to a type it then cannot build (`2001-13-45`,
    `!!int x`, `!!timestamp x`, an int of more digits than Python converts): PyYAML's
    constructors raise whatever Python raises for those, not a YAMLError."""

    def __init__(self, node: Node, error: Exception) -> None:
        kind = node.tag.rsplit(":", 1)[-1]
        value = f"{shown(node.value)} " if isinstance(node, ScalarNode) else ""
        why = f": {_unreadable(error)}" if isinstance(error, ValueError | OverflowError) else ""
        super().__init__(f"cannot read {value}as {kind}{why}")
        self.line = node.start_mark.line + 1


class RepeatedKey(Exception):
    """A mapping gives one key twice, where YAML and JSON readers keep the last value silently."""

    def __init__(self, key: str, first_line: int, line: int) -> None:
        super().__init__(f"key {key!r} appears twice (first at line {first_line})")
        self.line = line


class _UniqueKeys(SafeConstructor):
    """Refuses a mapping that repeats a key. Building objects from the parsed nodes is Python
    code for libyaml's loader too (only its parser is C), so this runs under both loaders."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        first_lines: dict[object, int] = {}
        for key_node, _ in node.value:
            # Keys that `<<: *base` merges in may be overridden; only the keys written count.
            if not isinstance(key_node, ScalarNode) or key_node.tag == YAML_MERGE_TAG:
                continue  # a collection as a key is refused by construct_mapping itself
            key, line = self.construct_object(key_node), key_node.start_mark.line + 1
            if key in first_lines:
                raise RepeatedKey(key_node.value, first_lines[key], line)
            first_lines[key] = line
        return super().construct_mapping(node, deep)

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (yaml.YAMLError, RepeatedKey, UnreadableValue, RecursionError):
            raise
        except Exception as error:  # ValueError, OverflowError, AttributeError, ...
            raise UnreadableValue(node, error) from None


class PureYamlLoader(_UniqueKeys, yaml.SafeLoader):
    """The fallback, for a PyYAML built without libyaml."""


if yaml.__with_libyaml__:

    class CYamlLoader(_UniqueKeys, yaml.CSafeLoader):
        """libyaml's parser, many times faster than the pure-Python one."""


def yaml_loader() -> type[PureYamlLoader | CYamlLoader]:
    """The C loader when PyYAML has libyaml, else the pure-Python one."""
    return CYamlLoader if yaml.__with_libyaml__ else PureYamlLoader


YAML_LOADER = yaml_loader()


def _decode_yaml(text: str) -> object:
    try:
        return yaml.load(text, Loader=YAML_LOADER)
    except (RepeatedKey, UnreadableValue) as error:
        raise ConfigError([f"not valid YAML at line {error.line}: {error}"]) from None
    except RecursionError:
        raise ConfigError(["not valid YAML: nested too deeply"]) from None
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError([f"not valid YAML{line}: {_short(error)}"]) from None


class _RepeatedJsonKey(Exception):
    """Raised by `_unique_pairs`, which sees an object's keys but not their lines."""

    def __init__(self, key: str) -> None:
        super().__init__(f"key {key!r} appears twice in one object")


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    mapping: dict[str, Any] = {}
    for key, value in pairs:
        if key in mapping:
            raise _RepeatedJsonKey(key)
        mapping[key] = value
    return mapping


def _decode_json(text: str) -> object:
    try:
        return json.loads(text, object_pairs_hook=_unique_pairs)
    except json.JSONDecodeError as error:
        raise ConfigError([f"not valid JSON: {_short(error)}"]) from None
    except ValueError as error:  # a number json.loads reads but Python will not convert
        raise ConfigError([f"not valid JSON: {_unreadable(error)}"]) from None
    except RecursionError:
        raise ConfigError(["not valid JSON: nested too deeply"]) from None
    except _RepeatedJsonKey as error:
        # Found by the parser; the walk below, which only runs then, adds the two lines.
        found = _find_repeated_json_key(text)
        problem = f" at line {found.line}: {found}" if found else f": {error}"
        raise ConfigError([f"not valid JSON{problem}"]) from None


JSON_SPACE = re.compile(r"[ \t\n\r]*")
JSON_SCALARS = json.JSONDecoder()


def _find_repeated_json_key(text: str) -> RepeatedKey | None:
    """The first key an object repeats, with its lines; object_pairs_hook sees keys, not lines.
    json.loads has read the text up to that object's end, so the walk, which stops there,
    takes the grammar as checked."""

    def skip_space(pos: int) -> int:
        return JSON_SPACE.match(text, pos).end()  # type: ignore[union-attr]  # `*` always matches

    def line(pos: int) -> int:
        return text.count("\n", 0, pos) + 1

    def walk(pos: int) -> int:
        """Walk the value at `pos`; return where it ends."""
        if text[pos] not in "{[":
            return JSON_SCALARS.raw_decode(text, pos)[1]
        closer = "}" if text[pos] == "{" else "]"
        keys: dict[str, int] = {}
        pos = skip_space(pos + 1)
        while text[pos] != closer:
            if closer == "}":
                key, end = JSON_SCALARS.raw_decode(text, pos)
                if key in keys:
                    raise RepeatedKey(key, line(keys[key]), line(pos))
                keys[key] = pos
                pos = skip_space(skip_space(end) + 1)  # past the ':'
            pos = skip_space(walk(pos))
            if text[pos] == ",":
                pos = skip_space(pos + 1)
        return pos + 1

    try:
        walk(skip_space(0))
    except RepeatedKey as found:
        return found
    except RecursionError:  # deeper than this walk can go: the caller names the key alone
        return None
    return None


def _short(error: Exception) -> str:
    return " ".join(str(error).split())[:200]


def _unreadable(error: Exception) -> str:
    """Python's own words, but for the integer limit, whose advice is for programmers."""
    if isinstance(error, ValueError) and "integer string conversion" in str(error):
        return f"a number has more than {sys.get_int_max_str_digits()} digits"
    return _short(error)
