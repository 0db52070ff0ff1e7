"""The process kubelet stand-in (tests/k8s/podrunner.py): pods of the real API server really run, as processes.

Small and fast: a Deployment of `python3 -m http.server` pods with their own network namespaces and IPs behind a
Service (real endpoints controller), env/volumes/security context seen by the process, probes restarting a
container, kubelet-style errors (CreateContainerConfigError, ErrImagePull), graceful deletion with preStop, and no
process left behind -- neither after deleting a Deployment nor after stopping the stand-in.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.k8s.cluster import Cluster, pod_is_ready, wait_for
from tests.k8s.podrunner import (
    GATEWAY,
    ImageSpec,
    ProcessKubelet,
    expand,
    lookup_image,
    parse_quantity,
    venv_image,
)

pytestmark = pytest.mark.k8s

NODE = "podrunner-node-1"
IMAGE = "example.test/venv:1"
IMAGES = {"example.test/venv": venv_image()}


@pytest.fixture(scope="module")
def podrunner(cluster: Cluster) -> Iterator[ProcessKubelet]:
    with ProcessKubelet(cluster, namespaces=[], nodes=[NODE], images=IMAGES, max_grace=5) as kubelet:
        yield kubelet
    assert not kubelet.pids(), "processes left after stop()"
    assert not [e for e in kubelet.errors if "Traceback" in e], kubelet.errors


@pytest.fixture
def kube(podrunner: ProcessKubelet, namespace: str) -> Iterator[ProcessKubelet]:
    podrunner.add_namespace(namespace)
    yield podrunner
    print(podrunner.dump())  # shown when the test failed


def pods(cluster: Cluster, ns: str, selector: str | None = None) -> list[dict]:
    return cluster.get(f"/api/v1/namespaces/{ns}/pods", **({"labelSelector": selector} if selector else {}))["items"]


def pod(cluster: Cluster, ns: str, name: str) -> dict:
    return cluster.get(f"/api/v1/namespaces/{ns}/pods/{name}")


def wait(kube: ProcessKubelet, fn, timeout: float = 30, what: str = "condition"):
    try:
        return wait_for(fn, timeout, 0.2, what)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{kube.dump()}") from None


def ps(pids: list[int]) -> str:
    return subprocess.run(
        ["ps", "-o", "pid,ppid,stat,args", "-p", ",".join(map(str, pids))], capture_output=True, text=True
    ).stdout


def container_status(p: dict, name: str | None = None) -> dict:
    statuses = p.get("status", {}).get("containerStatuses") or []
    return next((s for s in statuses if name in (None, s["name"])), {})


def web_yaml(name: str, replicas: int = 2, extra_spec: str = "") -> str:
    return f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 2
      {extra_spec}
      containers:
        - name: web
          image: {IMAGE}
          command: ["python3", "-m", "http.server", "8000"]
          ports: [{{name: http, containerPort: 8000}}]
          readinessProbe: {{httpGet: {{path: /, port: http}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  selector: {{app: {name}}}
  ports: [{{name: http, port: 8000, targetPort: http}}]
---
apiVersion: v1
kind: Service
metadata: {{name: {name}-headless}}
spec:
  clusterIP: None
  selector: {{app: {name}}}
  ports: [{{name: http, port: 8000, targetPort: http}}]
"""


# ---- pure helpers ----------------------------------------------------------------------------------------------------
def test_expansion_quantities_and_image_lookup() -> None:
    env = {"A": "x", "B": "y"}
    assert expand("$(A)-$(B)-$(C)-$$(A)-$$-$", env) == "x-y-$(C)-$(A)-$-$"
    assert expand("$(A", env) == "$(A"
    assert parse_quantity("500m") * 1000 == 500 and parse_quantity("2Gi") == 2 * 2**30
    assert parse_quantity("1e3") == 1000 and parse_quantity("1E") == 10**18
    images = {"example.test/venv": ImageSpec(cmd=["a"]), "ghcr.io/org": ImageSpec(cmd=["b"]), "redis": ImageSpec()}
    assert lookup_image(images, "example.test/venv:1.2").cmd == ["a"]
    assert lookup_image(images, "ghcr.io/org/app@sha256:0123").cmd == ["b"]
    assert lookup_image(images, "docker.io/library/redis:7") is images["redis"]
    assert lookup_image(images, "example.test/venvx:1") is None


