"""Structured output (`response_format`) is enforced by vLLM behind the gateway."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.integration.support import SMOL_GROUP

pytestmark = pytest.mark.integration

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def _validate(instance: Any, schema: dict[str, Any]) -> None:
    try:
        import jsonschema
    except ImportError:  # not a declared dependency: check what this schema says by hand
        assert isinstance(instance, dict) and set(instance) == {"name", "age"}
        assert isinstance(instance["name"], str)
        assert isinstance(instance["age"], int) and not isinstance(instance["age"], bool)
        return
    jsonschema.validate(instance, schema)


def test_json_schema(client: openai.OpenAI):
    resp = client.chat.completions.create(
        model=SMOL_GROUP,
        messages=[{"role": "user", "content": "Give me a JSON object describing a person named Alice who is 30."}],
        temperature=0, max_tokens=200,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "person", "schema": PERSON, "strict": True}},
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    _validate(json.loads(choice.message.content), PERSON)


def test_json_object(client: openai.OpenAI):
    resp = client.chat.completions.create(
        model=SMOL_GROUP,
        messages=[{"role": "user", "content": 'Return a JSON object with the keys "city" and "country" for Paris.'}],
        temperature=0, max_tokens=200, response_format={"type": "json_object"},
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    assert isinstance(json.loads(choice.message.content), dict)
