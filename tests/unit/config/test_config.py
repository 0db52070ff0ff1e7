"""Platform config files: the shipped ones validate, bad ones fail at load with the field's dotted path."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from serving.cli import main
from serving.config import ConfigError, PlatformConfig, load_config, parse_config

ROOT = Path(__file__).resolve().parents[3]
LOCAL = ROOT / "configs" / "local.yaml"
GPU = ROOT / "configs" / "gpu-llama-8b-awq.yaml"
SHIPPED = sorted((ROOT / "configs").glob("*.yaml"))
ENGINE = "smollm2-135m"
GROUP = "smollm2-135m-instruct"


def base() -> dict[str, Any]:
    return yaml.safe_load(LOCAL.read_text())


def errors_of(data: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "test.yaml")
    assert info.value.errors
    assert str(info.value).startswith("test.yaml: invalid config")
    return info.value.errors


def engine(**over: Any) -> dict[str, Any]:
    data = base()
    data["engines"][ENGINE].update(over)
    return data


# -- the shipped configs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_configs_validate(path: Path):
    cfg = load_config(path)
    assert isinstance(cfg, PlatformConfig)
    for group in cfg.model_groups.values():
        assert all(m.engine in cfg.engines for m in group.engines)


def test_local_config():
    cfg = load_config(LOCAL)
    eng = cfg.engines[ENGINE]
    assert eng.device == "cpu"
    assert eng.model == "builtin:smollm2-135m-instruct"
    assert eng.quantization is None
    assert cfg.ray.address is None  # a local Ray cluster is started
    assert cfg.gateway.num_cpus == 0
    assert [m.engine for m in cfg.model_groups[GROUP].engines] == [ENGINE]


def test_gpu_config():
    cfg = load_config(GPU)
    eng = cfg.engines["llama-3-1-8b-awq"]
    assert eng.device == "gpu"
    assert eng.quantization == "awq_marlin"
    assert eng.gpu.count == 1 and eng.gpu.accelerator_type == "L4"
    assert (eng.replicas.min, eng.replicas.max) == (1, 4)
    assert cfg.gateway.host == "0.0.0.0" and cfg.gateway.replicas == 2
    assert list(cfg.model_groups) == ["llama-3.1-8b-instruct"]


def test_defaults_fill_in():
    cfg = parse_config({"engines": {"e": {"model": "builtin:tiny-llama"}}, "model_groups": {"g": {"engines": ["e"]}}})
    eng = cfg.engines["e"]
    assert eng.device == "gpu" and eng.gpu.count == 1 and eng.gpu.memory_utilization == 0.9
    assert (eng.replicas.min, eng.replicas.max) == (1, 1)
    assert cfg.model_groups["g"].engines[0].weight == 1.0
    assert cfg.gateway.port == 8000 and cfg.gateway.route_prefix == "/"
    assert cfg.version == 1


def test_group_member_shorthand_and_weights():
    data = base()
    data["engines"]["v2"] = copy.deepcopy(data["engines"][ENGINE])
    data["model_groups"][GROUP]["engines"] = [ENGINE, {"engine": "v2", "weight": 0.25}]
    members = parse_config(data).model_groups[GROUP].engines
    assert [(m.engine, m.weight) for m in members] == [(ENGINE, 1.0), ("v2", 0.25)]


# -- errors with dotted paths -------------------------------------------------------------------------------


@pytest.mark.parametrize(("mutate", "expected"), [
    pytest.param(lambda d: d["engines"][ENGINE].update(device="gpu", gpu={"count": 0}),
                 f"engines.{ENGINE}.gpu.count:", id="gpu-count-zero"),
    pytest.param(lambda d: d["engines"][ENGINE].update(device="gpu", gpu={"count": "two"}),
                 f"engines.{ENGINE}.gpu.count:", id="gpu-count-string"),
    pytest.param(lambda d: d["engines"][ENGINE].update(gpu={"memory_utilization": 1.5}),
                 f"engines.{ENGINE}.gpu.memory_utilization:", id="memory-utilization"),
    pytest.param(lambda d: d["engines"][ENGINE].update(device="tpu"), f"engines.{ENGINE}.device:", id="device"),
    pytest.param(lambda d: d["engines"][ENGINE].update(quantization="int3"),
                 f"engines.{ENGINE}.quantization:", id="quantization"),
    pytest.param(lambda d: d["engines"][ENGINE].update(max_model_len=8), f"engines.{ENGINE}.max_model_len:",
                 id="max-model-len"),
    pytest.param(lambda d: d["engines"][ENGINE].update(model="builtin:nope"), f"engines.{ENGINE}.model:",
                 id="unknown-builtin"),
    pytest.param(lambda d: d["engines"][ENGINE].update(model="catalog:no-such-model"), f"engines.{ENGINE}.model:",
                 id="unknown-catalog"),
    pytest.param(lambda d: d["engines"][ENGINE].pop("model"), f"engines.{ENGINE}.model:", id="missing-model"),
    pytest.param(lambda d: d["engines"][ENGINE].update(gpus=2), f"engines.{ENGINE}.gpus:", id="unknown-engine-key"),
    pytest.param(lambda d: d["engines"][ENGINE].update(gpu={"cuont": 2}), f"engines.{ENGINE}.gpu.cuont:",
                 id="unknown-gpu-key"),
    pytest.param(lambda d: d["gateway"].update(prot=8000), "gateway.prot:", id="unknown-gateway-key"),
    pytest.param(lambda d: d.update(engine={}), "engine:", id="unknown-top-level-key"),
    pytest.param(lambda d: d["gateway"].update(port=70000), "gateway.port:", id="port"),
    pytest.param(lambda d: d["gateway"].update(route_prefix="v1"), "gateway.route_prefix:", id="route-prefix"),
    pytest.param(lambda d: d["gateway"].update(max_body_bytes=10), "gateway.max_body_bytes:", id="max-body"),
    pytest.param(lambda d: d["ray"].update(num_cpus=0), "ray.num_cpus:", id="ray-num-cpus"),
    pytest.param(lambda d: d.update(version=2), "version:", id="version"),
    pytest.param(lambda d: d["engines"][ENGINE].update(replicas={"min": 3, "max": 2}),
                 f"engines.{ENGINE}.replicas:", id="replicas-min-gt-max"),
    pytest.param(lambda d: d["engines"][ENGINE].update(replicas={"max": 0}), f"engines.{ENGINE}.replicas.max:",
                 id="replicas-max-zero"),
    pytest.param(lambda d: d["engines"][ENGINE].update(quantization="awq"), f"engines.{ENGINE}:",
                 id="awq-on-cpu"),
    pytest.param(lambda d: d["engines"][ENGINE].update(quantization="awq_marlin"), f"engines.{ENGINE}:",
                 id="awq-marlin-on-cpu"),
    pytest.param(lambda d: d["model_groups"][GROUP].update(engines=[{"engine": ENGINE, "weight": -1}]),
                 f"model_groups.{GROUP}.engines.0.weight:", id="negative-weight"),
    pytest.param(lambda d: d["model_groups"][GROUP].update(engines=[{"engine": ENGINE, "weight": 0}]),
                 f"model_groups.{GROUP}:", id="all-weights-zero"),
    pytest.param(lambda d: d["model_groups"][GROUP].update(engines=[ENGINE, ENGINE]), f"model_groups.{GROUP}:",
                 id="duplicate-member"),
    pytest.param(lambda d: d["model_groups"][GROUP].update(engines=[]), f"model_groups.{GROUP}.engines:",
                 id="empty-group"),
    pytest.param(lambda d: d.update(engines={}), "engines:", id="no-engines"),
    pytest.param(lambda d: d["engines"].update({"Bad Name": d["engines"][ENGINE]}), "engines:", id="bad-engine-name"),
    pytest.param(lambda d: d["model_groups"].update({"GPT_4!": {"engines": [ENGINE]}}), "model_groups:",
                 id="bad-group-name"),
])
def test_error_carries_the_field_path(mutate, expected: str):
    data = base()
    mutate(data)
    errors = errors_of(data)
    assert any(e.startswith(expected) for e in errors), errors


def test_unknown_engine_in_group_names_the_group():
    data = base()
    data["model_groups"][GROUP]["engines"] = ["nope"]
    errors = errors_of(data)
    assert len(errors) == 1
    assert f"model_groups.{GROUP}" in errors[0]
    assert "unknown engine 'nope'" in errors[0]
    assert ENGINE in errors[0]  # lists the engines that are defined


def test_bad_names_are_quoted():
    data = base()
    data["engines"]["Bad Name"] = data["engines"].pop(ENGINE)
    data["model_groups"][GROUP]["engines"] = ["Bad Name"]
    assert any("'Bad Name'" in e for e in errors_of(data))


def test_all_errors_are_reported_at_once():
    data = base()
    data["gateway"]["port"] = 0
    data["engines"][ENGINE]["max_model_len"] = 1
    errors = errors_of(data)
    assert any(e.startswith("gateway.port:") for e in errors)
    assert any(e.startswith(f"engines.{ENGINE}.max_model_len:") for e in errors)


@pytest.mark.parametrize("data", [None, [], "text", 3])
def test_root_must_be_a_mapping(data: Any):
    assert errors_of(data)[0].startswith("(root): expected a mapping")


def test_gpu_only_quantization_allowed_on_gpu():
    data = engine(device="gpu", quantization="awq_marlin")
    assert parse_config(data).engines[ENGINE].quantization == "awq_marlin"


def test_revision_on_a_builtin_model_is_rejected_at_load():
    errors_of(engine(revision="0123456789abcdef0123456789abcdef01234567"))


def test_conflicting_revisions_are_rejected_at_load():
    errors_of(engine(device="gpu", model="hf:org/repo@" + "a" * 40, revision="b" * 40))


# -- YAML files ---------------------------------------------------------------------------------------------


def test_bad_yaml_reports_the_line(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("version: 1\nengines:\n  e:\n    model: [unclosed\nmodel_groups: {}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "invalid YAML" in info.value.errors[0]
    assert info.value.errors[0].startswith("line 5, column 13: invalid YAML")


def test_tab_indentation_reports_the_line(tmp_path: Path):
    path = tmp_path / "tabs.yaml"
    path.write_text("version: 1\nengines:\n\te: {}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors[0].startswith("line 3,")


def test_missing_and_empty_files(tmp_path: Path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.yaml")
    assert "cannot read" in info.value.errors[0]
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError) as info:
        load_config(empty)
    assert info.value.errors[0].startswith("(root):")


# -- the CLI ------------------------------------------------------------------------------------------------


def test_cli_validate_good_files(capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6390/0")
    monkeypatch.setenv("SERVING_ADMIN_KEY", "admin-test")
    assert main(["config", "validate", str(LOCAL), str(GPU)]) == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{LOCAL}: ok") and GROUP in lines[0] and "routes: auto" in lines[0]
    assert lines[1].startswith(f"{GPU}: ok") and "llama-3.1-8b-instruct" in lines[1]
    assert err == ""
    assert "sk-test" not in out


def test_cli_validate_warns_about_missing_api_keys(capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    assert main(["config", "validate", str(GPU)]) == 0  # a warning, not an error: the gateway skips the tier
    err = capsys.readouterr().err
    assert "tier gpt-4o-mini: OPENAI_API_KEY is not set" in err
    assert "ANTHROPIC_API_KEY" not in err


def test_cli_validate_warns_about_the_policy_environment(capsys, monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("SERVING_ADMIN_KEY", raising=False)
    assert main(["config", "validate", str(GPU)]) == 0  # the gateway's environment may differ from this shell's
    err = capsys.readouterr().err
    assert "policies need Redis" in err and "REDIS_URL" in err
    assert "SERVING_ADMIN_KEY is not set: the admin API is off" in err
    assert main(["config", "validate", str(LOCAL)]) == 0  # keys off, no Redis needed
    assert "policies" not in capsys.readouterr().err


def test_up_refuses_policies_without_redis(monkeypatch, tmp_path):
    monkeypatch.delenv("REDIS_URL", raising=False)
    with pytest.raises(SystemExit, match="policies need Redis"):
        main(["up", "--config", str(GPU)])


def test_cli_validate_bad_file(tmp_path: Path, capsys):
    data = base()
    data["engines"][ENGINE]["gpu"] = {"count": 0}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    assert main(["config", "validate", str(LOCAL), str(bad)]) == 1
    out, err = capsys.readouterr()
    assert f"{LOCAL}: ok" in out
    assert str(bad) not in out
    assert str(bad) in err
    assert f"engines.{ENGINE}.gpu.count:" in err
    assert "Traceback" not in err


def test_cli_validate_bad_yaml(tmp_path: Path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("engines: [\n")
    assert main(["config", "validate", str(bad)]) == 1
    _, err = capsys.readouterr()
    assert "invalid YAML" in err and "line " in err


def test_cli_show_fills_in_defaults(capsys):
    assert main(["config", "show", str(LOCAL)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["engines"][ENGINE]["device"] == "cpu"
    assert shown["gateway"]["request_timeout_s"] == 600.0
    assert shown["model_groups"][GROUP]["engines"] == [{"engine": ENGINE, "weight": 1.0}]
    assert parse_config(shown) == load_config(LOCAL)  # what `show` prints is itself a valid config


def test_cli_show_bad_file_exits_2(tmp_path: Path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 3\n")
    with pytest.raises(SystemExit) as info:
        main(["config", "show", str(bad)])
    assert info.value.code == 2
    assert "version:" in capsys.readouterr().err
