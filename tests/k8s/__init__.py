"""Tests against a real (offline) Kubernetes control plane; see tests/k8s/cluster.py and scripts/k8s_testenv.sh."""