# ---- on the real API server ------------------------------------------------------------------------------------------
def test_deployment_pods_run_with_own_ips_behind_a_service(cluster: Cluster, kube: ProcessKubelet, namespace: str):
    nobody = (
        "apiVersion: v1\nkind: Service\nmetadata: {name: nobody}\nspec: {selector: {app: none}, ports: [{port: 80}]}"
    )
    cluster.apply(web_yaml("web") + "---\n" + nobody, namespace=namespace)
    ready = kube.wait_ready(namespace, "app=web", 2, timeout=40)
    ips = sorted(p["status"]["podIP"] for p in ready)
    assert len(set(ips)) == 2 and all(ip.startswith("10.244.") for ip in ips), ips
    assert all(p["spec"]["nodeName"] == NODE for p in ready)
    # both listen on 0.0.0.0:8000 in their own netns; the test process reaches each by its IP
    for ip in ips:
        assert urllib.request.urlopen(f"http://{ip}:8000/", timeout=5).status == 200
    # the real endpoints controller lists both (they are Ready); the host-side helper resolves the Service
    ep = wait(
        kube,
        lambda: (
            sorted(
                a["ip"]
                for s in cluster.get(f"/api/v1/namespaces/{namespace}/endpoints/web").get("subsets") or []
                for a in s.get("addresses") or []
            )
            == ips
            or None
        ),
        what="endpoints of both pods",
    )
    assert ep
    url = kube.service_url(namespace, "web", "http")
    assert url.rsplit(":", 1)[0].removeprefix("http://") in ips
    assert urllib.request.urlopen(url, timeout=5).status == 200
    # inside a pod: Service names resolve (ClusterIP: one ready endpoint; headless: all), and are reachable
    name = ready[0]["metadata"]["name"]
    script = (
        "import socket, sys, time, urllib.request as u\n"
        f"ns = {namespace!r}\n"
        "for _ in range(50):  # the hosts file follows the Endpoints within a loop period\n"
        "    if sum(line.split()[1:2] == ['web-headless'] for line in open('/etc/hosts')) == 2:\n"
        "        break\n"
        "    time.sleep(0.2)\n"
        "for n in ('web', f'web.{ns}', f'web.{ns}.svc', f'web.{ns}.svc.cluster.local'):\n"
        "    assert u.urlopen(f'http://{n}:8000/', timeout=5).status == 200, n\n"
        "print(sorted({a[4][0] for a in socket.getaddrinfo('web-headless', 8000, type=socket.SOCK_STREAM)}))\n"
        "print(socket.gethostname())\n"
        "try:  # a ClusterIP Service without endpoints resolves, and connecting is refused at once\n"
        "    socket.create_connection(('nobody', 80), timeout=3)\n"
        "except ConnectionRefusedError:\n"
        "    print('refused')\n"
    )
    out = kube.exec(namespace, name, ["python3", "-c", script])
    assert out.returncode == 0, out.stdout
    lines = out.stdout.splitlines()
    assert lines[0] == str(ips) and lines[1] == name and lines[2] == "refused", out.stdout
    # the API server is reachable from pods like in a cluster: service env, CA and the ServiceAccount token
    api = (
        "import json, os, ssl, urllib.request as u, urllib.error as e\n"
        "d = '/var/run/secrets/kubernetes.io/serviceaccount'\n"
        "ctx = ssl.create_default_context(cafile=d + '/ca.crt')\n"
        "url = 'https://%s:%s/api/v1/namespaces/%s/pods' % (os.environ['KUBERNETES_SERVICE_HOST'],"
        " os.environ['KUBERNETES_SERVICE_PORT'], open(d + '/namespace').read())\n"
        "r = u.Request(url, headers={'Authorization': 'Bearer ' + open(d + '/token').read()})\n"
        "try:\n    u.urlopen(r, context=ctx, timeout=5)\n"
        "except e.HTTPError as x:\n    print(x.code, json.load(x)['message'])\n"
    )
    out = kube.exec(namespace, name, ["python3", "-c", api])
    assert out.returncode == 0, out.stdout
    assert out.stdout.startswith("403 ") and f"system:serviceaccount:{namespace}:default" in out.stdout, out.stdout
    env = kube.exec(namespace, name, ["env"]).stdout
    assert f"KUBERNETES_SERVICE_HOST={GATEWAY}" in env and f"KUBERNETES_SERVICE_PORT={cluster.port}" in env


