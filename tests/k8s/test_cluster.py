"""Smoke tests proving the Kubernetes test environment is a real control plane, not a mock."""

from __future__ import annotations

import json
import time

import pytest

from tests.k8s.cluster import Cluster, KubeError, pod_is_ready, wait_for
from tests.k8s.conftest import GPU_NODE

pytestmark = pytest.mark.k8s


def deployment_yaml(name: str, replicas: int, version: str) -> str:
    return f"""
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}, version: {version}}}
  template:
    metadata:
      labels: {{app: {name}, version: {version}}}
    spec:
      nodeSelector: {{nvidia.com/gpu.present: "true"}}
      containers:
        - name: server
          image: example.invalid/server:{version}
          ports: [{{containerPort: 8000, name: http}}]
"""


def test_readyz_and_version(cluster: Cluster) -> None:
    assert cluster.api("GET", "/readyz") == "ok"
    assert cluster.api("GET", "/version")["gitVersion"] == "v1.20.2"
    out = cluster.kubectl("get", "--raw", "/readyz?verbose").stdout
    assert "readyz check passed" in out


def test_unauthenticated_is_rejected(cluster: Cluster) -> None:
    with pytest.raises(KubeError) as exc:
        cluster.api("GET", "/api/v1/namespaces", token="wrong-token")
    assert exc.value.status == 401


def test_gpu_node_is_ready(cluster: Cluster) -> None:
    node = cluster.kubectl_json("get", "node", GPU_NODE)
    assert node["metadata"]["labels"]["nvidia.com/gpu.present"] == "true"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "4"
    assert "Ready" in cluster.kubectl("get", "nodes").stdout


def test_namespace_lifecycle(cluster: Cluster) -> None:
    cluster.kubectl("create", "namespace", "smoke-ns")
    cluster.kubectl("create", "configmap", "cm", "-n", "smoke-ns", "--from-literal=a=b")
    # the serviceaccount controller (controller-manager) populates every new namespace
    wait_for(lambda: cluster.get("/api/v1/namespaces/smoke-ns/serviceaccounts/default", missing_ok=True), 30)
    cluster.kubectl("delete", "namespace", "smoke-ns", "--wait=false")
    # the namespace controller empties and finalizes it
    wait_for(lambda: cluster.get("/api/v1/namespaces/smoke-ns", missing_ok=True) is None, 60, what="ns deletion")


