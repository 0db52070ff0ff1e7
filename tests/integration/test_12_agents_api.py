"""The API agents use, on the real stack with the official SDKs: tool calling on SmolLM2 (vLLM's hermes parser, named
and required tool choice through structured output), the Responses API (with responses stored in the session's
Redis), embeddings from all-MiniLM-L6-v2, and the Anthropic Messages API; and LangChain's `ChatOpenAI` running a
two-step tool loop. Each works on the model group and on a gated route, streamed and not.

Real models: the tests assert structure, counts and which tier answered, never exact text.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from typing import Any

import anthropic
import httpx
import jsonschema
import openai
import pytest

from tests.integration.support import AGENT_ROUTE, EMBED_GROUP, SMOL_GROUP, SMOL_TIER, Stack

pytestmark = pytest.mark.integration

WEATHER_PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather of a city",
                                            "parameters": WEATHER_PARAMS}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "Local time of a city",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                        "required": ["city"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}
MODELS = [SMOL_GROUP, AGENT_ROUTE]  # the same requests on the model group and on the gated route


def assert_valid_call(call: Any, tools: list[dict[str, Any]], name: str | None = None) -> dict[str, Any]:
    """A tool call as a client checks it: a declared function, arguments that parse and match its schema."""
    declared = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    assert call.id and call.type == "function"
    assert call.function.name in declared
    if name is not None:
        assert call.function.name == name
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, declared[call.function.name])
    return args


def served_by(headers: httpx.Headers, model: str) -> None:
    """A route's answer names the tier that answered; the local tier must have been able to answer this."""
    if model == AGENT_ROUTE:
        assert headers["x-serving-tier"] == SMOL_TIER


# ------------------------------------------------------------------------------------------- chat + tools


@pytest.mark.parametrize("model", MODELS)
def test_named_tool_choice_returns_a_schema_valid_call(client: openai.OpenAI, model: str) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=ASK, tools=[WEATHER, TIME], tool_choice=NAMED, max_tokens=64, temperature=0)
    served_by(raw.headers, model)
    choice = raw.parse().choices[0]
    assert choice.message.tool_calls and len(choice.message.tool_calls) == 1
    assert_valid_call(choice.message.tool_calls[0], [WEATHER, TIME], "get_weather")


@pytest.mark.parametrize("model", MODELS)
def test_required_tool_choice_calls_a_declared_tool(client: openai.OpenAI, model: str) -> None:
    resp = client.chat.completions.create(model=model, messages=ASK, tools=[WEATHER, TIME], tool_choice="required",
                                          max_tokens=96, temperature=0)
    calls = resp.choices[0].message.tool_calls
    assert calls
    for call in calls:
        assert_valid_call(call, [WEATHER, TIME])


def test_parallel_tool_calls_false_makes_at_most_one_call(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model=SMOL_GROUP, messages=ASK, tools=[WEATHER, TIME],
                                          tool_choice="required", parallel_tool_calls=False, max_tokens=96,
                                          temperature=0)
    calls = resp.choices[0].message.tool_calls
    assert calls and len(calls) == 1
    assert_valid_call(calls[0], [WEATHER, TIME])


@pytest.mark.parametrize("model", MODELS)
def test_auto_and_none_tool_choice_answer(client: openai.OpenAI, model: str) -> None:
    auto = client.chat.completions.create(model=model, messages=ASK, tools=[WEATHER], tool_choice="auto",
                                          max_tokens=48, temperature=0)
    message = auto.choices[0].message
    assert message.content or message.tool_calls
    for call in message.tool_calls or ():
        assert call.function.name == "get_weather"
    none = client.chat.completions.create(model=model, messages=ASK, tools=[WEATHER], tool_choice="none",
                                          max_tokens=24, temperature=0)
    assert none.choices[0].message.content and not none.choices[0].message.tool_calls


@pytest.mark.parametrize("model", MODELS)
def test_streamed_tool_call_reassembles_in_the_sdk(client: openai.OpenAI, model: str) -> None:
    with client.chat.completions.stream(model=model, messages=ASK, tools=[WEATHER], tool_choice=NAMED,
                                        max_tokens=64, temperature=0) as stream:
        deltas = [e for e in stream if e.type == "tool_calls.function.arguments.delta"]
        final = stream.get_final_completion()
    assert deltas, "the arguments arrive as deltas"
    calls = final.choices[0].message.tool_calls
    assert calls and len(calls) == 1
    assert_valid_call(calls[0], [WEATHER], "get_weather")


