"""The ChatML chat template of the built-in models, with tool calling in the Hermes format.

The GGUF's own SmolLM2 template (and the tiny Llama's) render plain text turns only: `tools`, assistant
`tool_calls`, `tool` messages and `content: null` were lost or failed. This template renders them the way vLLM's
`hermes` tool parser reads them back (`--tool-call-parser hermes`, the catalog's `tool_call_parser` of these
models): the tools' JSON signatures inside `<tools></tools>` in the system turn, calls as
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, results as `<tool_response>` in a user turn.
Without tools it renders exactly like the original template.
"""

from __future__ import annotations

SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
"""The system prompt SmolLM2's own template adds when the conversation has none."""

_TOOLS_PREAMBLE = (
    "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>"
)
_TOOLS_FORMAT = (
    "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call>"
)


def chatml_with_tools(default_system: str | None = None) -> str:
    """The Jinja chat template: ChatML turns, Hermes-style tools; `default_system` is added when the conversation
    has no system message (None: no system turn then, unless tools need one)."""
    default = (default_system or "").replace("'", "\\'")
    return (
        "{%- set has_system = messages and messages[0]['role'] == 'system' -%}"
        "{%- if tools -%}"
        "{{- '<|im_start|>system\\n' -}}"
        f"{{%- if has_system -%}}{{{{- messages[0]['content'] or '' -}}}}{{%- else -%}}{{{{- '{default}' -}}}}"
        "{%- endif -%}"
        f"{{{{- \"{_TOOLS_PREAMBLE}\" -}}}}"
        "{%- for tool in tools -%}{{- '\\n' -}}{{- tool | tojson -}}{%- endfor -%}"
        f"{{{{- \"{_TOOLS_FORMAT}\" -}}}}"
        "{{- '<|im_end|>\\n' -}}"
        "{%- elif has_system -%}"
        "{{- '<|im_start|>system\\n' + (messages[0]['content'] or '') + '<|im_end|>\\n' -}}"
        + (f"{{%- else -%}}{{{{- '<|im_start|>system\\n{default}<|im_end|>\\n' -}}}}" if default else "")
        + "{%- endif -%}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'system' and loop.first -%}"
        "{%- elif message['role'] == 'assistant' -%}"
        "{{- '<|im_start|>assistant' -}}"
        "{%- if message['content'] -%}{{- '\\n' + message['content'] -}}{%- endif -%}"
        "{%- for call in message['tool_calls'] or [] -%}"
        "{%- set f = call['function'] if call['function'] is defined else call -%}"
        "{{- '\\n<tool_call>\\n{\"name\": \"' + f['name'] + '\", \"arguments\": ' -}}"
        "{%- if f['arguments'] is string -%}{{- f['arguments'] -}}{%- else -%}{{- f['arguments'] | tojson -}}"
        "{%- endif -%}"
        "{{- '}\\n</tool_call>' -}}"
        "{%- endfor -%}"
        "{{- '<|im_end|>\\n' -}}"
        "{%- elif message['role'] == 'tool' -%}"
        "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' -%}{{- '<|im_start|>user' -}}{%- endif -%}"
        "{{- '\\n<tool_response>\\n' + (message['content'] or '') + '\\n</tool_response>' -}}"
        "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' -%}{{- '<|im_end|>\\n' -}}{%- endif -%}"
        "{%- else -%}"
        "{{- '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>\\n' -}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
    )
