"""A real, offline Kubernetes control plane for tests: etcd + kube-apiserver + kube-controller-manager.

Binaries come from ``scripts/k8s_testenv.sh`` (cached in ``${SERVING_K8S_CACHE:-~/.cache/serving/k8s}/bin``;
etcd from Debian's ``etcd-server``). There is no kubelet and no scheduler: pods created by the controllers stay
Pending until :meth:`Cluster.mark_pods_ready` (or the background :meth:`Cluster.start_kubelet` stand-in) binds
them to a Ready Node object and patches their status to Running/Ready. Everything else -- admission, RBAC,
CRDs, Deployments -> ReplicaSets -> Pods, Endpoints following Ready pods, garbage collection, namespace
deletion -- is the real Kubernetes 1.20 code. To really RUN pods (as local processes, one network namespace each),
use the kubelet stand-in ``tests.k8s.podrunner.ProcessKubelet`` on some namespaces instead.

Only the standard library is used (REST calls via urllib; kubectl/helm via subprocess).

    with Cluster() as c:                      # or c = Cluster(); c.start(); ...; c.stop()
        c.create_ready_node("node-1", labels={...}, gpus=4)
        c.apply(yaml_text, namespace="demo")
        with c.kubelet():                     # pods become Ready every 0.5 s while inside
            c.helm("install", "rel", "helm/chart", "--wait", "-n", "demo")
        c.kubectl("get", "pods", "-A")
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BUILD_HINT = "run `bash scripts/k8s_testenv.sh` (or `make k8s-testenv`) to install/build them (~7 min first time)"

DEFAULT_CONTROLLERS = (
    "deployment,replicaset,statefulset,daemonset,job,namespace,garbagecollector,"
    "endpoint,endpointslice,serviceaccount,serviceaccount-token,disruption,persistentvolume-binder,pvc-protection,pv-protection"
)


class MissingBinaries(RuntimeError):
    pass


class KubeError(RuntimeError):
    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def cache_dir() -> Path:
    return Path(os.environ.get("SERVING_K8S_CACHE") or Path.home() / ".cache" / "serving" / "k8s")


def bin_dir() -> Path:
    return Path(os.environ.get("SERVING_K8S_BIN") or cache_dir() / "bin")


def find_binaries() -> dict[str, str]:
    """Paths of etcd, kube-apiserver, kube-controller-manager, kubectl, helm; raises MissingBinaries."""
    found: dict[str, str] = {}
    missing: list[str] = []
    bdir = bin_dir()
    for name in ("kube-apiserver", "kube-controller-manager", "kubectl", "helm", "etcd"):
        p = bdir / name
        path = str(p) if p.is_file() and os.access(p, os.X_OK) else shutil.which(name)
        if path is None and name == "etcd" and os.access("/usr/bin/etcd", os.X_OK):
            path = "/usr/bin/etcd"
        if path:
            found[name] = path
        else:
            missing.append(name)
    if missing:
        raise MissingBinaries(f"missing Kubernetes test binaries {missing} (looked in {bdir} and PATH): {BUILD_HINT}")
    return found


def free_ports(n: int = 1) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (all held open while choosing, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def wait_for(fn: Callable[[], Any], timeout: float = 30.0, interval: float = 0.2, what: str = "condition") -> Any:
    """Poll ``fn`` until it returns a truthy value (returned); exceptions count as falsy. TimeoutError on expiry."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = fn()
            if value:
                return value
        except Exception as exc:  # polled conditions may fail transiently
            last_exc = exc
        if time.monotonic() > deadline:
            detail = f" ({last_exc})" if last_exc else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