def test_env_volumes_and_security_context_reach_the_process(
    cluster: Cluster, kube: ProcessKubelet, namespace: str
) -> None:
    cluster.kubectl("create", "secret", "generic", "creds", "-n", namespace, "--from-literal=token=s3cr3t")
    cluster.kubectl(
        "create", "configmap", "conf", "-n", namespace, "--from-literal=app.yaml=answer: 42", "--from-literal=MODE=fast"
    )
    probe = r"""
import grp, json, os, socket
st = os.stat('/work')
try:
    open('/rootfs-write-test', 'w')
    rofs = False
except OSError:
    rofs = True
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups()), "cwd": os.getcwd(),
    "token": os.environ.get("TOKEN"), "pod": os.environ.get("POD_NAME"), "ns": os.environ.get("POD_NS"),
    "ip": os.environ.get("POD_IP"), "cpu": os.environ.get("CPU_LIMIT"), "mem": os.environ.get("MEM_MI"),
    "mode": os.environ.get("CFG_MODE"), "expanded": os.environ.get("GREETING"), "home": os.environ.get("HOME"),
    "file": open('/etc/app/app.yaml').read(), "init": open('/work/from-init').read(),
    "work_gid": st.st_gid, "work_setgid": bool(st.st_mode & 0o2000), "rofs": rofs,
    "hostname": socket.gethostname(), "argv": os.environ.get("ARGV"),
}))
"""
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe", "labels": {"app": "probe"}},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000, "runAsNonRoot": True},
            "initContainers": [
                {
                    "name": "init",
                    "image": IMAGE,
                    "command": ["sh", "-c", "echo hello-from-init > /work/from-init"],
                    "volumeMounts": [{"name": "work", "mountPath": "/work"}],
                }
            ],
            "containers": [
                {
                    "name": "main",
                    "image": IMAGE,
                    "command": ["sh", "-c", 'ARGV="$0 $1" exec python3 -c "$PROBE"', "$(POD_NAME)", "$$(literal)"],
                    "workingDir": "/work",
                    "env": [
                        {"name": "PROBE", "value": probe},
                        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        {"name": "CPU_LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                        {
                            "name": "MEM_MI",
                            "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
                        },
                        {"name": "GREETING", "value": "hi $(POD_NAME) in $(CFG_MODE)"},
                    ],
                    "envFrom": [{"prefix": "CFG_", "configMapRef": {"name": "conf"}}],
                    "resources": {"limits": {"cpu": "1500m", "memory": "256Mi"}},
                    "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False},
                    "volumeMounts": [
                        {"name": "work", "mountPath": "/work"},
                        {"name": "conf", "mountPath": "/etc/app", "readOnly": True},
                    ],
                }
            ],
            "volumes": [
                {"name": "work", "emptyDir": {}},
                {"name": "conf", "configMap": {"name": "conf", "items": [{"key": "app.yaml", "path": "app.yaml"}]}},
            ],
        },
    }
    cluster.apply(json.dumps(manifest), namespace=namespace)
    done = wait(
        kube, lambda: pod(cluster, namespace, "probe")["status"].get("phase") == "Succeeded", 40, "pod probe Succeeded"
    )
    assert done
    p = pod(cluster, namespace, "probe")
    term = container_status(p)["state"]["terminated"]
    assert term["exitCode"] == 0 and term["reason"] == "Completed"
    assert p["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    got = json.loads(kube.logs(namespace, "probe", "main").strip().splitlines()[-1])
    assert got["uid"] == 1000 and got["gid"] == 1000 and 2000 in got["groups"]
    assert got["cwd"] == "/work" and got["home"] == "/"
    assert got["token"] == "s3cr3t" and got["mode"] == "fast" and got["file"] == "answer: 42"
    assert got["pod"] == "probe" and got["ns"] == namespace and got["ip"] == p["status"]["podIP"]
    assert got["cpu"] == "2" and got["mem"] == "256"  # limits.cpu rounds up to whole cores (divisor 1)
    assert got["expanded"] == "hi probe in fast" and got["argv"] == "probe $(literal)"
    assert got["init"] == "hello-from-init\n"
    assert got["work_gid"] == 2000 and got["work_setgid"] and got["rofs"] and got["hostname"] == "probe"
    assert not Path("/rootfs-write-test").exists()


def test_liveness_failure_restarts_the_container(cluster: Cluster, kube: ProcessKubelet, namespace: str) -> None:
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "flaky"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "app",
                    "image": IMAGE,
                    "command": ["sleep", "3600"],  # PID 1 without a SIGTERM handler: SIGKILL after the grace period
                    "livenessProbe": {"tcpSocket": {"port": 9}, "periodSeconds": 1, "failureThreshold": 1},
                    "readinessProbe": {"exec": {"command": ["false"]}, "periodSeconds": 1},
                }
            ],
        },
    }
    cluster.apply(json.dumps(manifest), namespace=namespace)

    def restarted() -> dict | None:
        st = container_status(pod(cluster, namespace, "flaky"))
        return st if st.get("restartCount", 0) >= 2 else None

    st = wait(kube, restarted, 40, "2 restarts of the container")
    assert st["lastState"]["terminated"]["exitCode"] == 137 and not st["ready"]
    assert not pod_is_ready(pod(cluster, namespace, "flaky"))
    assert any("Liveness probe failed" in e for e in kube.events)