def test_rayservice_crd(cluster: Cluster, namespace: str) -> None:
    cluster.apply(
        """
apiVersion: ray.io/v1
kind: RayService
metadata:
  name: llm
spec:
  serveConfigV2: |
    applications:
      - name: llm
        import_path: serving.app:build
  rayClusterConfig:
    headGroupSpec:
      rayStartParams: {}
      template:
        spec:
          containers: [{name: ray-head, image: rayproject/ray:2.60.0}]
""",
        namespace=namespace,
    )
    out = cluster.kubectl("get", "rayservices", "-n", namespace).stdout
    assert "llm" in out
    obj = cluster.kubectl_json("get", "rayservice", "llm", "-n", namespace)
    assert obj["apiVersion"] == "ray.io/v1"
    assert "applications" in obj["spec"]["serveConfigV2"]
    # status is a subresource: a normal update ignores it, /status sets it
    cluster.kubectl("patch", "rayservice", "llm", "-n", namespace, "--type=merge", "--subresource=status",
                    "-p", json.dumps({"status": {"serviceStatus": "Running"}}))
    assert "Running" in cluster.kubectl("get", "rayservice", "llm", "-n", namespace).stdout
    # the schema is structural: wrong types are rejected, unknown fields pruned (as with KubeRay's real CRD)
    bad = cluster.kubectl("apply", "-n", namespace, "-f", "-", check=False, input="""
apiVersion: ray.io/v1
kind: RayService
metadata: {name: bad}
spec:
  rayClusterConfig:
    headGroupSpec:
      rayStartParams: {num-cpus: 0}
      template: {spec: {containers: [{name: c, image: x}]}}
""")
    assert bad.returncode != 0 and "rayStartParams.num-cpus" in bad.stderr, bad.stderr
    cluster.kubectl("patch", "rayservice", "llm", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"rayClusterConfig": {"headGroupSpec": {"rayStartParms": {"a": "b"}}}}}))
    stored = cluster.kubectl_json("get", "rayservice", "llm", "-n", namespace)
    head = stored["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert "rayStartParms" not in head and "template" in head
    # the monitoring CRDs are registered too
    for kind in ("servicemonitors", "podmonitors", "prometheusrules"):
        cluster.kubectl("get", kind, "-n", namespace)


def test_deployment_pods_become_ready(cluster: Cluster, namespace: str) -> None:
    cluster.apply(deployment_yaml("web", 3, "v1"), namespace=namespace)
    # the deployment + replicaset controllers create the pods; with no kubelet they stay Pending
    pods = wait_for(lambda: len(p := cluster.get(f"/api/v1/namespaces/{namespace}/pods")["items"]) == 3 and p, 60,
                    what="3 pods")
    assert all(p["status"].get("phase") == "Pending" for p in pods)
    dep = cluster.kubectl_json("get", "deployment", "web", "-n", namespace)
    assert not dep["status"].get("availableReplicas")

    marked = cluster.mark_pods_ready(namespace, "app=web")
    assert len(marked) == 3
    pods = cluster.get(f"/api/v1/namespaces/{namespace}/pods")["items"]
    assert all(pod_is_ready(p) and p["spec"]["nodeName"] == GPU_NODE for p in pods)

    def available() -> bool:
        st = cluster.kubectl_json("get", "deployment", "web", "-n", namespace)["status"]
        return st.get("availableReplicas") == 3 and st.get("readyReplicas") == 3
    wait_for(available, 60, what="deployment available")
    cluster.kubectl("rollout", "status", "deployment/web", "-n", namespace, "--timeout=30s")


def test_unschedulable_pod_stays_pending(cluster: Cluster, namespace: str) -> None:
    cluster.apply(deployment_yaml("web", 1, "v1").replace('nvidia.com/gpu.present: "true"', "pool: nonexistent"),
                  namespace=namespace)
    wait_for(lambda: cluster.get(f"/api/v1/namespaces/{namespace}/pods")["items"], 60, what="pod")
    assert cluster.mark_pods_ready(namespace) == []


def test_gpu_requests_and_taints_are_scheduled(cluster: Cluster, namespace: str) -> None:
    cluster.create_ready_node(f"gpu-{namespace}", {"pool": namespace, "nvidia.com/gpu.present": "true"}, gpus=4,
                              taints=[{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}])
    base = deployment_yaml("llm", 3, "v1").replace('nvidia.com/gpu.present: "true"', f"pool: {namespace}")
    gpu = base.replace("ports: [", 'resources: {limits: {nvidia.com/gpu: "2"}}\n          ports: [')
    toleration = "      tolerations: [{key: nvidia.com/gpu, operator: Exists}]\n"
    tolerating = gpu.replace("      containers:", toleration + "      containers:")
    pod = f"""
apiVersion: v1
kind: Pod
metadata:
  name: no-toleration
spec:
  nodeSelector: {{pool: {namespace}}}
  containers: [{{name: c, image: x, resources: {{limits: {{nvidia.com/gpu: "1"}}}}}}]
"""
    cluster.apply(pod, namespace=namespace)
    assert cluster.mark_pods_ready(namespace) == []  # the node's taint is not tolerated: stays Pending
    cluster.apply(tolerating, namespace=namespace)

    def ready_count() -> int:
        cluster.mark_pods_ready(namespace)
        return sum(pod_is_ready(p) for p in cluster.get(f"/api/v1/namespaces/{namespace}/pods")["items"])
    wait_for(lambda: ready_count() == 2, 60, what="2 ready pods")
    time.sleep(1)
    assert ready_count() == 2  # 3 x 2 GPUs do not fit on 4 GPUs: the third pod stays Pending

    def status() -> bool:
        st = cluster.kubectl_json("get", "deployment", "llm", "-n", namespace)["status"]
        return st.get("availableReplicas") == 2 and st.get("unavailableReplicas") == 1
    wait_for(status, 30, what="deployment 2 available / 1 unavailable")
    assert cluster.get(f"/api/v1/namespaces/{namespace}/pods/no-toleration")["status"]["phase"] == "Pending"


def test_job_pods_can_finish(cluster: Cluster, namespace: str) -> None:
    cluster.apply(
        """
apiVersion: batch/v1
kind: Job
metadata:
  name: smoke
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: busybox}]
""",
        namespace=namespace,
    )
    wait_for(lambda: cluster.get(f"/api/v1/namespaces/{namespace}/pods")["items"], 60, what="job pod")
    assert len(cluster.finish_pods(namespace, "job-name=smoke")) == 1
    cluster.kubectl("wait", "--for=condition=complete", "job/smoke", "-n", namespace, "--timeout=60s")


def test_service_endpoints_follow_ready_pods(kubelet: Cluster, namespace: str) -> None:
    cluster = kubelet
    cluster.apply(deployment_yaml("blue", 2, "blue") + "---\n" + deployment_yaml("green", 2, "green"),
                  namespace=namespace)
    cluster.apply(
        """
apiVersion: v1
kind: Service
metadata:
  name: llm
spec:
  selector: {app: blue}
  ports: [{port: 80, targetPort: http, name: http}]
""",
        namespace=namespace,
    )

    def endpoint_ips() -> set[str]:
        ep = cluster.get(f"/api/v1/namespaces/{namespace}/endpoints/llm", missing_ok=True) or {}
        return {a["ip"] for s in ep.get("subsets") or [] for a in s.get("addresses") or []}

    def pod_ips(app: str) -> set[str]:
        pods = cluster.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector=f"app={app}")["items"]
        return {p["status"]["podIP"] for p in pods if pod_is_ready(p)}

    wait_for(lambda: len(pod_ips("blue")) == 2 and len(pod_ips("green")) == 2, 60, what="pods ready")
    blue, green = pod_ips("blue"), pod_ips("green")
    wait_for(lambda: endpoint_ips() == blue, 60, what="endpoints -> blue")
    # switch the Service selector: the endpoints controller moves traffic to green
    cluster.kubectl("patch", "service", "llm", "-n", namespace, "--type=merge",
                    "-p", '{"spec": {"selector": {"app": "green"}}}')
    wait_for(lambda: endpoint_ips() == green, 60, what="endpoints -> green")
    # scaling green down removes its pod from the endpoints (terminating pods are finalized by the stand-in)
    cluster.kubectl("scale", "deployment/green", "-n", namespace, "--replicas=1")
    wait_for(lambda: len(endpoint_ips()) == 1 and endpoint_ips() <= green, 60, what="endpoints shrink")
    assert not cluster.kubelet_errors


