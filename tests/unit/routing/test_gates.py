"""Quality gates (serving/routing/gates.py) on realistic OpenAI response bodies and vLLM request models."""

from __future__ import annotations

from typing import Any

import pytest
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

from serving.config import (
    ConfidenceGateConfig,
    EmptyGateConfig,
    GatesConfig,
    JsonGateConfig,
    JudgeGateConfig,
    RefusalGateConfig,
    RulesGateConfig,
)
from serving.routing.gates import (
    Answer,
    ConfidenceGate,
    EmptyGate,
    GateContext,
    GateResult,
    JsonGate,
    JudgeGate,
    RefusalGate,
    RulesGate,
    build_gates,
    run_gates,
)

# ------------------------------------------------------------------------------------------------ helpers


def chat_body(*texts: str | None, logprobs: list[list[float]] | None = None, finish: str = "stop") -> dict[str, Any]:
    """An OpenAI chat.completion body with one choice per text (and per-token logprobs when given)."""
    choices = []
    for i, text in enumerate(texts):
        choice: dict[str, Any] = {
            "index": i,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": finish,
        }
        if logprobs is not None:
            choice["logprobs"] = {"content": [
                {"token": f"t{j}", "logprob": lp, "bytes": [116], "top_logprobs": []}
                for j, lp in enumerate(logprobs[i])
            ]}
        choices.append(choice)
    return {
        "id": "chatcmpl-123", "object": "chat.completion", "created": 1700000000, "model": "tiny",
        "choices": choices,
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
    }


def completion_body(*texts: str, token_logprobs: list[list[float | None]] | None = None,
                    finish: str = "stop") -> dict[str, Any]:
    """An OpenAI text_completion body."""
    choices = []
    for i, text in enumerate(texts):
        logprobs = None
        if token_logprobs is not None:
            lps = token_logprobs[i]
            logprobs = {"tokens": [f"t{j}" for j in range(len(lps))], "token_logprobs": lps,
                        "top_logprobs": [None] * len(lps), "text_offset": list(range(len(lps)))}
        choices.append({"index": i, "text": text, "logprobs": logprobs, "finish_reason": finish})
    return {
        "id": "cmpl-123", "object": "text_completion", "created": 1700000000, "model": "tiny",
        "choices": choices,
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }


def chat(*texts: str | None, **kw: Any) -> Answer:
    return Answer.from_body(chat_body(*texts, **kw), "chat")


def chat_request(content: str = "What is the capital of France?", **extra: Any) -> Any:
    return ChatCompletionRequest.model_validate(
        {"model": "smart", "messages": [{"role": "user", "content": content}], **extra}
    )


def chat_ctx(**extra: Any) -> GateContext:
    return GateContext(request=chat_request(**extra), endpoint="chat")


def json_schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


ORDER_SCHEMA = {
    "type": "object",
    "properties": {
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "price": {"type": "number"}},
                "required": ["name", "price"],
            },
        },
    },
    "required": ["items"],
}


# ------------------------------------------------------------------------------------------------ Answer


def test_answer_reads_chat_texts_finish_reasons_logprobs_and_usage():
    answer = chat("hello", None, logprobs=[[-0.1, -0.2], [-0.3]], finish="length")
    assert answer.endpoint == "chat"
    assert answer.texts == ["hello", ""]
    assert answer.finish_reasons == ["length", "length"]
    assert answer.token_logprobs == [[-0.1, -0.2], [-0.3]]
    assert (answer.prompt_tokens, answer.completion_tokens) == (12, 7)


def test_answer_without_logprobs_on_any_choice_has_none():
    body = chat_body("a", "b", logprobs=[[-0.1], [-0.2]])
    body["choices"][1]["logprobs"] = None
    assert Answer.from_body(body, "chat").token_logprobs is None
    assert chat("a").token_logprobs is None


def test_answer_reads_completions_and_drops_the_leading_none_logprob():
    answer = Answer.from_body(completion_body("Paris", token_logprobs=[[None, -0.25, -0.75]]), "completions")
    assert answer.texts == ["Paris"]
    assert answer.token_logprobs == [[-0.25, -0.75]]
    assert (answer.prompt_tokens, answer.completion_tokens) == (5, 3)


# ------------------------------------------------------------------------------------------------ JsonGate


