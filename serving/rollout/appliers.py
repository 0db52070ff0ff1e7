"""Appliers: where a rollout's Serve config goes. One interface, two homes:

- `LocalServeApplier`: the Ray cluster this process is connected to (Serve's declarative `apply_config`, the path
  `serving up` uses);
- `KubernetesApplier`: a KubeRay RayService, whose `spec.serveConfigV2` is patched with the kubernetes client
  (optimistic concurrency: the patch carries the resourceVersion it was computed from and is recomputed on a 409
  conflict); KubeRay applies the new Serve config to the running Ray cluster. With a base ConfigMap (the Helm
  chart's), the controller owns that field: it writes the chart's Serve config when the field is empty and, when the
  ConfigMap changes (`helm upgrade` / `helm rollback`), rebases the live config on it, keeping the rollouts' state
  (`plan.rebase`). Helm does not render the field, so no upgrade, rollback or GitOps sync can undo a rollout.

The controller only calls `update(change)` and `app_statuses()`; it does not know which applier it drives.
"""

from __future__ import annotations

import hashlib
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
        from serving.deploy import ray_serve

        config = ray_serve.deployed_config()
        if config is None:
            raise ApplierError("no Serve config is deployed on this Ray cluster (start the platform with `serving up`)")
        return config

    def update(self, change: Change) -> ServeConfig:
        from serving.deploy import ray_serve

        new = change(self.read())
        ray_serve.deploy(new)
        return new

    def app_statuses(self) -> dict[str, str]:
        from serving.deploy import ray_serve

        return {name: status for name, (status, _) in ray_serve.app_statuses().items()}


class KubernetesApplier:
    """A KubeRay RayService's `spec.serveConfigV2`, through the Kubernetes API."""

    GROUP, VERSION, PLURAL = "ray.io", "v1", "rayservices"
    BASE_KEY = "serveConfigV2.yaml"  # the base ConfigMap's data key
    BASE_ANNOTATION = "serving.dev/serve-config-base"  # digest of the base the live config was built from

    def __init__(self, name: str, namespace: str, api_client: Any = None, max_conflicts: int = 10,
                 base_configmap: str | None = None):
        from kubernetes import client

        self.name, self.namespace = name, namespace
        api_client = api_client or _default_api_client()
        self.api = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.base_configmap = base_configmap
        self.max_conflicts = max_conflicts
        self.conflicts = 0  # 409s met so far (for tests and logs)
        self.rebases = 0  # base configs written (first deployment or a changed ConfigMap)

    def _base(self) -> tuple[ServeConfig, str]:
        from kubernetes.client.exceptions import ApiException

        try:
            cm = self.core.read_namespaced_config_map(str(self.base_configmap), self.namespace)
        except ApiException as exc:
            raise ApplierError(f"cannot read ConfigMap {self.namespace}/{self.base_configmap} (the chart's Serve "
                               f"config): {exc.status} {exc.reason}") from None
        text = (cm.data or {}).get(self.BASE_KEY) or ""
        base = yaml.safe_load(text) if text else None
        if not isinstance(base, dict) or not base.get("applications"):
            raise ApplierError(f"ConfigMap {self.namespace}/{self.base_configmap} has no Serve config in "
                               f"data.{self.BASE_KEY}")
        return base, hashlib.sha256(text.encode()).hexdigest()[:16]

    def sync_base(self) -> bool:
        """Write the base ConfigMap's Serve config into the RayService if it has none yet or the base changed
        since it was last written (rebased, keeping the rollouts' state). True if it wrote."""
        from serving.rollout import plan

        if not self.base_configmap:
            return False
        for attempt in range(self.max_conflicts + 1):
            obj = self._get()
            live_text = (obj.get("spec") or {}).get("serveConfigV2") or ""
            applied = ((obj.get("metadata") or {}).get("annotations") or {}).get(self.BASE_ANNOTATION)
            base, digest = self._base()
            if live_text.strip() and applied == digest:
                return False
            new = plan.rebase(yaml.safe_load(live_text), base) if live_text.strip() else base
            if self._patch(obj, new, {self.BASE_ANNOTATION: digest}, attempt):
                self.rebases += 1
                logger.info("RayService %s/%s: Serve config %s from ConfigMap %s (base %s)", self.namespace,
                            self.name, "rebased" if live_text.strip() else "written", self.base_configmap, digest)
                return True
        raise ApplierError(f"RayService {self.namespace}/{self.name}: still conflicting after "
                           f"{self.max_conflicts} retries")

    def _patch(self, obj: dict[str, Any], new: ServeConfig, annotations: dict[str, str] | None,
               attempt: int) -> bool:
        """Patch serveConfigV2 at `obj`'s resourceVersion; False on a 409 (recompute and retry)."""
        from kubernetes.client.exceptions import ApiException

        meta: dict[str, Any] = {"resourceVersion": obj["metadata"]["resourceVersion"]}
        if annotations:
            meta["annotations"] = annotations
        body = {"metadata": meta, "spec": {"serveConfigV2": yaml.safe_dump(new, sort_keys=False)}}
        try:
            self.api.patch_namespaced_custom_object(self.GROUP, self.VERSION, self.namespace, self.PLURAL,
                                                    self.name, body)
            return True
        except ApiException as exc:
            if exc.status == 409:
                self.conflicts += 1
                logger.info("RayService %s/%s changed meanwhile (409); recomputing (attempt %d)",
                            self.namespace, self.name, attempt + 1)
                time.sleep(min(0.05 * 2**attempt, 1.0))
                return False
            raise ApplierError(
                f"cannot patch RayService {self.namespace}/{self.name}: {exc.status} {exc.reason}"
            ) from None

    def _get(self) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api.get_namespaced_custom_object(  # type: ignore[return-value]
                self.GROUP, self.VERSION, self.namespace, self.PLURAL, self.name)
        except ApiException as exc:
            raise ApplierError(f"cannot read RayService {self.namespace}/{self.name}: {exc.status} {exc.reason}") \
                from None

    def read(self) -> ServeConfig:
        """The live Serve config (first brought up to date with the base ConfigMap, when there is one)."""
        self.sync_base()
        text = (self._get().get("spec") or {}).get("serveConfigV2") or ""
        return yaml.safe_load(text) or {}

    def update(self, change: Change) -> ServeConfig:
        for attempt in range(self.max_conflicts + 1):
            obj = self._get()
            current = yaml.safe_load((obj.get("spec") or {}).get("serveConfigV2") or "") or {}
            new = change(current)
            if self._patch(obj, new, None, attempt):
                return new
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
