"""Reading a config file: YAML or JSON in, a Config or one line per problem out."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from xpu_bridge.config.base import ConfigError
from xpu_bridge.config.document import (
    API_VERSION,
    SUPPORTED_API_VERSIONS,
    Config,
    unsupported_version,
)

# A message that names its own path (checks across sections), e.g. `resourceList[0].vlan: ...`.
NAMES_ITS_PATH = re.compile(r"^[a-zA-Z]+(\[\d+\])?(\.[a-zA-Z]+(\[\d+\])?)*: ")


def _location(loc: tuple[int | str, ...]) -> str:
    """Render a pydantic error location as `resourceList[0].bridgePort.type`."""
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item.startswith(("function-", "literal[")) or item in {"list[str]", "str"}:
            continue
        else:
            parts.append(("." if parts else "") + item)
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
        where, message = _location(details["loc"]), _message(details)
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
        return Config.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(validation_problems(error)) from None


def load_config(path: Path) -> Config:
    """Read a YAML or JSON file and validate it; messages leave the file name to the caller."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError([f"cannot read: {error.strerror or error}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(["is not UTF-8 text"]) from None
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError([f"not valid YAML/JSON{line}: {_short(error)}"]) from None
    return parse_config(raw)


def _short(error: Exception) -> str:
    return " ".join(str(error).split())[:200]