async def test_json_gate_skips_when_the_request_asks_for_no_json():
    gate = JsonGate(JsonGateConfig())
    for ctx in (chat_ctx(), chat_ctx(response_format={"type": "text"})):
        result = await gate.check(chat("not json at all"), ctx)
        assert result.skipped and result.passed
        assert result.label == "skip"
        assert result.reasons == ["the request asks for no JSON"]


async def test_json_gate_json_object_valid_and_invalid():
    gate = JsonGate(JsonGateConfig())
    ctx = chat_ctx(response_format={"type": "json_object"})

    ok = await gate.check(chat('{"city": "Paris", "population": 2100000}'), ctx)
    assert ok.passed and not ok.skipped and ok.reasons == []

    bad = await gate.check(chat('Sure! Here is the JSON: {"city": "Paris"}'), ctx)
    assert not bad.passed and not bad.skipped
    assert len(bad.reasons) == 1
    assert bad.reasons[0].startswith("the answer is not valid JSON (Expecting value at position 0)")


async def test_json_gate_fenced_json_is_not_json():
    result = await JsonGate(JsonGateConfig()).check(
        chat('```json\n{"a": 1}\n```'), chat_ctx(response_format={"type": "json_object"})
    )
    assert not result.passed


async def test_json_gate_uses_the_request_schema():
    gate = JsonGate(JsonGateConfig())
    ctx = chat_ctx(response_format=json_schema_format(ORDER_SCHEMA))

    ok = await gate.check(chat('{"items": [{"name": "tea", "price": 2.5}, {"name": "cake", "price": 4}]}'), ctx)
    assert ok.passed and not ok.skipped

    bad = await gate.check(chat('{"items": [{"name": "tea", "price": "cheap"}]}'), ctx)
    assert not bad.passed
    assert bad.reasons == ["JSON schema: items/0/price: 'cheap' is not of type 'number'"]

    root = await gate.check(chat('{"orders": []}'), ctx)
    assert root.reasons == ["JSON schema: (root): 'items' is a required property"]


async def test_json_gate_request_schema_wins_over_the_config_schema():
    gate = JsonGate(JsonGateConfig.model_validate({"required": True, "schema": {"type": "array"}}))
    ctx = chat_ctx(response_format=json_schema_format(ORDER_SCHEMA))
    assert (await gate.check(chat('{"items": []}'), ctx)).passed
    assert not (await gate.check(chat("[1, 2]"), ctx)).passed


async def test_json_gate_json_object_request_uses_the_config_schema():
    gate = JsonGate(JsonGateConfig.model_validate({"schema": {"type": "object", "required": ["answer"]}}))
    ctx = chat_ctx(response_format={"type": "json_object"})
    assert (await gate.check(chat('{"answer": 42}'), ctx)).passed
    result = await gate.check(chat('{"reply": 42}'), ctx)
    assert result.reasons == ["JSON schema: (root): 'answer' is a required property"]


async def test_json_gate_required_with_config_schema_checks_every_answer():
    cfg = JsonGateConfig.model_validate({
        "required": True,
        "schema": {"type": "object", "properties": {"score": {"type": "integer", "minimum": 0}},
                   "required": ["score"]},
    })
    assert cfg.required and cfg.json_schema is not None
    gate = JsonGate(cfg)
    ctx = chat_ctx()  # no response_format

    ok = await gate.check(chat('{"score": 3}'), ctx)
    assert ok.passed and not ok.skipped

    bad = await gate.check(chat('{"score": -1}'), ctx)
    assert not bad.passed and not bad.skipped
    assert bad.reasons == ["JSON schema: score: -1 is less than the minimum of 0"]

    not_json = await gate.check(chat("score: 3"), ctx)
    assert not not_json.passed
    assert not_json.reasons[0].startswith("the answer is not valid JSON")


async def test_json_gate_required_without_schema_only_parses():
    gate = JsonGate(JsonGateConfig(required=True))
    assert (await gate.check(chat("[1, 2, 3]"), chat_ctx())).passed
    assert not (await gate.check(chat("one two three"), chat_ctx())).passed


async def test_json_gate_on_completions_request():
    ctx = GateContext(
        request=CompletionRequest.model_validate({"model": "smart", "prompt": "JSON please:",
                                                  "response_format": {"type": "json_object"}}),
        endpoint="completions",
    )
    gate = JsonGate(JsonGateConfig())
    assert (await gate.check(Answer.from_body(completion_body('{"a": 1}'), "completions"), ctx)).passed
    assert not (await gate.check(Answer.from_body(completion_body("a: 1"), "completions"), ctx)).passed


