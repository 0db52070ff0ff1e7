"""plan.rebase: a new chart Serve config (helm upgrade / rollback) keeps the rollouts' state of the live one."""

from __future__ import annotations

import copy
from typing import Any

from serving.config import EngineConfig, parse_config
from serving.deploy.serve_config import serve_config
from serving.rollout import plan

ENGINE = {"model": "builtin:tiny-llama", "device": "cpu", "max_model_len": 256}


def chart_config(max_seqs: int = 8, *, managed: bool = True) -> dict[str, Any]:
    platform: dict[str, Any] = {
        "engines": {"seed": {**ENGINE, "max_num_seqs": max_seqs}, "other": ENGINE},
        "model_groups": {"chat": {"engines": ["seed"]}, "misc": {"engines": ["other"]}},
    }
    if managed:
        platform["rollout"] = {"models": {"chat": {}}}
    return serve_config(parse_config(platform))


def canary(cfg: dict[str, Any], version: int = 2, share: float = 5.0) -> dict[str, Any]:
    engine = EngineConfig.model_validate({**ENGINE, "max_num_seqs": 4})
    added = plan.add_engine(cfg, "chat", f"chat-v{version}", engine)
    return plan.set_split(added, "chat", {"seed": 100 - share, f"chat-v{version}": share})


def apps(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {a["args"].get("name", "gateway"): a for a in cfg["applications"]}


def test_a_canary_survives_a_chart_change_that_is_applied() -> None:
    live = canary(chart_config())
    new_base = chart_config(max_seqs=16)
    out = plan.rebase(live, new_base)
    assert plan.members(out, "chat") == {"seed": 95.0, "chat-v2": 5.0}
    assert apps(out)["seed"]["args"]["engine"]["max_num_seqs"] == 16  # the chart's seed engine spec
    assert apps(out)["chat-v2"] == apps(live)["chat-v2"]  # the registry version's app, as deployed
    assert plan.base_platform(out).engines["seed"].max_num_seqs == 16  # the gateway app carries the new config
    assert plan.gateway_state(out)["engines"]["chat-v2"] == "serving-engine-chat-v2"


def test_a_promoted_version_stays_and_the_retired_seed_is_not_revived() -> None:
    promoted = plan.remove_engine(plan.set_split(canary(chart_config(), share=100.0), "chat", {"chat-v2": 100.0}),
                                  "seed")
    assert "seed" not in apps(promoted)
    out = plan.rebase(promoted, chart_config(max_seqs=16))
    assert plan.members(out, "chat") == {"chat-v2": 100.0}
    assert "seed" not in apps(out) and "seed" not in plan.gateway_state(out)["engines"]
    assert set(apps(out)) == {"gateway", "other", "chat-v2"}


def test_unmanaged_groups_and_no_rollout_follow_the_chart() -> None:
    live = canary(chart_config())
    out = plan.rebase(live, chart_config(managed=False))  # the group no longer follows the registry
    assert out == chart_config(managed=False)
    assert plan.rebase(chart_config(), chart_config(max_seqs=16)) == chart_config(max_seqs=16)


def test_a_foreign_or_broken_live_config_yields_the_base() -> None:
    base = chart_config()
    assert plan.rebase({"applications": []}, base) == base
    broken = canary(base)
    broken["applications"] = [a for a in broken["applications"] if a["args"].get("name") != "chat-v2"]
    assert plan.rebase(broken, chart_config(max_seqs=16)) == chart_config(max_seqs=16)
    assert plan.rebase(copy.deepcopy(base), base) == base
