#!/usr/bin/env bash
# Installs the node's Debian packages (containerd, runc, CNI plugins, iptables,
# ...) when missing and builds the cluster binaries from the Go module proxy
# through the wrapper modules k8s/, etcd/ and coredns/:
#   $WEFT_CACHE/bin/kubernetes-<v>/  kube-apiserver kube-controller-manager
#                                    kube-scheduler kube-proxy kubectl kubelet
#   $WEFT_CACHE/bin/etcd-<v>/etcd
#   $WEFT_CACHE/bin/coredns-<v>/coredns
# A version folder that exists is complete (it is renamed into place at the
# end), so it is skipped; Go's module and build caches live in $WEFT_CACHE/go.
# Usage: build.sh [--no-packages]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PACKAGES=(containerd runc containernetworking-plugins iptables iproute2 conntrack
  busybox-static openssl curl gcc libc6-dev util-linux mount kmod procps)

install_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [[ ${#missing[@]} -gt 0 ]] || return 0
  need_root
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The Debian package may start its own containerd through an init script;
  # the cluster runs a separate one with its own socket and state, so the
  # system one is left alone.
}

# build_into DIR CMD...: runs CMD with $OUT set to a scratch folder, then
# renames it to DIR, so DIR exists only when the build finished.
build_into() {
  local dir=$1
  shift
  if [[ -d $dir ]]; then
    log "cached: $dir"
    return 0
  fi
  local start=$SECONDS
  OUT=$dir.partial
  rm -rf "$OUT"
  mkdir -p "$OUT"
  "$@"
  mv "$OUT" "$dir"
  log "built $dir in $((SECONDS - start))s"
}

module_time() { # module@version -> its publication time (used as build date)
  go mod download -json "$1" | sed -n 's/^[[:space:]]*"Time": "\(.*\)",\{0,1\}$/\1/p'
}

build_kubernetes() {
  local date minor ldflags p
  date=$(cd "$CLUSTER_DIR/k8s" && module_time "k8s.io/kubernetes@$K8S_VERSION")
  minor=${K8S_VERSION#v1.}
  minor=${minor%%.*}
  ldflags="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=$date -X $p.gitCommit="
  done
  cd "$CLUSTER_DIR/k8s"
  log "building Kubernetes $K8S_VERSION control plane, kube-proxy and kubectl (static)"
  CGO_ENABLED=0 go build -ldflags "$ldflags" -o "$OUT/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kube-proxy \
    k8s.io/kubernetes/cmd/kubectl
  log "building kubelet $K8S_VERSION (cgo)"
  CGO_ENABLED=1 go build -ldflags "$ldflags" -o "$OUT/kubelet" k8s.io/kubernetes/cmd/kubelet
  "$OUT/kubectl" version --client | head -1 >&2
}

build_etcd() {
  cd "$CLUSTER_DIR/etcd"
  log "building etcd $ETCD_VERSION"
  CGO_ENABLED=0 go build -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION" \
    -o "$OUT/etcd" go.etcd.io/etcd/server/v3
  "$OUT/etcd" --version | head -1 >&2
}

build_coredns() {
  cd "$CLUSTER_DIR/coredns"
  log "building CoreDNS $COREDNS_VERSION"
  CGO_ENABLED=0 go build -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION" \
    -o "$OUT/coredns" .
  "$OUT/coredns" -version | head -1 >&2
}

main() {
  [[ ${1:-} == --no-packages ]] || install_packages
  need_go
  mkdir -p "$WEFT_CACHE/bin" "$GOMODCACHE" "$GOCACHE"
  build_into "$ETCD_BIN" build_etcd
  build_into "$COREDNS_BIN" build_coredns
  build_into "$K8S_BIN" build_kubernetes
}

main "$@"
