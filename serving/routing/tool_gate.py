"""The `tools` gate: tool calls must name a function the request declared, with arguments that are a JSON object
matching its `parameters` schema, and obey `tool_choice` (required / a named function / none)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema

from serving.config import ToolsGateConfig
from serving.routing.answers import MAX_REASONS, Answer, GateContext, GateResult, gate_result
from serving.routing.json_schemas import validator_of


def _field(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def declared_tools(request: Any) -> dict[str, dict[str, Any]]:
    """The request's function tools: name -> parameters JSON schema (`{}` when it has none)."""
    out: dict[str, dict[str, Any]] = {}
    for tool in _field(request, "tools") or ():
        function = _field(tool, "function")
        name = _field(function, "name")
        if isinstance(name, str):
            params = _field(function, "parameters")
            out[name] = params if isinstance(params, dict) else {}
    return out


def tool_choice_of(request: Any) -> str:
    """`none`, `auto`, `required`, or `function:<name>` for a named function (default: auto)."""
    choice = _field(request, "tool_choice")
    if choice is None:
        return "auto"
    if isinstance(choice, str):
        return choice
    return f"function:{_field(_field(choice, 'function'), 'name')}"


class ToolsGate:
    """Each tool call names a declared function with arguments that match its schema; tool_choice is obeyed."""

    name = "tools"

    def __init__(self, cfg: ToolsGateConfig):
        self.cfg = cfg

    def _check_call(self, call: dict[str, Any], tools: dict[str, dict[str, Any]], choice: str) -> list[str]:
        function = call.get("function") or {}
        name = function.get("name")
        if name not in tools:
            return [f"the answer calls {name!r}, which the request does not declare (tools: {', '.join(tools)})"]
        if choice.startswith("function:") and name != choice[9:]:
            return [f"the answer calls {name!r}, but tool_choice asks for {choice[9:]!r}"]
        raw = function.get("arguments") or ""
        try:
            args = json.loads(raw) if raw.strip() else {}
        except (ValueError, RecursionError) as exc:
            return [f"the arguments of {name} are not valid JSON ({type(exc).__name__}: {str(exc)[:80]})"]
        if not isinstance(args, dict):
            return [f"the arguments of {name} are not a JSON object"]
        try:
            errors = sorted(validator_of(tools[name]).iter_errors(args), key=lambda e: list(e.absolute_path))
        except (jsonschema.SchemaError, TypeError, ValueError):
            return []  # the request's schema was checked at parse time; a schema jsonschema cannot use is not ours
        return [f"the arguments of {name} do not match its schema: "
                f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors[:MAX_REASONS]]

    async def check(self, answer: Answer, ctx: GateContext) -> GateResult:
        tools = declared_tools(ctx.request)
        if not tools:
            return GateResult(self.name, True, ["the request declares no tools"], skipped=True)
        choice = tool_choice_of(ctx.request)
        reasons: list[str] = []
        for i in range(len(answer.texts)):
            calls = answer.tool_calls[i] if answer.tool_calls else []
            prefix = f"choice {i}: " if len(answer.texts) > 1 else ""
            found = [r for call in calls for r in self._check_call(call, tools, choice)]
            if not calls and self.cfg.require_call_when_asked and (choice == "required"
                                                                    or choice.startswith("function:")):
                found.append(f"the answer calls no tool, but tool_choice is {choice.replace('function:', '')!r}")
            if calls and choice == "none":
                found.append("the answer calls a tool, but tool_choice is 'none'")
            if len(calls) > 1 and _field(ctx.request, "parallel_tool_calls") is False:
                found.append(f"the answer makes {len(calls)} tool calls, but parallel_tool_calls is false")
            reasons += [prefix + r for r in found]
        return gate_result(self.name, reasons[:MAX_REASONS])
