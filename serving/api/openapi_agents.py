"""Pydantic models of the agent endpoints' wire formats in the OpenAPI document (serving.api.openapi):
`POST /v1/embeddings`, the OpenAI Responses API (`POST /v1/responses`, `GET`/`DELETE /v1/responses/{response_id}`)
and the Anthropic Messages API (`POST /v1/messages`).

Documentation, not validation: the parsers (serving.api.embeddings, serving.api.responses_request,
serving.api.messages_request) check requests, and these mirror what they accept: no fields but the ones named
(`additionalProperties: false`), those the parser ignores as any value. Rules a schema cannot state (a `tool_result`
answers a `tool_use` of the turn before, a named tool choice names a declared tool, tool names are unique, a JSON
schema inside a request is valid per its metaschema) are in the descriptions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema

from serving.api.embeddings import MAX_INPUTS
from serving.api.openapi_models import JsonObjectFormat, TextFormat
from serving.api.protocol import MAX_TOKEN_ID, RequestOverrides

NonEmpty = Annotated[str, Field(min_length=1)]
MODEL = "A model group or route of this gateway (GET /v1/models: `task: chat`)."
EXTENSION = "The platform's extension (as on chat completions): route choice, gate overrides, deadline, engine."
STREAM = "Answer as server-sent events (text/event-stream)."


def ignored(*names: str) -> Callable[[dict[str, Any]], None]:
    """A `json_schema_extra` documenting `names` as fields of any value (the parser accepts and ignores them)."""

    def extra(schema: dict[str, Any]) -> None:
        schema["properties"].update({n: {"description": "Accepted and ignored."} for n in names})

    return extra


# -- JSON schemas inside requests ---------------------------------------------------------------------------------


JsonType = Literal["string", "number", "integer", "boolean", "object", "array", "null"]


class JsonSchema(BaseModel):
    """A JSON schema (checked against its metaschema: any valid one is accepted)."""

    type: JsonType | Annotated[list[JsonType], Field(min_length=1, json_schema_extra={"uniqueItems": True})] \
        | SkipJsonSchema[None] = None
    properties: dict[str, dict[str, Any] | bool] | SkipJsonSchema[None] = Field(None, description="JSON schemas.")
    required: Annotated[list[str], Field(json_schema_extra={"uniqueItems": True})] | SkipJsonSchema[None] = None
    additionalProperties: dict[str, Any] | bool | SkipJsonSchema[None] = None  # JSON Schema's keyword
    description: str | SkipJsonSchema[None] = None


class ObjectSchema(JsonSchema):
    type: Literal["object"]  # a JSON schema of an object


# -- POST /v1/embeddings ------------------------------------------------------------------------------------------


class EmbeddingOverrides(BaseModel, extra="forbid"):
    """The `serving` extension field of an embeddings request (no routes or gates)."""

    engine: str | None = Field(None, description="Send the request to this engine of the group.")
    deadline_s: float | None = Field(None, gt=0)


TokenId = Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]
Texts = Annotated[list[NonEmpty], Field(min_length=1, max_length=MAX_INPUTS)]
TokenIds = Annotated[list[TokenId], Field(min_length=1, max_length=MAX_INPUTS)]
TokenIdLists = Annotated[list[Annotated[list[TokenId], Field(min_length=1)]],
                         Field(min_length=1, max_length=MAX_INPUTS)]


class EmbeddingRequest(BaseModel, extra="forbid"):
    """`POST /v1/embeddings`: only embedding model groups answer (another model is a 400 `model_not_embedding`)."""

    model: str = Field(description="An embedding model group of this gateway (GET /v1/models: `task: embeddings`).")
    input: NonEmpty | Texts | TokenIds | TokenIdLists = Field(
        description=f"A text, texts, token ids or lists of token ids: at most {MAX_INPUTS}, none empty.")
    encoding_format: Literal["float", "base64"] | None = Field(None, description="base64: little-endian float32.")
    dimensions: int | None = Field(None, ge=1, description="Models that support it (Matryoshka): the vector length.")
    user: str | None = None
    truncate_prompt_tokens: int | None = Field(None, ge=-1, description="Keep the last k tokens (-1: as many as the "
                                                                        "model takes).")
    serving: EmbeddingOverrides | None = None


class Embedding(BaseModel):
    index: int
    object: Literal["embedding"]
    embedding: list[float] | str = Field(description="The vector (base64 float32 with `encoding_format: base64`).")


class EmbeddingList(BaseModel):
    """The embeddings, one per input, in order (`usage`: `prompt_tokens`, `total_tokens`)."""

    object: Literal["list"]
    model: str
    data: list[Embedding]
    usage: dict[str, int]


# -- POST /v1/responses -------------------------------------------------------------------------------------------


class InputText(BaseModel):
    type: Literal["input_text", "output_text"]
    text: str


class Refusal(BaseModel):
    type: Literal["refusal"]
    refusal: str


ContentParts = list[Annotated[InputText | Refusal, Field(discriminator="type")]]


class MessageItem(BaseModel):
    """A message (`developer` becomes `system`); its content parts are joined by newlines."""

    type: Literal["message"] | SkipJsonSchema[None] = None
    role: Literal["user", "system", "developer", "assistant"]
    content: str | ContentParts


class FunctionCallItem(BaseModel):
    """A call the model made (consecutive calls are one assistant turn)."""

    type: Literal["function_call"]
    call_id: NonEmpty
    name: NonEmpty
    arguments: str = Field(description="The arguments, as JSON text.")


class FunctionCallOutputItem(BaseModel):
    type: Literal["function_call_output"]
    call_id: NonEmpty
    output: str | ContentParts


class FunctionTool(BaseModel):
    type: Literal["function"]
    name: NonEmpty = Field(description="Unique among `tools`.")
    description: str | None = None
    parameters: JsonSchema | None = Field(None, description="The arguments, as a JSON schema.")
    strict: bool | None = None


class FunctionChoice(BaseModel):
    type: Literal["function"]
    name: str = Field(description="One of `tools`.")


class ResponsesSchemaFormat(BaseModel):
    type: Literal["json_schema"]
    name: NonEmpty
    schema_: JsonSchema = Field(alias="schema", description="A JSON schema the answer must match.")
    description: str | None = None
    strict: bool | None = None


class TextConfig(BaseModel):
    format: Annotated[TextFormat | JsonObjectFormat | ResponsesSchemaFormat, Field(discriminator="type")] | None = None


Metadata = Annotated[dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]],
                     Field(max_length=16)]
InputItem = MessageItem | FunctionCallItem | FunctionCallOutputItem


class ResponsesRequest(BaseModel, extra="forbid", json_schema_extra=ignored(
        "include", "truncation", "service_tier", "prompt_cache_key", "prompt_cache_retention", "stream_options")):
    """`POST /v1/responses`: text in and out, function tools. `conversation`, `prompt`, `background`,
    `max_tool_calls` and `top_logprobs` are a 400 when set."""

    model: str = Field(description=MODEL)
    input: str | Annotated[list[InputItem], Field(min_length=1)] = Field(
        description="A user message, or input items: messages, function calls and their outputs.")
    instructions: str | None = Field(None, description="A first system message (not carried over to the next "
                                                       "response by `previous_response_id`).")
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = Field(
        None, description="`required` and a named function need `tools` (a named one: one of them).")
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stream: bool | None = Field(None, description=STREAM)
    store: bool | None = Field(None, description="Keep the answer for `previous_response_id` and GET (default true; "
                                                 "on a gateway with a response store).")
    previous_response_id: NonEmpty | None = Field(
        None, description="Continue that stored response of this tenant (a 400 `store_not_configured` on a gateway "
                          "without a response store, a 404 when unknown or expired).")
    metadata: Metadata | None = None
    user: str | None = None
    safety_identifier: str | None = None
    reasoning: dict[str, Any] | None = Field(None, description="Accepted and ignored.")
    serving: RequestOverrides | None = Field(None, description=EXTENSION)


class OutputText(BaseModel):
    type: Literal["output_text"]
    text: str


class OutputMessage(BaseModel):
    type: Literal["message"]
    id: str
    status: str
    role: Literal["assistant"]
    content: list[OutputText]


class OutputFunctionCall(BaseModel):
    type: Literal["function_call"]
    id: str
    call_id: str
    name: str
    arguments: str
    status: str


class ResponseObject(BaseModel):
    """A Response (`object: response`) echoing the request's settings; a route's adds the `serving` field."""

    id: str
    object: Literal["response"]
    created_at: int
    status: Literal["completed", "incomplete", "failed", "in_progress"]
    model: str
    output: list[Annotated[OutputMessage | OutputFunctionCall, Field(discriminator="type")]]
    usage: dict[str, Any] | None = Field(description="`input_tokens`, `output_tokens`, `total_tokens` and details.")
    error: dict[str, str] | None = Field(description="A failed response's `code` and `message`.")
    incomplete_details: dict[str, str] | None = Field(description="Why it is incomplete (`reason`).")
    store: bool = Field(description="Whether this response was stored.")


class ResponseDeleted(BaseModel):
    id: str
    object: Literal["response.deleted"]
    deleted: Literal[True]


class ResponsesStreamEvent(BaseModel):
    """One server-sent event of a streamed Response (`data`: the event as JSON, with `type` and `sequence_number`);
    the last is `response.completed`, `response.incomplete` or `response.failed`."""

    event: Literal["response.created", "response.in_progress", "response.output_item.added",
                   "response.content_part.added", "response.output_text.delta", "response.output_text.done",
                   "response.content_part.done", "response.function_call_arguments.delta",
                   "response.function_call_arguments.done", "response.output_item.done", "response.completed",
                   "response.incomplete", "response.failed"]
    data: str


# -- POST /v1/messages (Anthropic) --------------------------------------------------------------------------------


class TextBlock(BaseModel):
    type: Literal["text"]
    text: NonEmpty


class ToolResultBlock(BaseModel):
    """The result of a `tool_use` of the assistant turn just before (each `tool_use` needs one)."""

    type: Literal["tool_result"]
    tool_use_id: NonEmpty
    content: str | list[TextBlock] | None = None
    is_error: bool | None = None


class ToolUseBlock(BaseModel):
    type: Literal["tool_use"]
    id: NonEmpty
    name: NonEmpty
    input: dict[str, Any]


class ThinkingBlock(BaseModel):
    type: Literal["thinking", "redacted_thinking"] = Field(description="Dropped: no thinking is sent to the model.")


class UserTurn(BaseModel, extra="forbid"):
    role: Literal["user"]
    content: NonEmpty | Annotated[list[Annotated[TextBlock | ToolResultBlock, Field(discriminator="type")]],
                                  Field(min_length=1)]


class AssistantTurn(BaseModel, extra="forbid"):
    """An assistant message; the last message may be one: a prefill that the answer continues."""

    role: Literal["assistant"]
    content: NonEmpty | Annotated[list[Annotated[TextBlock | ToolUseBlock | ThinkingBlock,
                                                 Field(discriminator="type")]], Field(min_length=1)]


class CustomTool(BaseModel):
    type: Literal["custom"] | None = None
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,128}$", description="Unique among `tools`.")
    description: str | None = None
    input_schema: ObjectSchema


class MessagesToolChoice(BaseModel):
    type: Literal["auto", "any", "tool", "none"] = Field(description="`any` and `tool` need `tools`.")
    name: Any = Field(None, description="`tool`: the name of one of `tools` (the other types ignore it).")
    disable_parallel_tool_use: bool | None = None


class OutputFormat(BaseModel):
    type: Literal["json_schema"]
    schema_: JsonSchema = Field(alias="schema", description="A JSON schema the answer must match.")


class OutputConfig(BaseModel):
    format: OutputFormat | None = None


class MessagesRequest(BaseModel, extra="forbid", json_schema_extra=ignored(
        "thinking", "service_tier", "speed", "inference_geo", "cache_control", "diagnostics", "user_profile_id",
        "workspace_id")):
    """`POST /v1/messages`: text and tool use. Images, documents, server tools, `container`, `mcp_servers` and
    `context_management` are a 400."""

    model: str = Field(description=MODEL)
    max_tokens: int = Field(ge=1)
    messages: Annotated[list[Annotated[UserTurn | AssistantTurn, Field(discriminator="role")]], Field(min_length=1)]
    system: str | list[TextBlock] | None = None
    stop_sequences: list[Annotated[str, Field(pattern=r"\S")]] | None = None
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    stream: bool | None = Field(None, description=STREAM)
    metadata: Annotated[dict[Literal["user_id"], str | None], Field(description="`user_id`: the end user.")] | None \
        = None
    tools: list[CustomTool] | None = None
    tool_choice: MessagesToolChoice | None = None
    output_config: OutputConfig | None = None
    serving: RequestOverrides | None = Field(None, description=EXTENSION)


class TextOut(BaseModel):
    type: Literal["text"]
    text: str


class ToolUseOut(BaseModel):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class AnthropicMessage(BaseModel):
    """An Anthropic `message` (`usage`: `input_tokens`, `output_tokens` and the cache's); a route's adds `serving`."""

    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    model: str
    content: list[Annotated[TextOut | ToolUseOut, Field(discriminator="type")]]
    stop_reason: Literal["end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal"] | None
    stop_sequence: str | None
    usage: dict[str, int]


class MessagesStreamEvent(BaseModel):
    """One server-sent event of a streamed message (`data`: the event as JSON, with `type`); an `error` event ends a
    stream that failed."""

    event: Literal["message_start", "content_block_start", "content_block_delta", "content_block_stop",
                   "message_delta", "message_stop", "error"]
    data: str


class AnthropicErrorBody(BaseModel):
    type: Literal["invalid_request_error", "authentication_error", "billing_error", "permission_error",
                  "not_found_error", "request_too_large", "rate_limit_error", "api_error", "overloaded_error",
                  "timeout_error"]
    message: str


class AnthropicError(BaseModel):
    """Anthropic's error envelope; a route's errors add `serving.attempts` (the tiers tried)."""

    type: Literal["error"]
    error: AnthropicErrorBody
    serving: dict[str, Any] | None = None


REQUESTS: tuple[type[BaseModel], ...] = (EmbeddingRequest, ResponsesRequest, MessagesRequest)
RESPONSES: tuple[type[BaseModel], ...] = (EmbeddingList, ResponseObject, ResponseDeleted, ResponsesStreamEvent,
                                          AnthropicMessage, MessagesStreamEvent, AnthropicError)
