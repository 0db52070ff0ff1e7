"""Schemathesis over the gateway's /openapi.json (tests/unit/api/test_openapi.py, tests/integration/test_10_fuzz.py).

`run` generates cases for every documented operation with schemathesis's Python API (`operation.as_strategy` under
Hypothesis' `@given`), positive (valid per the document) and negative (invalid) ones, sends each through
`case.call`, and checks every answer with schemathesis's conformance checks (documented status, content type and
schema) plus `check_answer`: no 5xx except a 503 in the envelope when every tier is down, and every error in the
endpoint's envelope (OpenAI's; Anthropic's on /v1/messages). `bound_body` (a `map_body` hook) keeps the generated
requests cheap for real engines. With `strict`, the document must also be honest about what the parsers take: no
negative case accepted (schemathesis's `negative_data_rejection`), and the positive cases refused are counted by
the field the error names (`Report.refused`), for the caller to compare with the rules across fields that a
schema cannot state.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

# Caps on what one generated request may cost an engine (the document's own bounds are the API's, far larger):
# a few tokens per choice, two choices, and `max_tokens` when the case sets none (a chat request without a limit
# runs to the end of the context: tiny-llama's gibberish may never stop; a completion's default is 16).
MAX_TOKENS, MAX_N = 8, 2
# An embedding's `dimensions` (a fake engine makes a vector that long; a real one refuses sizes it does not have).
MAX_DIMENSIONS = 8
# `serving.deadline_s` the fuzzer may set is raised to this: a deadline shorter than the work is the client's own
# documented 504, so any 504 left means the gateway gave up on its own.
MIN_DEADLINE_S = 60.0
# Header bytes RFC 9110 forbids (controls but HTAB): the HTTP server in front of the app (HAProxy, uvicorn)
# answers them with its own plain-text 400 before the gateway sees the request, so none are generated.
INVALID_HEADER_CHARS = "".join(map(chr, [*range(9), *range(10, 32), 127]))
# The inference endpoints (their 200s are counted in `Report.served`) and, per endpoint, the field a case without one
# gets (the output limit: a request without one runs to the end of the context); /v1/messages requires max_tokens.
INFERENCE = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages")
LIMIT = {"/v1/chat/completions": "max_tokens", "/v1/completions": "max_tokens", "/v1/responses": "max_output_tokens"}
CAPS = {"max_tokens": MAX_TOKENS, "max_completion_tokens": MAX_TOKENS, "max_output_tokens": MAX_TOKENS, "n": MAX_N,
        "dimensions": MAX_DIMENSIONS}
# Endpoints whose errors are in Anthropic's envelope `{"type": "error", "error": {"type", "message"}}`.
ANTHROPIC = frozenset({"/v1/messages"})
ANTHROPIC_TYPES = frozenset({"invalid_request_error", "authentication_error", "billing_error", "permission_error",
                             "not_found_error", "request_too_large", "rate_limit_error", "api_error",
                             "overloaded_error", "timeout_error"})


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def bound_body(ctx: Any, body: Any) -> Any:
    """A schemathesis `map_body` hook: cap the costly fields of a generated request body (values of the wrong type
    are left alone, for the negative cases), and set the endpoint's output limit when the case has none."""
    if not isinstance(body, dict):
        return body
    for key, cap in CAPS.items():
        if _number(body.get(key)) and body[key] > cap:
            body[key] = cap
    path = ctx.operation.path if ctx is not None and ctx.operation is not None else "/v1/chat/completions"
    if path in LIMIT:
        body.setdefault(LIMIT[path], MAX_TOKENS)
    serving = body.get("serving")
    if isinstance(serving, dict) and _number(serving.get("deadline_s")) and 0 < serving["deadline_s"] < MIN_DEADLINE_S:
        serving["deadline_s"] = MIN_DEADLINE_S
    return body