def test_kubelet_errors_leave_pods_pending(cluster: Cluster, kube: ProcessKubelet, namespace: str) -> None:
    cluster.kubectl("create", "secret", "generic", "partial", "-n", namespace, "--from-literal=other=x")

    def pod_manifest(name: str, image: str = IMAGE, **spec) -> str:
        container = {"name": "c", "image": image, "command": ["sleep", "3600"], **spec.pop("container", {})}
        return json.dumps(
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {"containers": [container], **spec}}
        )

    env = [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "partial", "key": "wanted"}}}]
    # volumes over /tmp and /work hide those host paths in the container: exec probes must work all the same
    mounts = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "work", "mountPath": "/work"}]
    probe = {"exec": {"command": ["sh", "-c", "test -d /tmp && ! test -e /work/main"]}, "periodSeconds": 1}
    volumes = [{"name": "tmp", "emptyDir": {}}, {"name": "work", "emptyDir": {}}]
    spec = {"container": {"env": env, "volumeMounts": mounts, "readinessProbe": probe}, "volumes": volumes}
    cluster.apply(pod_manifest("missing-key", **spec), namespace=namespace)
    cluster.apply(pod_manifest("no-image", image="example.invalid/nope:1"), namespace=namespace)
    cluster.apply(pod_manifest("root", securityContext={"runAsNonRoot": True}), namespace=namespace)
    cluster.apply(
        pod_manifest("crash", container={"command": ["sh", "-c", "echo crashing; exit 3"]}), namespace=namespace
    )

    def waiting(name: str, *reasons: str):
        st = container_status(pod(cluster, namespace, name)).get("state", {}).get("waiting", {})
        return st if st.get("reason") in reasons else None

    st = wait(kube, lambda: waiting("missing-key", "CreateContainerConfigError"), 30, "CreateContainerConfigError")
    assert f"couldn't find key wanted in Secret {namespace}/partial" in st["message"]
    wait(kube, lambda: waiting("no-image", "ErrImagePull", "ImagePullBackOff"), 30, "ErrImagePull")
    st = wait(kube, lambda: waiting("root", "CreateContainerConfigError"), 30, "runAsNonRoot refused")
    assert "runAsNonRoot" in st["message"]
    st = wait(kube, lambda: waiting("crash", "CrashLoopBackOff"), 30, "CrashLoopBackOff")
    assert "back-off" in st["message"]
    crash = container_status(pod(cluster, namespace, "crash"))
    assert crash["lastState"]["terminated"]["exitCode"] == 3 and crash["restartCount"] >= 1
    assert kube.logs(namespace, "crash").count("crashing") >= 2  # appended across restarts
    for name in ("missing-key", "no-image", "root"):
        p = pod(cluster, namespace, name)
        assert p["status"]["phase"] == "Pending" and not pod_is_ready(p), name
    # the kubelet keeps retrying: once the key exists the container starts
    patch = {"data": {"wanted": base64.b64encode(b"v").decode()}}
    cluster.api(
        "PATCH", f"/api/v1/namespaces/{namespace}/secrets/partial", patch, content_type="application/merge-patch+json"
    )
    wait(kube, lambda: pod_is_ready(pod(cluster, namespace, "missing-key")), 30, "missing-key Ready after the fix")
    assert not kube.errors or not [e for e in kube.errors if namespace in e], kube.errors