async def test_json_gate_one_bad_choice_of_n_fails_with_its_index():
    gate = JsonGate(JsonGateConfig())
    result = await gate.check(chat('{"a": 1}', "oops", '{"b": 2}'), chat_ctx(response_format={"type": "json_object"}))
    assert not result.passed
    assert len(result.reasons) == 1
    assert result.reasons[0].startswith("choice 1: the answer is not valid JSON")


async def test_json_gate_reports_at_most_three_reasons():
    schema = {"type": "object", "required": ["a", "b", "c", "d", "e"]}
    gate = JsonGate(JsonGateConfig())
    one = await gate.check(chat("{}"), chat_ctx(response_format=json_schema_format(schema)))
    assert not one.passed
    assert len(one.reasons) == 3
    assert all(r.startswith("JSON schema: (root): ") for r in one.reasons)

    many = await gate.check(chat("x", "y", "z", "w"), chat_ctx(response_format={"type": "json_object"}))
    assert [r.split(":")[0] for r in many.reasons] == ["choice 0", "choice 1", "choice 2"]


async def test_json_gate_does_not_crash_on_a_huge_integer():
    result = await JsonGate(JsonGateConfig(required=True)).check(chat("1" * 5000), chat_ctx())
    assert not result.passed


async def test_json_gate_does_not_crash_on_deep_nesting():
    result = await JsonGate(JsonGateConfig(required=True)).check(chat("[" * 2000), chat_ctx())
    assert not result.passed


# ------------------------------------------------------------------------------------------------ RulesGate


async def test_rules_gate_must_match():
    gate = RulesGate(RulesGateConfig(must_match=[r"\bParis\b"]))
    assert (await gate.check(chat("The capital is Paris."), chat_ctx())).passed
    result = await gate.check(chat("The capital is Lyon."), chat_ctx())
    assert not result.passed
    assert result.reasons == [r"the answer must match /\bParis\b/"]


async def test_rules_gate_must_not_match():
    gate = RulesGate(RulesGateConfig(must_not_match=[r"lorem ipsum", r"TODO"]))
    assert (await gate.check(chat("A finished answer."), chat_ctx())).passed
    result = await gate.check(chat("lorem ipsum dolor. TODO: finish"), chat_ctx())
    assert result.reasons == ["the answer must not match /lorem ipsum/", "the answer must not match /TODO/"]


async def test_rules_gate_is_case_sensitive_unless_ignore_case():
    text = chat("Lorem Ipsum and the city of PARIS")
    sensitive = RulesGate(RulesGateConfig(must_match=["paris"], must_not_match=["lorem ipsum"]))
    result = await sensitive.check(text, chat_ctx())
    assert result.reasons == ["the answer must match /paris/"]

    insensitive = RulesGate(RulesGateConfig(must_match=["paris"], must_not_match=["lorem ipsum"], ignore_case=True))
    result = await insensitive.check(text, chat_ctx())
    assert result.reasons == ["the answer must not match /lorem ipsum/"]


async def test_rules_gate_min_and_max_chars_at_the_boundary():
    gate = RulesGate(RulesGateConfig(min_chars=5, max_chars=10))
    assert (await gate.check(chat("12345"), chat_ctx())).passed
    assert (await gate.check(chat("1234567890"), chat_ctx())).passed

    short = await gate.check(chat("1234"), chat_ctx())
    assert short.reasons == ["the answer has 4 characters, fewer than 5"]
    long = await gate.check(chat("12345678901"), chat_ctx())
    assert long.reasons == ["the answer has 11 characters, more than 10"]


async def test_rules_gate_combines_reasons_up_to_three():
    gate = RulesGate(RulesGateConfig(must_match=["a", "b", "c"], min_chars=100))
    result = await gate.check(chat("xyz"), chat_ctx())
    assert len(result.reasons) == 3
    assert result.reasons[0] == "the answer must match /a/"


# ------------------------------------------------------------------------------------------------ RefusalGate


