"""Container runtime half of the test kubelet stand-in (:mod:`tests.k8s.podrunner`): starts ONE container process.

NOT a container runtime for real use -- a test helper. The stand-in runs it as root, already inside the pod's
network namespace and a fresh mount namespace (``ip netns exec <netns> python pod_launcher.py run <spec.json>``, and
``ip netns exec`` has bind-mounted the pod's ``/etc/netns/<netns>/hosts`` and ``resolv.conf`` over ``/etc``).

``run SPEC``: in that mount namespace

1. opens every volume source (so a volume mounted over e.g. ``/tmp`` cannot hide a later source under ``/tmp``),
2. makes ``expose`` paths reachable for any uid (a tmpfs over a non-traversable ancestor such as ``/root`` holding
   only a bind mount of the exposed child: the venv's interpreter lives under ``/root/.pyenv``),
3. remounts ``/`` read-only (``readOnlyRootFilesystem``), then bind-mounts the volumes (sub-paths, ``readOnly``),
4. unshares a PID and a UTS namespace and forks the container's PID 1 (hostname = pod hostname, a fresh ``/proc``),
   which drops privileges (groups, gid, uid, capability bounding set, no_new_privs), chdirs and execs the command,
5. stays as a small supervisor outside that PID namespace: forwards SIGTERM & co. to the container's PID 1 (which,
   as in any container, ignores signals it has no handler for), and exits with its exit code (128+n if killed by
   signal n). When PID 1 exits the kernel kills everything left in its PID namespace, so nothing leaks.

It writes to the inherited fd ``status_fd`` (JSON): ``{"pid": <host pid of the container's PID 1>}`` once the exec
succeeded, or ``{"error": <kubelet-style reason>, "message": ...}`` (then exits 128) if it could not be started.

``exec SPEC|fd:N -- ARGV...``: run inside an existing container (entered with ``nsenter --target <pid> -m -n -p -u``)
with that container's env, user and working dir -- exec probes, ``preStop`` hooks, :meth:`ProcessKubelet.exec`. The
stand-in passes this script and the spec as inherited fds (``python /proc/self/fd/M exec fd:N``): the container's
volumes may hide their host paths (an emptyDir on /tmp, a volume on /work).

Standard library only; Python >= 3.10; Linux only.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import stat
import sys
import time

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
CLONE_NEWUTS = 0x04000000
CLONE_NEWPID = 0x20000000
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38

CAPS = {
    name: i
    for i, name in enumerate(
        "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE "
        "NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO SYS_CHROOT "
        "SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE "
        "AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ "
        "PERFMON BPF CHECKPOINT_RESTORE".split()
    )
}
# what containerd/Docker give a root container by default
DEFAULT_CAPS = (
    "CHOWN DAC_OVERRIDE FSETID FOWNER MKNOD NET_RAW SETGID SETUID SETFCAP SETPCAP NET_BIND_SERVICE SYS_CHROOT "
    "KILL AUDIT_WRITE".split()
)
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]


class StartError(Exception):
    def __init__(self, reason: str, message: str, exit_code: int = 128):
        super().__init__(message)
        self.reason = reason
        self.exit_code = exit_code


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {source} on {target}")


def prctl(option: int, arg: int) -> None:
    _check(_libc.prctl(option, arg, 0, 0, 0), f"prctl({option})")


def _cap_number(name: str) -> int | None:
    name = name.upper()
    return CAPS.get(name[4:] if name.startswith("CAP_") else name)


def unshare(flags: int) -> None:  # os.unshare is Python >= 3.12
    _check(_libc.unshare(flags), "unshare")


def reset_signals() -> None:
    """Python ignores SIGPIPE/SIGXFSZ; an exec'd program must not inherit that (nor our other dispositions)."""
    for sig in (*FORWARDED_SIGNALS, signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)


def drop_bounding_caps(spec: dict) -> None:
    """A root container keeps (default caps + add - drop) in its bounding set, so after exec it has just those."""
    if spec.get("privileged") or spec.get("uid", 0) != 0:
        return  # non-root: setuid() clears the capability sets anyway
    drop = {n.upper().removeprefix("CAP_") for n in spec.get("cap_drop") or []}
    keep = set() if "ALL" in drop else set(DEFAULT_CAPS) - drop
    keep |= {n.upper().removeprefix("CAP_") for n in spec.get("cap_add") or []}
    keep_nums = {_cap_number(n) for n in keep}
    for cap in range(64):
        if cap not in keep_nums and _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break  # EINVAL past the kernel's last capability


