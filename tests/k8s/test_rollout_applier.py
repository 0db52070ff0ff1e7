"""The rollout controller's Kubernetes applier against the real API server: it reads and patches the release's
RayService as the controller's own ServiceAccount (the chart's Role), recomputes on 409 conflicts, reads KubeRay's
status, and is refused everything else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from serving.config import EngineConfig
from serving.rollout import plan
from serving.rollout.appliers import ApplierError, KubernetesApplier
from tests.k8s.cluster import Cluster
from tests.k8s.test_helm_install import RELEASE, install, manifest, names, provision_volumes

pytestmark = pytest.mark.k8s


def api_client(cluster: Cluster, token: str) -> Any:
    from kubernetes import client

    cfg = client.Configuration()
    cfg.host = cluster.server
    cfg.ssl_ca_cert = str(Path(cluster.pki) / "ca.crt")
    cfg.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(cfg)


@pytest.fixture
def release(kubelet: Cluster, namespace: str):
    provision_volumes(kubelet)
    install(kubelet, namespace, "-f", str(Path(__file__).parents[2] / "helm/serving/values-llama-8b-awq.yaml"))
    docs = manifest(kubelet, namespace)
    [sa], [rs] = names(docs, "ServiceAccount"), names(docs, "RayService")
    token = kubelet.service_account_token(namespace, sa)
    yield namespace, rs, api_client(kubelet, token)
    kubelet.helm("uninstall", RELEASE, "-n", namespace, check=False)


def stored_serve_config(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    rs = cluster.get(f"/apis/ray.io/v1/namespaces/{ns}/rayservices/{name}")
    return yaml.safe_load(rs["spec"]["serveConfigV2"])


def test_patch_as_the_controller_service_account(kubelet: Cluster, release) -> None:
    ns, rs, client = release
    applier = KubernetesApplier(rs, ns, client, base_configmap=f"{RELEASE}-serve-config")
    assert "serveConfigV2" not in kubelet.get(f"/apis/ray.io/v1/namespaces/{ns}/rayservices/{rs}")["spec"]
    current = applier.read()  # the first read writes the chart's Serve config (the controller owns the field)
    assert stored_serve_config(kubelet, ns, rs) == current and applier.rebases == 1
    platform = plan.base_platform(current)  # the chart's platform config, as the controller sees it
    group = next(iter(platform.model_groups))
    spec = EngineConfig(model="hf:hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4", quantization="awq_marlin")
    applier.update(lambda cfg: plan.add_engine(cfg, group, "llama-v2", spec))
    stored = stored_serve_config(kubelet, ns, rs)
    assert "serving-engine-llama-v2" in [a["name"] for a in stored["applications"]]
    assert plan.members(stored, group)["llama-v2"] == 0.0
    # the gateway app's args (its code version) did not change: KubeRay applies this as a lightweight update
    assert plan.gateway_app(stored)["args"] == plan.gateway_app(current)["args"]
    applier.update(lambda cfg: plan.set_split(cfg, group, {"llama-v2": 5.0, next(iter(platform.engines)): 95.0},
                                              sticky=True))
    assert plan.members(stored_serve_config(kubelet, ns, rs), group)["llama-v2"] == 5.0


def test_conflicting_write_is_recomputed_not_lost(kubelet: Cluster, release) -> None:
    ns, rs, client = release
    applier = KubernetesApplier(rs, ns, client, base_configmap=f"{RELEASE}-serve-config")
    applier.read()
    calls = []

    def change(cfg: dict[str, Any]) -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 1:  # someone else (a helm upgrade, another controller) writes in between
            other = {**cfg, "applications": [*cfg["applications"], {"name": "concurrent", "import_path": "x:y"}]}
            kubelet.api("PATCH", f"/apis/ray.io/v1/namespaces/{ns}/rayservices/{rs}",
                        {"spec": {"serveConfigV2": yaml.safe_dump(other)}},
                        content_type="application/merge-patch+json")
        return {**cfg, "proxy_location": "HeadOnly"}

    applier.update(change)
    assert applier.conflicts == 1 and len(calls) == 2
    stored = stored_serve_config(kubelet, ns, rs)
    assert stored["proxy_location"] == "HeadOnly"  # ours
    assert "concurrent" in [a["name"] for a in stored["applications"]]  # theirs, kept


def test_status_from_kuberay(kubelet: Cluster, release) -> None:
    ns, rs, client = release
    applier = KubernetesApplier(rs, ns, client)
    assert applier.app_statuses() == {}
    status = {"status": {"serviceStatus": "Running", "activeServiceStatus": {"applicationStatuses": {
        "serving": {"status": "RUNNING"}, "serving-engine-llama-v2": {"status": "DEPLOYING"}}}}}
    kubelet.api("PATCH", f"/apis/ray.io/v1/namespaces/{ns}/rayservices/{rs}/status", status,
                content_type="application/merge-patch+json")
    assert applier.app_statuses() == {"serving": "RUNNING", "serving-engine-llama-v2": "DEPLOYING"}


def test_other_rayservices_are_forbidden(kubelet: Cluster, release) -> None:
    ns, _, client = release
    kubelet.apply("apiVersion: ray.io/v1\nkind: RayService\nmetadata: {name: other}\n"
                  "spec: {serveConfigV2: 'applications: []'}\n", namespace=ns)
    with pytest.raises(ApplierError, match="403"):
        KubernetesApplier("other", ns, client).read()
    with pytest.raises(ApplierError, match="403"):
        KubernetesApplier("other", ns, client).update(lambda cfg: cfg)