@pytest.mark.parametrize("text", [
    "I'm sorry, but I can't help with that.",
    "As an AI language model, I cannot provide medical diagnoses.",
    "As an AI, I don't have personal opinions.",
    "I am unable to assist with this request.",
    "I cannot help with that request.",
    "I'm afraid I can't do that, Dave.",
    "I am sorry, I cannot comply.",
    "I'm not able to answer questions about this topic.",
    "I won't provide instructions for that.",
    "i'm sorry, but i can't help with that.",
])
async def test_refusal_gate_catches_typical_refusals(text):
    result = await RefusalGate(RefusalGateConfig()).check(chat(text), chat_ctx())
    assert not result.passed
    assert len(result.reasons) == 1
    assert result.reasons[0].startswith("the answer is a refusal (")


async def test_refusal_gate_reason_quotes_the_matched_text():
    result = await RefusalGate(RefusalGateConfig()).check(
        chat("I'm sorry, but I can't help with that. Please ask something else."), chat_ctx()
    )
    assert result.reasons == ['the answer is a refusal ("I\'m sorry, but I can\'t")']


@pytest.mark.parametrize("text", [
    "Sorry for the confusion earlier: the capital of France is Paris.",
    "I'm sorry to hear your build failed. Try running `make clean` first.",
    "I can't wait to help you plan the trip! Day 1: the Louvre.",
    "The sorry state of the codebase is due to missing tests.",
    "I cannot stress enough how important backups are.",
    "As an AI researcher once said, data beats algorithms.",
    "Paris.",
])
async def test_refusal_gate_passes_normal_answers(text):
    result = await RefusalGate(RefusalGateConfig()).check(chat(text), chat_ctx())
    assert result.passed, result.reasons


async def test_refusal_gate_only_looks_at_the_first_400_characters():
    gate = RefusalGate(RefusalGateConfig())
    late = "x" * 400 + " I'm sorry, but I can't help with that."
    assert (await gate.check(chat(late), chat_ctx())).passed
    early = "x" * 300 + " I'm sorry, but I can't help with that."
    assert not (await gate.check(chat(early), chat_ctx())).passed


async def test_refusal_gate_extra_patterns_add_to_the_defaults():
    gate = RefusalGate(RefusalGateConfig(extra_patterns=[r"\bI must decline\b"]))
    result = await gate.check(chat("I must decline to answer."), chat_ctx())
    assert result.reasons == ["the answer is a refusal ('I must decline')"]
    assert not (await gate.check(chat("I'm sorry, but I can't help."), chat_ctx())).passed

    only_extra = RefusalGate(RefusalGateConfig(patterns=[], extra_patterns=["NOPE"]))
    assert (await only_extra.check(chat("I'm sorry, but I can't help."), chat_ctx())).passed
    assert not (await only_extra.check(chat("nope"), chat_ctx())).passed  # patterns are case-insensitive


async def test_refusal_gate_n_choices_prefix():
    result = await RefusalGate(RefusalGateConfig()).check(
        chat("Paris.", "I am unable to assist with that."), chat_ctx()
    )
    assert result.reasons == ["choice 1: the answer is a refusal ('I am unable to assist')"]


async def test_refusal_gate_catches_refusals_with_typographic_apostrophes():
    text = "I\u2019m sorry, but I can\u2019t assist with that."
    result = await RefusalGate(RefusalGateConfig()).check(chat(text), chat_ctx())
    assert not result.passed


async def test_refusal_gate_passes_the_cant_help_but_idiom():
    result = await RefusalGate(RefusalGateConfig()).check(
        chat("I can't help but notice the bug is on line 3: the loop never ends."), chat_ctx()
    )
    assert result.passed


# ------------------------------------------------------------------------------------------------ EmptyGate


@pytest.mark.parametrize("text", ["", "   \n\t ", None])
async def test_empty_gate_fails_empty_and_whitespace_answers(text):
    result = await EmptyGate(EmptyGateConfig()).check(chat(text), chat_ctx())
    assert not result.passed
    assert result.reasons == ["the answer is empty"]


async def test_empty_gate_min_chars():
    gate = EmptyGate(EmptyGateConfig(min_chars=5))
    assert (await gate.check(chat("  Paris  "), chat_ctx())).passed
    result = await gate.check(chat("  ok  "), chat_ctx())
    assert result.reasons == ["the answer is too short"]