def test_rbac_is_enforced(cluster: Cluster, namespace: str) -> None:
    cluster.apply(
        f"""
apiVersion: v1
kind: ServiceAccount
metadata:
  name: patcher
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: rayservice-patcher
rules:
  - apiGroups: [ray.io]
    resources: [rayservices]
    verbs: [get, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: patcher
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: rayservice-patcher}}
subjects:
  - {{kind: ServiceAccount, name: patcher, namespace: {namespace}}}
---
apiVersion: ray.io/v1
kind: RayService
metadata:
  name: llm
spec: {{serveConfigV2: "applications: []"}}
---
apiVersion: v1
kind: Secret
metadata:
  name: hf-token
stringData: {{token: secret}}
""",
        namespace=namespace,
    )
    sa = f"system:serviceaccount:{namespace}:patcher"
    sa_groups = ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"]
    # SubjectAccessReview (what the authorizer decides)
    assert cluster.can_i("patch", "rayservices", group="ray.io", user=sa, groups=sa_groups, namespace=namespace)
    assert cluster.can_i("get", "rayservices", group="ray.io", user=sa, groups=sa_groups, namespace=namespace)
    assert not cluster.can_i("delete", "rayservices", group="ray.io", user=sa, groups=sa_groups, namespace=namespace)
    assert not cluster.can_i("get", "secrets", user=sa, groups=sa_groups, namespace=namespace)
    assert not cluster.can_i("patch", "rayservices", group="ray.io", user=sa, groups=sa_groups, namespace="default")
    # kubectl auth can-i with impersonation
    def can(*args: str) -> str:
        return cluster.kubectl("auth", "can-i", *args, "-n", namespace, "--as", sa, check=False).stdout.strip()
    assert can("patch", "rayservices.ray.io") == "yes"
    assert can("delete", "rayservices.ray.io") == "no"
    assert can("get", "secrets") == "no"
    # real requests as the service account (impersonated): patch works, delete and reading secrets are forbidden
    as_sa = ("-n", namespace, "--as", sa, "--as-group", "system:serviceaccounts")
    cluster.kubectl("patch", "rayservice", "llm", *as_sa, "--type=merge", "-p", '{"metadata":{"labels":{"x":"y"}}}')
    assert cluster.kubectl_json("get", "rayservice", "llm", "-n", namespace)["metadata"]["labels"] == {"x": "y"}
    for args in (("delete", "rayservice", "llm"), ("get", "secret", "hf-token")):
        with pytest.raises(RuntimeError) as exc:
            cluster.kubectl(*args, *as_sa)
        assert "forbidden" in str(exc.value).lower()
    assert cluster.kubectl_json("get", "rayservice", "llm", "-n", namespace)  # still there
