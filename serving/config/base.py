"""The one base of every config model: unknown fields are errors, assignments are validated, and fields with a
YAML alias (`schema` -> `json_schema`) accept either name."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
"""Engine, model-group, tier, route and tenant names: lower-case DNS-like labels (they become Ray Serve and
Kubernetes names)."""


class StrictModel(BaseModel):
    """A config section: strict about unknown keys so a typo fails at load with its path."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)
