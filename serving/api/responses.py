"""The OpenAI Responses API (`POST /v1/responses`, `GET`/`DELETE /v1/responses/{id}`) as an edge of the chat pipeline.

`serving.api.responses_request.parse_responses` validates a Responses body into the internal chat request and
attaches a `ResponsesEdge`, which renders the pipeline's chat answer as a Response object (or as Responses SSE
events, built by `serving.api.responses_stream`) and keeps it in the `ResponseStore` for `previous_response_id`,
`retrieve` and `delete`.

`store` (default true) applies only when the gateway has a response store (`policies.redis`); the echoed `store` says
whether this response was stored. Failed responses are not stored; a store outage while saving an answer is logged
and the answer still sent (a later `previous_response_id` to it is then a 404).
"""

from __future__ import annotations

import copy
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

from serving.api.errors import APIError
from serving.api.protocol import ParsedRequest, revalidate_chat
from serving.api.responses_stream import ResponseStream, call_item, message_item, text_part
from serving.policy.response_store import ResponseStore
from serving.policy.store import StoreUnavailable

logger = logging.getLogger("serving.api")


def no_store(what: str, param: str | None = None) -> APIError:
    """The 400 for a use of the response store (`what`, e.g. "previous_response_id") on a gateway without one."""
    return APIError(400, f"{what} needs a response store: configure policies.redis on the gateway.", param=param,
                    code="store_not_configured")


def system_messages(instructions: str | None) -> list[dict[str, Any]]:
    """The chat messages before the conversation: `instructions` as a system message, if any."""
    return [{"role": "system", "content": instructions}] if instructions else []


def _not_found(response_id: str) -> APIError:
    return APIError(404, f"Response with id '{response_id}' not found.", type="invalid_request_error")


def _unavailable(param: str | None = None) -> APIError:
    return APIError(503, "The response store is unavailable; retry later.", param=param, code="store_unavailable")


def _usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """OpenAI chat usage as Responses usage."""
    if not usage:
        return None
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage.get("total_tokens") or prompt + completion}


def _status(finish_reason: str | None) -> tuple[str, dict[str, Any] | None]:
    """(status, incomplete_details) for a chat finish reason."""
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def _assistant_message(output: list[dict[str, Any]]) -> dict[str, Any]:
    """A Response's output as one chat assistant message (what the next turn's history holds)."""
    text = "".join(part.get("text", "") for item in output if item["type"] == "message" for part in item["content"])
    calls = [{"id": item["call_id"], "type": "function",
              "function": {"name": item["name"], "arguments": item["arguments"]}}
             for item in output if item["type"] == "function_call"]
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _failure(error: Any) -> dict[str, Any]:
    """A Response `error` for an OpenAI error envelope's `error` (codes in the Responses API's set)."""
    error = error if isinstance(error, dict) else {"message": str(error)}
    kind = error.get("type")
    code = {"rate_limit_error": "rate_limit_exceeded", "invalid_request_error": "invalid_prompt"}.get(
        kind if isinstance(kind, str) else "", "server_error")
    return {"code": code, "message": str(error.get("message") or "The response failed.")}


def _payloads(event: str) -> Iterator[str]:
    """The `data:` payloads of one SSE string (one or more events)."""
    for block in event.split("\n\n"):
        data = [line[5:].lstrip() for line in block.splitlines() if line.startswith("data:")]
        if data:
            yield "\n".join(data)


