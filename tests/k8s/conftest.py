"""Session-scoped real Kubernetes 1.20 control plane (etcd + kube-apiserver + kube-controller-manager).

Binaries come from ``scripts/k8s_testenv.sh``; if they are missing the tests FAIL (never skip) with that hint.
Fixtures:
  cluster  -- the running :class:`tests.k8s.cluster.Cluster`: the stand-in CRDs (tests/k8s/crds/*.yaml) are
              registered and a Ready GPU node ``gpu-node-1`` exists (GPU-operator labels, 4 x nvidia.com/gpu).
  kubelet  -- the same cluster with the kubelet stand-in running for the test (pods become Ready every 0.5 s).
  namespace -- a fresh namespace for the test (deleted afterwards).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.k8s.cluster import Cluster, MissingBinaries, find_binaries

CRD_DIR = Path(__file__).parent / "crds"
GPU_NODE = "gpu-node-1"
GPU_NODE_LABELS = {
    "nvidia.com/gpu.present": "true",
    "nvidia.com/gpu.product": "NVIDIA-L4",
    "nvidia.com/gpu.count": "4",
    "nvidia.com/gpu.memory": "23034",
    "node.kubernetes.io/instance-type": "g6.12xlarge",
}


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    try:
        find_binaries()
    except MissingBinaries as exc:
        pytest.fail(str(exc), pytrace=False)
    c = Cluster(tmp_path_factory.mktemp("k8s"))
    c.start()
    try:
        for crd in sorted(CRD_DIR.glob("*.yaml")):
            c.apply(crd.read_text())
        c.kubectl("wait", "--for", "condition=established", "--timeout=60s", "crd", "--all")
        c.create_ready_node(GPU_NODE, GPU_NODE_LABELS, gpus=4)
        yield c
    finally:
        c.stop()


@pytest.fixture
def kubelet(cluster: Cluster) -> Iterator[Cluster]:
    with cluster.kubelet():
        yield cluster


_ns_counter = itertools.count(1)


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    slug = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower())
    name = f"t{next(_ns_counter)}-{slug}"[:50].strip("-")
    cluster.kubectl("create", "namespace", name)
    yield name
    # no kubelet confirms graceful pod deletion: force it, then let the namespace controller finish
    cluster.kubectl("delete", "pods", "--all", "-n", name, "--grace-period=0", "--force", "--wait=false", check=False)
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
