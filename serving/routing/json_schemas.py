"""Compiled JSON-schema validators shared by the gates (`json` on response formats, `tools` on tool parameters),
cached by the schema's JSON text: agents send the same schemas with every turn."""

from __future__ import annotations

import functools
import json
from typing import Any

import jsonschema


@functools.lru_cache(maxsize=256)
def _compiled(text: str) -> Any:
    schema = json.loads(text)
    return jsonschema.validators.validator_for(schema)(schema)


def validator_of(schema: dict[str, Any]) -> Any:
    """A validator for `schema` (raises `jsonschema.SchemaError` or TypeError for one it cannot use)."""
    return _compiled(json.dumps(schema, sort_keys=True))