def become_container_user(spec: dict) -> None:
    """Capabilities, groups, gid, uid, no_new_privs, parent-death signal, working dir -- then exec spec-ready."""
    drop_bounding_caps(spec)
    uid, gid = int(spec.get("uid", 0)), int(spec.get("gid", 0))
    os.setgroups([int(g) for g in spec.get("groups") or []])
    os.setgid(gid)
    os.setuid(uid)
    if spec.get("no_new_privs"):
        prctl(PR_SET_NO_NEW_PRIVS, 1)
    workdir = spec.get("workdir") or "/"
    try:
        os.chdir(workdir)
    except OSError as exc:
        raise StartError(
            "StartError", f"chdir to cwd ({workdir!r}) set in config.json failed: {exc.strerror}"
        ) from None


def exec_command(argv: list[str], env: dict[str, str]) -> None:
    if not argv:
        raise StartError("StartError", "no command specified")
    try:
        os.execvpe(argv[0], argv, env)
    except FileNotFoundError:
        raise StartError("StartError", f'exec: "{argv[0]}": executable file not found in $PATH: unknown', 128) from None
    except PermissionError:
        raise StartError("StartError", f'exec: "{argv[0]}": permission denied: unknown', 128) from None
    except OSError as exc:
        raise StartError("StartError", f'exec: "{argv[0]}": {exc.strerror}: unknown', 128) from None


def _mkpoint(target: str, is_dir: bool) -> None:
    if os.path.lexists(target):
        return
    os.makedirs(os.path.dirname(target) or "/", exist_ok=True)
    if is_dir:
        os.mkdir(target)
    else:
        with open(target, "a"):
            pass


def expose_paths(paths: list[str], hidden: dict[str, int]) -> None:
    """Make each path reachable although an ancestor (e.g. /root, mode 0700) is not traversable by other users:
    that ancestor gets a tmpfs (0755) in which only the needed children are bind-mounted back."""
    for path in paths:
        cur = "/"
        for comp in [c for c in path.split("/") if c]:
            nxt = os.path.join(cur, comp)
            if cur in hidden:  # already replaced by our tmpfs: bring this child back unless done before
                if not os.path.lexists(nxt):
                    src = f"/proc/self/fd/{hidden[cur]}/{comp}"
                    _mkpoint(nxt, os.path.isdir(src))
                    mount(src, nxt, None, MS_BIND | MS_REC)
            elif cur != "/" and not os.stat(cur).st_mode & stat.S_IXOTH:
                hidden[cur] = os.open(cur, os.O_PATH)
                mount("tmpfs", cur, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
                src = f"/proc/self/fd/{hidden[cur]}/{comp}"
                _mkpoint(nxt, os.path.isdir(src))
                mount(src, nxt, None, MS_BIND | MS_REC)
            cur = nxt


def setup_mounts(spec: dict) -> None:
    mounts = sorted(spec.get("mounts") or [], key=lambda m: len([p for p in m["target"].split("/") if p]))
    fds = []
    for m in mounts:
        try:
            fds.append(os.open(m["source"], os.O_PATH))
        except OSError as exc:
            raise StartError("CreateContainerError", f"volume source {m['source']}: {exc.strerror}") from None
    hidden: dict[str, int] = {}
    expose_paths(spec.get("expose") or [], hidden)
    if spec.get("read_only_root"):
        mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY)
        for path in hidden:
            mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    for m, fd in zip(mounts, fds, strict=True):
        target = m["target"]
        src = f"/proc/self/fd/{fd}"
        try:
            _mkpoint(target, stat.S_ISDIR(os.stat(src).st_mode))
            mount(src, target, None, MS_BIND | MS_REC)
            # a bind mount inherits the source mount's flags -- the (read-only) root's for a source on it: set them
            mount(None, target, None, MS_REMOUNT | MS_BIND | (MS_RDONLY if m.get("read_only") else 0))
        except OSError as exc:
            raise StartError("CreateContainerError", f"mount {m['source']} at {target}: {exc}") from None
    for fd in [*fds, *hidden.values()]:
        os.close(fd)


