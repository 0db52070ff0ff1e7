"""Gates on tool-call answers: the `tools` gate checks each call against the request's declared functions and
their JSON schemas; the text gates (empty, rules, refusal, json) leave an answer that is only a tool call alone."""

from __future__ import annotations

import json
from typing import Any

import pytest
from ray.serve.llm.openai_api_models import ChatCompletionRequest

from serving.config import EmptyGateConfig, GatesConfig, RulesGateConfig, ToolsGateConfig
from serving.routing.answers import Answer, GateContext
from serving.routing.gates import EmptyGate, RulesGate, build_gates
from serving.routing.tool_gate import ToolsGate

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                       "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


def request(tool_choice: Any = None, tools: list[dict[str, Any]] | None = None) -> Any:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "weather in Paris?"}]}
    if tools != []:
        body["tools"] = [WEATHER, TIME] if tools is None else tools
    if tool_choice is not None:
        body["tool_choice"] = tool_choice
    return ChatCompletionRequest.model_validate(body)


def call(name: str, arguments: str | dict[str, Any]) -> dict[str, Any]:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": f"call_{name}", "type": "function", "function": {"name": name, "arguments": args}}


def answer(*calls: dict[str, Any], text: str | None = None) -> Answer:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = list(calls)
    body = {"choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5}}
    return Answer.from_body(body, "chat")


async def check(ans: Answer, req: Any, cfg: ToolsGateConfig | None = None) -> Any:
    return await ToolsGate(cfg or ToolsGateConfig()).check(ans, GateContext(req, "chat"))


async def test_a_valid_call_passes():
    result = await check(answer(call("get_weather", {"city": "Paris", "days": 2})), request("auto"))
    assert result.passed and not result.skipped


async def test_parallel_valid_calls_pass():
    ans = answer(call("get_weather", {"city": "Paris"}), call("get_time", {}))
    assert (await check(ans, request("required"))).passed


async def test_an_undeclared_function_fails():
    result = await check(answer(call("book_flight", {"to": "Rome"})), request("auto"))
    assert not result.passed
    assert "'book_flight'" in result.reasons[0] and "does not declare" in result.reasons[0]


async def test_arguments_that_are_not_json_fail():
    result = await check(answer(call("get_weather", '{"city": "Par')), request("auto"))
    assert not result.passed and "not valid JSON" in result.reasons[0]


async def test_arguments_that_are_not_an_object_fail():
    result = await check(answer(call("get_weather", "[1, 2]")), request("auto"))
    assert not result.passed and "not a JSON object" in result.reasons[0]


async def test_arguments_not_matching_the_schema_fail_with_the_path():
    result = await check(answer(call("get_weather", {"city": "Paris", "days": "two"})), request("auto"))
    assert not result.passed
    assert "days" in result.reasons[0] and "integer" in result.reasons[0]
    missing = await check(answer(call("get_weather", {"days": 1})), request("auto"))
    assert not missing.passed and "'city' is a required property" in missing.reasons[0]


async def test_empty_arguments_are_an_empty_object():
    assert (await check(answer(call("get_time", "")), request("auto"))).passed
    assert not (await check(answer(call("get_weather", "")), request("auto"))).passed  # city is required


async def test_named_tool_choice_must_be_obeyed():
    named = request({"type": "function", "function": {"name": "get_weather"}})
    wrong = await check(answer(call("get_time", {})), named)
    assert not wrong.passed and "tool_choice asks for 'get_weather'" in wrong.reasons[0]
    none = await check(answer(text="It is sunny."), named)
    assert not none.passed and "calls no tool" in none.reasons[0]


async def test_required_without_a_call_fails_unless_turned_off():
    assert not (await check(answer(text="Sunny."), request("required"))).passed
    assert (await check(answer(text="Sunny."), request("required"), ToolsGateConfig(require_call_when_asked=False))
            ).passed


async def test_auto_without_a_call_passes():
    assert (await check(answer(text="Sunny in Paris."), request("auto"))).passed


async def test_a_call_despite_tool_choice_none_fails():
    result = await check(answer(call("get_weather", {"city": "Paris"})), request("none"))
    assert not result.passed and "'none'" in result.reasons[0]


async def test_requests_without_tools_skip_the_gate():
    result = await check(answer(text="hello"), request(tools=[]))
    assert result.skipped and result.passed


async def test_a_function_without_parameters_accepts_any_object():
    tools = [{"type": "function", "function": {"name": "ping"}}]
    assert (await check(answer(call("ping", {"x": 1})), request("auto", tools=tools))).passed


@pytest.mark.parametrize("gate", [EmptyGate(EmptyGateConfig()), RulesGate(RulesGateConfig(must_match=["Paris"]))])
async def test_text_gates_leave_a_pure_tool_call_to_the_tools_gate(gate: Any):
    ans = answer(call("get_weather", {"city": "Paris"}))
    assert ans.is_tool_call(0)
    assert (await gate.check(ans, GateContext(request("auto"), "chat"))).passed
    empty = answer(text="  ")
    assert not empty.is_tool_call(0)
    assert not (await gate.check(empty, GateContext(request("auto"), "chat"))).passed


def test_tools_gate_is_built_from_config_after_json():
    gates = build_gates(GatesConfig.model_validate({"tools": {}, "json": {}, "empty": {}}))
    assert list(gates) == ["json", "tools", "empty"]


async def test_two_calls_under_parallel_tool_calls_false_fail():
    req = ChatCompletionRequest.model_validate({
        "model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [WEATHER, TIME],
        "tool_choice": "required", "parallel_tool_calls": False})
    result = await check(answer(call("get_weather", {"city": "Paris"}), call("get_time", {})), req)
    assert not result.passed and "parallel_tool_calls is false" in result.reasons[0]
    assert (await check(answer(call("get_time", {})), req)).passed
