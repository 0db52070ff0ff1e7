"""ProcessKubelet: a TEST STAND-IN FOR THE KUBELET that really runs pods' containers as local processes.

Not a kubelet and not a container runtime for real use: a test helper for :class:`tests.k8s.cluster.Cluster` (a real
kube-apiserver + kube-controller-manager, no kubelet, no scheduler) so that the pods the controllers create from
e.g. the Helm chart -- MLflow, redis-server, the Python rollout controller, ``ray start`` -- really run against the
real API server. Python standard library only; needs root, Linux, ``ip`` (iproute2) and ``nsenter`` (util-linux).

    images = {"ghcr.io/org/app": venv_image()}          # any tag of that repository
    with ProcessKubelet(cluster, namespaces=["demo"], nodes=["cpu-node-1"], images=images) as k:
        cluster.apply(manifests, namespace="demo")            # pods get scheduled onto cpu-node-1 and run
        url = k.service_url("demo", "app", 8000)              # reachable from the test process
        print(k.dump())                                       # phases, container states, log tails

What a pod gets (the parts of a kubelet + CNI + kube-proxy + CoreDNS a test needs):

* Scheduling: Pending pods of the stand-in's namespaces are bound to one of its Ready nodes by the minimal scheduler
  :meth:`Cluster._pick_node` (nodeSelector, taints, extended resources); pods whose PVCs are not Bound stay Pending.
* Network: one network namespace per pod (``srvk8s-<uid>``), a veth pair on the host bridge ``srvk8s0`` (10.244.0.1/16),
  a unique podIP 10.244.x.y, ``lo`` up, default route via 10.244.0.1. The test process reaches pods by their IPs, and
  pods reach the API server at 10.244.0.1 (env KUBERNETES_SERVICE_HOST/PORT, KUBERNETES_PORT*, as a kubelet sets).
* Names: a per-pod hosts file (``/etc/netns/<netns>/hosts``, which ``ip netns exec`` bind-mounts over /etc/hosts):
  the pod's hostname, and for the Services of all namespaces ``svc`` (same namespace only), ``svc.ns``, ``svc.ns.svc``
  and ``svc.ns.svc.cluster.local`` -> headless: every ready endpoint; ClusterIP: ONE ready endpoint (kept while it
  stays ready), so the name acts like the Service's virtual IP -- but without port mapping (see Limitations); with
  no ready endpoint, 10.244.0.2, where connections are refused (as kube-proxy rejects them). Addresses come from the
  real Endpoints objects; the files are rewritten in place when they change.
* Containers: ``ip netns exec <netns> python pod_launcher.py run <spec>`` -- see :mod:`tests.k8s.pod_launcher`: own
  mount, PID and UTS namespaces; volumes (emptyDir incl. medium Memory, persistentVolumeClaim -> the bound PV's
  hostPath/local path, configMap, secret, downwardAPI, projected, hostPath, the ServiceAccount token, subPath,
  readOnly), readOnlyRootFilesystem, runAsUser/runAsGroup/fsGroup/supplementalGroups/runAsNonRoot, capabilities of
  root containers, allowPrivilegeEscalation, workingDir, command/args with ``$(VAR)`` expansion, env (value,
  secretKeyRef, configMapKeyRef, fieldRef, resourceFieldRef), envFrom, service links.
* Images: ``images`` maps an image reference -- exact, or a repository (prefix) without tag -- to an
  :class:`ImageSpec` (env, entrypoint, cmd, user, ...): the "image" is the host's root filesystem plus that spec.
  :func:`venv_image` describes "an image with this repo's venv". An unknown image -> ErrImagePull/ImagePullBackOff.
* Lifecycle: initContainers in order, restartPolicy with capped exponential back-off (CrashLoopBackOff),
  startup/readiness/liveness probes (exec, httpGet, tcpSocket; Kubernetes defaults), preStop hooks, graceful deletion
  (SIGTERM to the container's PID 1, SIGKILL after terminationGracePeriodSeconds, capped), status via /status.
* Logs: ``<workdir>/pods/<ns>_<pod>/<container>.log`` (appended across restarts); :meth:`ProcessKubelet.logs`,
  :meth:`ProcessKubelet.dump`; errors of the stand-in itself in :attr:`ProcessKubelet.errors`.

Limitations (deliberate): no images (every container sees the host's root filesystem; writes outside volumes go to
the host unless readOnlyRootFilesystem), no cgroups (resources are not enforced; disk sizeLimits ignored), no
kube-proxy -- a Service name resolves to a pod IP, so clients must use the target port (the chart's Services use
port == targetPort; :meth:`ProcessKubelet.service_url` maps ports for the test process), no DNS server (ExternalName
Services and headless Services without ready endpoints do not resolve; resolv.conf has no nameserver), no
NetworkPolicy, no UDP specifics, no ephemeral containers, no seccomp/AppArmor, no image pull secrets, no hostNetwork
(refused as CreateContainerConfigError). Up to 19 ProcessKubelets (test sessions) may run on one machine at once: they
share the bridge, each has its own IP block (registry and lock in /run/srvk8s).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import grp
import http.client
import ipaddress
import json
import math
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from tests.k8s.cluster import Cluster, KubeError, now_rfc3339, pod_is_ready, wait_for

BRIDGE = "srvk8s0"
NETNS_PREFIX = "srvk8s-"  # + 10 hex chars of the pod uid
VETH_PREFIX = "vsk"  # host side of the pod's veth pair: vsk + 10 hex chars (<= 15 chars)
GATEWAY = "10.244.0.1"
# a Service without ready endpoints resolves here: a netns with this address and no listener, so connections are
# refused at once -- what kube-proxy's REJECT rule does for a ClusterIP without endpoints
VOID_IP = "10.244.0.2"
VOID_NETNS = NETNS_PREFIX + "void"
PREFIX_LEN = 16
RUN_MARK = "srvk8s-run"  # the per-pod volume dirs live under <workdir>/srvk8s-run/<uid>: stale mounts are found by it
STATE_DIR = Path("/run/srvk8s")
LAUNCHER = Path(__file__).resolve().with_name("pod_launcher.py")
SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
FIELD_SUBSCRIPT = re.compile(r"metadata\.(labels|annotations)\['(.+)'\]")


class PodNotReadyToRun(Exception):
    """A pod's volumes cannot be set up yet (missing ConfigMap, unbound PVC, ...): retried, pod stays Pending."""


class ContainerConfigError(Exception):
    """The container cannot be created (missing Secret key, runAsNonRoot, ...): waiting CreateContainerConfigError."""


@dataclass
class ImageSpec:
    """What the stand-in knows of an image: its config (the filesystem is always the host's root)."""

    env: dict[str, str] = field(default_factory=dict)  # Docker ENV (PATH!)
    entrypoint: list[str] | None = None  # used when the container has no command
    cmd: list[str] | None = None  # used when the container has neither command nor args
    user: int | str | None = None  # USER: "uid" or "uid:gid" (numeric); None = root, as in Docker
    working_dir: str | None = None  # WORKDIR (default "/")
    # host paths any uid must be able to use although an ancestor is not traversable (e.g. the venv's interpreter
    # under /root/.pyenv with /root mode 0700): the launcher shadows that ancestor with a tmpfs holding only them
    expose: tuple[str, ...] = ()


def venv_image(env: dict[str, str] | None = None, **kwargs: Any) -> ImageSpec:
    """An image "with this repo's venv installed": PATH starts with the venv's bin (python3, serving, ray, mlflow,
    redis-server from /usr/bin ...), and the interpreter's prefix is exposed to non-root users."""
    venv_bin = Path(sys.prefix) / "bin"
    base = Path(sys.base_prefix).resolve()
    expose = [str(base)] if str(base).startswith("/root/") else []
    image_env = {"PATH": f"{venv_bin}:{DEFAULT_PATH}", "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1", **(env or {})}
    return ImageSpec(env=image_env, expose=tuple(kwargs.pop("expose", ())) + tuple(expose), **kwargs)


# ---- small Kubernetes semantics ----------------------------------------------------------------------------------
_SUFFIXES: dict[str, Fraction] = {
    "": Fraction(1),
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 1000),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
    "Ki": Fraction(2**10),
    "Mi": Fraction(2**20),
    "Gi": Fraction(2**30),
    "Ti": Fraction(2**40),
    "Pi": Fraction(2**50),
    "Ei": Fraction(2**60),
}
_QUANTITY = re.compile(r"([+-]?[0-9.]+)(?:[eE]([+-]?[0-9]+))?(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?")


def parse_quantity(q: Any) -> Fraction:
    """A Kubernetes resource.Quantity ("500m", "2Gi", "1e3") as an exact number."""
    m = _QUANTITY.fullmatch(str(q).strip())
    if not m:
        raise ValueError(f"bad quantity {q!r}")
    value = Fraction(m[1])
    if m[2]:
        value *= Fraction(10) ** int(m[2])
    return value * _SUFFIXES[m[3] or ""]


def expand(text: str, mapping: dict[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: defined variables are replaced, others kept verbatim; ``$$`` -> ``$``."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "$" and i + 1 < n:
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2 : end]
                    out.append(mapping[name] if name in mapping else text[i : end + 1])
                    i = end + 1
                    continue
            out.append(ch)
            i += 1
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _strip_tag(ref: str) -> str:
    ref = ref.split("@", 1)[0]
    slash, colon = ref.rfind("/"), ref.rfind(":")
    return ref[:colon] if colon > slash else ref


def _norm_repo(repo: str) -> str:
    for prefix in ("docker.io/library/", "docker.io/", "library/", "index.docker.io/library/", "index.docker.io/"):
        if repo.startswith(prefix):
            return repo[len(prefix) :]
    return repo


def lookup_image(images: dict[str, ImageSpec], ref: str) -> ImageSpec | None:
    """Exact reference first, else the longest key that is the repository (without tag) or a path prefix of it."""
    if ref in images:
        return images[ref]
    repo = _norm_repo(_strip_tag(ref))
    best: tuple[int, ImageSpec] | None = None
    for key, spec in images.items():
        k = _norm_repo(key).rstrip("/")
        if (repo == k or repo.startswith(k + "/")) and (best is None or len(k) > best[0]):
            best = (len(k), spec)
    return best[1] if best else None


def _b64(data: dict[str, str] | None) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (data or {}).items()}


def _ip(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ip", *cmd], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(cmd)}: {proc.stderr.strip()}")
    return proc