async def test_empty_gate_truncation_fails_only_when_not_allowed():
    truncated = chat("The first three steps are", finish="length")
    assert (await EmptyGate(EmptyGateConfig()).check(truncated, chat_ctx())).passed

    strict = EmptyGate(EmptyGateConfig(allow_truncated=False))
    result = await strict.check(truncated, chat_ctx())
    assert result.reasons == ["the answer was cut off by max_tokens"]
    assert (await strict.check(chat("Done."), chat_ctx())).passed

    both = await strict.check(chat("", finish="length"), chat_ctx())
    assert both.reasons == ["the answer is empty", "the answer was cut off by max_tokens"]


# ------------------------------------------------------------------------------------------------ ConfidenceGate


async def test_confidence_gate_mean_threshold_boundary():
    answer = chat("Paris", logprobs=[[-0.25, -0.75]])  # mean -0.5
    ok = await ConfidenceGate(ConfidenceGateConfig(min_mean_logprob=-0.5)).check(answer, chat_ctx())
    assert ok.passed and not ok.skipped
    assert ok.score == -0.5

    bad = await ConfidenceGate(ConfidenceGateConfig(min_mean_logprob=-0.25)).check(answer, chat_ctx())
    assert not bad.passed
    assert bad.reasons == ["mean token logprob -0.500 is below -0.25"]
    assert bad.score == -0.5


async def test_confidence_gate_min_token_threshold_boundary():
    answer = chat("Paris", logprobs=[[-0.125, -2.0, -0.125]])
    ok = await ConfidenceGate(ConfidenceGateConfig(min_token_logprob=-2.0)).check(answer, chat_ctx())
    assert ok.passed

    bad = await ConfidenceGate(ConfidenceGateConfig(min_token_logprob=-1.5)).check(answer, chat_ctx())
    assert bad.reasons == ["lowest token logprob -2.000 is below -1.5"]


async def test_confidence_gate_both_thresholds():
    cfg = ConfidenceGateConfig(min_mean_logprob=-0.1, min_token_logprob=-1.0)
    result = await ConfidenceGate(cfg).check(chat("x", logprobs=[[-0.5, -3.0]]), chat_ctx())
    assert result.reasons == ["mean token logprob -1.750 is below -0.1", "lowest token logprob -3.000 is below -1.0"]


async def test_confidence_gate_skips_without_logprobs():
    gate = ConfidenceGate(ConfidenceGateConfig(min_mean_logprob=-1.0))
    no_tier = GateContext(request=chat_request(), endpoint="chat", logprobs_available=False)
    result = await gate.check(chat("Paris"), no_tier)
    assert result.skipped and result.passed
    assert result.reasons == ["this tier returns no logprobs"]
    assert "tier" in result.reasons[0]

    result = await gate.check(chat("Paris"), chat_ctx())
    assert result.skipped
    assert result.reasons == ["the answer has no logprobs"]


async def test_confidence_gate_score_is_the_worst_mean_over_choices():
    answer = chat("a", "b", logprobs=[[-0.125, -0.125], [-1.0, -0.5]])
    result = await ConfidenceGate(ConfidenceGateConfig(min_mean_logprob=-0.5)).check(answer, chat_ctx())
    assert result.score == -0.75
    assert result.reasons == ["choice 1: mean token logprob -0.750 is below -0.5"]


async def test_confidence_gate_completions_with_leading_none_logprob():
    answer = Answer.from_body(completion_body(" Paris", token_logprobs=[[None, -0.25, -0.75]]), "completions")
    ctx = GateContext(request=CompletionRequest.model_validate({"model": "smart", "prompt": "Capital:"}),
                      endpoint="completions")
    result = await ConfidenceGate(ConfidenceGateConfig(min_mean_logprob=-0.5)).check(answer, ctx)
    assert result.passed and result.score == -0.5


@pytest.mark.parametrize("bad", [float("-inf"), float("nan")])
async def test_confidence_gate_non_finite_logprobs_do_not_crash(bad):
    answer = chat("Paris", logprobs=[[-0.1, bad]])
    result = await ConfidenceGate(ConfidenceGateConfig(min_token_logprob=-5.0)).check(answer, chat_ctx())
    assert not result.passed
    assert result.reasons == ["lowest token logprob -10000.000 is below -5.0"]
    assert result.score is not None and result.score > float("-inf")
    assert result.to_dict()["score"] == round(result.score, 4)