@pytest.mark.parametrize("model", MODELS)
def test_tool_results_in_the_history_get_an_answer(client: openai.OpenAI, model: str) -> None:
    first = client.chat.completions.create(model=model, messages=ASK, tools=[WEATHER], tool_choice=NAMED,
                                           max_tokens=64, temperature=0)
    call = first.choices[0].message.tool_calls[0]
    history = [*ASK, first.choices[0].message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 18, "sky": "sunny"})}]
    second = client.chat.completions.create(model=model, messages=history, tools=[WEATHER], tool_choice="none",
                                            max_tokens=32, temperature=0)
    assert second.choices[0].message.content
    assert second.usage.prompt_tokens > first.usage.prompt_tokens  # the call and its result reached the model


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(("body", "param"), [
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "book_flight"}}}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}]},
     "tools.[0].function.parameters"),
])
def test_bad_tool_requests_are_the_same_400_on_group_and_route(client: openai.OpenAI, model: str,
                                                               body: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=model, messages=ASK, max_tokens=8, **body)
    assert err.value.param == param


# ----------------------------------------------------------------------------------------- Responses API


@pytest.mark.parametrize("model", MODELS)
def test_responses_create_and_continue(client: openai.OpenAI, model: str) -> None:
    first = client.responses.create(model=model, instructions="Answer in one short sentence.",
                                    input="What is the capital of France?", max_output_tokens=24, temperature=0)
    assert first.id.startswith("resp_") and first.object == "response"
    assert first.output_text and first.status in ("completed", "incomplete")
    assert first.usage is not None and first.usage.input_tokens > 0 and first.usage.output_tokens > 0
    follow = client.responses.create(model=model, previous_response_id=first.id, input="And of Italy?",
                                     max_output_tokens=24, temperature=0)
    assert follow.previous_response_id == first.id and follow.output_text
    assert follow.usage.input_tokens > first.usage.input_tokens  # the first turn was sent again
    assert client.responses.retrieve(first.id).id == first.id
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=model, previous_response_id=first.id, input="again", max_output_tokens=8)


def test_a_tenant_cannot_read_or_continue_another_tenants_response(stack: Stack) -> None:
    def sdk(tenant: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=300,
                             default_headers={"x-serving-tenant": tenant})

    with sdk("itest-agents-a") as a, sdk("itest-agents-b") as b:
        mine = a.responses.create(model=SMOL_GROUP, input="Say hello.", max_output_tokens=8, temperature=0)
        assert a.responses.retrieve(mine.id).id == mine.id
        with pytest.raises(openai.NotFoundError):
            b.responses.retrieve(mine.id)
        with pytest.raises(openai.NotFoundError):
            b.responses.create(model=SMOL_GROUP, previous_response_id=mine.id, input="hi", max_output_tokens=8)
        with pytest.raises(openai.NotFoundError):
            b.responses.delete(mine.id)
        assert a.responses.retrieve(mine.id).id == mine.id  # still there for its owner