def _kill_netns_processes(netns: str) -> None:
    for _ in range(20):
        pids = [int(p) for p in _ip(["netns", "pids", netns], check=False).stdout.split()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def _umount_under(root: str) -> None:
    """Lazily unmount every mount at or below ``root`` (host mount namespace), deepest first."""
    targets = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mnt = line.split()[4].replace("\\040", " ")
            if mnt == root or mnt.startswith(root.rstrip("/") + "/"):
                targets.append(mnt)
    for mnt in sorted(targets, key=len, reverse=True):
        subprocess.run(["umount", "-l", mnt], capture_output=True)


def _tail(path: Path, lines: int | None) -> str:
    if not path.exists():
        return ""
    text = path.read_text(errors="replace")
    if lines is None:
        return text
    return "\n".join(text.splitlines()[-lines:]) + ("\n" if text.endswith("\n") and lines else "")


# ---- machine-wide registry: several ProcessKubelets (test sessions) may run at once ------------------------------
INSTANCES_DIR = STATE_DIR / "instances"
IP_BLOCKS = 19  # instance i gives pods 10.244.(100 + 8i .. 107 + 8i).2-251


@contextlib.contextmanager
def _machine_lock() -> Iterator[None]:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(STATE_DIR / "lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _proc_starttime(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _instances() -> dict[str, dict]:
    out = {}
    if INSTANCES_DIR.is_dir():
        for f in INSTANCES_DIR.glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                out[f.stem] = json.loads(f.read_text())
    return out


def _live_instances() -> dict[str, dict]:
    return {
        k: v for k, v in _instances().items() if v.get("starttime") and _proc_starttime(int(v["pid"])) == v["starttime"]
    }


def _remove_instance_leftovers(data: dict) -> None:
    for name in data.get("netns") or []:
        _kill_netns_processes(name)
        _ip(["netns", "del", name], check=False)
        shutil.rmtree(Path("/etc/netns") / name, ignore_errors=True)
    if data.get("run_root"):
        _umount_under(data["run_root"])


def cleanup_stale() -> None:
    """Remove what crashed ProcessKubelets left (call with :func:`_machine_lock` held): their netns (+ processes),
    /etc/netns dirs and tmpfs mounts; when no ProcessKubelet is alive, also every ``srvk8s-`` netns / ``vsk`` veth,
    the bridge, mounts under a ``srvk8s-run`` dir and the (empty) mountpoints made on the host root."""
    live = _live_instances()
    for key, data in _instances().items():
        if key not in live:
            _remove_instance_leftovers(data)
            (INSTANCES_DIR / f"{key}.json").unlink(missing_ok=True)
    if live:
        return
    for line in _ip(["netns", "list"], check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(NETNS_PREFIX):
            _kill_netns_processes(name)
            _ip(["netns", "del", name], check=False)
    for line in _ip(["-o", "link", "show"], check=False).stdout.splitlines():
        parts = line.split(":")
        if len(parts) > 1:
            name = parts[1].strip().split("@")[0]
            if name.startswith(VETH_PREFIX) or name == BRIDGE:
                _ip(["link", "del", name], check=False)
    etc = Path("/etc/netns")
    if etc.is_dir():
        for d in etc.glob(NETNS_PREFIX + "*"):
            shutil.rmtree(d, ignore_errors=True)
    with open("/proc/self/mountinfo") as f:
        stale = [line.split()[4] for line in f if f"/{RUN_MARK}/" in line.split()[4]]
    for mnt in sorted(stale, key=len, reverse=True):
        subprocess.run(["umount", "-l", mnt], capture_output=True)
    record = STATE_DIR / "mountpoints.json"
    if record.exists():
        with contextlib.suppress(ValueError, OSError):
            for p in sorted(json.loads(record.read_text()), key=len, reverse=True):
                with contextlib.suppress(OSError):
                    if os.path.isdir(p) and not os.path.islink(p):
                        os.rmdir(p)
                    elif os.path.isfile(p) and os.path.getsize(p) == 0:
                        os.unlink(p)
        record.unlink(missing_ok=True)


# ---- per-container runtime state ---------------------------------------------------------------------------------
@dataclass
class _Probe:
    kind: str  # startup | readiness | liveness
    spec: dict
    successes: int = 0
    failures: int = 0
    next_at: float = 0.0
    future: Future | None = None
    last: str = ""

    def setting(self, key: str) -> int:
        defaults = {"periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3}
        return int(self.spec.get(key) or defaults.get(key, 0))


class _Container:
    def __init__(self, spec: dict, init: bool):
        self.spec = spec
        self.name: str = spec["name"]
        self.init = init
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None  # host pid of the container's PID 1 (from the launcher's status fd)
        self.status_path: Path | None = None
        self.spec_path: Path | None = None
        self.restart_count = 0
        self.has_run = False  # a process ran (and ended) before: the next start is a restart
        self.state: dict = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: dict = {}
        self.ready = False
        self.started = False
        self.done = False  # init: completed; main: terminated for good
        self.next_start = 0.0
        self.backoff = 0.0
        self.image_failures = 0
        self.run_since = 0.0
        self.probes: dict[str, _Probe] = {}
        self.stopping: dict | None = None
        self.container_id = ""

    @property
    def running(self) -> bool:
        return self.proc is not None

    def status(self) -> dict:
        st = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": self.last_state,
        }
        if self.container_id:
            st["containerID"] = self.container_id
        return st


# ---- per-pod worker ----------------------------------------------------------------------------------------------
class _Pod:
    """One pod's sandbox (netns, volumes) and containers, driven by its own thread (like a kubelet pod worker)."""

    def __init__(self, kubelet: ProcessKubelet, pod: dict):
        self.k = kubelet
        self.pod = pod
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.ns: str = meta["namespace"]
        self.name: str = meta["name"]
        self.key = f"{self.ns}/{self.name}"
        short = self.uid.replace("-", "")[:10]
        self.netns = NETNS_PREFIX + short
        self.veth = VETH_PREFIX + short
        self.ip: str | None = None
        self.dir = kubelet.workdir / "pods" / f"{self.ns}_{self.name}"
        self.run_dir = kubelet.run_root / short
        spec = pod["spec"]
        self.init_ctrs = [_Container(c, True) for c in spec.get("initContainers") or []]
        self.ctrs = [_Container(c, False) for c in spec.get("containers") or []]
        self.restart_policy = spec.get("restartPolicy") or "Always"
        self.phase = "Pending"
        self.initialized = not self.init_ctrs
        self.sandbox = False
        self.volumes: dict[str, dict] | None = None
        self.volume_error = ""
        self.volumes_refreshed = 0.0
        self.tmpfs: list[str] = []
        self.start_time = pod.get("status", {}).get("startTime") or now_rfc3339()
        self.cond_times: dict[tuple[str, str], str] = {}
        self.last_patch: dict | None = None
        self.terminate: dict | None = None  # {"deadline": t, "delete_api": bool}
        self.finished = False  # thread done: sandbox torn down
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"pod-{self.key}", daemon=True)

    # -- thread ---------------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def request_terminate(self, grace: float, delete_api: bool) -> None:
        with self.lock:
            deadline = time.monotonic() + grace
            if self.terminate is None:
                self.terminate = {"deadline": deadline, "delete_api": delete_api}
            else:  # a shorter grace (e.g. a forced deletion) wins; deletion of the API object is sticky
                self.terminate["deadline"] = min(self.terminate["deadline"], deadline)
                self.terminate["delete_api"] = self.terminate["delete_api"] or delete_api
        self.wake.set()

    def _run(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            while True:
                try:
                    if self._step():
                        break
                except Exception as exc:  # one bad pod must not stop anything: record, retry next tick
                    self.k._error(f"pod {self.key}: {exc!r}\n{traceback.format_exc(limit=6)}")
                    time.sleep(0.5)
                self.wake.wait(0.2)
                self.wake.clear()
        finally:
            try:
                self._kill_everything()
                self._teardown()
            except Exception as exc:
                self.k._error(f"pod {self.key} teardown: {exc!r}")
            self.finished = True

    def _step(self) -> bool:
        """One tick; True when the worker is done (terminated, or terminal phase reached and torn down)."""
        now = time.monotonic()
        term = self.terminate
        if term is not None:
            return self._step_terminating(now, term)
        if self.phase in ("Succeeded", "Failed"):
            self._patch_status()
            self._kill_everything()
            self._teardown()
            return True
        if not self.sandbox:
            self._create_sandbox()
        if self.volumes is None:
            try:
                self.volumes = self._prepare_volumes()
                self.volume_error = ""
                self.volumes_refreshed = now
            except PodNotReadyToRun as exc:
                self.volume_error = str(exc)
                for c in self.init_ctrs + self.ctrs:
                    c.state = {"waiting": {"reason": "ContainerCreating", "message": self.volume_error}}
                self._patch_status()
                time.sleep(0.5)
                return False
        elif now - self.volumes_refreshed > 5:
            self.volumes_refreshed = now
            with contextlib.suppress(PodNotReadyToRun):
                self._prepare_volumes(refresh=True)  # configMap/secret/downwardAPI contents follow their objects
        self._reap(now)
        self._drive_stopping(now)
        if not self.initialized:
            self._step_init(now)
        if self.initialized and self.phase not in ("Succeeded", "Failed"):
            self._step_main(now)
        self._probe_all(now)
        self.phase = self._compute_phase()
        self._patch_status()
        return False

    # -- sandbox -------------------------------------------------------------------------------------------------
    def _create_sandbox(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.ip = self.k._alloc_ip(self.uid)
        self.k._record_netns(self.netns, True)
        self.k._remember_pod_netns(self.ns, self.name, self.netns)
        _ip(["netns", "del", self.netns], check=False)
        _ip(["netns", "add", self.netns])
        _ip(["link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.netns])
        _ip(["link", "set", self.veth, "master", BRIDGE])
        _ip(["link", "set", self.veth, "up"])
        n = ["-n", self.netns]
        _ip([*n, "addr", "add", f"{self.ip}/{PREFIX_LEN}", "dev", "eth0"])
        _ip([*n, "link", "set", "eth0", "up"])
        _ip([*n, "link", "set", "lo", "up"])
        _ip([*n, "route", "add", "default", "via", GATEWAY])
        etc = Path("/etc/netns") / self.netns
        etc.mkdir(parents=True, exist_ok=True)
        search = f"{self.ns}.svc.cluster.local svc.cluster.local cluster.local"
        # no nameserver: 127.0.0.1 of the pod answers nothing (refused at once); names come from the hosts file
        (etc / "resolv.conf").write_text(
            f"search {search}\nnameserver 127.0.0.1\noptions ndots:5 timeout:1 attempts:1\n"
        )
        self.write_hosts(self.k._hosts_for(self))
        self.sandbox = True

    def hostname(self) -> tuple[str, str | None]:
        spec = self.pod["spec"]
        host = spec.get("hostname") or self.name
        fqdn = f"{host}.{spec['subdomain']}.{self.ns}.svc.cluster.local" if spec.get("subdomain") else None
        return host[:63], fqdn

    def write_hosts(self, content: str) -> None:
        """In place (same inode): the bind mount over each container's /etc/hosts keeps showing it."""
        path = Path("/etc/netns") / self.netns / "hosts"
        if not path.exists():
            path.write_text(content)
            return
        data = content.encode()
        with open(path, "r+b") as f:
            if f.read() == data:
                return
            f.seek(0)
            f.write(data)
            f.truncate()

    def _teardown(self) -> None:
        if self.sandbox or self.run_dir.exists():
            _kill_netns_processes(self.netns)
            _ip(["netns", "del", self.netns], check=False)
            shutil.rmtree(Path("/etc/netns") / self.netns, ignore_errors=True)
            _umount_under(str(self.run_dir))
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self.sandbox = False
            self.k._record_netns(self.netns, False)
        self.k._release_ip(self.uid)

    # -- volumes -------------------------------------------------------------------------------------------------
    def _ownership(self, root: Path, read_only: bool = False) -> None:
        """SetVolumeOwnership of a kubelet: group fsGroup, group rw (ro) bits, setgid dirs."""
        gid = (self.pod["spec"].get("securityContext") or {}).get("fsGroup")
        if gid is None:
            return
        for dirpath, dirnames, filenames in os.walk(root):
            for p in [dirpath, *[os.path.join(dirpath, f) for f in filenames + dirnames]]:
                st = os.lstat(p)
                if stat.S_ISLNK(st.st_mode):
                    continue
                os.chown(p, -1, int(gid))
                mode = stat.S_IMODE(st.st_mode)
                if stat.S_ISDIR(st.st_mode):
                    mode |= stat.S_ISGID | (0o050 if read_only else 0o070)
                else:
                    mode |= 0o040 if read_only else 0o060
                os.chmod(p, mode)

    def _get(self, kind: str, name: str) -> dict | None:
        plural = {"ConfigMap": "configmaps", "Secret": "secrets"}[kind]
        return self.k.cluster.get(f"/api/v1/namespaces/{self.ns}/{plural}/{name}", missing_ok=True)

    def _object_data(self, kind: str, name: str, optional: bool, what: str) -> dict[str, bytes] | None:
        obj = self._get(kind, name)
        if obj is None:
            if optional:
                return None
            raise PodNotReadyToRun(f'MountVolume.SetUp failed for volume "{what}": {kind.lower()} "{name}" not found')
        if kind == "Secret":
            return _b64(obj.get("data"))
        return {**{k: v.encode() for k, v in (obj.get("data") or {}).items()}, **_b64(obj.get("binaryData"))}

    @staticmethod
    def _select_items(data: dict[str, bytes], items: list[dict] | None, default_mode: int, optional: bool, what: str):
        if not items:
            return {k: (v, default_mode) for k, v in data.items()}
        out = {}
        for it in items:
            if it["key"] not in data:
                if optional:
                    continue
                raise PodNotReadyToRun(f'MountVolume.SetUp failed for volume "{what}": key "{it["key"]}" not found')
            out[it["path"]] = (data[it["key"]], int(it.get("mode", default_mode)))
        return out

    def _render_files(self, vol: dict) -> dict[str, tuple[bytes, int]]:
        """File contents of a configMap / secret / downwardAPI / projected volume: {relative path: (bytes, mode)}."""
        name = vol["name"]
        if "configMap" in vol or "secret" in vol:
            src = vol.get("configMap") or vol.get("secret")
            kind = "ConfigMap" if "configMap" in vol else "Secret"
            obj_name = src.get("name") if kind == "ConfigMap" else src.get("secretName")
            data = self._object_data(kind, obj_name, bool(src.get("optional")), name)
            mode = int(src.get("defaultMode", 0o644))
            return self._select_items(data or {}, src.get("items"), mode, bool(src.get("optional")), name)
        if "downwardAPI" in vol:
            src = vol["downwardAPI"]
            return self._downward_files(src.get("items") or [], int(src.get("defaultMode", 0o644)))
        files: dict[str, tuple[bytes, int]] = {}
        src = vol["projected"]
        mode = int(src.get("defaultMode", 0o644))
        for s in src.get("sources") or []:
            if "configMap" in s or "secret" in s:
                sub = s.get("configMap") or s.get("secret")
                kind = "ConfigMap" if "configMap" in s else "Secret"
                data = self._object_data(kind, sub["name"], bool(sub.get("optional")), name)
                files.update(self._select_items(data or {}, sub.get("items"), mode, bool(sub.get("optional")), name))
            elif "downwardAPI" in s:
                files.update(self._downward_files(s["downwardAPI"].get("items") or [], mode))
            elif "serviceAccountToken" in s:
                files[s["serviceAccountToken"]["path"]] = (self._sa_token().encode(), mode)
        return files

    def _downward_files(self, items: list[dict], default_mode: int) -> dict[str, tuple[bytes, int]]:
        files = {}
        for it in items:
            if "fieldRef" in it:
                value = self._field_value(it["fieldRef"]["fieldPath"], volume=True)
            else:
                ref = it["resourceFieldRef"]
                ctr = next((c.spec for c in self.ctrs + self.init_ctrs if c.name == ref.get("containerName")), None)
                if ctr is None:
                    raise PodNotReadyToRun(f"resourceFieldRef: no container {ref.get('containerName')!r}")
                value = self._resource_value(ctr, ref)
            files[it["path"]] = (value.encode(), int(it.get("mode", default_mode)))
        return files

    def _sa_name(self) -> str:
        spec = self.pod["spec"]
        return spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"

    def _sa_token(self) -> str:
        sa = self.k.cluster.get(f"/api/v1/namespaces/{self.ns}/serviceaccounts/{self._sa_name()}", missing_ok=True)
        for ref in (sa or {}).get("secrets") or []:
            secret = self._get("Secret", ref["name"])
            if (
                secret
                and secret.get("type") == "kubernetes.io/service-account-token"
                and "token" in secret.get("data", {})
            ):
                return base64.b64decode(secret["data"]["token"]).decode()
        raise PodNotReadyToRun(f'serviceaccount "{self._sa_name()}": no token Secret yet')

    def _automount_token(self) -> bool:
        spec = self.pod["spec"]
        if spec.get("automountServiceAccountToken") is not None:
            return bool(spec["automountServiceAccountToken"])
        sa = self.k.cluster.get(f"/api/v1/namespaces/{self.ns}/serviceaccounts/{self._sa_name()}", missing_ok=True)
        if sa is None:
            raise PodNotReadyToRun(f'serviceaccount "{self._sa_name()}" not found')
        return sa.get("automountServiceAccountToken") is not False

    @staticmethod
    def _write_files(root: Path, files: dict[str, tuple[bytes, int]]) -> None:
        root.mkdir(parents=True, exist_ok=True)
        wanted = set()
        for rel, (data, mode) in files.items():
            rel = rel.lstrip("/")
            if ".." in Path(rel).parts:
                raise PodNotReadyToRun(f"bad path {rel!r} in volume")
            path = root / rel
            wanted.add(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists() or path.read_bytes() != data:
                with open(path, "wb") as f:  # in place: a subPath bind mount of this file sees the update
                    f.write(data)
            os.chmod(path, mode)
        for dirpath, _dirs, filenames in os.walk(root):
            for f in filenames:
                if Path(dirpath, f) not in wanted:
                    os.unlink(Path(dirpath, f))

    def _prepare_volumes(self, refresh: bool = False) -> dict[str, dict]:
        """Host side of every volume: {name: {"path": host path, "read_only": bool}}."""
        vols: dict[str, dict] = {}
        base = self.run_dir / "volumes"
        for vol in self.pod["spec"].get("volumes") or []:
            name = vol["name"]
            path = base / name
            if any(k in vol for k in ("configMap", "secret", "downwardAPI", "projected")):
                self._write_files(path, self._render_files(vol))
                self._ownership(path, read_only=True)
                vols[name] = {"path": str(path), "read_only": "downwardAPI" in vol or "projected" in vol}
                continue
            if refresh:
                continue
            if "emptyDir" in vol:
                ed = vol["emptyDir"] or {}
                path.mkdir(parents=True, exist_ok=True)
                if ed.get("medium") == "Memory" and str(path) not in self.tmpfs:
                    opts = "mode=0777"
                    if ed.get("sizeLimit"):
                        opts += f",size={math.ceil(parse_quantity(ed['sizeLimit']))}"
                    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], check=True)
                    self.tmpfs.append(str(path))
                os.chmod(path, 0o777)
                self._ownership(path)
                vols[name] = {"path": str(path), "read_only": False}
            elif "persistentVolumeClaim" in vol:
                src = vol["persistentVolumeClaim"]
                hp = self._pv_path(src["claimName"])
                if not os.path.exists(hp):
                    os.makedirs(hp, exist_ok=True)
                    os.chmod(hp, 0o777)  # like a fresh volume of a local-path provisioner
                self._ownership(Path(hp))
                vols[name] = {"path": hp, "read_only": bool(src.get("readOnly"))}
            elif "hostPath" in vol:
                src = vol["hostPath"]
                hp, typ = src["path"], src.get("type") or ""
                if typ == "DirectoryOrCreate":
                    os.makedirs(hp, exist_ok=True)
                elif typ == "FileOrCreate" and not os.path.exists(hp):
                    os.makedirs(os.path.dirname(hp), exist_ok=True)
                    Path(hp).touch()
                elif typ and not os.path.exists(hp):
                    raise PodNotReadyToRun(f"hostPath type check failed: {hp} is not a {typ}")
                vols[name] = {"path": hp, "read_only": False}
            else:
                raise PodNotReadyToRun(f"volume {name}: unsupported volume type {sorted(set(vol) - {'name'})}")
        if not refresh and self._automount_token() and self._needs_token_mount():
            path = base / "kube-api-access"
            ca = (self.k.cluster.pki / "ca.crt").read_bytes()
            files = {
                "token": (self._sa_token().encode(), 0o644),
                "ca.crt": (ca, 0o644),
                "namespace": (self.ns.encode(), 0o644),
            }
            self._write_files(path, files)
            self._ownership(path, read_only=True)
            vols[" kube-api-access"] = {"path": str(path), "read_only": True}
        return vols if not refresh else (self.volumes or {})

    def _needs_token_mount(self) -> bool:
        return any(
            not any(m.get("mountPath", "").rstrip("/") == SA_MOUNT for m in c.spec.get("volumeMounts") or [])
            for c in self.init_ctrs + self.ctrs
        )

    def _pv_path(self, claim: str) -> str:
        pvc = self.k.cluster.get(f"/api/v1/namespaces/{self.ns}/persistentvolumeclaims/{claim}", missing_ok=True)
        if pvc is None:
            raise PodNotReadyToRun(f'persistentvolumeclaim "{claim}" not found')
        if pvc.get("status", {}).get("phase") != "Bound" or not pvc["spec"].get("volumeName"):
            raise PodNotReadyToRun(f'persistentvolumeclaim "{claim}" is not bound')
        pv = self.k.cluster.get(f"/api/v1/persistentvolumes/{pvc['spec']['volumeName']}")
        src = pv["spec"].get("hostPath") or pv["spec"].get("local")
        if not src:
            raise PodNotReadyToRun(f"persistentvolume {pv['metadata']['name']}: only hostPath/local PVs can be mounted")
        return src["path"]

    # -- env, user, mounts of a container -------------------------------------------------------------------------
    def _field_value(self, path: str, volume: bool = False) -> str:
        meta, spec, status = self.pod["metadata"], self.pod["spec"], self.pod.get("status") or {}
        m = FIELD_SUBSCRIPT.fullmatch(path)
        if m:
            return (meta.get(m[1]) or {}).get(m[2], "")
        if volume and path in ("metadata.labels", "metadata.annotations"):
            items = sorted((meta.get(path.split(".")[1]) or {}).items())
            return "\n".join(f"{k}={json.dumps(v)}" for k, v in items)
        values = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "spec.nodeName": spec.get("nodeName", ""),
            "spec.serviceAccountName": self._sa_name(),
            "status.hostIP": GATEWAY,
            "status.podIP": self.ip or status.get("podIP", ""),
            "status.podIPs": self.ip or status.get("podIP", ""),
        }
        if path not in values:
            raise ContainerConfigError(f"unsupported fieldPath {path!r}")
        return values[path]

    def _resource_value(self, container: dict, ref: dict) -> str:
        resource = ref["resource"]
        kind, _, res = resource.partition(".")
        resources = container.get("resources") or {}
        value = (resources.get(kind) or {}).get(res)
        if value is None and kind == "limits":  # no limit: the node's allocatable, as a kubelet reports
            value = self.k.node_allocatable(self.pod["spec"].get("nodeName"), res)
        qty = parse_quantity(value if value is not None else 0)
        divisor = parse_quantity(ref.get("divisor") or "1") or Fraction(1)  # the API defaults it to "0": 1
        return str(math.ceil(qty / divisor))

    def _service_env(self) -> dict[str, str]:
        env = self.k._service_links(self.ns) if self.pod["spec"].get("enableServiceLinks", True) else {}
        port = str(self.k.cluster.port)
        env.update(
            {
                "KUBERNETES_SERVICE_HOST": GATEWAY,
                "KUBERNETES_SERVICE_PORT": port,
                "KUBERNETES_SERVICE_PORT_HTTPS": port,
                "KUBERNETES_PORT": f"tcp://{GATEWAY}:{port}",
                f"KUBERNETES_PORT_{port}_TCP": f"tcp://{GATEWAY}:{port}",
                f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
                f"KUBERNETES_PORT_{port}_TCP_PORT": port,
                f"KUBERNETES_PORT_{port}_TCP_ADDR": GATEWAY,
            }
        )
        return env

    def _key_ref(self, kind: str, ref: dict) -> str | None:
        obj = self._get(kind, ref["name"])
        optional = bool(ref.get("optional"))
        if obj is None:
            if optional:
                return None
            raise ContainerConfigError(f'{kind.lower()} "{ref["name"]}" not found')
        data = (
            _b64(obj.get("data")) if kind == "Secret" else {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        )
        if ref["key"] not in data:
            if optional:
                return None
            raise ContainerConfigError(f"couldn't find key {ref['key']} in {kind} {self.ns}/{ref['name']}")
        return data[ref["key"]].decode(errors="replace")

    def container_env(self, c: _Container) -> dict[str, str]:
        """The container's env as a kubelet computes it (envFrom, env in order with $(VAR), service links)."""
        spec = c.spec
        env: dict[str, str] = {}
        for src in spec.get("envFrom") or []:
            kind = "ConfigMap" if "configMapRef" in src else "Secret"
            ref = src.get("configMapRef") or src.get("secretRef") or {}
            obj = self._get(kind, ref["name"])
            if obj is None:
                if ref.get("optional"):
                    continue
                raise ContainerConfigError(f'{kind.lower()} "{ref["name"]}" not found')
            if kind == "Secret":
                data = {k: v.decode(errors="replace") for k, v in _b64(obj.get("data")).items()}
            else:
                data = dict(obj.get("data") or {})
            for k, v in data.items():
                name = (src.get("prefix") or "") + k
                if ENV_NAME.fullmatch(name):
                    env[name] = v
        service_env = self._service_env()
        for e in spec.get("env") or []:
            name = e["name"]
            vf = e.get("valueFrom")
            if not vf:
                env[name] = expand(e.get("value") or "", {**service_env, **env})
                continue
            if "secretKeyRef" in vf:
                value = self._key_ref("Secret", vf["secretKeyRef"])
            elif "configMapKeyRef" in vf:
                value = self._key_ref("ConfigMap", vf["configMapKeyRef"])
            elif "fieldRef" in vf:
                value = self._field_value(vf["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in vf:
                ref = vf["resourceFieldRef"]
                target = spec
                if ref.get("containerName"):
                    target = next((x.spec for x in self.ctrs + self.init_ctrs if x.name == ref["containerName"]), spec)
                value = self._resource_value(target, ref)
            else:
                raise ContainerConfigError(f"env {name}: unsupported valueFrom {sorted(vf)}")
            if value is not None:
                env[name] = value
        for k, v in service_env.items():
            env.setdefault(k, v)
        return env

    def _user(self, c: _Container, image: ImageSpec) -> tuple[int, int, list[int]]:
        psc = self.pod["spec"].get("securityContext") or {}
        csc = c.spec.get("securityContext") or {}
        uid = csc.get("runAsUser", psc.get("runAsUser"))
        img_uid: int | None = None
        img_gid: int | None = None
        if image.user not in (None, ""):
            u, _, g = str(image.user).partition(":")
            if u.isdigit():
                img_uid = int(u)
            elif uid is None:  # the "image's" /etc/passwd is the host's
                if csc.get("runAsNonRoot", psc.get("runAsNonRoot")):
                    raise ContainerConfigError(
                        f"container has runAsNonRoot and image has non-numeric user ({u}), cannot verify user is "
                        f'non-root (pod: "{self.name}_{self.ns}", container: {c.name})'
                    )
                try:
                    pw = pwd.getpwnam(u)
                except KeyError:
                    raise ContainerConfigError(f"unable to find user {u}: no matching entries in passwd file") from None
                img_uid, img_gid = pw.pw_uid, pw.pw_gid
            if g:
                img_gid = int(g) if g.isdigit() else grp.getgrnam(g).gr_gid
        if csc.get("runAsNonRoot", psc.get("runAsNonRoot")):
            if uid is not None and int(uid) == 0:
                raise ContainerConfigError(
                    f'container\'s runAsUser breaks non-root policy (pod: "{self.name}_{self.ns}", container: {c.name})'
                )
            if uid is None and not img_uid:
                raise ContainerConfigError(
                    f'container has runAsNonRoot and image will run as root (pod: "{self.name}_{self.ns}", '
                    f"container: {c.name})"
                )
        uid = int(uid) if uid is not None else (img_uid or 0)
        gid = csc.get("runAsGroup", psc.get("runAsGroup"))
        gid = int(gid) if gid is not None else (img_gid or 0)
        groups = [int(g) for g in psc.get("supplementalGroups") or []]
        if psc.get("fsGroup") is not None and int(psc["fsGroup"]) not in groups:
            groups.append(int(psc["fsGroup"]))
        return uid, gid, groups

    def _mounts(self, c: _Container, env: dict[str, str]) -> list[dict]:
        assert self.volumes is not None
        mounts = []
        for vm in c.spec.get("volumeMounts") or []:
            vol = self.volumes.get(vm["name"])
            if vol is None:
                raise ContainerConfigError(f"volumeMount {vm['name']!r}: no such volume")
            src = vol["path"]
            sub = vm.get("subPath") or (expand(vm["subPathExpr"], env) if vm.get("subPathExpr") else "")
            if sub:
                if sub.startswith("/") or ".." in Path(sub).parts:
                    raise ContainerConfigError(f"invalid subPath {sub!r}")
                src = os.path.join(src, sub)
                if not os.path.lexists(src):  # a kubelet creates a missing sub-path directory
                    parent = os.stat(vol["path"])
                    os.makedirs(src, exist_ok=True)
                    os.chmod(src, stat.S_IMODE(parent.st_mode))
                    os.chown(src, -1, parent.st_gid)
            mounts.append(
                {"source": src, "target": vm["mountPath"], "read_only": bool(vm.get("readOnly") or vol["read_only"])}
            )
        token = self.volumes.get(" kube-api-access")
        if token and not any(m["target"].rstrip("/") == SA_MOUNT for m in mounts):
            mounts.append({"source": token["path"], "target": SA_MOUNT, "read_only": True})
        return mounts

    def _launch_spec(self, c: _Container) -> dict:
        """Everything the launcher needs; ContainerConfigError / _ImageMissing when the container cannot be created."""
        image = self.k.lookup_image(c.spec.get("image", ""))
        if image is None:
            raise _ImageMissing(c.spec.get("image", ""))
        if self.pod["spec"].get("hostNetwork"):
            raise ContainerConfigError("hostNetwork pods are not supported by the ProcessKubelet stand-in")
        env = self.container_env(c)
        uid, gid, groups = self._user(c, image)
        command = c.spec.get("command")
        args = c.spec.get("args")
        if command:
            argv = [expand(a, env) for a in command] + [expand(a, env) for a in args or []]
        elif args:
            argv = list(image.entrypoint or []) + [expand(a, env) for a in args]
        else:
            argv = list(image.entrypoint or []) + list(image.cmd or [])
        if not argv:
            raise ContainerConfigError("no command specified")
        host, _fqdn = self.hostname()
        full_env = {"PATH": DEFAULT_PATH, **image.env, "HOSTNAME": host, **env}
        full_env.setdefault("HOME", "/")
        csc = c.spec.get("securityContext") or {}
        caps = csc.get("capabilities") or {}
        return {
            "argv": argv,
            "env": full_env,
            "uid": uid,
            "gid": gid,
            "groups": groups,
            "workdir": c.spec.get("workingDir") or image.working_dir or "/",
            "no_new_privs": csc.get("allowPrivilegeEscalation") is False,
            "privileged": bool(csc.get("privileged")),
            "cap_add": caps.get("add") or [],
            "cap_drop": caps.get("drop") or [],
            "read_only_root": bool(csc.get("readOnlyRootFilesystem")),
            "hostname": host,
            "expose": list(image.expose),
            "mounts": self._mounts(c, env),
        }

    # -- container start / exit ----------------------------------------------------------------------------------
    def _start(self, c: _Container, now: float) -> None:
        try:
            spec = self._launch_spec(c)
        except _ImageMissing as exc:
            c.image_failures += 1
            reason = "ErrImagePull" if c.image_failures % 2 else "ImagePullBackOff"
            msg = (
                f'image "{exc}" is not mapped to an ImageSpec of this ProcessKubelet (images: {sorted(self.k.images)})'
            )
            if reason == "ImagePullBackOff":
                msg = f'Back-off pulling image "{exc}"'
            c.state = {"waiting": {"reason": reason, "message": msg}}
            c.next_start = now + min(self.k.backoff_base * 2 ** min(c.image_failures, 10), self.k.backoff_max)
            return
        except (ContainerConfigError, KubeError) as exc:
            c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}}
            c.next_start = now + 1.0
            return
        except Exception as exc:  # a bug of the stand-in or an odd spec: visible in the status and in errors
            self.k._error(f"pod {self.key} container {c.name}: {exc!r}\n{traceback.format_exc(limit=6)}")
            c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": f"stand-in: {exc!r}"}}
            c.next_start = now + 1.0
            return
        self.k._ensure_mountpoints(spec["mounts"])
        c.spec_path = self.run_dir / f"{c.name}.json"
        n = c.restart_count + (1 if c.has_run else 0)
        c.status_path = self.run_dir / f"{c.name}.{n}.status"
        status_fd = os.open(c.status_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        spec["status_fd"] = status_fd
        spec["parent_pid"] = os.getpid()
        c.spec_path.write_text(json.dumps(spec))
        log = open(self.dir / f"{c.name}.log", "ab")  # noqa: SIM115 - the child keeps it
        try:
            c.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, self.k.python, str(LAUNCHER), "run", str(c.spec_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=(status_fd,),
            )
        finally:
            log.close()
            os.close(status_fd)
        if c.has_run:
            c.restart_count += 1
            c.has_run = False
        c.pid = None
        c.run_since = now
        c.container_id = f"process://{self.uid[:8]}-{c.name}-{c.restart_count}"
        c.state = {"running": {"startedAt": now_rfc3339()}}
        c.probes = {}
        for kind in ("startup", "readiness", "liveness"):
            p = c.spec.get(f"{kind}Probe")
            if p and not c.init:
                c.probes[kind] = _Probe(kind, p, next_at=now + float(p.get("initialDelaySeconds") or 0))
        c.started = "startup" not in c.probes and not c.init
        c.ready = c.started and "readiness" not in c.probes and not c.init

    def _read_status(self, c: _Container) -> dict | None:
        if c.status_path is None:
            return None
        try:
            text = c.status_path.read_text()
            return json.loads(text) if text else None
        except (OSError, ValueError):
            return None

    def _reap(self, now: float) -> None:
        for c in self.init_ctrs + self.ctrs:
            if c.proc is None:
                continue
            if c.pid is None:
                st = self._read_status(c)
                if st and "pid" in st:
                    c.pid = int(st["pid"])
            rc = c.proc.poll()
            if rc is None:
                continue
            if rc < 0:
                rc = 128 - rc
            st = self._read_status(c) or {}
            c.proc = None
            c.pid = None
            c.ready = False
            c.started = False
            stopping, c.stopping = c.stopping, None
            for p in c.probes.values():
                if p.future:
                    p.future.cancel()
            c.probes = {}
            if st.get("error") and st["error"] != "StartError":
                c.state = {"waiting": {"reason": st["error"], "message": st.get("message", "")}}
                c.next_start = now + 1.0
                continue
            term = {
                "exitCode": rc,
                "reason": st.get("error") or ("Completed" if rc == 0 else "Error"),
                "startedAt": c.state.get("running", {}).get("startedAt", now_rfc3339()),
                "finishedAt": now_rfc3339(),
                "containerID": c.container_id,
            }
            if st.get("message"):
                term["message"] = st["message"]
            c.has_run = True
            if self.terminate is not None or (stopping and stopping["reason"] == "delete"):
                c.state, c.done = {"terminated": term}, True
                continue
            if c.init:
                if rc == 0:
                    c.state, c.done, c.ready = {"terminated": term}, True, True
                    continue
                restart = self.restart_policy != "Never"
            else:
                restart = self.restart_policy == "Always" or (self.restart_policy == "OnFailure" and rc != 0)
            if not restart:
                c.state, c.done = {"terminated": term}, True
                continue
            c.last_state = {"terminated": term}
            if now - c.run_since > 10 * self.k.backoff_max:
                c.backoff = 0.0  # ran long enough: the back-off starts over
            delay = c.backoff
            c.backoff = self.k.backoff_base if delay == 0 else min(2 * delay, self.k.backoff_max)
            c.next_start = now + delay
            if delay > 0:
                msg = f"back-off {delay:g}s restarting failed container={c.name} pod={self.name}_{self.ns}({self.uid})"
                c.state = {"waiting": {"reason": "CrashLoopBackOff", "message": msg}}
            else:
                c.state = {"terminated": term}

    def _step_init(self, now: float) -> None:
        for c in self.init_ctrs:
            if c.done:
                if c.state.get("terminated", {}).get("exitCode") == 0:
                    continue
                return  # failed for good (restartPolicy Never): the pod is Failed
            if c.proc is None and now >= c.next_start:
                self._start(c, now)
            return
        self.initialized = True

    def _step_main(self, now: float) -> None:
        for c in self.ctrs:
            if c.proc is None and not c.done and now >= c.next_start:
                self._start(c, now)

    def _compute_phase(self) -> str:
        if (
            any(c.done and c.state.get("terminated", {}).get("exitCode") for c in self.init_ctrs)
            and self.restart_policy == "Never"
        ):
            return "Failed"
        if not self.initialized:
            return "Pending"
        running = waiting = stopped = succeeded = 0
        for c in self.ctrs:
            if c.proc is not None:
                running += 1
            elif "terminated" in c.state:
                stopped += 1
                succeeded += c.state["terminated"].get("exitCode") == 0
            elif c.last_state.get("terminated"):
                stopped += 1
            else:
                waiting += 1
        if waiting:
            return "Pending"
        if running:
            return "Running"
        if stopped:
            if self.restart_policy == "Always" or not all(c.done for c in self.ctrs):
                return "Running"
            if stopped == succeeded:
                return "Succeeded"
            return "Failed" if self.restart_policy == "Never" else "Running"
        return "Pending"

    # -- probes, hooks, exec ---------------------------------------------------------------------------------------
    def _port(self, c: _Container, port: Any) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for p in c.spec.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
        raise ValueError(f"port {port!r} not found in container {c.name}")

    def _handler(self, c: _Container, handler: dict, timeout: float) -> tuple[bool, str]:
        """Run one probe / lifecycle handler: (success, detail)."""
        if "exec" in handler:
            try:
                proc = self.exec_process(c, handler["exec"].get("command") or [], timeout)
            except subprocess.TimeoutExpired:
                return False, f"command timed out after {timeout:g}s"
            return proc.returncode == 0, f"exit {proc.returncode}: {proc.stdout[-300:]}"
        host = self.ip or "127.0.0.1"
        if "httpGet" in handler:
            h = handler["httpGet"]
            port = self._port(c, h.get("port"))
            path = h.get("path") or "/"
            if not path.startswith("/"):
                path = "/" + path
            conn_cls: Any = http.client.HTTPConnection
            kwargs: dict[str, Any] = {}
            if (h.get("scheme") or "HTTP").upper() == "HTTPS":
                conn_cls = http.client.HTTPSConnection
                kwargs["context"] = ssl._create_unverified_context()
            conn = conn_cls(h.get("host") or host, port, timeout=timeout, **kwargs)
            headers = {"User-Agent": "kube-probe/1.20", "Accept": "*/*"}
            headers.update({x["name"]: x["value"] for x in h.get("httpHeaders") or []})
            try:
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                resp.read(10240)
                return 200 <= resp.status < 400, f"HTTP {resp.status}"
            except OSError as exc:
                return False, repr(exc)
            finally:
                conn.close()
        if "tcpSocket" in handler:
            t = handler["tcpSocket"]
            try:
                with socket.create_connection((t.get("host") or host, self._port(c, t.get("port"))), timeout=timeout):
                    return True, "connected"
            except OSError as exc:
                return False, repr(exc)
        return False, f"unsupported handler {sorted(handler)}"

    def exec_process(self, c: _Container, argv: list[str], timeout: float | None) -> subprocess.CompletedProcess:
        """``argv`` inside the running container (its namespaces, env, user, working dir); output merged."""
        pid = c.pid
        if pid is None or c.spec_path is None:
            raise ProcessLookupError(f"container {c.name} of {self.key} is not running")
        # the script, the spec and the interpreter by fd / real path: the container's volumes (e.g. an emptyDir on
        # /tmp) may hide their host paths in its mount namespace; the base interpreter needs no venv
        spec_fd = os.open(c.spec_path, os.O_RDONLY)
        script_fd = os.open(LAUNCHER, os.O_RDONLY)
        python = os.path.realpath(self.k.python)
        cmd = ["nsenter", "-t", str(pid), "-m", "-n", "-p", "-u", "--", python, f"/proc/self/fd/{script_fd}", "exec"]
        try:
            proc = subprocess.Popen(
                [*cmd, f"fd:{spec_fd}", "--", *argv],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                text=True,
                errors="replace",
                pass_fds=(spec_fd, script_fd),
            )
        finally:
            os.close(spec_fd)
            os.close(script_fd)
        self.k._register_exec(proc)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
        finally:
            self.k._unregister_exec(proc)
        return subprocess.CompletedProcess(argv, proc.returncode, out, "")

    def _probe_all(self, now: float) -> None:
        for c in self.ctrs:
            if c.proc is None or c.pid is None or c.stopping:
                continue
            for kind in ("startup", "readiness", "liveness"):
                p = c.probes.get(kind)
                if p is None or (kind == "startup") == c.started:
                    continue
                if p.future is not None and p.future.done():
                    try:
                        ok, p.last = p.future.result()
                    except Exception as exc:
                        ok, p.last = False, repr(exc)
                    p.future = None
                    p.successes, p.failures = (p.successes + 1, 0) if ok else (0, p.failures + 1)
                    self._probe_result(c, p, now)
                    if c.stopping:
                        break
                if p.future is None and now >= p.next_at:
                    p.next_at = now + p.setting("periodSeconds")
                    p.future = self.k._pool.submit(self._handler, c, p.spec, p.setting("timeoutSeconds"))

    def _probe_result(self, c: _Container, p: _Probe, now: float) -> None:
        if p.kind == "startup":
            if p.successes >= 1:
                c.started = True
                c.ready = "readiness" not in c.probes
                for other in c.probes.values():
                    other.next_at = max(other.next_at, now)
            elif p.failures >= p.setting("failureThreshold"):
                self._begin_stop(c, self._grace(), "startup", f"Startup probe failed: {p.last}")
        elif p.kind == "readiness":
            if p.successes >= p.setting("successThreshold"):
                c.ready = True
            elif p.failures >= p.setting("failureThreshold"):
                c.ready = False
        elif p.failures >= p.setting("failureThreshold"):
            self._begin_stop(c, self._grace(), "liveness", f"Liveness probe failed: {p.last}")

    def _grace(self) -> float:
        g = self.pod["spec"].get("terminationGracePeriodSeconds")
        return min(float(30 if g is None else g), self.k.max_grace)

    def _begin_stop(self, c: _Container, grace: float, reason: str, message: str = "") -> None:
        if c.proc is None or c.stopping is not None:
            return
        if message:
            self.k._event(self, "Killing", f"Container {c.name}: {message}")
        c.ready = False
        hook = ((c.spec.get("lifecycle") or {}).get("preStop")) if c.pid is not None else None
        future = self.k._pool.submit(self._handler, c, hook, grace) if hook else None
        c.stopping = {"deadline": time.monotonic() + grace, "reason": reason, "hook": future, "term": False}

    def _drive_stopping(self, now: float) -> None:
        for c in self.init_ctrs + self.ctrs:
            s = c.stopping
            if s is None or c.proc is None:
                continue
            if not s["term"] and (s["hook"] is None or s["hook"].done() or now >= s["deadline"]):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(c.proc.pid, signal.SIGTERM)  # the launcher forwards it to the container's PID 1
                s["term"] = True
            if now >= s["deadline"]:
                self._sigkill(c)

    def _sigkill(self, c: _Container) -> None:
        """SIGKILL the container's PID 1 (the kernel then kills the rest of its PID namespace); the launcher reaps it
        and exits -- only if it does not, the launcher's process group is killed too."""
        if c.proc is None:
            return
        st = self._read_status(c) or {}
        pid1 = c.pid or st.get("pid")
        if pid1:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid1), signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                c.proc.wait(2)
        if c.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(c.proc.pid, signal.SIGKILL)

    def _step_terminating(self, now: float, term: dict) -> bool:
        for c in self.init_ctrs + self.ctrs:
            c.done = True
            if c.proc is not None:
                if c.stopping is None:
                    self._begin_stop(c, max(0.0, term["deadline"] - now), "delete")
                else:
                    c.stopping["deadline"] = min(c.stopping["deadline"], term["deadline"])
                    c.stopping["reason"] = "delete"
        self._reap(now)
        self._drive_stopping(now)
        if any(c.proc is not None for c in self.init_ctrs + self.ctrs):
            return False
        self._kill_everything()
        self._teardown()
        if term["delete_api"] and not self.k._stopping.is_set():
            body = {
                "kind": "DeleteOptions",
                "apiVersion": "v1",
                "gracePeriodSeconds": 0,
                "preconditions": {"uid": self.uid},
            }
            try:
                self.k.cluster.api("DELETE", f"/api/v1/namespaces/{self.ns}/pods/{self.name}", body)
            except KubeError as exc:
                if exc.status not in (404, 409):
                    raise
        return True

    def _kill_everything(self) -> None:
        for c in self.init_ctrs + self.ctrs:
            if c.proc is not None:
                self._sigkill(c)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    c.proc.wait(5)
                c.proc = None
                c.pid = None
        if self.sandbox:
            _kill_netns_processes(self.netns)

    # -- status ----------------------------------------------------------------------------------------------------
    def _condition(self, ctype: str, ok: bool, reason: str = "", message: str = "") -> dict:
        status = "True" if ok else "False"
        key = (ctype, status)
        if key not in self.cond_times:
            self.cond_times = {k: v for k, v in self.cond_times.items() if k[0] != ctype}
            self.cond_times[key] = now_rfc3339()
        cond = {"type": ctype, "status": status, "lastProbeTime": None, "lastTransitionTime": self.cond_times[key]}
        if not ok and reason:
            cond["reason"] = reason
            if message:
                cond["message"] = message
        return cond

    def _status(self) -> dict:
        terminal = self.phase in ("Succeeded", "Failed")
        pending_init = [c.name for c in self.init_ctrs if not c.done]
        unready = [c.name for c in self.ctrs if not c.ready]
        gates = [g["conditionType"] for g in self.pod["spec"].get("readinessGates") or []]
        api_conds = {c["type"]: c.get("status") for c in (self.pod.get("status") or {}).get("conditions") or []}
        gates_missing = [g for g in gates if api_conds.get(g) != "True"]
        ready_reason = "PodCompleted" if terminal else "ContainersNotReady"
        ready_msg = f"containers with unready status: [{' '.join(unready)}]"
        ready_ok = not unready and not terminal
        if ready_ok and gates_missing:
            ready_reason, ready_msg = (
                "ReadinessGatesNotReady",
                f"corresponding condition of pod readiness gate {gates_missing} does not exist.",
            )
        status: dict[str, Any] = {
            "phase": self.phase,
            "hostIP": GATEWAY,
            "startTime": self.start_time,
            "conditions": [
                self._condition(
                    "Initialized",
                    not pending_init or terminal,
                    "ContainersNotInitialized",
                    f"containers with incomplete status: [{' '.join(pending_init)}]",
                ),
                self._condition("Ready", ready_ok and not gates_missing, ready_reason, ready_msg),
                self._condition("ContainersReady", ready_ok, ready_reason, ready_msg),
                self._condition("PodScheduled", True),
            ],
            "containerStatuses": [c.status() for c in self.ctrs],
        }
        if self.ip:
            status["podIP"] = self.ip
            status["podIPs"] = [{"ip": self.ip}]
        if self.init_ctrs:
            status["initContainerStatuses"] = [c.status() for c in self.init_ctrs]
        return status

    def _patch_status(self) -> None:
        if self.k._stopping.is_set():
            return
        status = self._status()
        if status == self.last_patch:
            return
        try:
            self.k.cluster.api(
                "PATCH",
                f"/api/v1/namespaces/{self.ns}/pods/{self.name}/status",
                {"metadata": {"uid": self.uid}, "status": status},
                content_type="application/strategic-merge-patch+json",
            )
            self.last_patch = status
        except KubeError as exc:
            if exc.status == 404:  # gone: the main loop notices and terminates us
                return
            raise

    def summary(self, log_lines: int = 15) -> str:
        lines = [f"pod {self.key} uid={self.uid[:8]} ip={self.ip} phase={self.phase} netns={self.netns}"]
        if self.volume_error:
            lines.append(f"  volumes: {self.volume_error}")
        for c in self.init_ctrs + self.ctrs:
            state = next(iter(c.state), "?")
            detail = c.state.get(state) or {}
            info = detail.get("reason", "") + (f" exit={detail['exitCode']}" if "exitCode" in detail else "")
            msg = f" {detail['message'][:300]!r}" if detail.get("message") else ""
            probes = " ".join(f"{p.kind}:{p.successes}/{p.failures}:{p.last[:80]!r}" for p in c.probes.values())
            lines.append(
                f"  {'init ' if c.init else ''}container {c.name}: {state} {info}{msg} ready={c.ready} "
                f"restarts={c.restart_count} pid={c.pid} {probes}"
            )
            tail = _tail(self.dir / f"{c.name}.log", log_lines)
            lines.extend(f"    | {line}" for line in tail.splitlines())
        return "\n".join(lines)


class _ImageMissing(Exception):
    pass


# ---- the stand-in --------------------------------------------------------------------------------------------------
class ProcessKubelet:
    """Test stand-in for the kubelet running the pods of ``namespaces`` scheduled onto ``nodes`` as local processes.

    ``images``: image reference (exact, or repository / repository prefix without tag) -> :class:`ImageSpec`.
    Nodes that do not exist are created Ready (``node_cpu``/``node_memory``/``node_labels``) and deleted on stop.
    ``max_grace`` caps terminationGracePeriodSeconds; ``stop_grace`` is the grace of the pods still running at
    :meth:`stop`; ``backoff_base``/``backoff_max`` the restart back-off (a kubelet: 10 s / 300 s).
    """

    def __init__(
        self,
        cluster: Cluster,
        *,
        namespaces: Iterable[str],
        nodes: Iterable[str] = ("cpu-node-1",),
        images: dict[str, ImageSpec],
        workdir: str | os.PathLike | None = None,
        interval: float = 0.5,
        max_grace: float = 15.0,
        stop_grace: float = 2.0,
        vanished_grace: float = 1.0,
        backoff_base: float = 1.0,
        backoff_max: float = 10.0,
        node_cpu: str = "8",
        node_memory: str = "32Gi",
        node_labels: dict[str, str] | None = None,
        python: str = sys.executable,
    ):
        self.cluster = cluster
        self.namespaces = set(namespaces)
        self.nodes = list(nodes)
        self.images = dict(images)
        self.workdir = Path(workdir or cluster.workdir / "podrunner")
        self.run_root = self.workdir / RUN_MARK
        self.interval = interval
        self.max_grace = max_grace
        self.stop_grace = stop_grace
        self.vanished_grace = vanished_grace
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.node_cpu, self.node_memory, self.node_labels = node_cpu, node_memory, node_labels or {}
        self.python = python
        self.errors: list[str] = []
        self.events: list[str] = []
        self._pods: dict[str, _Pod] = {}
        self._done: set[str] = set()
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="kubelet-probe")
        self._key = f"{os.getpid()}-{id(self):x}"
        self._block = 0
        self._registered = False
        self._netns: set[str] = set()
        self._netns_of: dict[tuple[str, str], str] = {}
        self._created_nodes: list[str] = []
        self._created_points: list[str] = []
        self._ips: dict[str, str] = {}
        self._next_ip = 0
        self._vip: dict[tuple[str, str], str] = {}
        self._services: list[dict] = []
        self._endpoints: dict[tuple[str, str], dict] = {}
        self._node_objs: dict[str, dict] = {}
        self._execs: set[subprocess.Popen] = set()
        self._dns_lines: dict[str, list[tuple[str, str]]] = {}
        self.started = False

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def __enter__(self) -> ProcessKubelet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> ProcessKubelet:
        if os.geteuid() != 0:
            raise RuntimeError("ProcessKubelet needs root (network namespaces, mounts)")
        for tool in ("ip", "nsenter", "mount", "umount"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"ProcessKubelet needs `{tool}` on PATH")
        try:
            with _machine_lock():
                cleanup_stale()
                live = _live_instances()
                used = {int(i.get("block", -1)) for i in live.values()}
                free = [b for b in range(IP_BLOCKS) if b not in used]
                if not free:
                    raise RuntimeError(f"{len(live)} ProcessKubelets already run on this machine: no IP block left")
                self._block = free[0]
                if _ip(["link", "show", BRIDGE], check=False).returncode != 0:
                    _ip(["link", "add", BRIDGE, "type", "bridge"])
                    _ip(["addr", "add", f"{GATEWAY}/{PREFIX_LEN}", "dev", BRIDGE])
                    _ip(["link", "set", BRIDGE, "up"])
                if VOID_NETNS not in _ip(["netns", "list"], check=False).stdout.split():
                    _ip(["netns", "add", VOID_NETNS])
                    _ip(
                        [
                            "link",
                            "add",
                            VETH_PREFIX + "void",
                            "type",
                            "veth",
                            "peer",
                            "name",
                            "eth0",
                            "netns",
                            VOID_NETNS,
                        ]
                    )
                    _ip(["link", "set", VETH_PREFIX + "void", "master", BRIDGE])
                    _ip(["link", "set", VETH_PREFIX + "void", "up"])
                    _ip(["-n", VOID_NETNS, "addr", "add", f"{VOID_IP}/{PREFIX_LEN}", "dev", "eth0"])
                    _ip(["-n", VOID_NETNS, "link", "set", "eth0", "up"])
                self._registered = True
                self._save_instance()
            self.run_root.mkdir(parents=True, exist_ok=True)
            (self.workdir / "pods").mkdir(parents=True, exist_ok=True)
            for name in self.nodes:
                if self.cluster.get(f"/api/v1/nodes/{name}", missing_ok=True) is None:
                    self.cluster.create_ready_node(name, self.node_labels, cpu=self.node_cpu, memory=self.node_memory)
                    self._created_nodes.append(name)
            self._claim(self.namespaces)
            self._stopping.clear()
            self._thread = threading.Thread(target=self._loop, name="process-kubelet", daemon=True)
            self._thread.start()
            self.started = True
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Kill every process this stand-in started; remove its netns, mounts, dirs and nodes (and the bridge and
        the mountpoints it made on the host root when no other ProcessKubelet of this machine still runs)."""
        self._stopping.set()
        if self._thread:
            self._thread.join(15)
            self._thread = None
        with self._lock:
            pods = list(self._pods.values())
        for p in pods:
            if p.thread.is_alive():
                p.request_terminate(self.stop_grace, delete_api=False)
        for p in pods:
            p.thread.join(self.stop_grace + 10)
            if p.thread.is_alive():
                self._error(f"pod {p.key}: worker did not stop")
        for proc in list(self._execs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="kubelet-probe")
        with self._lock:
            self._pods.clear()
        if self._registered:
            with _machine_lock():
                _remove_instance_leftovers(self._instance_data())
                (INSTANCES_DIR / f"{self._key}.json").unlink(missing_ok=True)
                self._registered = False
                cleanup_stale()  # the last one out also removes the bridge and the mountpoints
        shutil.rmtree(self.run_root, ignore_errors=True)
        for name in self._created_nodes:
            with contextlib.suppress(Exception):
                self.cluster.api("DELETE", f"/api/v1/nodes/{name}")
        self._created_nodes.clear()
        self._unclaim(self.namespaces)
        self.started = False

    def _instance_data(self) -> dict:
        with self._lock:
            return {
                "pid": os.getpid(),
                "starttime": _proc_starttime(os.getpid()),
                "block": self._block,
                "run_root": str(self.run_root),
                "netns": sorted(self._netns),
            }

    def _save_instance(self) -> None:
        if not self._registered:
            return
        INSTANCES_DIR.mkdir(parents=True, exist_ok=True)
        path = INSTANCES_DIR / f"{self._key}.json"
        tmp = path.with_suffix(f".tmp{threading.get_ident()}")
        tmp.write_text(json.dumps(self._instance_data()))
        os.replace(tmp, path)

    def _record_netns(self, name: str, present: bool) -> None:
        """Recorded BEFORE the netns exists (and dropped after it is gone): a concurrent cleanup_stale() of another
        ProcessKubelet never takes a live pod's netns for a leftover."""
        with self._lock:
            (self._netns.add if present else self._netns.discard)(name)
            self._save_instance()

    def _remember_pod_netns(self, ns: str, pod: str, netns: str) -> None:
        with self._lock:
            self._netns_of[(ns, pod)] = netns

    def _claim(self, namespaces: Iterable[str]) -> None:
        claimed = getattr(self.cluster, "claimed_namespaces", None)
        if claimed is not None:
            claimed.update(namespaces)

    def _unclaim(self, namespaces: Iterable[str]) -> None:
        claimed = getattr(self.cluster, "claimed_namespaces", None)
        if claimed is not None:
            claimed.difference_update(namespaces)

    def add_namespace(self, namespace: str) -> None:
        """Also run the pods of ``namespace`` (e.g. one a test created after the stand-in started)."""
        self.namespaces.add(namespace)
        self._claim([namespace])

    # -- main loop ---------------------------------------------------------------------------------------------------
    def _error(self, msg: str) -> None:
        if self.errors and self.errors[-1].split("\n", 1)[0] == msg.split("\n", 1)[0]:
            return  # the same failure again (retried every tick): recorded once
        self.errors.append(msg)
        del self.errors[:-200]

    def _event(self, pod: _Pod, reason: str, message: str) -> None:
        self.events.append(f"{pod.key}: {reason}: {message}")
        del self.events[:-500]

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.sync_once()
            except Exception as exc:
                self._error(f"sync: {exc!r}\n{traceback.format_exc(limit=6)}")
            self._stopping.wait(self.interval)

    def sync_once(self) -> None:
        """One pass: schedule + start new pods, pass deletions on, rewrite hosts files. (The loop calls this.)"""
        all_pods = self.cluster.get("/api/v1/pods")["items"]
        nodes = self.cluster.get("/api/v1/nodes")["items"]
        self._node_objs = {n["metadata"]["name"]: n for n in nodes}
        my_nodes = [n for n in nodes if n["metadata"]["name"] in self.nodes]
        self._update_dns(self.cluster.get("/api/v1/services")["items"], self.cluster.get("/api/v1/endpoints")["items"])
        seen = set()
        for pod in all_pods:
            if pod["metadata"]["namespace"] not in self.namespaces:
                continue
            seen.add(pod["metadata"]["uid"])
            try:
                self._sync_pod(pod, my_nodes, all_pods)
            except KubeError as exc:
                if exc.status not in (404, 409) and not (exc.status == 403 and "being terminated" in str(exc)):
                    self._error(f"pod {pod['metadata']['namespace']}/{pod['metadata']['name']}: {exc!r}")
            except Exception as exc:
                self._error(
                    f"pod {pod['metadata']['namespace']}/{pod['metadata']['name']}: {exc!r}\n"
                    f"{traceback.format_exc(limit=6)}"
                )
        with self._lock:
            for uid, p in list(self._pods.items()):
                if uid not in seen and not p.finished:  # force-deleted: kill it (no API object to update)
                    p.request_terminate(self.vanished_grace, delete_api=False)
                if p.finished and (uid not in seen or p.terminate is not None):
                    del self._pods[uid]
                    self._done.add(uid)
            pods = list(self._pods.values())
        for p in pods:
            if p.sandbox and not p.finished:
                try:
                    p.write_hosts(self._hosts_for(p))
                except OSError as exc:
                    self._error(f"hosts of {p.key}: {exc!r}")

    def _sync_pod(self, pod: dict, my_nodes: list[dict], all_pods: list[dict]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        uid, ns, name = meta["uid"], meta["namespace"], meta["name"]
        node = spec.get("nodeName")
        with self._lock:
            worker = self._pods.get(uid)
        if worker is not None:
            worker.pod = pod
            if meta.get("deletionTimestamp"):
                if worker.finished:
                    self._delete_pod(ns, name, uid)
                else:
                    grace = meta.get("deletionGracePeriodSeconds")
                    grace = worker._grace() if grace is None else min(float(grace), self.max_grace)
                    worker.request_terminate(grace, delete_api=True)
            return
        if meta.get("deletionTimestamp"):
            if not node or node in self.nodes:
                self._delete_pod(ns, name, uid)
            return
        if uid in self._done or pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            return
        if not node:
            if not self._pvcs_bound(pod):
                return
            node = self.cluster._pick_node(pod, my_nodes, all_pods)
            if node is None:
                return
            self.cluster.api(
                "POST",
                f"/api/v1/namespaces/{ns}/pods/{name}/binding",
                {
                    "apiVersion": "v1",
                    "kind": "Binding",
                    "metadata": {"name": name, "namespace": ns, "uid": uid},
                    "target": {"apiVersion": "v1", "kind": "Node", "name": node},
                },
            )
            spec["nodeName"] = node  # counts its extended resources for the next pod of this pass
        if node not in self.nodes:
            return
        worker = _Pod(self, pod)
        with self._lock:
            if self._stopping.is_set():
                return
            self._pods[uid] = worker
        worker.start()

    def _delete_pod(self, ns: str, name: str, uid: str) -> None:
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
        try:
            self.cluster.api("DELETE", f"/api/v1/namespaces/{ns}/pods/{name}", body)
        except KubeError as exc:
            if exc.status not in (404, 409):
                raise

    def _pvcs_bound(self, pod: dict) -> bool:
        ns = pod["metadata"]["namespace"]
        for vol in pod["spec"].get("volumes") or []:
            claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
            if claim:
                pvc = self.cluster.get(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}", missing_ok=True)
                if not pvc or pvc.get("status", {}).get("phase") != "Bound":
                    return False
        return True

    def node_allocatable(self, node: str | None, resource: str) -> str | None:
        obj = self._node_objs.get(node or "") or {}
        return (obj.get("status", {}).get("allocatable") or {}).get(resource)

    def lookup_image(self, ref: str) -> ImageSpec | None:
        return lookup_image(self.images, ref)

    # -- addresses, names ----------------------------------------------------------------------------------------------
    def _alloc_ip(self, uid: str) -> str:
        with self._lock:
            if uid in self._ips:
                return self._ips[uid]
            used = set(self._ips.values())
            while True:
                n = self._next_ip
                self._next_ip = (self._next_ip + 1) % (8 * 250)
                ip = f"10.244.{100 + 8 * self._block + n // 250}.{n % 250 + 2}"
                if ip not in used:
                    self._ips[uid] = ip
                    return ip

    def _release_ip(self, uid: str) -> None:
        with self._lock:
            self._ips.pop(uid, None)

    @staticmethod
    def _ready_addresses(ep: dict | None) -> list[dict]:
        out = []
        for subset in (ep or {}).get("subsets") or []:
            out.extend(subset.get("addresses") or [])
        return out

    def _update_dns(self, services: list[dict], endpoints: list[dict]) -> None:
        """Name -> address records of every Service (kept in self._dns_lines, per Service namespace)."""
        eps = {(e["metadata"]["namespace"], e["metadata"]["name"]): e for e in endpoints}
        records: dict[str, list[tuple[str, str]]] = {}  # ns -> [(ip, service-or-hostname-prefix)]
        vip: dict[tuple[str, str], str] = {}
        for svc in services:
            ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
            spec = svc.get("spec") or {}
            if spec.get("type") == "ExternalName":
                continue
            if ns == "default" and name == "kubernetes":
                records.setdefault(ns, []).append((GATEWAY, name))
                continue
            addrs = self._ready_addresses(eps.get((ns, name)))
            ips = sorted({a["ip"] for a in addrs}, key=ipaddress.ip_address)
            if spec.get("clusterIP") == "None":
                for ip in ips:
                    records.setdefault(ns, []).append((ip, name))
                for a in addrs:
                    if a.get("hostname"):
                        records.setdefault(ns, []).append((a["ip"], f"{a['hostname']}.{name}"))
            elif ips:
                current = self._vip.get((ns, name))
                vip[(ns, name)] = current if current in ips else ips[0]
                records.setdefault(ns, []).append((vip[(ns, name)], name))
            else:  # resolves, but connections are refused (no kube-proxy endpoint)
                records.setdefault(ns, []).append((VOID_IP, name))
        with self._lock:
            self._vip = vip
            self._services = services
            self._endpoints = eps
            self._dns_lines = records

    def _hosts_for(self, pod: _Pod) -> str:
        host, fqdn = pod.hostname()
        lines = [
            "# Kubernetes-managed hosts file (tests/k8s/podrunner.py ProcessKubelet).",
            "127.0.0.1\tlocalhost",
            "::1\tlocalhost ip6-localhost ip6-loopback",
            "fe00::0\tip6-localnet",
            "fe00::1\tip6-allnodes",
            "fe00::2\tip6-allrouters",
            f"{pod.ip}\t{host}" + (f"\t{fqdn}" if fqdn else ""),
        ]
        with self._lock:
            records = {ns: list(r) for ns, r in self._dns_lines.items()}
        for ns in sorted(records):
            for ip, name in records[ns]:
                names = [f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local"]
                if ns == pod.ns:
                    names.insert(0, name)
                lines.append(f"{ip}\t{' '.join(names)}")
        return "\n".join(lines) + "\n"

    def _service_links(self, ns: str) -> dict[str, str]:
        """Docker-link style env of the namespace's Services (enableServiceLinks), host = the name's address."""
        env: dict[str, str] = {}
        with self._lock:
            services = [s for s in self._services if s["metadata"]["namespace"] == ns]
            vip = dict(self._vip)
        for svc in services:
            spec = svc.get("spec") or {}
            cluster_ip = spec.get("clusterIP")
            if not cluster_ip or cluster_ip == "None" or spec.get("type") == "ExternalName":
                continue
            name = svc["metadata"]["name"]
            if ns == "default" and name == "kubernetes":
                continue
            host = vip.get((ns, name), VOID_IP)
            prefix = name.upper().replace("-", "_")
            ports = spec.get("ports") or []
            if not ports:
                continue
            env[f"{prefix}_SERVICE_HOST"] = host
            env[f"{prefix}_SERVICE_PORT"] = str(ports[0]["port"])
            env[f"{prefix}_PORT"] = f"{ports[0].get('protocol', 'TCP').lower()}://{host}:{ports[0]['port']}"
            for p in ports:
                proto = p.get("protocol", "TCP")
                if p.get("name"):
                    env[f"{prefix}_SERVICE_PORT_{p['name'].upper().replace('-', '_')}"] = str(p["port"])
                base = f"{prefix}_PORT_{p['port']}_{proto}"
                env[base] = f"{proto.lower()}://{host}:{p['port']}"
                env[f"{base}_PROTO"] = proto.lower()
                env[f"{base}_PORT"] = str(p["port"])
                env[f"{base}_ADDR"] = host
        return env

    def _ensure_mountpoints(self, mounts: list[dict]) -> None:
        """Create missing top-level mountpoints on the host root (remembered machine-wide; removed, if still empty,
        when the last ProcessKubelet of the machine stops)."""
        targets = [m["target"].rstrip("/") or "/" for m in mounts]
        created: list[str] = []
        with self._lock:
            for m in mounts:
                target = m["target"].rstrip("/") or "/"
                if any(target != t and target.startswith(t + "/") for t in targets):
                    continue  # inside another volume: the launcher creates it there
                if os.path.lexists(target):
                    continue
                cur = ""
                parts = [p for p in target.split("/") if p]
                for i, comp in enumerate(parts):
                    cur = os.path.realpath(f"{cur}/{comp}") if i < len(parts) - 1 else f"{cur}/{comp}"
                    if os.path.lexists(cur):
                        continue
                    if i == len(parts) - 1 and not os.path.isdir(m["source"]):
                        Path(cur).touch()
                    else:
                        os.mkdir(cur, 0o755)
                    created.append(cur)
            self._created_points.extend(created)
        if created:
            with _machine_lock():
                record = STATE_DIR / "mountpoints.json"
                known = []
                with contextlib.suppress(OSError, ValueError):
                    known = json.loads(record.read_text())
                record.write_text(json.dumps(sorted(set(known) | set(created))))

    def _register_exec(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._execs.add(proc)

    def _unregister_exec(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._execs.discard(proc)

    # -- helpers for tests -------------------------------------------------------------------------------------------
    def _worker(self, ns: str, pod: str) -> _Pod:
        with self._lock:
            for p in self._pods.values():
                if p.ns == ns and p.name == pod and not p.finished:
                    return p
        raise KeyError(f"pod {ns}/{pod} is not running on this ProcessKubelet")

    def pod_netns(self, ns: str, pod: str) -> str:
        """Name of the network namespace of a pod this stand-in runs (or ran): ``ip netns exec NAME ...``."""
        with self._lock:
            if (ns, pod) in self._netns_of:
                return self._netns_of[(ns, pod)]
        raise KeyError(f"pod {ns}/{pod} never ran on this ProcessKubelet")

    def pod_pids(self, ns: str, pod: str) -> list[int]:
        """Host pids of the processes in the pod's network namespace (the launchers, containers, execs)."""
        try:
            netns = self.pod_netns(ns, pod)
        except KeyError:
            return []
        return [int(x) for x in _ip(["netns", "pids", netns], check=False).stdout.split()]

    def pod_ip(self, ns: str, pod: str) -> str:
        ip = self._worker(ns, pod).ip
        if not ip:
            raise KeyError(f"pod {ns}/{pod} has no IP yet")
        return ip

    def exec(
        self, ns: str, pod: str, command: list[str], container: str | None = None, timeout: float = 30
    ) -> subprocess.CompletedProcess:
        """Like ``kubectl exec``: run ``command`` in a running container (stdout+stderr in ``.stdout``)."""
        p = self._worker(ns, pod)
        c = next((x for x in p.ctrs if container in (None, x.name)), None)
        if c is None:
            raise KeyError(f"no container {container!r} in {ns}/{pod}")
        return p.exec_process(c, command, timeout)

    def logs(self, ns: str, pod: str, container: str | None = None, tail: int | None = None) -> str:
        """The container's stdout+stderr (all runs); ``container`` defaults to the pod's first container."""
        d = self.workdir / "pods" / f"{ns}_{pod}"
        if container is None:
            with self._lock:
                p = next((x for x in self._pods.values() if x.ns == ns and x.name == pod), None)
            if p and p.ctrs:
                container = p.ctrs[0].name
            else:
                found = sorted(d.glob("*.log"))
                if not found:
                    return ""
                container = found[0].stem
        return _tail(d / f"{container}.log", tail)

    def service_address(
        self, ns: str, name: str, port: int | str | None = None, timeout: float = 30
    ) -> tuple[str, int]:
        """(IP, port) where the test process reaches Service ``name`` at service port ``port`` (number or name;
        default the first): the ready endpoint the Service's name resolves to in pods, and the target port."""

        def resolve() -> tuple[str, int] | None:
            svc = self.cluster.get(f"/api/v1/namespaces/{ns}/services/{name}")
            ports = svc["spec"].get("ports") or []
            sp = next((p for p in ports if port is None or port in (p.get("port"), p.get("name"))), None)
            if sp is None:
                raise KeyError(f"service {ns}/{name} has no port {port!r}")
            ep = self.cluster.get(f"/api/v1/namespaces/{ns}/endpoints/{name}", missing_ok=True)
            with self._lock:
                chosen = self._vip.get((ns, name))
            for subset in (ep or {}).get("subsets") or []:
                ips = [a["ip"] for a in subset.get("addresses") or []]
                if not ips:
                    continue
                ep_port = next(
                    (p["port"] for p in subset.get("ports") or [] if p.get("name", "") == sp.get("name", "")), None
                )
                if ep_port is None:
                    continue
                return (chosen if chosen in ips else sorted(ips, key=ipaddress.ip_address)[0]), int(ep_port)
            return None

        return wait_for(resolve, timeout, 0.2, f"a ready endpoint of service {ns}/{name}")

    def service_url(
        self, ns: str, name: str, port: int | str | None = None, scheme: str = "http", timeout: float = 30
    ) -> str:
        ip, p = self.service_address(ns, name, port, timeout)
        return f"{scheme}://{ip}:{p}"

    def pids(self) -> list[int]:
        """Host pids of every process in one of THIS stand-in's pod network namespaces."""
        with self._lock:
            names = sorted(self._netns)
        out = []
        for name in names:
            out += [int(x) for x in _ip(["netns", "pids", name], check=False).stdout.split()]
        return out

    def wait_ready(self, ns: str, selector: str | None = None, count: int = 1, timeout: float = 60) -> list[dict]:
        """Wait until ``count`` pods (matching ``selector``) of ``ns`` are Ready; returns them."""

        def ready() -> list[dict] | None:
            params = {"labelSelector": selector} if selector else {}
            pods = [p for p in self.cluster.get(f"/api/v1/namespaces/{ns}/pods", **params)["items"] if pod_is_ready(p)]
            return pods if len(pods) >= count else None

        try:
            return wait_for(ready, timeout, 0.25, f"{count} ready pod(s) in {ns} ({selector or 'all'})")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.dump()}") from None

    def dump(self, log_lines: int = 15) -> str:
        """A summary for test failures: API pods of the namespaces, local containers with log tails, errors."""
        lines = [f"ProcessKubelet namespaces={sorted(self.namespaces)} nodes={self.nodes} workdir={self.workdir}"]
        try:
            for ns in sorted(self.namespaces):
                for pod in self.cluster.get(f"/api/v1/namespaces/{ns}/pods")["items"]:
                    st = pod.get("status") or {}
                    lines.append(
                        f"api pod {ns}/{pod['metadata']['name']}: phase={st.get('phase')} "
                        f"node={pod['spec'].get('nodeName')} ip={st.get('podIP')} ready={pod_is_ready(pod)} "
                        f"deleting={bool(pod['metadata'].get('deletionTimestamp'))}"
                    )
        except Exception as exc:
            lines.append(f"(listing pods failed: {exc!r})")
        with self._lock:
            pods = list(self._pods.values())
        lines.extend(p.summary(log_lines) for p in pods)
        if self.events:
            lines.append("events:")
            lines.extend(f"  {e}" for e in self.events[-20:])
        if self.errors:
            lines.append("errors:")
            lines.extend(f"  {e}" for e in self.errors[-10:])
        return "\n".join(lines)


__all__ = ["ImageSpec", "ProcessKubelet", "expand", "lookup_image", "parse_quantity", "venv_image"]