# ------------------------------------------------------------------------------------------------ JudgeGate


class FakeJudge:
    """A judge tier: returns `reply` (or raises it when it is an exception) and records every call."""

    def __init__(self, reply: str | Exception):
        self.reply = reply
        self.calls: list[tuple[str, str, int]] = []

    async def __call__(self, tier: str, prompt: str, max_tokens: int) -> str:
        self.calls.append((tier, prompt, max_tokens))
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply


def judge_ctx(judge: FakeJudge | None) -> GateContext:
    request = ChatCompletionRequest.model_validate({"model": "smart", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And what is the capital of France?"},
    ]})
    return GateContext(request=request, endpoint="chat", judge=judge)


async def test_judge_gate_passes_at_the_threshold_and_sends_question_and_answer():
    judge = FakeJudge("7")
    gate = JudgeGate(JudgeGateConfig(tier="big", threshold=7))
    result = await gate.check(chat("Paris is the capital of France."), judge_ctx(judge))
    assert result.passed and not result.skipped
    assert result.score == 7.0
    assert len(judge.calls) == 1
    tier, prompt, max_tokens = judge.calls[0]
    assert (tier, max_tokens) == ("big", 8)
    assert "And what is the capital of France?" in prompt
    assert "What is 2 + 2?" not in prompt  # only the last user message
    assert "Paris is the capital of France." in prompt
    assert "{question}" not in prompt and "{answer}" not in prompt


async def test_judge_gate_high_score_passes():
    result = await JudgeGate(JudgeGateConfig(tier="big")).check(chat("Paris"), judge_ctx(FakeJudge("8")))
    assert result.passed and result.score == 8.0


async def test_judge_gate_fails_below_the_threshold():
    result = await JudgeGate(JudgeGateConfig(tier="big", threshold=7)).check(
        chat("Lyon"), judge_ctx(FakeJudge("Score: 3/10"))
    )
    assert not result.passed
    assert result.score == 3.0
    assert result.reasons == ["judge score 3 is below 7"]


async def test_judge_gate_fails_when_the_judge_gives_no_score():
    result = await JudgeGate(JudgeGateConfig(tier="big")).check(chat("Paris"), judge_ctx(FakeJudge("no idea")))
    assert not result.passed and not result.skipped
    assert result.reasons == ["the judge gave no score: 'no idea'"]


async def test_judge_gate_fails_when_the_judge_raises():
    result = await JudgeGate(JudgeGateConfig(tier="big")).check(
        chat("Paris"), judge_ctx(FakeJudge(RuntimeError("upstream 503")))
    )
    assert not result.passed and not result.skipped
    assert result.reasons == ["the judge tier big failed: upstream 503"]


async def test_judge_gate_skipped_without_a_judge():
    result = await JudgeGate(JudgeGateConfig(tier="big")).check(chat("Paris"), judge_ctx(None))
    assert result.skipped and result.passed
    assert result.reasons == ["no judge available"]


async def test_judge_gate_custom_prompt_max_tokens_and_completions_prompt():
    judge = FakeJudge("9")
    cfg = JudgeGateConfig(tier="big", prompt="Q={question} A={answer} score?", max_tokens=4)
    ctx = GateContext(request=CompletionRequest.model_validate({"model": "smart", "prompt": "The sky is"}),
                      endpoint="completions", judge=judge)
    result = await JudgeGate(cfg).check(Answer.from_body(completion_body(" blue."), "completions"), ctx)
    assert result.passed
    assert judge.calls == [("big", "Q=The sky is A= blue. score?", 4)]


async def test_judge_gate_scores_every_choice_and_keeps_the_lowest():
    replies = iter(["9", "4"])

    async def judge(tier: str, prompt: str, max_tokens: int) -> str:
        return next(replies)

    ctx = GateContext(request=chat_request(), endpoint="chat", judge=judge)
    result = await JudgeGate(JudgeGateConfig(tier="big", threshold=5)).check(chat("Paris", "Lyon"), ctx)
    assert not result.passed
    assert result.score == 4.0


async def test_judge_gate_question_from_multimodal_text_parts():
    judge = FakeJudge("8")
    request = ChatCompletionRequest.model_validate({"model": "smart", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Describe"}, {"type": "text", "text": "briefly."}]},
    ]})
    await JudgeGate(JudgeGateConfig(tier="big")).check(chat("ok"), GateContext(request, "chat", judge=judge))
    assert "Describe briefly." in judge.calls[0][1]