class ResponsesEdge:
    """The Responses wire format of one request (made by `parse_responses`).

    Storing: a non-streamed answer is stored by `await finish(rendered)`, which the server awaits after `render`
    and before sending the JSON; a streamed one is stored inside `stream` before `response.completed` (or
    `response.incomplete`) is sent. Either way a client that has the answer can use its id as
    `previous_response_id` at once."""

    name = "responses"

    def __init__(self, *, store: ResponseStore | None, model: str, echo: dict[str, Any], instructions: str | None,
                 items: list[dict[str, Any]], previous_response_id: str | None, save: bool):
        self.id = f"resp_{uuid.uuid4().hex}"
        self.created_at = int(time.time())
        self.store, self.model, self.echo = store, model, echo
        self.instructions, self.items, self.previous_response_id = instructions, items, previous_response_id
        self.save = save
        self.tenant: str | None = None
        self.history: list[dict[str, Any]] = []

    async def prepare(self, parsed: ParsedRequest, tenant: str) -> None:
        """Remember the tenant; with `previous_response_id`, load that response of this tenant and make the chat
        messages its conversation (its instructions not carried over) + this request's instructions and input.
        Raises `APIError` 404 (unknown, expired or another tenant's id) or 503 (store down)."""
        self.tenant = tenant
        previous = self.previous_response_id
        if previous is None or self.store is None:
            return
        try:
            record = await self.store.get(tenant, previous)
        except StoreUnavailable:
            raise _unavailable("previous_response_id") from None
        history = record.get("messages") if isinstance(record, dict) else None
        if not isinstance(history, list):
            raise APIError(404, f"Previous response with id '{previous}' not found.", type="invalid_request_error",
                           param="previous_response_id", code="previous_response_not_found")
        self.history = history
        parsed.body["messages"] = system_messages(self.instructions) + copy.deepcopy(history + self.items)
        revalidate_chat(parsed)

    def _response(self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None, *,
                  incomplete: dict[str, Any] | None = None, error: dict[str, Any] | None = None) -> dict[str, Any]:
        response: dict[str, Any] = {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "background": False, "error": error, "incomplete_details": incomplete, "model": self.model,
            "output": output, "usage": usage, **self.echo,
        }
        if status == "completed":
            response["completed_at"] = int(time.time())
        return response

    def render(self, body: dict[str, Any]) -> dict[str, Any]:
        """The Response object for a `chat.completion` body (keeps its `serving` field); not yet stored: await
        `finish` with the result before sending it."""
        choices = body.get("choices") or [{}]
        message = choices[0].get("message") or {}
        status, incomplete = _status(choices[0].get("finish_reason"))
        output = []
        if message.get("content"):
            output.append(message_item(f"msg_{uuid.uuid4().hex}", status, [text_part(message["content"])]))
        for call in message.get("tool_calls") or []:
            fn = call.get("function") or {}
            output.append(call_item(f"fc_{uuid.uuid4().hex}", call.get("id") or f"call_{uuid.uuid4().hex}",
                                     fn.get("name") or "", fn.get("arguments") or "", status))
        response = self._response(status, output, _usage(body.get("usage")), incomplete=incomplete)
        if "serving" in body:
            response["serving"] = body["serving"]
        return response

    async def finish(self, rendered: dict[str, Any]) -> None:
        """Store the rendered Response (when storing applies) with this conversation as chat messages; a store
        outage is logged, not raised."""
        if not self.save or self.store is None or self.tenant is None or rendered.get("status") == "failed":
            return
        response = {k: v for k, v in rendered.items() if k != "serving"}
        messages = self.history + self.items + [_assistant_message(response["output"])]
        try:
            await self.store.put(self.tenant, self.id, {"response": response, "messages": messages})
        except StoreUnavailable:
            logger.warning("responses: store unavailable, response %s not stored", self.id)

    async def stream(self, events: AsyncIterator[str]) -> AsyncIterator[str]:
        """Responses SSE events (`event: <type>` + `data:` with `type` and `sequence_number`) for the pipeline's
        chat chunks: `response.created`, `response.in_progress`, each output item's events, then (after storing)
        `response.completed` / `response.incomplete`, or `response.failed` for an error event; no `[DONE]`.

        The openai SDK yields `response.failed` as a typed event without raising; its `responses.stream(...)
        .get_final_response()` then raises `RuntimeError` (as for `response.incomplete`: it wants `completed`)."""
        out = ResponseStream()
        yield out.event("response.created", response=self._response("in_progress", [], None))
        yield out.event("response.in_progress", response=self._response("in_progress", [], None))
        failed = False
        async for raw in events:
            if raw.startswith(":"):  # an SSE comment (keep-alive)
                yield raw
                continue
            for data in _payloads(raw):
                if failed or data == "[DONE]":
                    continue
                try:
                    chunk = json.loads(data)
                except json.JSONDecodeError:
                    logger.warning("responses: skipping a malformed stream event")
                    continue
                if isinstance(chunk, dict) and "error" in chunk:
                    failed = True
                    out.abandon()
                    yield out.event("response.failed", response=self._response(
                        "failed", out.output, _usage(out.usage), error=_failure(chunk["error"])))
                    continue
                for event in out.chunk(chunk):
                    yield event
        if failed:
            return
        status, incomplete = _status(out.finish_reason)
        for event in out.close_open(status):
            yield event
        response = self._response(status, out.output, _usage(out.usage), incomplete=incomplete)
        if out.serving is not None:
            response["serving"] = out.serving
        await self.finish(response)
        yield out.event("response.completed" if status == "completed" else "response.incomplete", response=response)

    def error_body(self, exc: APIError) -> dict[str, Any]:
        """The OpenAI error envelope (the Responses API uses it too)."""
        return exc.envelope()


# ------------------------------------------------------------------------------------------ GET / DELETE by id


def _store_of(store: ResponseStore | None) -> ResponseStore:
    if store is None:
        raise no_store("Stored responses")
    return store


async def retrieve(store: ResponseStore | None, tenant: str, response_id: str) -> dict[str, Any]:
    """`GET /v1/responses/{id}`: the stored Response object of `tenant` (400 without a store, 404 when unknown,
    expired or another tenant's, 503 when the store is down)."""
    try:
        record = await _store_of(store).get(tenant, response_id)
    except StoreUnavailable:
        raise _unavailable() from None
    if not isinstance(record, dict) or not isinstance(record.get("response"), dict):
        raise _not_found(response_id)
    response: dict[str, Any] = record["response"]
    return response


async def delete(store: ResponseStore | None, tenant: str, response_id: str) -> dict[str, Any]:
    """`DELETE /v1/responses/{id}`: `{"id", "object": "response.deleted", "deleted": true}` (errors as `retrieve`)."""
    try:
        deleted = await _store_of(store).delete(tenant, response_id)
    except StoreUnavailable:
        raise _unavailable() from None
    if not deleted:
        raise _not_found(response_id)
    return {"id": response_id, "object": "response.deleted", "deleted": True}