@pytest.mark.parametrize("model", MODELS)
def test_responses_stream_events_in_order(client: openai.OpenAI, model: str) -> None:
    events = list(client.responses.create(model=model, input="Name a colour.", max_output_tokens=16, temperature=0,
                                          stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert "response.output_text.delta" in kinds
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == sorted(e.sequence_number for e in events)
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text and events[-1].response.output_text == text


@pytest.mark.parametrize("model", MODELS)
def test_responses_function_call_and_its_output(client: openai.OpenAI, model: str) -> None:
    tools = [{"type": "function", "name": "get_weather", "description": "Current weather of a city",
              "parameters": WEATHER_PARAMS, "strict": True}]
    with client.responses.stream(model=model, input="What is the weather in Paris?", tools=tools,
                                 tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=64,
                                 temperature=0) as stream:
        final = stream.get_final_response()
    calls = [item for item in final.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER_PARAMS)
    answer = client.responses.create(
        model=model, tools=tools, max_output_tokens=32, temperature=0,
        input=[{"role": "user", "content": "What is the weather in Paris?"},
               {"type": "function_call", "call_id": calls[0].call_id, "name": "get_weather",
                "arguments": calls[0].arguments},
               {"type": "function_call_output", "call_id": calls[0].call_id, "output": '{"temperature_c": 18}'}],
        tool_choice="none")
    assert answer.output_text


def test_responses_json_schema_text_format(client: openai.OpenAI) -> None:
    resp = client.responses.create(
        model=SMOL_GROUP, input="Give me a city and its country as JSON.", max_output_tokens=48, temperature=0,
        text={"format": {"type": "json_schema", "name": "city", "schema": WEATHER_PARAMS, "strict": True}})
    jsonschema.validate(json.loads(resp.output_text), WEATHER_PARAMS)


# --------------------------------------------------------------------------------------------- embeddings


def test_embeddings_of_strings_and_lists(client: openai.OpenAI) -> None:
    one = client.embeddings.create(model=EMBED_GROUP, input="The cat sat on the mat.")
    assert len(one.data) == 1 and len(one.data[0].embedding) == 384
    assert math.isclose(math.sqrt(sum(x * x for x in one.data[0].embedding)), 1.0, rel_tol=1e-3)  # normalised
    many = client.embeddings.create(model=EMBED_GROUP, input=["a dog", "a puppy", "a tax return"])
    assert [d.index for d in many.data] == [0, 1, 2]
    assert many.usage.prompt_tokens > one.usage.prompt_tokens > 0

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    dog, puppy, tax = (d.embedding for d in many.data)
    assert cos(dog, puppy) > cos(dog, tax)  # a real sentence-embedding model


def test_embeddings_base64_decode_to_the_same_vector(stack: Stack, client: openai.OpenAI) -> None:
    floats = client.embeddings.create(model=EMBED_GROUP, input="hello world").data[0].embedding
    raw = httpx.post(f"{stack.url}/v1/embeddings", timeout=60,
                     json={"model": EMBED_GROUP, "input": "hello world", "encoding_format": "base64"}).json()
    decoded = struct.unpack(f"<{len(floats)}f", base64.b64decode(raw["data"][0]["embedding"]))
    assert all(math.isclose(a, b, abs_tol=1e-5) for a, b in zip(decoded, floats, strict=True))


@pytest.mark.parametrize(("call", "status", "param"), [
    ({"model": EMBED_GROUP, "input": "hello " * 600}, 400, None),  # longer than the model's 512 tokens
    ({"model": EMBED_GROUP, "input": ""}, 400, "input"),
    ({"model": EMBED_GROUP, "input": "x", "dimensions": 64}, 400, None),  # MiniLM has no matryoshka dimensions
    ({"model": SMOL_GROUP, "input": "x"}, 400, "model"),  # a chat model asked for embeddings
    ({"model": AGENT_ROUTE, "input": "x"}, 400, "model"),
])
def test_embedding_errors_are_400s_naming_the_field(stack: Stack, call: dict[str, Any], status: int,
                                                    param: str | None) -> None:
    resp = httpx.post(f"{stack.url}/v1/embeddings", json=call, timeout=60)
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["message"] and err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] == param


def test_an_embedding_model_asked_to_chat_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=EMBED_GROUP, messages=ASK, max_tokens=4)
    assert err.value.code == "model_not_chat"


# ------------------------------------------------------------------------------------ Anthropic Messages
# (anthropic 2.17's methods no longer take `temperature`; the gateway would accept it in the body)


@pytest.fixture(scope="module")
def claude(stack: Stack) -> Any:
    with anthropic.Anthropic(base_url=stack.url, api_key="unused", max_retries=0, timeout=300) as c:
        yield c


