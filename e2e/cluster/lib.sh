# shellcheck shell=bash disable=SC2034
# Shared settings for the local cluster scripts (sourced, not run): versions,
# cache and state paths, the Go build environment and small helpers.
# Every path can be moved with WEFT_CACHE (default ~/.cache/weft).

CLUSTER_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$CLUSTER_DIR/versions.env"

WEFT_CACHE=${WEFT_CACHE:-$HOME/.cache/weft}

# Built binaries, one folder per component and version.
K8S_BIN=$WEFT_CACHE/bin/kubernetes-$K8S_VERSION
ETCD_BIN=$WEFT_CACHE/bin/etcd-$ETCD_VERSION
COREDNS_BIN=$WEFT_CACHE/bin/coredns-$COREDNS_VERSION
TOOLS_BIN=$WEFT_CACHE/bin/tools
# Image tarballs (OCI layout) made by images.sh.
IMAGES_DIR=$WEFT_CACHE/images

# The running cluster: certificates, configs, data, logs, pids. Removed by down.sh.
CLUSTER_STATE=$WEFT_CACHE/cluster
RUN_STATE=/run/weft-cluster
LOG_DIR=$CLUSTER_STATE/logs
PID_DIR=$RUN_STATE/pids
KUBECONFIG_PATH=$CLUSTER_STATE/admin.kubeconfig
CONTAINERD_SOCK=$RUN_STATE/containerd/containerd.sock

# Network plan: pods on a bridge in 198.18.0.0/16, services in 198.19.0.0/16,
# and a blackhole for the whole 198.18.0.0/15 so nothing is ever routed away.
NODE_NAME=weft-node
BRIDGE=weft0
NODE_IP=198.18.0.1
POD_CIDR=198.18.0.0/16
SERVICE_CIDR=198.19.0.0/16
KUBERNETES_SVC_IP=198.19.0.1
DNS_SVC_IP=198.19.0.10
CLUSTER_DOMAIN=cluster.local
BLACKHOLE_CIDR=198.18.0.0/15
APISERVER_PORT=6443
ETCD_CLIENT_PORT=12379
ETCD_PEER_PORT=12380

# Image names (all local; manifests use imagePullPolicy: IfNotPresent).
PAUSE_IMAGE=weft.local/pause:3.10
TESTAPP_IMAGE=weft.local/testapp:dev
COREDNS_IMAGE=weft.local/coredns:$COREDNS_VERSION

# Go: our own module and build caches, no toolchain switching, reproducible paths.
export GOMODCACHE=$WEFT_CACHE/go/mod
export GOCACHE=$WEFT_CACHE/go/build
export GOTOOLCHAIN=local
export GOFLAGS="-trimpath -buildvcs=false -modcacherw"

export PATH=$K8S_BIN:$ETCD_BIN:$COREDNS_BIN:$TOOLS_BIN:/usr/sbin:/sbin:$PATH

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

need_root() {
  [[ $(id -u) == 0 ]] || die "must run as root (it configures network, mounts and cgroups)"
}

# The Go toolchain must satisfy the wrapper modules' go directives (etcd and
# CoreDNS need Go 1.26).
need_go() {
  command -v go >/dev/null || die "go is not installed"
  local v
  v=$(go env GOVERSION)
  v=${v#go}
  local major=${v%%.*} rest=${v#*.}
  local minor=${rest%%.*}
  if (( major < 1 || (major == 1 && minor < 26) )); then
    die "Go >= 1.26 is needed, found $v"
  fi
}
