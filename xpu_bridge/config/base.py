"""What every part of the config schema shares: strict models and the error they raise."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from xpu_bridge.common.errors import ProblemsError


class ConfigError(ProblemsError):
    """A configuration problem; `problems` holds one human-readable line per problem."""


class StrictModel(BaseModel):
    """Unknown keys are errors; a validated config never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
