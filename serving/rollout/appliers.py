"""Appliers: where a rollout's Serve config goes. One interface, two homes:

- `LocalServeApplier`: the Ray cluster this process is connected to (Serve's declarative `apply_config`, the path
  `serving up` uses);
- `KubernetesApplier`: a KubeRay RayService, whose `spec.serveConfigV2` is patched with the kubernetes client
  (optimistic concurrency: the patch carries the resourceVersion it was computed from and is recomputed on a 409
  conflict); KubeRay applies the new Serve config to the running Ray cluster.

The controller only calls `update(change)` and `app_statuses()`; it does not know which applier it drives.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import yaml

logger = logging.getLogger("serving.rollout.applier")

ServeConfig = dict[str, Any]
Change = Callable[[ServeConfig], ServeConfig]


class ApplierError(RuntimeError):
    """The Serve config could not be read or written."""


class Applier(Protocol):
    """Reads and changes the Serve config of the running platform."""

    def read(self) -> ServeConfig:
        """The Serve config as deployed now."""
        ...

    def update(self, change: Change) -> ServeConfig:
        """Apply `change(current)`; `change` may be called again on a concurrent update. Returns what was written."""
        ...

    def app_statuses(self) -> dict[str, str]:
        """Serve application -> status (RUNNING, DEPLOYING, DEPLOY_FAILED, UNHEALTHY, ...) as the platform reports."""
        ...


class LocalServeApplier:
    """The Serve applications of the Ray cluster this process is connected to (`ray.init(address=...)`)."""

    def read(self) -> ServeConfig:
        from serving import serve_deploy

        config = serve_deploy.deployed_config()
        if config is None:
            raise ApplierError("no Serve config is deployed on this Ray cluster (start the platform with `serving up`)")
        return config

    def update(self, change: Change) -> ServeConfig:
        from serving import serve_deploy

        new = change(self.read())
        serve_deploy.deploy(new)
        return new

    def app_statuses(self) -> dict[str, str]:
        from serving import serve_deploy

        return {name: status for name, (status, _) in serve_deploy.app_statuses().items()}


class KubernetesApplier:
    """A KubeRay RayService's `spec.serveConfigV2`, through the Kubernetes API."""

    GROUP, VERSION, PLURAL = "ray.io", "v1", "rayservices"

    def __init__(self, name: str, namespace: str, api_client: Any = None, max_conflicts: int = 10):
        from kubernetes import client

        self.name, self.namespace = name, namespace
        self.api = client.CustomObjectsApi(api_client or _default_api_client())
        self.max_conflicts = max_conflicts
        self.conflicts = 0  # 409s met so far (for tests and logs)

    def _get(self) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api.get_namespaced_custom_object(self.GROUP, self.VERSION, self.namespace, self.PLURAL,
                                                         self.name)
        except ApiException as exc:
            raise ApplierError(f"cannot read RayService {self.namespace}/{self.name}: {exc.status} {exc.reason}") \
                from None

    def read(self) -> ServeConfig:
        text = (self._get().get("spec") or {}).get("serveConfigV2") or ""
        return yaml.safe_load(text) or {}

    def update(self, change: Change) -> ServeConfig:
        from kubernetes.client.exceptions import ApiException

        for attempt in range(self.max_conflicts + 1):
            obj = self._get()
            current = yaml.safe_load((obj.get("spec") or {}).get("serveConfigV2") or "") or {}
            new = change(current)
            body = {
                "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                "spec": {"serveConfigV2": yaml.safe_dump(new, sort_keys=False)},
            }
            try:
                self.api.patch_namespaced_custom_object(self.GROUP, self.VERSION, self.namespace, self.PLURAL,
                                                        self.name, body)
                return new
            except ApiException as exc:
                if exc.status == 409:
                    self.conflicts += 1
                    logger.info("RayService %s/%s changed meanwhile (409); recomputing (attempt %d)",
                                self.namespace, self.name, attempt + 1)
                    time.sleep(min(0.05 * 2**attempt, 1.0))
                    continue
                raise ApplierError(
                    f"cannot patch RayService {self.namespace}/{self.name}: {exc.status} {exc.reason}"
                ) from None
        raise ApplierError(f"RayService {self.namespace}/{self.name}: still conflicting after "
                           f"{self.max_conflicts} retries")

    def app_statuses(self) -> dict[str, str]:
        """From KubeRay's status: the active Ray cluster's Serve applications (the pending one's during a
        zero-downtime cluster upgrade count as not RUNNING yet)."""
        status = self._get().get("status") or {}
        active = (status.get("activeServiceStatus") or {}).get("applicationStatuses") or {}
        return {name: str((app or {}).get("status") or "UNKNOWN") for name, app in active.items()}


def _default_api_client() -> Any:
    """In a pod: the ServiceAccount; elsewhere: $KUBECONFIG / ~/.kube/config."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()
