"""`POST /v1/embeddings`: the OpenAI embeddings wire format, validated into vLLM's embedding request.

The request then takes the one pipeline (keys, limits, admission, cost, audit) to a model group of embedding
engines (`task: embed`); the engine's `EmbeddingResponse` is the answer as it is (`data[].embedding` as floats or
base64, `usage.prompt_tokens`). OpenAI's own limits are checked here first: at most 2048 inputs, none empty.
"""

from __future__ import annotations

import json
from typing import Any, get_args

from ray.serve.llm.openai_api_models import EmbeddingRequest

from serving.api.errors import APIError
from serving.api.protocol import (
    MAX_TOKEN_ID,
    ParsedRequest,
    drop_nulls,
    parse_json_object,
    pop_overrides,
    validate_model,
)

EMBEDDING_REQUEST: Any = get_args(EmbeddingRequest)[0] if get_args(EmbeddingRequest) else EmbeddingRequest
"""vLLM's `EmbeddingCompletionRequest` (the `input` form of Ray Serve LLM's `EmbeddingRequest` union)."""

MAX_INPUTS = 2048
"""OpenAI's limit on the number of inputs of one request."""

FIELDS = frozenset({"model", "input", "encoding_format", "dimensions", "user", "truncate_prompt_tokens"})
"""The fields a client may send: OpenAI's, and vLLM's `truncate_prompt_tokens`."""


def _bad(message: str, param: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_value")


def _is_int(value: Any) -> bool:
    """An integer; JSON has no integer type, so 2.0 is 2 (as on the other endpoints, and for vLLM)."""
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, float) and value.is_integer())


def _check_tokens(ids: list[Any], where: str) -> None:
    for i, tok in enumerate(ids):
        if not _is_int(tok) or not 0 <= tok <= MAX_TOKEN_ID:
            raise _bad(f"'{where}[{i}]' is not a valid token id: {json.dumps(tok)}.", where)


def _check_input(value: Any) -> None:
    """A string, a list of strings, a list of token ids, or a list of token-id lists; nothing empty."""
    if isinstance(value, str):
        if not value:
            raise _bad("'input' must not be an empty string.", "input")
        return
    if not isinstance(value, list) or not value:
        raise APIError(400, "'input' must be a non-empty string or array (of strings or token ids).", param="input")
    if len(value) > MAX_INPUTS:
        raise _bad(f"'input' has {len(value)} items; at most {MAX_INPUTS} are allowed.", "input")
    if all(_is_int(v) for v in value):
        _check_tokens(value, "input")
        return
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if isinstance(item, str):
            if not item:
                raise _bad(f"'{where}' must not be an empty string.", where)
        elif isinstance(item, list) and item:
            _check_tokens(item, where)
        else:
            raise _bad(f"'{where}' must be a non-empty string or array of token ids, got {json.dumps(item)[:40]}.",
                       where)


def parse_embeddings(raw: bytes) -> ParsedRequest:
    """Validate a `POST /v1/embeddings` body."""
    body = drop_nulls(parse_json_object(raw))
    overrides = pop_overrides(body)
    if overrides is not None and (overrides.route or overrides.gates is not None or overrides.self_correct
                                  is not None or overrides.on_exhausted is not None):
        raise APIError(400, "Embeddings take no routes or gates: only 'serving.engine' and 'serving.deadline_s'.",
                       param="serving")
    model = body.get("model")
    if model is None:
        raise APIError(400, "you must provide a model parameter", param="model", code="missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise APIError(400, "'model' must be a non-empty string.", param="model")
    if "input" not in body:
        raise APIError(400, "you must provide an input parameter", param="input", code="missing_required_parameter")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise APIError(400, f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0],
                       code="unknown_parameter")
    _check_input(body["input"])
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise _bad(f"'encoding_format' must be 'float' or 'base64', got {json.dumps(fmt)}.", "encoding_format")
    dims = body.get("dimensions")
    if dims is not None and (not _is_int(dims) or dims < 1):
        raise _bad(f"'dimensions' must be an integer >= 1, got {json.dumps(dims)}.", "dimensions")
    truncate = body.get("truncate_prompt_tokens")
    if truncate is not None and (not _is_int(truncate) or truncate < -1):  # vLLM's model takes `true` as 1
        raise _bad(f"'truncate_prompt_tokens' must be an integer >= -1, got {json.dumps(truncate)}.",
                   "truncate_prompt_tokens")
    if "user" in body and not isinstance(body["user"], str):
        raise APIError(400, "'user' must be a string.", param="user")
    return ParsedRequest(model, False, False, validate_model(EMBEDDING_REQUEST, body), overrides, body,
                         endpoint="embeddings")
