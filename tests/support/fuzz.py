"""Schemathesis over the gateway's /openapi.json (tests/unit/api/test_openapi.py, tests/integration/test_10_fuzz.py).

`run` generates cases for every documented operation with schemathesis's Python API (`operation.as_strategy` under
Hypothesis' `@given`), positive (valid per the document) and negative (invalid) ones, sends each through
`case.call`, and checks every answer with schemathesis's conformance checks (documented status, content type and
schema) plus `check_answer`: no 5xx except a 503 in the envelope when every tier is down, and every error in the
OpenAI envelope. `bound_body` (a `map_body` hook) keeps the generated requests cheap for real engines.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

# Caps on what one generated request may cost an engine (the document's own bounds are the API's, far larger):
# a few tokens per choice, two choices, and `max_tokens` when the case sets none (a chat request without a limit
# runs to the end of the context: tiny-llama's gibberish may never stop; a completion's default is 16).
MAX_TOKENS, MAX_N = 8, 2
# `serving.deadline_s` the fuzzer may set is raised to this: a deadline shorter than the work is the client's own
# documented 504, so any 504 left means the gateway gave up on its own.
MIN_DEADLINE_S = 60.0
# Header bytes RFC 9110 forbids (controls but HTAB): the HTTP server in front of the app (HAProxy, uvicorn)
# answers them with its own plain-text 400 before the gateway sees the request, so none are generated.
INVALID_HEADER_CHARS = "".join(map(chr, [*range(9), *range(10, 32), 127]))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def bound_body(ctx: Any, body: Any) -> Any:
    """A schemathesis `map_body` hook: cap the costly fields of a generated request body (values of the wrong type
    are left alone, for the negative cases)."""
    if not isinstance(body, dict):
        return body
    for key, cap in (("max_tokens", MAX_TOKENS), ("max_completion_tokens", MAX_TOKENS), ("n", MAX_N)):
        if _number(body.get(key)) and body[key] > cap:
            body[key] = cap
    body.setdefault("max_tokens", MAX_TOKENS)
    serving = body.get("serving")
    if isinstance(serving, dict) and _number(serving.get("deadline_s")) and 0 < serving["deadline_s"] < MIN_DEADLINE_S:
        serving["deadline_s"] = MIN_DEADLINE_S
    return body


def check_answer(response: Any, case: Any) -> None:
    """No 5xx but a 503 when every tier is down (`engine_unavailable`); every 4xx/5xx in the OpenAI envelope (a
    route's adds `serving`) with an x-request-id, except /ready's probe body (documented: the same body as its 200)."""
    status, text = response.status_code, response.text
    if status < 400 or case.path == "/ready":  # its 503 is documented; any other status fails status conformance
        return
    assert response.headers.get("content-type", [""])[0].startswith("application/json"), response.headers
    assert response.headers.get("x-request-id"), response.headers
    assert "Traceback" not in text
    body = json.loads(text)
    assert isinstance(body, dict) and set(body) <= {"error", "serving"} and "error" in body, text[:500]
    err = body["error"]
    assert isinstance(err, dict) and set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"] and isinstance(err["type"], str) and err["type"], err
    assert status < 500 or (status == 503 and err["code"] == "engine_unavailable"), f"{status}: {text[:500]}"


def _check(ctx: Any, response: Any, case: Any) -> None:
    check_answer(response, case)


CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance, _check]


@dataclass
class Report:
    """What a run sent and got: (operation, status) counts, and the (path, model) pairs that got a 200."""

    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    served: set[tuple[str, Any]] = field(default_factory=set)
    seconds: float = 0.0

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    def count(self, status: int) -> int:
        return sum(n for (_, s), n in self.statuses.items() if s == status)


def run(schema: Any, examples: int, *, timeout: float, derandomize: bool = True, **call: Any) -> Report:
    """Fuzz every operation of `schema` with up to `examples` positive and (if it takes input) `examples` negative
    cases; raise at the first answer that fails a check (with schemathesis' report and a curl line). `call`:
    `case.call` arguments (e.g. `headers`); `timeout`: one request's client timeout, so a hang fails the run."""
    schema.hook("map_body")(bound_body)
    schema.config.generation.exclude_header_characters = INVALID_HEADER_CHARS
    report, start = Report(), time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        takes_input = bool(operation.body) or any(True for _ in operation.iter_parameters())
        modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if takes_input else (GenerationMode.POSITIVE,)
        for mode in modes:

            @settings(max_examples=examples, deadline=None, database=None, derandomize=derandomize,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def fuzz(case: Any) -> None:
                response = case.call(timeout=timeout, **call)
                report.statuses[(case.operation.label, response.status_code)] += 1
                case.validate_response(response, checks=CHECKS)
                if response.status_code == 200 and isinstance(case.body, dict) and case.path.endswith("completions"):
                    report.served.add((case.path, case.body.get("model")))

            fuzz()
    report.seconds = time.monotonic() - start
    return report