def pod_is_ready(pod: dict) -> bool:
    for cond in pod.get("status", {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


class Cluster:
    """etcd + kube-apiserver + kube-controller-manager as child processes, all state under ``workdir``."""

    ADMIN_TOKEN = "serving-test-admin-token"

    def __init__(
        self,
        workdir: str | os.PathLike | None = None,
        *,
        controllers: str = DEFAULT_CONTROLLERS,
        start_timeout: float = 90.0,
    ):
        self.bins = find_binaries()
        self._own_workdir = workdir is None  # a temp dir we made is removed on stop() (keep: SERVING_K8S_KEEP=1)
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="k8s-test-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.controllers = controllers
        self.start_timeout = start_timeout
        self.token = self.ADMIN_TOKEN
        self.port = 0
        self.server = ""
        self.kubeconfig = self.workdir / "kubeconfig"
        self.logs = self.workdir / "logs"
        self._procs: dict[str, subprocess.Popen] = {}
        self._log_files: list[Any] = []
        self._ssl: ssl.SSLContext | None = None
        self._kubelet_thread: threading.Thread | None = None
        self._kubelet_stop = threading.Event()
        self._kubelet_errors: list[str] = []
        self._ip_lock = threading.Lock()
        self._next_ip = 10
        self.default_node: str | None = None
        # namespaces whose pods a tests.k8s.podrunner.ProcessKubelet runs: mark_pods_ready() leaves them alone
        self.claimed_namespaces: set[str] = set()

    # ---- lifecycle -------------------------------------------------------------------------------------------
    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def env(self) -> dict[str, str]:
        """os.environ + KUBECONFIG + the bin dir first on PATH: pass to subprocesses that run helm/kubectl."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = os.pathsep.join([str(Path(self.bins["kubectl"]).parent), env.get("PATH", "")])
        env.setdefault("HELM_CACHE_HOME", str(self.workdir / "helm" / "cache"))
        env.setdefault("HELM_CONFIG_HOME", str(self.workdir / "helm" / "config"))
        env.setdefault("HELM_DATA_HOME", str(self.workdir / "helm" / "data"))
        return env

    def start(self) -> Cluster:
        try:
            self.logs.mkdir(exist_ok=True)
            self._make_pki()
            self._start_etcd()
            self._start_apiserver()
            self._write_kubeconfig()
            wait_for(self.readyz, self.start_timeout, 0.25, "kube-apiserver /readyz")
            self._start_controller_manager()
            # the namespace controller and serviceaccount controller prove the controller-manager works
            wait_for(lambda: self._default_sa_exists(), self.start_timeout, 0.25, "controller-manager (default SA)")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self.stop_kubelet()
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            proc = self._procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        for f in self._log_files:
            f.close()
        self._log_files.clear()
        if self._own_workdir and not os.environ.get("SERVING_K8S_KEEP"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self._log_files.append(log)
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        self._procs[name] = proc
        return proc

    def _check_alive(self) -> None:
        for name, proc in self._procs.items():
            if proc.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}; log tail:\n{tail}")

    def log_tail(self, name: str, chars: int = 4000) -> str:
        p = self.logs / f"{name}.log"
        return p.read_text(errors="replace")[-chars:] if p.exists() else ""

    # ---- setup pieces ----------------------------------------------------------------------------------------
    def _openssl(self, *args: str) -> None:
        subprocess.run(["openssl", *args], cwd=self.pki, check=True, capture_output=True)

    def _make_pki(self) -> None:
        self.pki = self.workdir / "pki"
        self.pki.mkdir(exist_ok=True)
        self._openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "3650",
            "-subj",
            "/CN=serving-test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        )
        self._openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=kube-apiserver",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        )
        (self.pki / "ext.cnf").write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
            "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:10.0.0.1,IP:10.244.0.1\n"
            "extendedKeyUsage=serverAuth\n"
        )
        self._openssl(
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "3650",
            "-out",
            "server.crt",
            "-extfile",
            "ext.cnf",
        )
        self._openssl("genrsa", "-out", "sa.key", "2048")
        self._openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub")
        (self.pki / "tokens.csv").write_text(f'{self.token},admin,admin-uid,"system:masters"\n')
        self._ssl = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))

    def _start_etcd(self) -> None:
        client, peer, self.port = free_ports(3)
        self.etcd_url = f"http://127.0.0.1:{client}"
        self._spawn(
            "etcd",
            [
                self.bins["etcd"],
                "--name",
                "default",
                "--data-dir",
                str(self.workdir / "etcd"),
                "--listen-client-urls",
                self.etcd_url,
                "--advertise-client-urls",
                self.etcd_url,
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer}",
                "--initial-cluster",
                f"default=http://127.0.0.1:{peer}",
                "--log-level",
                "warn",
            ],
        )

    def _start_apiserver(self) -> None:
        self.server = f"https://127.0.0.1:{self.port}"
        p = self.pki
        self._spawn(
            "kube-apiserver",
            [
                self.bins["kube-apiserver"],
                "--etcd-servers",
                self.etcd_url,
                "--bind-address",
                "0.0.0.0",  # reachable from the pods of tests.k8s.podrunner at 10.244.0.1 (its bridge)
                "--advertise-address",
                "127.0.0.1",
                "--secure-port",
                str(self.port),
                "--insecure-port",
                "0",
                "--tls-cert-file",
                str(p / "server.crt"),
                "--tls-private-key-file",
                str(p / "server.key"),
                "--client-ca-file",
                str(p / "ca.crt"),
                "--token-auth-file",
                str(p / "tokens.csv"),
                "--authorization-mode",
                "RBAC",
                "--service-account-key-file",
                str(p / "sa.pub"),
                "--service-account-signing-key-file",
                str(p / "sa.key"),
                "--service-account-issuer",
                "https://kubernetes.default.svc.cluster.local",
                "--disable-admission-plugins",
                "ServiceAccount",
                "--service-cluster-ip-range",
                "10.0.0.0/16",
                "--allow-privileged=true",
                "--cert-dir",
                str(self.workdir / "apiserver-certs"),
                "--v",
                "1",
            ],
        )

    def _write_kubeconfig(self) -> None:
        import base64

        ca = base64.b64encode((self.pki / "ca.crt").read_bytes()).decode()
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.server, "certificate-authority-data": ca}}],
            "users": [{"name": "admin", "user": {"token": self.token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin", "namespace": "default"}}],
        }
        self.kubeconfig.write_text(json.dumps(cfg, indent=2))  # JSON is YAML
        self.kubeconfig.chmod(0o600)

    def _start_controller_manager(self) -> None:
        self._spawn(
            "kube-controller-manager",
            [
                self.bins["kube-controller-manager"],
                "--kubeconfig",
                str(self.kubeconfig),
                "--controllers",
                self.controllers,
                "--use-service-account-credentials=false",
                "--leader-elect=false",
                "--port",
                "0",
                "--secure-port",
                "0",
                "--service-account-private-key-file",
                str(self.pki / "sa.key"),
                "--root-ca-file",
                str(self.pki / "ca.crt"),
                "--concurrent-deployment-syncs",
                "5",
                "--concurrent-replicaset-syncs",
                "5",
                "--concurrent-endpoint-syncs",
                "5",
                "--v",
                "1",
            ],
        )

    def _default_sa_exists(self) -> bool:
        self._check_alive()
        return bool(self.get("/api/v1/namespaces/default/serviceaccounts/default", missing_ok=True))

    # ---- REST ------------------------------------------------------------------------------------------------
    def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        params: dict[str, Any] | None = None,
        timeout: float = 30.0,
        token: str | None = None,
    ) -> Any:
        """One API call as the admin user (or ``token``); returns decoded JSON (or text); KubeError on HTTP errors."""
        url = self.server + path
        if params:
            url += ("&" if "?" in url else "?") + urllib.parse.urlencode(params)
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Authorization", f"Bearer {token or self.token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self._ssl) as resp:
                raw = resp.read().decode()
        except urllib.error.HTTPError as exc:
            raise KubeError(exc.code, exc.read().decode(errors="replace")) from None
        try:
            return json.loads(raw)
        except ValueError:
            return raw

    def get(self, path: str, *, missing_ok: bool = False, **params: Any) -> Any:
        try:
            return self.api("GET", path, params=params or None)
        except KubeError as exc:
            if missing_ok and exc.status == 404:
                return None
            raise

    def readyz(self) -> bool:
        self._check_alive()
        try:
            return self.api("GET", "/readyz", timeout=5) == "ok"
        except (OSError, KubeError):
            return False

    # ---- kubectl / helm --------------------------------------------------------------------------------------
    def _run(
        self, tool: str, args: tuple[str, ...], input: str | None, check: bool, timeout: float
    ) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [self.bins[tool], *args], input=input, capture_output=True, text=True, env=self.env, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed with {proc.returncode}:\n{proc.stdout}{proc.stderr}")
        return proc

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        """Run kubectl against this cluster; ``.stdout``/``.stderr``/``.returncode`` on the result."""
        return self._run("kubectl", args, input, check, timeout)

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def helm(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess:
        """Run helm against this cluster."""
        return self._run("helm", args, input, check, timeout)

    def apply(self, yaml_text: str, namespace: str | None = None, server_side: bool = False) -> str:
        args = ["apply", "-f", "-"]
        if namespace:
            args += ["-n", namespace]
        if server_side:
            args.append("--server-side")
        return self.kubectl(*args, input=yaml_text).stdout

    def create_namespace(self, name: str) -> None:
        with contextlib.suppress(KubeError):
            ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
            self.api("POST", "/api/v1/namespaces", ns)

    # ---- fake node + kubelet stand-in ------------------------------------------------------------------------
    def create_ready_node(
        self,
        name: str,
        labels: dict[str, str] | None = None,
        *,
        gpus: int = 0,
        gpu_resource: str = "nvidia.com/gpu",
        cpu: str = "16",
        memory: str = "64Gi",
        taints: list[dict] | None = None,
    ) -> dict:
        """Create a Node object whose status says Ready (nodes may set status on create); first one is default."""
        capacity = {"cpu": cpu, "memory": memory, "pods": "110", "ephemeral-storage": "100Gi"}
        if gpus:
            capacity[gpu_resource] = str(gpus)
        now = now_rfc3339()
        node_labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}
        node_labels.update(labels or {})
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": node_labels},
            "spec": {"taints": taints} if taints else {},
            "status": {
                "capacity": capacity,
                "allocatable": dict(capacity),
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "test node",
                        "lastHeartbeatTime": now,
                        "lastTransitionTime": now,
                    },
                    *[
                        {
                            "type": t,
                            "status": "False",
                            "reason": "KubeletHasSufficient",
                            "lastHeartbeatTime": now,
                            "lastTransitionTime": now,
                        }
                        for t in ("MemoryPressure", "DiskPressure", "PIDPressure")
                    ],
                ],
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
                "nodeInfo": {
                    "machineID": "test",
                    "systemUUID": "test",
                    "bootID": "test",
                    "kernelVersion": "test",
                    "osImage": "test",
                    "containerRuntimeVersion": "fake://0",
                    "kubeletVersion": "v1.20.2",
                    "kubeProxyVersion": "v1.20.2",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                },
            },
        }
        self.api("POST", "/api/v1/nodes", node)
        # the TaintNodesByCondition admission plugin taints every new node not-ready:NoSchedule; the node lifecycle
        # controller would lift it once the kubelet reports Ready -- do that here (JSON merge patch replaces the list)
        created = self.api(
            "PATCH",
            f"/api/v1/nodes/{name}",
            {"spec": {"taints": taints or None}},
            content_type="application/merge-patch+json",
        )
        if self.default_node is None:
            self.default_node = name
        return created

    def create_pv(
        self,
        name: str,
        size: str = "500Gi",
        access_modes: tuple[str, ...] = ("ReadWriteOnce", "ReadWriteMany"),
        storage_class: str = "",
    ) -> dict:
        """A statically provisioned (hostPath) PersistentVolume; the real persistentvolume-binder controller binds
        matching claims to it, as it does for pre-provisioned storage in a real cluster."""
        pv = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": list(access_modes),
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": storage_class,
                "hostPath": {"path": f"/tmp/{name}"},
            },
        }
        return self.api("POST", "/api/v1/persistentvolumes", pv)

    def service_account_token(self, namespace: str, name: str, timeout: float = 30.0) -> str:
        """The bearer token of a ServiceAccount (the token controller's Secret, as a pod would mount it)."""
        import base64

        def token() -> str | None:
            sa = self.get(f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}")
            for ref in sa.get("secrets") or []:
                secret = self.get(f"/api/v1/namespaces/{namespace}/secrets/{ref['name']}", missing_ok=True)
                if secret and secret.get("type") == "kubernetes.io/service-account-token":
                    return base64.b64decode(secret["data"]["token"]).decode()
            return None

        return wait_for(token, timeout, what=f"token of serviceaccount {namespace}/{name}")

    @staticmethod
    def _extended_requests(pod: dict) -> dict[str, int]:
        """Extended-resource requests (names with a '/', e.g. nvidia.com/gpu) of a pod, summed over containers."""
        total: dict[str, int] = {}
        for c in pod.get("spec", {}).get("containers") or []:
            res = c.get("resources") or {}
            for name, qty in {**(res.get("limits") or {}), **(res.get("requests") or {})}.items():
                if "/" in name:
                    total[name] = total.get(name, 0) + int(str(qty))
        return total

    @staticmethod
    def _tolerates(pod: dict, taint: dict) -> bool:
        if taint.get("effect") not in ("NoSchedule", "NoExecute"):
            return True
        for tol in pod.get("spec", {}).get("tolerations") or []:
            if tol.get("effect") and tol["effect"] != taint.get("effect"):
                continue
            if tol.get("operator") == "Exists":
                if not tol.get("key") or tol["key"] == taint.get("key"):
                    return True
            elif tol.get("key") == taint.get("key") and (tol.get("value") or "") == (taint.get("value") or ""):
                return True
        return False

    def _pick_node(self, pod: dict, nodes: list[dict], pods: list[dict]) -> str | None:
        """A minimal scheduler: a Ready node that matches the pod's nodeSelector, whose NoSchedule/NoExecute taints
        it tolerates, and with enough allocatable extended resources (nvidia.com/gpu) left. No affinity, no
        cpu/memory accounting."""
        selector = pod.get("spec", {}).get("nodeSelector") or {}
        wants = self._extended_requests(pod)
        for node in nodes:
            name = node["metadata"]["name"]
            labels = node["metadata"].get("labels") or {}
            ready = any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in node.get("status", {}).get("conditions") or []
            )
            if not ready or any(labels.get(k) != v for k, v in selector.items()):
                continue
            if not all(self._tolerates(pod, t) for t in node.get("spec", {}).get("taints") or []):
                continue
            allocatable = node.get("status", {}).get("allocatable") or {}
            used: dict[str, int] = {}
            for other in pods:
                if (
                    other["spec"].get("nodeName") == name
                    and not other["metadata"].get("deletionTimestamp")
                    and other.get("status", {}).get("phase") not in ("Succeeded", "Failed")
                ):
                    for r, n in self._extended_requests(other).items():
                        used[r] = used.get(r, 0) + n
            if all(used.get(r, 0) + n <= int(str(allocatable.get(r, "0"))) for r, n in wants.items()):
                return name
        return None

    def _alloc_ip(self) -> str:
        with self._ip_lock:
            n = self._next_ip
            self._next_ip += 1
        return f"10.244.{n // 250}.{n % 250 + 2}"

    def mark_pod_ready(self, pod: dict, node: str) -> None:
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        if not pod["spec"].get("nodeName"):
            self.api(
                "POST",
                f"/api/v1/namespaces/{ns}/pods/{name}/binding",
                {
                    "apiVersion": "v1",
                    "kind": "Binding",
                    "metadata": {"name": name, "namespace": ns},
                    "target": {"apiVersion": "v1", "kind": "Node", "name": node},
                },
            )
        now = now_rfc3339()
        ip = pod.get("status", {}).get("podIP") or self._alloc_ip()

        def statuses(containers: list[dict], init: bool) -> list[dict]:
            out = []
            for c in containers:
                state = (
                    {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}}
                    if init
                    else {"running": {"startedAt": now}}
                )
                out.append(
                    {
                        "name": c["name"],
                        "image": c.get("image", ""),
                        "imageID": "",
                        "containerID": f"fake://{name}",
                        "ready": True,
                        "started": not init,
                        "restartCount": 0,
                        "state": state,
                    }
                )
            return out

        status = {
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": pod.get("status", {}).get("startTime") or now,
            "conditions": [
                {"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": now}
                for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
            ],
            "containerStatuses": statuses(pod["spec"].get("containers") or [], False),
        }
        if pod["spec"].get("initContainers"):
            status["initContainerStatuses"] = statuses(pod["spec"]["initContainers"], True)
        self.api(
            "PATCH",
            f"/api/v1/namespaces/{ns}/pods/{name}/status",
            {"status": status},
            content_type="application/merge-patch+json",
        )

    def mark_pods_ready(self, namespace: str | None = None, selector: str | None = None) -> list[str]:
        """One kubelet pass: bind Pending pods to a matching Ready node and mark them Running/Ready; finish the
        deletion of terminating pods (no kubelet would). Returns ``ns/name`` of the pods it marked Ready."""
        path = f"/api/v1/namespaces/{namespace}/pods" if namespace else "/api/v1/pods"
        all_pods = self.get("/api/v1/pods")["items"]
        if namespace or selector:  # the same objects as in all_pods, so GPUs bound in this pass are counted
            wanted = {
                p["metadata"]["uid"]
                for p in self.get(path, **({"labelSelector": selector} if selector else {}))["items"]
            }
            pods = [p for p in all_pods if p["metadata"]["uid"] in wanted]
        else:
            pods = all_pods
        nodes = self.get("/api/v1/nodes")["items"]
        marked = []
        for pod in pods:
            meta = pod["metadata"]
            ns, name = meta["namespace"], meta["name"]
            if ns in self.claimed_namespaces:
                continue
            try:
                if meta.get("deletionTimestamp"):
                    self.api(
                        "DELETE",
                        f"/api/v1/namespaces/{ns}/pods/{name}",
                        {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0},
                    )
                    continue
                if pod_is_ready(pod) or pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                    continue
                node = pod["spec"].get("nodeName") or self._pick_node(pod, nodes, all_pods)
                if node is None:
                    continue  # unschedulable here: stays Pending, as it would in a real cluster
                self.mark_pod_ready(pod, node)
                pod["spec"]["nodeName"] = node  # count its GPUs for the next pod of this pass
                marked.append(f"{ns}/{name}")
            except KubeError as exc:
                # gone or changed meanwhile: next pass; namespace being deleted: nothing left to do for this pod
                if exc.status not in (404, 409) and not (exc.status == 403 and "being terminated" in str(exc)):
                    raise
        return marked

    def finish_pods(self, namespace: str, selector: str | None = None, *, exit_code: int = 0) -> list[str]:
        """Mark (bound, running) pods as terminated: phase Succeeded (exit 0) or Failed -- e.g. for Jobs or
        ``helm test`` hook pods. Pods not yet bound are bound to a node first."""
        self.mark_pods_ready(namespace, selector)
        pods = self.get(f"/api/v1/namespaces/{namespace}/pods", **({"labelSelector": selector} if selector else {}))
        done = []
        now = now_rfc3339()
        for pod in pods["items"]:
            if pod.get("status", {}).get("phase") != "Running" or pod["metadata"].get("deletionTimestamp"):
                continue
            term = {
                "exitCode": exit_code,
                "reason": "Completed" if exit_code == 0 else "Error",
                "startedAt": now,
                "finishedAt": now,
            }
            status = {
                "phase": "Succeeded" if exit_code == 0 else "Failed",
                "conditions": [
                    {
                        "type": t,
                        "status": "False" if t in ("Ready", "ContainersReady") else "True",
                        "reason": "PodCompleted",
                        "lastProbeTime": None,
                        "lastTransitionTime": now,
                    }
                    for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
                ],
                "containerStatuses": [
                    {**cs, "ready": False, "started": False, "state": {"terminated": term}}
                    for cs in pod["status"].get("containerStatuses") or []
                ],
            }
            ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
            self.api(
                "PATCH",
                f"/api/v1/namespaces/{ns}/pods/{name}/status",
                {"status": status},
                content_type="application/merge-patch+json",
            )
            done.append(f"{ns}/{name}")
        return done

    def start_kubelet(self, interval: float = 0.5) -> None:
        """Background thread: ``mark_pods_ready()`` for all namespaces every ``interval`` seconds."""
        if self._kubelet_thread and self._kubelet_thread.is_alive():
            return
        self._kubelet_stop.clear()

        def loop() -> None:
            while not self._kubelet_stop.wait(interval):
                try:
                    self.mark_pods_ready()
                except Exception as exc:  # keep going, record for debugging
                    self._kubelet_errors.append(repr(exc))
                    del self._kubelet_errors[:-50]

        self._kubelet_thread = threading.Thread(target=loop, name="kubelet-stand-in", daemon=True)
        self._kubelet_thread.start()

    def stop_kubelet(self) -> None:
        self._kubelet_stop.set()
        if self._kubelet_thread:
            self._kubelet_thread.join(10)
            self._kubelet_thread = None

    @contextlib.contextmanager
    def kubelet(self, interval: float = 0.5) -> Iterator[Cluster]:
        """``with cluster.kubelet(): ...`` keeps marking new pods Ready inside the block."""
        already = bool(self._kubelet_thread and self._kubelet_thread.is_alive())
        self.start_kubelet(interval)
        try:
            yield self
        finally:
            if not already:
                self.stop_kubelet()

    @property
    def kubelet_errors(self) -> list[str]:
        return list(self._kubelet_errors)

    # ---- RBAC ------------------------------------------------------------------------------------------------
    def can_i(
        self,
        verb: str,
        resource: str,
        *,
        user: str,
        namespace: str | None = None,
        groups: list[str] | None = None,
        group: str = "",
        name: str = "",
    ) -> bool:
        """SubjectAccessReview: may ``user`` do ``verb`` on ``resource``?"""
        attrs: dict[str, Any] = {"verb": verb, "resource": resource, "group": group}
        if namespace:
            attrs["namespace"] = namespace
        if name:
            attrs["name"] = name
        spec: dict[str, Any] = {"user": user, "resourceAttributes": attrs}
        if groups:
            spec["groups"] = groups
        review = self.api(
            "POST",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": spec,
            },
        )
        return bool(review.get("status", {}).get("allowed"))

    # ---- cleanup helpers -------------------------------------------------------------------------------------
    def __del__(self) -> None:  # best effort if a test forgot stop()
        with contextlib.suppress(Exception):
            if self._procs:
                self.stop()
