"""Declarative deploys to a running Ray cluster: the path `serve run config.yaml`, `serve deploy` and KubeRay take.

A Serve config (ServeDeploySchema) goes to the Serve controller's `apply_config`, which compares each application
with what runs: an application whose import path and args are unchanged gets a lightweight update (replica
counts, user_config -> `reconfigure`), applications that are new are built, those left out are deleted. The
Serve REST API (`PUT /api/serve/applications/`) needs Ray's dashboard; this calls the same controller method from
the driver, as Ray's own `serve run <config>` does, so a local cluster needs no dashboard. The Ray internals used
(`ray.serve._private.api.serve_start`, the controller client) are confined to this module.

Call these with a Ray connection (`ray.init(address=...)`) already made.
"""

from __future__ import annotations

from typing import Any


def deploy(config: dict[str, Any]) -> None:
    """Apply a whole Serve config (all applications); returns once the controller has accepted it."""
    from ray.serve._private import api as serve_api
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    client = serve_api.serve_start(
        http_options=schema.http_options.model_dump(),
        proxy_location=schema.proxy_location,
    )
    client.deploy_apps(schema, _blocking=False)


def deployed_config() -> dict[str, Any] | None:
    """The Serve config last applied declaratively (applications in deploy order), or None if Serve is not running
    or nothing was deployed declaratively."""
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return None
    details = client.get_serve_details()
    apps = [a.get("deployed_app_config") for a in (details.get("applications") or {}).values()]
    apps = [a for a in apps if a]
    if not apps:
        return None
    http = details.get("http_options") or {}
    return {
        "proxy_location": details.get("proxy_location") or "EveryNode",
        "http_options": {"host": http.get("host"), "port": http.get("port")},
        "applications": apps,
    }


def app_statuses() -> dict[str, tuple[str, dict[str, str]]]:
    """application -> (status, {deployment: status}) of every running Serve application."""
    from ray import serve

    def value(x: Any) -> str:
        return str(getattr(x, "value", x))

    status = serve.status()
    return {
        name: (value(app.status), {d: value(info.status) for d, info in app.deployments.items()})
        for name, app in status.applications.items()
    }