def check_answer(response: Any, case: Any) -> None:
    """No 5xx but a 503 when every tier is down (`engine_unavailable`; Anthropic's `overloaded_error`); every
    4xx/5xx in the endpoint's envelope (a route's adds `serving`) with an x-request-id, except /ready's probe body
    (documented: the same body as its 200)."""
    status, text = response.status_code, response.text
    if status < 400 or case.path == "/ready":  # its 503 is documented; any other status fails status conformance
        return
    assert response.headers.get("content-type", [""])[0].startswith("application/json"), response.headers
    assert response.headers.get("x-request-id"), response.headers
    assert "Traceback" not in text
    body = json.loads(text)
    if case.path in ANTHROPIC:
        assert isinstance(body, dict) and set(body) <= {"type", "error", "serving"} and body.get("type") == "error", \
            text[:500]
        err = body["error"]
        assert isinstance(err, dict) and set(err) == {"type", "message"} and err["type"] in ANTHROPIC_TYPES, err
        assert isinstance(err["message"], str) and err["message"], err
        assert status < 500 or (status == 503 and err["type"] == "overloaded_error"), f"{status}: {text[:500]}"
        return
    assert isinstance(body, dict) and set(body) <= {"error", "serving"} and "error" in body, text[:500]
    err = body["error"]
    assert isinstance(err, dict) and set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"] and isinstance(err["type"], str) and err["type"], err
    assert status < 500 or (status == 503 and err["code"] == "engine_unavailable"), f"{status}: {text[:500]}"


def refused_field(response: Any, case: Any) -> str:
    """The field a 4xx names (OpenAI's `param`; Anthropic's message `param: text`), its indices as `N`
    (`messages.N.content.N`, `input[N].call_id`), or the message when it names none."""
    body = json.loads(response.text)
    err = body.get("error") if isinstance(body, dict) else None
    err = err if isinstance(err, dict) else {}
    if case.path in ANTHROPIC:
        field = str(err.get("message", "")).partition(":")[0]
    else:
        field = err.get("param") or str(err.get("message", ""))
    return re.sub(r"\d+", "N", field)


def _check(ctx: Any, response: Any, case: Any) -> None:
    check_answer(response, case)


CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance, _check]


@dataclass
class Report:
    """What a run sent and got: (operation, status) counts, the (path, model) pairs that got a 200, (`strict`) the
    positive cases refused with a 400 or 422, by (operation, the field the error names), and the operations that
    take nothing invalid (no negative cases)."""

    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    served: set[tuple[str, Any]] = field(default_factory=set)
    refused: Counter[tuple[str, str]] = field(default_factory=Counter)
    no_negative: set[str] = field(default_factory=set)  # operations without invalid input to generate
    seconds: float = 0.0

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    def count(self, status: int) -> int:
        return sum(n for (_, s), n in self.statuses.items() if s == status)


def run(schema: Any, examples: int, *, timeout: float, derandomize: bool = True, paths: Any = None,
        strict: bool = False, **call: Any) -> Report:
    """Fuzz every operation of `schema` (`paths`: only those on these paths) with up to `examples` positive and (if
    it takes input) `examples` negative cases; raise at the first answer that fails a check (with schemathesis'
    report and a curl line). `strict`: no negative case may be accepted, and the positive ones refused are counted
    (`Report.refused`). `call`: `case.call` arguments (e.g. `headers`); `timeout`: one request's client timeout, so a
    hang fails the run."""
    schema.hook("map_body")(bound_body)
    schema.config.generation.exclude_header_characters = INVALID_HEADER_CHARS
    checks = [*CHECKS, negative_data_rejection] if strict else CHECKS
    report, start = Report(), time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        if paths is not None and operation.path not in paths:
            continue
        takes_input = bool(operation.body) or any(True for _ in operation.iter_parameters())
        modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if takes_input else (GenerationMode.POSITIVE,)
        for mode in modes:

            @settings(max_examples=examples, deadline=None, database=None, derandomize=derandomize,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def fuzz(case: Any) -> None:
                response = case.call(timeout=timeout, **call)
                status = response.status_code
                report.statuses[(case.operation.label, status)] += 1
                case.validate_response(response, checks=checks)
                if status == 200 and isinstance(case.body, dict) and case.path in INFERENCE:
                    report.served.add((case.path, case.body.get("model")))
                positive = case.meta is not None and case.meta.generation.mode.is_positive
                if strict and positive and status in (400, 422):
                    report.refused[(case.operation.label, refused_field(response, case))] += 1

            try:
                fuzz()
            except Unsatisfiable:  # nothing it takes can be invalid (e.g. any string as a path parameter)
                if mode is GenerationMode.POSITIVE:
                    raise
                report.no_negative.add(operation.label)
    report.seconds = time.monotonic() - start
    return report
