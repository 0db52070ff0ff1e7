"""`serving models pull|register|list`: model sources and the MLflow registry's versions."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from serving.cli._common import load, registry
from serving.config import DEFAULT_CONFIG


def cmd_models_pull(args: argparse.Namespace) -> int:
    from models.loader import ModelSourceError, resolve_model_source

    try:
        print(resolve_model_source(args.source, revision=args.revision))
    except ModelSourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _kv(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"error: expected KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def cmd_models_register(args: argparse.Namespace) -> int:
    """Register a model version with its serving spec (weights referenced, not copied)."""
    from serving.rollout.spec import CHALLENGER, SpecError, parse_spec

    if args.from_engine:
        engine = load(args.config).engines.get(args.from_engine)
        if engine is None:
            raise SystemExit(f"error: no engine {args.from_engine!r} in {args.config or DEFAULT_CONFIG}")
        data: dict[str, Any] = {"engine": engine.model_dump(mode="json", exclude_none=True)}
    elif args.source:
        data = {"engine": {"model": args.source}}
    else:
        raise SystemExit("error: give --source (hf:ORG/REPO, catalog:NAME, builtin:NAME, a directory) or --from-engine")
    engine_fields = {"revision": args.revision, "quantization": args.quantization, "device": args.device,
                     "dtype": args.dtype, "max_model_len": args.max_model_len}
    data["engine"].update({k: v for k, v in engine_fields.items() if v is not None})
    if args.gpus is not None:
        data["engine"].setdefault("gpu", {})["count"] = args.gpus
    if args.engine_kwarg:
        data["engine"].setdefault("engine_kwargs", {}).update(_kv(args.engine_kwarg))
    if args.eval_tasks:
        data["eval_tasks"] = args.eval_tasks
    try:
        spec = parse_spec(data, "the version's serving spec")
    except SpecError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    reg = registry(args)
    info = reg.register(args.model, spec, description=args.description or "")
    print(f"registered {info.model} version {info.version}  (source {info.source})")
    if args.challenger:
        reg.set_alias(info.model, CHALLENGER, info.version)
        print(f"alias {CHALLENGER} -> version {info.version}: the rollout controller will roll it out")
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    """Versions, aliases and rollout state of registered models."""
    reg = registry(args)
    names = [args.model] if args.model else reg.models()
    if not names:
        print(f"no registered models in {reg.uri}")
        return 0
    for name in names:
        versions = reg.versions(name)
        print(f"{name}  ({len(versions)} version(s), registry {reg.uri})")
        for v in versions:
            state = v.rollout_tags.get("state", "")
            detail = v.rollout_tags.get("reason", "")
            model = v.spec.engine.model if v.spec else f"INVALID SPEC: {v.spec_error}"
            print(f"  v{v.version:<4d} {','.join(v.aliases) or '-':20s} {state or '-':12s} {model}"
                  + (f"  ({detail})" if detail else ""))
    return 0


def add_parsers(sub: Any) -> None:
    """Register `models pull|register|list` on the `serving` parser."""
    models = sub.add_parser("models", help="model sources").add_subparsers(dest="models_cmd", required=True)
    pull = models.add_parser("pull", help="build a builtin model or download a Hugging Face model into the cache")
    pull.add_argument("source", help="builtin:smollm2-135m-instruct, builtin:tiny-llama, catalog:NAME, hf:ORG/REPO")
    pull.add_argument("--revision")
    pull.set_defaults(func=cmd_models_pull)
    reg = models.add_parser("register", help="register a model version in MLflow with its serving spec")
    reg.add_argument("model", help="registered model name (the model group it rolls out to follows it)")
    reg.add_argument("--source", help="hf:ORG/REPO, catalog:NAME, builtin:NAME or a model directory")
    reg.add_argument("--from-engine", help="copy the spec of this engine of --config instead of --source")
    reg.add_argument("--revision", help="pinned Hugging Face revision (commit sha) for hf: sources")
    reg.add_argument("--quantization", help="awq_marlin, awq, gptq_marlin, ...")
    reg.add_argument("--device", choices=["cpu", "gpu"])
    reg.add_argument("--dtype")
    reg.add_argument("--gpus", type=int, help="GPUs per replica (tensor parallel size)")
    reg.add_argument("--max-model-len", type=int)
    reg.add_argument("--engine-kwarg", action="append", default=[], metavar="KEY=VALUE", help="extra vLLM kwarg")
    reg.add_argument("--eval-tasks", help="eval set for this version (builtin:NAME or a JSONL path)")
    reg.add_argument("--description")
    reg.add_argument("--challenger", action="store_true", help="also set the challenger alias on it")
    reg.add_argument("--registry", help="MLflow URI (default: the config's rollout.registry_uri, MLFLOW_TRACKING_URI)")
    reg.add_argument("--config", help="platform config (for --from-engine and the registry URI)")
    reg.set_defaults(func=cmd_models_register)
    lst = models.add_parser("list", help="versions, aliases and rollout state in the registry")
    lst.add_argument("model", nargs="?")
    lst.add_argument("--registry")
    lst.add_argument("--config")
    lst.set_defaults(func=cmd_models_list)