@pytest.mark.parametrize("model", MODELS)
def test_messages_create(claude: anthropic.Anthropic, model: str) -> None:
    msg = claude.messages.create(model=model, max_tokens=24, system="Answer briefly.",
                                 messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert msg.type == "message" and msg.role == "assistant" and msg.id.startswith("msg_")
    assert msg.content and msg.content[0].type == "text" and msg.content[0].text
    assert msg.stop_reason in ("end_turn", "max_tokens")
    assert msg.usage.input_tokens > 0 and 0 < msg.usage.output_tokens <= 24


@pytest.mark.parametrize("model", MODELS)
def test_messages_stream(claude: anthropic.Anthropic, model: str) -> None:
    with claude.messages.stream(model=model, max_tokens=16,
                                messages=[{"role": "user", "content": "Name a colour."}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].text == text
    assert final.usage.output_tokens > 0


def test_messages_stop_sequences(claude: anthropic.Anthropic) -> None:
    msg = claude.messages.create(model=SMOL_GROUP, max_tokens=64, stop_sequences=["3"],
                                 messages=[{"role": "user", "content": "Count from 1 to 10, separated by spaces."}])
    assert "3" not in msg.content[0].text
    if msg.stop_reason == "stop_sequence":
        assert msg.stop_sequence == "3"


@pytest.mark.parametrize("model", MODELS)
def test_messages_tool_use_and_result(claude: anthropic.Anthropic, model: str) -> None:
    tools = [{"name": "get_weather", "description": "Current weather of a city", "input_schema": WEATHER_PARAMS}]
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = claude.messages.create(model=model, max_tokens=64, tools=tools, messages=ask,
                                   tool_choice={"type": "tool", "name": "get_weather"})
    uses = [b for b in first.content if b.type == "tool_use"]
    assert first.stop_reason == "tool_use" and len(uses) == 1
    jsonschema.validate(uses[0].input, WEATHER_PARAMS)
    with claude.messages.stream(
        model=model, max_tokens=32, tools=tools, tool_choice={"type": "none"},
        messages=[*ask, {"role": "assistant", "content": first.content},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id,
                                                "content": "18 degrees, sunny"}]}],
    ) as stream:
        final = stream.get_final_message()
    assert final.content and final.content[0].type == "text" and final.content[0].text


def test_messages_streamed_tool_use(claude: anthropic.Anthropic) -> None:
    tools = [{"name": "get_weather", "description": "Current weather of a city", "input_schema": WEATHER_PARAMS}]
    with claude.messages.stream(model=SMOL_GROUP, max_tokens=64, tools=tools,
                                tool_choice={"type": "any"},
                                messages=[{"role": "user", "content": "Weather in Rome?"}]) as stream:
        kinds = {e.type for e in stream}
        final = stream.get_final_message()
    assert "input_json" in kinds  # the SDK's event for input_json_delta
    uses = [b for b in final.content if b.type == "tool_use"]
    assert uses and uses[0].name == "get_weather"
    jsonschema.validate(uses[0].input, WEATHER_PARAMS)


def test_messages_errors_in_anthropic_shape(stack: Stack, claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(model="no-such-model", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert missing.value.body["type"] == "error" and missing.value.body["error"]["type"] == "not_found_error"
    resp = httpx.post(f"{stack.url}/v1/messages", timeout=30,
                      json={"model": SMOL_GROUP, "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 400
    assert resp.json()["type"] == "error" and resp.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in resp.json()["error"]["message"]
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model=EMBED_GROUP, max_tokens=8, messages=[{"role": "user", "content": "hi"}])


# -------------------------------------------------------------------------------------- an agent framework


def test_langchain_two_step_tool_loop(stack: Stack) -> None:
    """LangChain's ChatOpenAI with a bound tool: the model calls it, the tool runs, its result goes back, and the
    model answers; the loop ends with a text answer."""
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    ran: list[str] = []

    @tool
    def get_weather(city: str) -> str:
        """Current weather of a city."""
        ran.append(city)
        return f"18 degrees and sunny in {city}"

    llm = ChatOpenAI(model=AGENT_ROUTE, base_url=f"{stack.url}/v1", api_key="unused", temperature=0,
                     max_tokens=64, max_retries=0, timeout=300)
    messages: list[Any] = [HumanMessage("What is the weather in Paris? Use the tool.")]
    first = llm.bind_tools([get_weather], tool_choice="get_weather").invoke(messages)
    assert len(first.tool_calls) == 1 and first.tool_calls[0]["name"] == "get_weather"
    messages.append(first)
    for call in first.tool_calls:
        messages.append(ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"]))
    assert len(ran) == 1 and isinstance(ran[0], str)
    final = llm.bind_tools([get_weather], tool_choice="none").invoke(messages)
    assert isinstance(final.content, str) and final.content and not final.tool_calls