def test_deleting_the_deployment_stops_its_processes(cluster: Cluster, kube: ProcessKubelet, namespace: str):
    marker = Path(f"/tmp/podrunner-prestop-{namespace}")
    extra = f"volumes: [{{name: host, hostPath: {{path: {marker}, type: DirectoryOrCreate}}}}]"
    manifest = web_yaml("gone", 2, extra).replace(
        "          readinessProbe: {httpGet: {path: /, port: http}, periodSeconds: 1}",
        "          readinessProbe: {httpGet: {path: /, port: http}, periodSeconds: 1}\n"
        "          volumeMounts: [{name: host, mountPath: /marker}]\n"
        '          lifecycle: {preStop: {exec: {command: ["sh", "-c", "touch /marker/$HOSTNAME"]}}}',
    )
    try:
        cluster.apply(manifest, namespace=namespace)
        ready = kube.wait_ready(namespace, "app=gone", 2, timeout=40)
        names = sorted(p["metadata"]["name"] for p in ready)
        netns = [kube.pod_netns(namespace, n) for n in names]
        pids = [pid for n in names for pid in kube.pod_pids(namespace, n)]
        assert len(pids) >= 4, pids  # per pod: the launcher and the container's PID 1
        cluster.kubectl("delete", "deployment", "gone", "-n", namespace, "--wait=false")
        wait(kube, lambda: not pods(cluster, namespace, "app=gone"), 30, "pods deleted")
        assert sorted(os.listdir(marker)) == names  # preStop ran in each pod before it was killed
        assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()], ps(pids)
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert not any(n in listed for n in netns), listed  # the pods' network namespaces are gone too
    finally:
        subprocess.run(["rm", "-rf", str(marker)])


def test_a_second_kubelet_and_stop_kill_everything(cluster: Cluster, kube: ProcessKubelet, namespace: str) -> None:
    """Two stand-ins side by side (another test session on the machine); stop() leaves no process, not even a
    daemonized grandchild, and the other stand-in's pods keep running."""
    cluster.apply(web_yaml("first", 1), namespace=namespace)
    first = kube.wait_ready(namespace, "app=first", 1, timeout=40)[0]
    cluster.kubectl("create", "namespace", f"{namespace}-b")
    try:
        with ProcessKubelet(cluster, namespaces=[f"{namespace}-b"], nodes=[f"{NODE}-b"], images=IMAGES) as second:
            daemon = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "daemon"},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": f"{NODE}-b"},
                    "containers": [
                        {
                            "name": "c",
                            "image": IMAGE,
                            "command": ["sh", "-c", "setsid sleep 4242.5 & exec python3 -m http.server 8000"],
                        }
                    ],
                },
            }
            cluster.apply(json.dumps(daemon), namespace=f"{namespace}-b")
            p = second.wait_ready(f"{namespace}-b", None, 1, timeout=40)[0]
            ip = p["status"]["podIP"]
            assert ip != first["status"]["podIP"]
            wait(
                second,
                lambda: b"4242.5" in subprocess.run(["ps", "-eo", "args"], capture_output=True).stdout,
                10,
                "the daemonized child",
            )
            # pods of different stand-ins reach each other by IP
            out = kube.exec(
                namespace,
                first["metadata"]["name"],
                ["python3", "-c", f"import urllib.request as u; print(u.urlopen('http://{ip}:8000/').status)"],
            )
            assert out.stdout.strip() == "200", out.stdout
            pids = second.pids()
            assert pids
        assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()], ps(pids)
        assert b"4242.5" not in subprocess.run(["ps", "-eo", "args"], capture_output=True).stdout
        assert cluster.get(f"/api/v1/nodes/{NODE}-b", missing_ok=True) is None  # it created the node: removed
        # the first stand-in is unaffected (the bridge is shared)
        url = f"http://{first['status']['podIP']}:8000/"
        assert urllib.request.urlopen(url, timeout=5).status == 200
    finally:
        cluster.kubectl("delete", "namespace", f"{namespace}-b", "--wait=false", check=False)


