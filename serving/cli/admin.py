"""`serving keys|kill|usage`: the admin API (/admin/v1) from the command line.

The gateway URL comes from `--url` or the platform config; the admin credential from the environment variable
the config names (`policies.auth.admin_key_env`, default SERVING_ADMIN_KEY). Keys are printed once, at creation.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from serving.cli._common import base_url, load

LIMIT_FLAGS = (("rpm", "requests_per_minute", int), ("tpm", "tokens_per_minute", int),
               ("tokens_per_day", "tokens_per_day", int), ("usd_per_hour", "usd_per_hour", float),
               ("usd_per_day", "usd_per_day", float))


class AdminError(Exception):
    """The admin API refused a request or cannot be reached; the message says why."""


def _request(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    import httpx

    from serving.config import AuthConfig

    if args.url and not args.config:
        # a remote gateway: the local default config says nothing about it (and a plain `pip install` has none)
        url, env = args.url.rstrip("/"), AuthConfig().admin_key_env
    else:
        cfg = load(args.config)
        url = (args.url or base_url(cfg)).rstrip("/")
        env = cfg.policies.auth.admin_key_env
    token = os.environ.get(env)
    if not token:
        raise AdminError(f"set {env} to the gateway's admin credential")
    try:
        resp = httpx.request(method, f"{url}/admin/v1{path}", json=body, timeout=30,
                             headers={"authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        raise AdminError(f"cannot reach {url}: {exc}; is it up? (`serving up`)") from None
    data = resp.json() if resp.headers.get("content-type", "").startswith("application/json") else {}
    if resp.status_code >= 400:
        raise AdminError(f"{resp.status_code}: {data.get('error', {}).get('message') or resp.text}")
    return data


def _run(fn: Any) -> Any:
    def wrapped(args: argparse.Namespace) -> int:
        try:
            fn(args)
        except AdminError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0

    return wrapped


def _limits(args: argparse.Namespace) -> dict[str, Any] | None:
    out = {field: getattr(args, flag) for flag, field, _ in LIMIT_FLAGS if getattr(args, flag) is not None}
    return out or None


@_run
def cmd_keys_create(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"tenant": args.tenant, "name": args.name or ""}
    if (limits := _limits(args)) is not None:
        body["limits"] = limits
    data = _request(args, "POST", "/keys", body)
    if args.json:
        print(json.dumps(data, indent=2))
        return
    print(data["key"])
    print(f"id {data['id']}, tenant {data['tenant']}; shown once: store it now", file=sys.stderr)
    if data.get("warning"):
        print(f"warning: {data['warning']}", file=sys.stderr)


@_run
def cmd_keys_list(args: argparse.Namespace) -> None:
    data = _request(args, "GET", "/keys" + (f"?tenant={args.tenant}" if args.tenant else ""))["data"]
    if args.json:
        print(json.dumps(data, indent=2))
        return
    print(f"{'ID':<18} {'TENANT':<16} {'KEY':<20} {'STATE':<8} NAME")
    for k in data:
        print(f"{k['id']:<18} {k['tenant']:<16} {k['hint']:<20} {'revoked' if k['revoked'] else 'active':<8} "
              f"{k['name']}")


@_run
def cmd_keys_revoke(args: argparse.Namespace) -> None:
    data = _request(args, "DELETE", f"/keys/{args.id}")
    print(f"revoked {data['id']} (tenant {data['tenant']})")


@_run
def cmd_kill(args: argparse.Namespace) -> None:
    if args.kill_cmd == "list":
        data = _request(args, "GET", "/kill-switches")["data"]
        for k in data:
            print(f"{k['scope']:<32} {k.get('reason', '')}")
        if not data:
            print("no kill switch engaged")
        return
    if args.kill_cmd == "engage":
        _request(args, "PUT", f"/kill-switches/{args.scope}", {"reason": args.reason or ""})
        print(f"engaged: {args.scope} (every gateway replica refuses its requests now)")
    else:
        data = _request(args, "DELETE", f"/kill-switches/{args.scope}")
        print(f"released: {args.scope}" if data["was_engaged"] else f"{args.scope} was not engaged")


@_run
def cmd_usage(args: argparse.Namespace) -> None:
    print(json.dumps(_request(args, "GET", f"/tenants/{args.tenant}/usage"), indent=2))


def add_parsers(sub: Any) -> None:
    """Register `keys`, `kill` and `usage` on the `serving` parser."""

    def command(parent: Any, name: str, help_: str, func: Any, *positional: str) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help_)
        for arg in positional:
            p.add_argument(arg)
        p.add_argument("--config", help="platform config (gateway URL, admin credential variable)")
        p.add_argument("--url", help="gateway base URL (default: from the config); alone, the admin credential is "
                       "read from $SERVING_ADMIN_KEY (add --config for another policies.auth.admin_key_env)")
        p.set_defaults(func=func)
        return p

    keys = sub.add_parser("keys", help="gateway API keys (admin API)").add_subparsers(dest="keys_cmd", required=True)
    create = command(keys, "create", "create a key for a tenant; prints it once", cmd_keys_create)
    create.add_argument("--tenant", required=True)
    create.add_argument("--name", help="what the key is for")
    for flag, field, kind in LIMIT_FLAGS:
        create.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=kind, help=f"key limit: {field}")
    create.add_argument("--json", action="store_true")
    lst = command(keys, "list", "keys (never the keys themselves)", cmd_keys_list)
    lst.add_argument("--tenant")
    lst.add_argument("--json", action="store_true")
    command(keys, "revoke", "revoke a key by id (at once, on every replica)", cmd_keys_revoke, "id")

    kill = sub.add_parser("kill", help="kill switches (admin API)").add_subparsers(dest="kill_cmd", required=True)
    engage = command(kill, "engage", "stop requests: global, tenant:<t>, route:<model> or key:<id>", cmd_kill,
                     "scope")
    engage.add_argument("--reason")
    command(kill, "release", "let requests through again", cmd_kill, "scope")
    command(kill, "list", "engaged kill switches", cmd_kill)

    command(sub, "usage", "a tenant's tokens today and spend against its limits (admin API)", cmd_usage, "tenant")
