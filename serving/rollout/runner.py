"""The rollout controller as a process: its applier, registry, metrics source, controller and /healthz + /webhook
server wired from options, the environment and the deployed platform config, run until SIGTERM/Ctrl-C.

`serving rollout-controller` parses its flags into `ControllerOptions` and calls `build()` then `run()`; the chart
runs it as a Deployment (the `SERVING_*` variables below are what the chart sets), locally it is a process.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass

from serving.config import RolloutConfig
from serving.rollout import plan
from serving.rollout.analysis import GatewayScrape, MetricsSource, PrometheusAPI, ReplicaScrape
from serving.rollout.appliers import Applier, KubernetesApplier, LocalServeApplier
from serving.rollout.controller import RolloutController
from serving.rollout.registry import Registry
from serving.rollout.server import ControllerServer

Say = Callable[[str], None]


@dataclass(frozen=True)
class ControllerOptions:
    """What the command line may set; None falls back to the environment, then to the platform's rollout config."""

    rayservice: str | None = None  # drive this KubeRay RayService ($SERVING_RAYSERVICE); else the local Ray cluster
    namespace: str | None = None  # the RayService's namespace ($SERVING_NAMESPACE, default "default")
    serve_configmap: str | None = None  # base of the serveConfigV2 the controller owns ($SERVING_SERVE_CONFIGMAP)
    ray_address: str = "auto"  # local mode: the Ray cluster
    registry: str | None = None  # MLflow URI (rollout.registry_uri, $MLFLOW_TRACKING_URI)
    gateway_url: str | None = None  # gateway base URL for evals and metrics
    port: int | None = None  # /healthz, /metrics and /webhook ($SERVING_ROLLOUT_HEALTH_PORT, rollout.webhook_port)
    drain_s: float = 10.0  # wait before removing an engine out of traffic


def _applier(options: ControllerOptions) -> tuple[Applier, str]:
    """The applier and a description of what it drives."""
    rayservice = options.rayservice or os.environ.get("SERVING_RAYSERVICE")
    if rayservice:
        namespace = options.namespace or os.environ.get("SERVING_NAMESPACE") or "default"
        base_cm = options.serve_configmap or os.environ.get("SERVING_SERVE_CONFIGMAP") or None
        where = f"RayService {namespace}/{rayservice}"
        if base_cm:
            where += f" (Serve config base: ConfigMap {base_cm})"
        return KubernetesApplier(rayservice, namespace, base_configmap=base_cm), where
    import ray

    ray.init(address=options.ray_address, logging_level=logging.ERROR, log_to_driver=False)
    return LocalServeApplier(), f"the Ray cluster at {options.ray_address}"


def _metrics(rollout: RolloutConfig, gateway_url: str) -> tuple[MetricsSource, str]:
    """Where the canary's per-engine metrics come from: Prometheus, every gateway replica, or the gateway."""
    replicas_url = rollout.gateway_metrics_url or os.environ.get("SERVING_GATEWAY_METRICS_URL")
    if rollout.prometheus_url:
        return PrometheusAPI(rollout.prometheus_url), f"Prometheus {rollout.prometheus_url}"
    if replicas_url:
        return ReplicaScrape(replicas_url), f"every gateway replica at {replicas_url}"
    return GatewayScrape(gateway_url), f"{gateway_url}/metrics"


@dataclass
class ControllerRun:
    """A wired controller, ready to `run()`."""

    controller: RolloutController
    registry: Registry
    rollout: RolloutConfig
    where: str
    gateway_url: str
    metrics_from: str
    port: int | None  # None: $SERVING_ROLLOUT_HEALTH_PORT, else rollout.webhook_port
    say: Say

    def run(self) -> None:
        """Serve /healthz (and /webhook with a secret) and run the controller until SIGTERM/SIGINT."""
        rollout = self.rollout
        stop, wake = threading.Event(), threading.Event()
        secret = os.environ.get(rollout.webhook_secret_env) if rollout.webhook_secret_env else None
        if rollout.webhook_secret_env and not secret:
            self.say(f"warning: ${rollout.webhook_secret_env} is empty: the webhook is off (polling only)")
        port = self.port or int(os.environ.get("SERVING_ROLLOUT_HEALTH_PORT") or rollout.webhook_port)
        server = ControllerServer(port, secret=secret, wake=wake.set, health=self.controller.health).start()
        def on_signal(*_: object) -> None:
            stop.set()
            wake.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
        self.say(f"rollout controller: {self.where}; registry {self.registry.uri}; gateway {self.gateway_url}; "
                 f"metrics from {self.metrics_from}; managed groups: {', '.join(rollout.models) or 'none'}; /healthz"
                 + (" and /webhook" if secret else "") + f" on :{server.port}; "
                 f"polling every {rollout.poll_interval_s:g} s")
        try:
            self.controller.run(stop, wake)
        finally:
            server.stop()


def build(options: ControllerOptions, *, say: Say = print) -> ControllerRun:
    """Wire the controller: connect the applier, read the deployed platform config, open the registry (raises
    `RegistryError` if there is none), pick the metrics source. Sets up logging for the process."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    applier, where = _applier(options)
    platform = plan.base_platform(applier.read())
    rollout = platform.rollout
    registry = Registry(options.registry or rollout.registry_uri)
    gw = platform.gateway
    host = "127.0.0.1" if gw.host in ("0.0.0.0", "::") else gw.host
    gateway_url = (options.gateway_url or rollout.gateway_url or os.environ.get("SERVING_GATEWAY_URL")
                   or f"http://{host}:{gw.port}{gw.route_prefix.rstrip('/')}")
    metrics, metrics_from = _metrics(rollout, gateway_url)
    api_key = os.environ.get(rollout.gateway_api_key_env) or None
    if platform.policies.auth.enabled and not api_key:
        say(f"warning: the gateway requires API keys and ${rollout.gateway_api_key_env} is empty: evaluations "
            "will be refused (create one: serving keys create --tenant rollout)")
    controller = RolloutController(registry, applier, metrics, gateway_url, drain_s=options.drain_s,
                                   gateway_api_key=api_key)
    return ControllerRun(controller, registry, rollout, where, gateway_url, metrics_from, options.port, say)