def test_pods_of_other_namespaces_are_ignored(cluster: Cluster, kube: ProcessKubelet, namespace: str) -> None:
    other = f"{namespace}-x"
    cluster.kubectl("create", "namespace", other)
    try:
        cluster.apply(web_yaml("web", 1), namespace=other)
        wait_for(lambda: pods(cluster, other), 30, what="pod in the other namespace")
        with pytest.raises(TimeoutError):
            wait_for(lambda: any(p["spec"].get("nodeName") for p in pods(cluster, other)), 2, what="binding")
    finally:
        cluster.kubectl("delete", "namespace", other, "--wait=false", check=False)


def test_volumes_pvc_tmpfs_subpath_readonly(cluster: Cluster, kube: ProcessKubelet, namespace: str) -> None:
    pv = f"{namespace}-data"[:60]
    cluster.create_pv(pv, size="1Gi")
    cluster.kubectl(
        "create",
        "configmap",
        "files",
        "-n",
        namespace,
        "--from-literal=one.conf=first",
        "--from-literal=two.conf=second",
    )
    script = r"""
import json, os
mounts = {line.split()[1]: line.split()[2:4] for line in open('/proc/mounts')}
def writable(path):
    try:
        open(path, 'w').close()
        return True
    except OSError:
        return False
open('/data/out.txt', 'w').write('persisted')
print(json.dumps({
    "shm": mounts.get('/shm'), "ro_ok": not writable('/ro/x'), "file": open('/etc/x/one.conf').read(),
    "two_hidden": not os.path.exists('/etc/x/two.conf'), "sub": writable('/data-sub/y'),
    "sub_is_dir": os.path.isdir('/data-sub'),
    "token": os.path.exists('/var/run/secrets/kubernetes.io/serviceaccount/token'),
}))
"""
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "vols"},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "containers": [
                {
                    "name": "c",
                    "image": IMAGE,
                    "command": ["python3", "-c", script],
                    "volumeMounts": [
                        {"name": "data", "mountPath": "/data"},
                        {"name": "data", "mountPath": "/data-sub", "subPath": "nested/dir"},
                        {"name": "shm", "mountPath": "/shm"},
                        {"name": "scratch", "mountPath": "/ro", "readOnly": True},
                        {"name": "files", "mountPath": "/etc/x/one.conf", "subPath": "one.conf"},
                    ],
                }
            ],
            "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
                {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
                {"name": "scratch", "emptyDir": {}},
                {"name": "files", "configMap": {"name": "files"}},
            ],
        },
    }
    try:
        cluster.apply(json.dumps(manifest), namespace=namespace)
        time.sleep(1.5)  # no PVC yet: not scheduled, as with an unbound claim in a real cluster
        assert not pod(cluster, namespace, "vols")["spec"].get("nodeName")
        claim = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "",
                "volumeName": pv,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        }
        cluster.apply(json.dumps(claim), namespace=namespace)
        wait(kube, lambda: pod(cluster, namespace, "vols")["status"].get("phase") == "Succeeded", 40, "vols done")
        got = json.loads(kube.logs(namespace, "vols").strip().splitlines()[-1])
        assert got["shm"][0] == "tmpfs" and "size=16384k" in got["shm"][1], got
        assert got["ro_ok"] and got["file"] == "first" and got["two_hidden"] and got["sub"] and got["sub_is_dir"]
        assert not got["token"]  # automountServiceAccountToken: false
        assert Path(f"/tmp/{pv}/out.txt").read_text() == "persisted"  # the PV's hostPath
        assert Path(f"/tmp/{pv}/nested/dir/y").exists()
    finally:
        subprocess.run(["rm", "-rf", f"/tmp/{pv}"])
        cluster.kubectl("delete", "pv", pv, "--wait=false", check=False)