_status_fd: int | None = None


def open_status(spec: dict) -> None:
    """The stand-in passes an fd of the status file, opened in ITS mount namespace: a file opened for writing here,
    through our copy of the root mount, would make the read-only remount of / fail with EBUSY."""
    global _status_fd
    if spec.get("status_fd") is not None:
        _status_fd = int(spec["status_fd"])
        os.set_inheritable(_status_fd, False)


def write_status(status: dict) -> None:
    global _status_fd
    if _status_fd is not None:
        os.write(_status_fd, json.dumps(status).encode())  # one write; the reader retries a partial JSON
        os.close(_status_fd)
        _status_fd = None


def run(spec: dict) -> int:
    # the stand-in's thread that started us gone (test process killed): we go, and with us (PDEATHSIG) PID 1
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if spec.get("parent_pid") and os.getppid() != spec["parent_pid"]:
        return 137
    try:
        open_status(spec)
        setup_mounts(spec)
        unshare(CLONE_NEWPID | CLONE_NEWUTS)
        if spec.get("hostname"):
            name = spec["hostname"].encode()
            _check(_libc.sethostname(name, len(name)), "sethostname")
    except StartError as exc:
        return fail(spec, exc.reason, str(exc), exc.exit_code)
    except OSError as exc:
        return fail(spec, "CreateContainerError", str(exc), 128)
    rfd, wfd = os.pipe2(os.O_CLOEXEC)
    for sig in FORWARDED_SIGNALS:  # until the child exists, ignore them rather than die without it
        signal.signal(sig, signal.SIG_IGN)
    pid = os.fork()
    if pid == 0:  # the container's PID 1
        os.close(rfd)
        try:
            reset_signals()
            mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            become_container_user(spec)
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # after setuid (which clears it): supervisor gone -> we go
            exec_command(spec["argv"], spec["env"])
        except StartError as exc:
            os.write(wfd, json.dumps({"error": exc.reason, "message": str(exc), "code": exc.exit_code}).encode())
        except BaseException as exc:
            os.write(wfd, json.dumps({"error": "StartError", "message": repr(exc), "code": 128}).encode())
        os._exit(128)
    os.close(wfd)

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, forward)
    chunks = []
    while True:
        chunk = os.read(rfd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(rfd)
    if chunks:
        err = json.loads(b"".join(chunks).decode())
        os.waitpid(pid, 0)
        return fail(spec, err["error"], err["message"], err.get("code", 128))
    write_status({"pid": pid, "started": time.time()})
    while True:
        _, status = os.waitpid(pid, 0)
        if os.WIFEXITED(status):
            return os.WEXITSTATUS(status)
        if os.WIFSIGNALED(status):
            return 128 + os.WTERMSIG(status)


def fail(spec: dict, reason: str, message: str, code: int) -> int:
    print(f"pod_launcher: {reason}: {message}", file=sys.stderr, flush=True)
    write_status({"error": reason, "message": message})
    return code


def exec_in_container(spec: dict, argv: list[str]) -> int:
    try:
        reset_signals()
        become_container_user(spec)
        exec_command(argv, spec["env"])
    except StartError as exc:
        print(f"pod_launcher: {exc}", file=sys.stderr, flush=True)
        return 126 if "permission" in str(exc) else 127
    return 0  # not reached


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "run":
        with open(argv[1]) as f:
            return run(json.load(f))
    if len(argv) >= 3 and argv[0] == "exec" and "--" in argv:
        # fd:N -- an fd the stand-in opened: a volume over e.g. /tmp may hide the spec's path in the container
        source = int(argv[1][3:]) if argv[1].startswith("fd:") else argv[1]
        with open(source) as f:
            spec = json.load(f)
        if sys.argv[0].startswith("/proc/self/fd/"):  # the script's fd: not for the command
            with contextlib.suppress(OSError, ValueError):
                os.close(int(sys.argv[0].rsplit("/", 1)[1]))
        return exec_in_container(spec, argv[argv.index("--") + 1 :])
    print("usage: pod_launcher.py run SPEC.json | exec SPEC.json|fd:N -- ARGV...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
