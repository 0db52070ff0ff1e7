"""Pydantic models that describe the gateway's wire format in its OpenAPI document (serving.api.openapi).

They are documentation, not validation: requests are checked by serving.api.protocol (and vLLM's models), whose
rules and ranges these mirror. Request fields are optional unless named required, and never null in the
document (leave a field out instead); the `serving` extension field is `serving.api.protocol.RequestOverrides`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from serving.api.protocol import MAX_TOKEN_ID, RequestOverrides

INT64 = 2**63 - 1
NAME = r"^[a-zA-Z0-9_-]{1,64}$"


# -- requests ----------------------------------------------------------------------------------------------------


class TextPart(BaseModel):
    """A text content part."""

    type: Literal["text"]
    text: str


class CalledFunction(BaseModel):
    name: str = Field(pattern=NAME)
    arguments: str = Field(description="The arguments, as JSON text.")


class ToolCall(BaseModel):
    id: str
    type: Literal["function"]
    function: CalledFunction


class ChatMessage(BaseModel):
    """One message of the conversation."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | Annotated[list[TextPart], Field(min_length=1)]
    name: str | SkipJsonSchema[None] = None
    tool_calls: list[ToolCall] | SkipJsonSchema[None] = Field(None, description="Role `assistant`: the calls it made.")
    tool_call_id: str | SkipJsonSchema[None] = Field(None, description="Role `tool`: the tool call answered.")


class StreamOptions(BaseModel):
    include_usage: bool | None = Field(None, description="Send a last chunk with the usage (choices empty).")


class TextFormat(BaseModel):
    type: Literal["text"]


class JsonObjectFormat(BaseModel):
    type: Literal["json_object"]


class JsonSchemaSpec(BaseModel):
    name: str = Field(pattern=NAME)
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(None, alias="schema", description="A JSON schema the answer must match.")
    strict: bool | None = None


class JsonSchemaFormat(BaseModel):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


class FunctionDef(BaseModel):
    name: str = Field(pattern=NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="The arguments, as a JSON schema.")


class Tool(BaseModel):
    type: Literal["function"]
    function: FunctionDef


class ToolName(BaseModel):
    name: str = Field(pattern=NAME)


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: ToolName


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


def _needs(key: str, value: Any) -> dict[str, Any]:
    """A `dependentSchemas` entry: the field is only valid when `key` is `value`."""
    return {"properties": {key: {"const": value}}, "required": [key]}


class _Sampling(BaseModel):
    """The fields both endpoints take."""

    model: str = Field(description="A model group or route of this gateway (GET /v1/models).")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1, le=128)
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    stream: bool | None = Field(None, description="Answer as server-sent events (text/event-stream).")
    stream_options: StreamOptions | None = Field(None, description="Only with `stream: true`.")
    seed: int | None = Field(None, ge=-INT64 - 1, le=INT64)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    user: str | None = Field(None, description="The end user (also the key of sticky version picks).")
    serving: RequestOverrides | None = Field(
        None, description="The platform's extension: route choice, gate overrides, deadline, pinned engine."
    )


class ChatCompletionRequest(_Sampling):
    """`POST /v1/chat/completions`."""

    model_config = ConfigDict(json_schema_extra={"dependentSchemas": {
        "stream_options": _needs("stream", True), "top_logprobs": _needs("logprobs", True)}})

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20, description="Only with `logprobs: true`.")
    response_format: ResponseFormat | None = None
    tools: Annotated[list[Tool], Field(min_length=1)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        None, description="Other than `none`, it needs `tools` (a named choice: one of them)."
    )


TokenIds = Annotated[list[Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]], Field(min_length=1)]


class CompletionRequest(_Sampling):
    """`POST /v1/completions`."""

    model_config = ConfigDict(json_schema_extra={"dependentSchemas": {"stream_options": _needs("stream", True)}})

    prompt: (Annotated[str, Field(min_length=1)] | Annotated[list[Annotated[str, Field(min_length=1)]],
                                                               Field(min_length=1)] | TokenIds
             | Annotated[list[TokenIds], Field(min_length=1)])
    logprobs: int | None = Field(None, ge=0, le=20, description="Log probabilities of this many top tokens.")


# -- responses ---------------------------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


class ChatCompletion(BaseModel):
    """A chat answer (`chat.completion`); a route's adds the `serving` field (tier, model, attempts, cost)."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None
    serving: dict[str, Any] | None = None


class TextChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


class TextCompletion(BaseModel):
    """A completion (`text_completion`); a route's adds the `serving` field."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage | None = None
    serving: dict[str, Any] | None = None


class ModelCard(BaseModel):
    """A model group (with its engines) or a route (with its tiers)."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    engines: list[str] | None = Field(None, description="Model groups: the engines serving it.")
    tiers: list[str] | None = Field(None, description="Routes: the tiers tried in order.")
    task: Literal["chat", "embeddings"] = Field(description="What it answers: `embeddings` (POST /v1/embeddings "
                                                            "only) or `chat` (the other inference endpoints).")


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    """Ready when every model group has a ready engine in traffic; `engines`: each engine's probe state."""

    status: Literal["ready", "not ready"]
    engines: dict[str, str]


class StreamEvent(BaseModel):
    """One server-sent event of a streamed answer."""

    data: str = Field(description="A chunk (`chat.completion.chunk` / `text_completion`) as JSON, or `[DONE]` last.")


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """The OpenAI error envelope; a route's errors add `serving.attempts` (the tiers tried)."""

    error: ErrorBody
    serving: dict[str, Any] | None = None


REQUESTS: tuple[type[BaseModel], ...] = (ChatCompletionRequest, CompletionRequest)
RESPONSES: tuple[type[BaseModel], ...] = (ChatCompletion, TextCompletion, StreamEvent, ModelList, ModelCard, Health,
                                          Readiness, ErrorResponse)
