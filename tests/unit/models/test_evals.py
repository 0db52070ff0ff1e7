"""The eval task set (models/evals): tasks, schemas, the answer checker and scoring.

The cascade benchmark's stand-in strong model and configs are tested in tests/benchmarks/test_cascade_bench.py.
"""

from __future__ import annotations

import json
from collections import Counter

import jsonschema
import pytest

from models.evals import check, check_value, load_tasks, parse_json_answer, score, task_index
from models.evals.make_cascade_tasks import OUT, generate, render

TASKS = load_tasks()


def test_task_set_loads_with_three_kinds_and_mixed_difficulty() -> None:
    assert 60 <= len(TASKS) <= 90
    kinds = Counter(t.kind for t in TASKS)
    assert set(kinds) == {"extraction", "arithmetic", "classification"}
    assert min(kinds.values()) >= 15
    assert {t.difficulty for t in TASKS} == {"easy", "medium", "hard"}


def test_ids_and_prompts_are_unique() -> None:
    assert len({t.id for t in TASKS}) == len(TASKS)
    assert len(task_index(TASKS)) == len(TASKS)  # the stand-in recognises tasks by their prompt


def test_committed_file_is_the_generators_output() -> None:
    assert OUT.read_text(encoding="utf-8") == render(generate())


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.id)
def test_expected_validates_against_schema_and_messages_ask_for_json(task) -> None:
    jsonschema.validators.validator_for(task.schema).check_schema(task.schema)
    jsonschema.validate(task.expected, task.schema)
    assert task.messages[0]["role"] == "system" and "JSON" in task.messages[0]["content"]
    assert task.messages[-1]["role"] == "user"
    assert check(task, json.dumps(task.expected))


def _formats(value: dict) -> list[str]:
    compact = json.dumps(value, separators=(",", ":"))
    pretty = json.dumps(value, indent=4)
    return [compact, f"  \n{pretty}\n\n", f"```json\n{pretty}\n```", f"```\n{compact}\n```",
            f"\n```json {compact}```  "]


@pytest.mark.parametrize("task", [TASKS[0], *[t for t in TASKS if t.kind != "extraction"][:1], TASKS[-1]],
                         ids=lambda t: t.id)
def test_checker_accepts_the_expected_answer_in_several_formats(task) -> None:
    for text in _formats(task.expected):
        assert check(task, text), text


def test_checker_normalises_strings_and_numbers() -> None:
    person = next(t for t in TASKS if t.meta.get("schema") == "person")
    exp = person.expected
    shouted = {"name": "  " + exp["name"].upper().replace(" ", "   ") + ".", "age": float(exp["age"]),
               "city": exp["city"].lower(), "extra": "ignored"}
    assert check(person, json.dumps(shouted))
    assert check_value(0.1 + 0.2, 0.3)
    assert not check_value(True, 1)  # booleans are not numbers
    assert not check_value("34", 34)  # nor are numeric strings


def test_checker_rejects_wrong_and_non_json_answers() -> None:
    task = next(t for t in TASKS if t.kind == "arithmetic")
    answer = task.expected["answer"]
    for text in ["", "   ", "not json", f"The answer is {answer}.", f'Sure! {{"answer": {answer}}}',
                 json.dumps({"answer": answer + 1}), json.dumps({"result": answer}), json.dumps([answer]),
                 '{"answer": ', "```json\n{}\n```", None]:
        assert not check(task, text), text
    label = next(t for t in TASKS if t.kind == "classification")
    wrong = next(v for v in label.schema["properties"]["label"]["enum"] if v != label.expected["label"])
    assert not check(label, json.dumps({"label": wrong}))
    with pytest.raises(ValueError):
        parse_json_answer("JSON: {}")


def test_score_reports_accuracy_by_kind() -> None:
    answers = [json.dumps(t.expected) if i % 2 == 0 else "nope" for i, t in enumerate(TASKS)]
    s = score(TASKS, answers)
    assert s["n"] == len(TASKS) and s["correct"] == (len(TASKS) + 1) // 2
    assert s["valid_json"] == pytest.approx(s["accuracy"])
    assert set(s["by_kind"]) == {"extraction", "arithmetic", "classification"}
