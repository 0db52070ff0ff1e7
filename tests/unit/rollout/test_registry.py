"""Registry conventions on a real (sqlite) MLflow registry: specs on versions, aliases, rollout tags, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serving.cli import main
from serving.config import ConfigError, parse_config
from serving.rollout.registry import Registry, RegistryError, model_source_uri
from serving.rollout.spec import (
    CHALLENGER,
    CHAMPION,
    SPEC_TAG,
    SpecError,
    VersionSpec,
    engine_name,
    parse_engine_name,
    parse_spec,
)

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return Registry(uri)


def tiny(seed: int = 0, **engine: object) -> VersionSpec:
    return parse_spec({"engine": {"model": f"builtin:tiny-llama?seed={seed}", "device": "cpu", **engine}})


def test_register_versions_with_specs_and_aliases(registry: Registry) -> None:
    v1 = registry.register("chat", tiny(1), description="first")
    v2 = registry.register("chat", tiny(2, max_model_len=512))
    assert (v1.version, v2.version) == (1, 2)
    assert v1.spec == tiny(1) and v2.spec.engine.max_model_len == 512
    assert v1.source == "builtin:///tiny-llama?seed=1" and v1.description == "first"
    assert v1.tags["serving.model"] == "builtin:tiny-llama?seed=1" and v1.tags["serving.device"] == "cpu"
    registry.set_alias("chat", CHAMPION, 1)
    registry.set_alias("chat", CHALLENGER, 2)
    assert registry.aliases("chat") == {CHAMPION: 1, CHALLENGER: 2}
    assert registry.by_alias("chat", CHALLENGER).version == 2
    assert [(v.version, v.aliases) for v in registry.versions("chat")] == [(1, (CHAMPION,)), (2, (CHALLENGER,))]
    registry.delete_alias("chat", CHALLENGER)
    registry.delete_alias("chat", CHALLENGER)  # twice is fine
    assert registry.by_alias("chat", CHALLENGER) is None
    assert registry.by_alias("unknown-model", CHAMPION) is None
    assert registry.versions("unknown-model") == []


def test_rollout_tags_round_trip(registry: Registry) -> None:
    registry.register("chat", tiny())
    registry.set_rollout_tags("chat", 1, {"state": "canary", "step": 2})
    assert registry.version("chat", 1).rollout_tags == {"state": "canary", "step": "2"}


def test_version_without_or_with_a_broken_spec_is_reported_not_fatal(registry: Registry) -> None:
    registry.ensure_model("chat")
    registry.client.create_model_version("chat", "s3://bucket/model")
    registry.client.create_model_version("chat", "s3://bucket/model", tags={SPEC_TAG: '{"engine": {"model": 3}}'})
    first, second = registry.versions("chat")
    assert first.spec is None and "no serving.spec tag" in first.spec_error
    assert second.spec is None and "engine.model" in second.spec_error


def test_spec_errors_carry_field_paths() -> None:
    with pytest.raises(SpecError) as exc:
        parse_spec({"engine": {"model": "hf:meta-llama/x", "gpu": {"count": 0}}, "extra": 1})
    text = str(exc.value)
    assert "engine.gpu.count" in text and "extra" in text
    with pytest.raises(SpecError, match="not JSON"):
        parse_spec("{nope")


def test_source_uri_references_the_weights(tmp_path: Path) -> None:
    hf = parse_spec({"engine": {"model": "hf:hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4",
                                "revision": "a" * 40, "quantization": "awq_marlin"}})
    assert model_source_uri(hf) == f"hf://hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4@{'a' * 40}"
    assert hf.display_tags()["serving.quantization"] == "awq_marlin" and hf.display_tags()["serving.gpus"] == "1"
    (tmp_path / "m").mkdir()
    local = parse_spec({"engine": {"model": str(tmp_path / "m"), "device": "cpu"}})
    assert model_source_uri(local) == f"modeldir://{tmp_path / 'm'}"
    catalog = parse_spec({"engine": {"model": "catalog:llama-3.1-8b-instruct-awq"}})
    assert model_source_uri(catalog) == "catalog:///llama-3.1-8b-instruct-awq"


def test_engine_names() -> None:
    assert engine_name("smollm2-135m-instruct", 7) == "smollm2-135m-instruct-v7"
    assert parse_engine_name("smollm2-135m-instruct-v7") == ("smollm2-135m-instruct", 7)
    assert parse_engine_name("smollm2") is None
    with pytest.raises(ValueError):
        engine_name("x" * 70, 1)


def test_no_registry_uri_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(RegistryError, match="MLFLOW_TRACKING_URI"):
        Registry(None)


def test_rollout_config_validation() -> None:
    base = {"engines": {"a": {"model": "builtin:tiny-llama", "device": "cpu"}},
            "model_groups": {"chat": {"engines": ["a"]}}}
    cfg = parse_config({**base, "rollout": {"models": {"chat": {"strategy": {"steps": [10, 100]}}}}})
    assert cfg.rollout.registered_model("chat") == "chat"
    for rollout, message in [
        ({"models": {"nope": {}}}, "rollout.models.nope: unknown model group"),
        ({"models": {"chat": {"strategy": {"steps": [50, 20, 100]}}}}, "steps must increase"),
        ({"models": {"chat": {"strategy": {"steps": [5, 50]}}}}, "the last step must be 100"),
        ({"models": {"chat": {"analysis": {"max_error_rate": 2}}}}, "rollout.models.chat.analysis.max_error_rate"),
    ]:
        with pytest.raises(ConfigError) as exc:
            parse_config({**base, "rollout": rollout})
        assert message in str(exc.value), str(exc.value)


def test_cli_register_and_list(registry: Registry, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(ROOT / "configs" / "local.yaml")
    assert main(["models", "register", "smollm2", "--from-engine", "smollm2-135m", "--config", config]) == 0
    assert main(["models", "register", "smollm2", "--source", "builtin:tiny-llama?seed=3", "--device", "cpu",
                 "--engine-kwarg", "max_num_batched_tokens=512", "--challenger"]) == 0
    out = capsys.readouterr().out
    assert "registered smollm2 version 1" in out and "alias challenger -> version 2" in out
    v2 = registry.version("smollm2", 2)
    assert v2.spec.engine.engine_kwargs == {"max_num_batched_tokens": 512}
    assert json.loads(v2.tags[SPEC_TAG])["engine"]["model"] == "builtin:tiny-llama?seed=3"
    assert main(["models", "register", "smollm2", "--source", "hf:not-a-repo"]) == 2
    assert "engine.model" in capsys.readouterr().err
    assert main(["models", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("smollm2  (2 version(s)")
    assert lines[2].split()[:2] == ["v2", "challenger"]
