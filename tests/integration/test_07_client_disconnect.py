"""A client that goes away before its answer is complete: the gateway releases the request and vLLM stops.

Observed through the gateway's own metrics: `serving_requests_in_flight` must come back to where it was, and
`serving_completion_tokens_total` must not grow by the full answer (an answer nobody reads must not be
generated to the end, nor counted as served).
"""

from __future__ import annotations

import time

import httpx
import pytest
import yaml

from tests.integration.support import HELLO, TINY_ENGINE, TINY_GROUP, Stack, metric_samples, metric_value

pytestmark = pytest.mark.integration

MAX_TOKENS = 1900  # several seconds of generation on CPU

def _gauges(http: httpx.Client) -> tuple[float, float]:
    samples = metric_samples(http.get("/metrics").text)
    return (metric_value(samples, "serving_requests_in_flight", model_group=TINY_GROUP),
            metric_value(samples, "serving_completion_tokens_total", model_group=TINY_GROUP, engine=TINY_ENGINE))


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_disconnect_before_the_answer_aborts_the_request(stack: Stack, http: httpx.Client, stream: bool):
    in_flight_before, tokens_before = _gauges(http)
    body = {"model": TINY_GROUP, "messages": HELLO, "max_tokens": MAX_TOKENS, "ignore_eos": True, "stream": stream}
    with httpx.Client(base_url=stack.url, timeout=httpx.Timeout(300, read=1.0)) as impatient:
        if stream:
            with impatient.stream("POST", "/v1/chat/completions", json=body) as resp:
                assert resp.status_code == 200
                next(resp.iter_raw())  # the first bytes, then hang up
        else:
            with pytest.raises(httpx.ReadTimeout):  # the answer only comes at the end: hang up after 1 s
                impatient.post("/v1/chat/completions", json=body)

    ingress = yaml.safe_load(stack.config.read_text())["ray"].get("serve_ingress", "haproxy")
    # In HAProxy mode a non-streamed answer is generated to the end (see below): give it the time to finish.
    known_limitation = not stream and ingress == "haproxy"
    deadline = time.monotonic() + (240 if known_limitation else 30)
    while (now := _gauges(http))[0] != in_flight_before and time.monotonic() < deadline:
        time.sleep(0.5)
    in_flight, tokens = now
    assert in_flight == in_flight_before, f"serving_requests_in_flight: {in_flight_before} -> {in_flight}"
    if known_limitation and tokens - tokens_before >= MAX_TOKENS:
        # Known limitation (docs/architecture.md): HAProxy keeps the connection to the gateway replica open when
        # the client leaves, so a non-streamed request is generated to the end; streams are aborted.
        pytest.xfail("HAProxy mode does not pass a client disconnect on to the gateway before the answer")
    assert tokens - tokens_before < MAX_TOKENS, "the whole answer was generated for a client that had gone"
