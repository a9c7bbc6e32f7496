"""What every part of the config schema shares: strict models and the errors they raise."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticCustomError

from xpu_bridge.common.errors import ProblemsError

FIELD_ERROR = "config_field"
"""The pydantic error type of `field_error`; its ctx["field"] is the path below the model."""


class ConfigError(ProblemsError):
    """A configuration problem; `problems` holds one human-readable line per problem."""


class StrictModel(BaseModel):
    """Unknown keys are errors; a validated config never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def field_error(field: str | tuple[str | int, ...], problem: str) -> PydanticCustomError:
    """What a check across fields raises, naming the field at fault: its YAML key, or its path
    below the model (`("logicalBridges", 1)`). pydantic reports a model validator's error at
    the model; `validation_problems` appends this path, so the line names the leaf:
    `hostAgent.tls.keyFile: certFile and keyFile must be given together`."""
    path = (field,) if isinstance(field, str) else field
    # pydantic fills the template from ctx in order: "field" first, so that a problem that
    # happens to contain "{field}" is left as written.
    return PydanticCustomError(FIELD_ERROR, "{problem}", {"field": path, "problem": problem})