async def test_judge_gate_keeps_a_literal_placeholder_in_the_question():
    judge = FakeJudge("8")
    ctx = GateContext(chat_request("What does '{answer}'.format(answer=4) print?"), "chat", judge=judge)
    await JudgeGate(JudgeGateConfig(tier="big")).check(chat("It prints 4."), ctx)
    assert "What does '{answer}'.format(answer=4) print?" in judge.calls[0][1]


# ------------------------------------------------------------------------------------------------ run_gates


async def test_run_gates_preserves_order_and_calls_the_judge_when_all_pass():
    judge = FakeJudge("9")
    gates = [RulesGate(RulesGateConfig(must_match=["Paris"])), EmptyGate(EmptyGateConfig()),
             JudgeGate(JudgeGateConfig(tier="big"))]
    results = await run_gates(gates, chat("Paris"), judge_ctx(judge))
    assert [r.gate for r in results] == ["rules", "empty", "judge"]
    assert [r.label for r in results] == ["pass", "pass", "pass"]
    assert len(judge.calls) == 1


async def test_run_gates_skips_the_judge_when_a_cheaper_gate_failed():
    judge = FakeJudge("9")
    gates = [EmptyGate(EmptyGateConfig()), RefusalGate(RefusalGateConfig()), JudgeGate(JudgeGateConfig(tier="big"))]
    results = await run_gates(gates, chat("I'm sorry, but I can't help with that."), judge_ctx(judge))
    assert [r.label for r in results] == ["pass", "fail", "skip"]
    assert results[2].gate == "judge"
    assert results[2].reasons == ["not asked: another gate failed"]
    assert judge.calls == []


async def test_run_gates_a_skipped_gate_does_not_block_the_judge():
    judge = FakeJudge("9")
    gates = [JsonGate(JsonGateConfig()), ConfidenceGate(ConfidenceGateConfig(min_mean_logprob=-1)),
             JudgeGate(JudgeGateConfig(tier="big"))]
    results = await run_gates(gates, chat("Paris"), judge_ctx(judge))
    assert [r.label for r in results] == ["skip", "skip", "pass"]
    assert len(judge.calls) == 1


def test_build_gates_builds_exactly_the_enabled_gates_in_fixed_order():
    cfg = GatesConfig.model_validate({
        "judge": {"tier": "big"},
        "refusal": {},
        "json": {"required": True, "schema": {"type": "object"}},
        "empty": {"allow_truncated": False},
    })
    gates = build_gates(cfg)
    assert list(gates) == ["json", "refusal", "empty", "judge"]
    assert [type(g) for g in gates.values()] == [JsonGate, RefusalGate, EmptyGate, JudgeGate]
    assert all(g.name == kind for kind, g in gates.items())
    assert gates["json"].cfg.json_schema == {"type": "object"}
    assert gates["empty"].cfg.allow_truncated is False

    every = build_gates(GatesConfig.model_validate({
        "json": {}, "rules": {}, "refusal": {}, "empty": {}, "confidence": {"min_token_logprob": -3},
        "judge": {"tier": "big"},
    }))
    assert list(every) == ["json", "rules", "refusal", "empty", "confidence", "judge"]
    assert build_gates(GatesConfig()) == {}
    assert build_gates(GatesConfig.model_validate({"rules": None, "empty": {}})).keys() == {"empty"}


# ------------------------------------------------------------------------------------------------ GateResult


def test_gate_result_to_dict_shape():
    assert GateResult("empty", True).to_dict() == {"gate": "empty", "result": "pass"}
    assert GateResult("rules", False, ["the answer must match /x/"]).to_dict() == {
        "gate": "rules", "result": "fail", "reasons": ["the answer must match /x/"],
    }
    assert GateResult("json", True, ["the request asks for no JSON"], skipped=True).to_dict() == {
        "gate": "json", "result": "skip", "reasons": ["the request asks for no JSON"],
    }
    assert GateResult("confidence", True, score=-0.123456).to_dict() == {
        "gate": "confidence", "result": "pass", "score": -0.1235,
    }
    assert GateResult("confidence", False, ["low"], score=0.0).to_dict()["score"] == 0.0
