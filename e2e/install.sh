#!/usr/bin/env bash
# Installs the workspace's Weft into the local cluster exactly as a user would:
# builds the operator and proxy images from the debug binaries (no Docker, no
# registry), loads them into the cluster's containerd, then
#   kubectl apply --server-side --force-conflicts -k deploy/
#   kubectl replace -f examples/mesh.yaml   (when the Mesh `default` exists)
#   kubectl apply --server-side --force-conflicts -f examples/mesh.yaml
# and waits for the operator to be Ready. A rebuilt image keeps its tag, so the
# operator's pods are replaced when the image changed. Whatever a test or a person
# changed by hand (the operator scaled, the Mesh patched) is put back as deploy/ and
# examples/ say, so a run killed mid-way does not leak into the next one.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/cluster/lib.sh"
ROOT=$(cd "$CLUSTER_DIR/../.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
export KUBECONFIG=${KUBECONFIG:-$KUBECONFIG_PATH}
cd "$ROOT"

images=(weft-operator weft-proxy)
digest() { ctr --address "$CONTAINERD_SOCK" -n k8s.io images ls "name==weft.local/$1:dev" 2>/dev/null | awk 'NR==2 {print $3}'; }

before=$(digest weft-operator)
# The proxy image also carries iptables for `weft-proxy init`: the nft flavour (the
# kernel's), its save/restore names, and the match and target extensions it loads.
proxy_extra="/usr/sbin/iptables-save /usr/sbin/iptables-restore /usr/lib/x86_64-linux-gnu/xtables"
for bin in "${images[@]}"; do
  [[ -x $TARGET_DIR/debug/$bin ]] || die "$TARGET_DIR/debug/$bin is not built (make build)"
  extra=""
  [[ $bin != weft-proxy ]] || extra=$proxy_extra
  WEFT_IMAGE_EXTRA=$extra "$CLUSTER_DIR/images.sh" from-binary "weft.local/$bin:dev" "$TARGET_DIR/debug/$bin"
done
after=$(digest weft-operator)
# The gRPC application of the end-to-end tests.
"$CLUSTER_DIR/images.sh" from-binary weft.local/weft-e2e-grpc:dev "$TARGET_DIR/debug/weft-e2e-grpc"

# --force-conflicts: deploy/ wins over another field manager's change, such as
# `kubectl scale` of the operator, which a plain server-side apply refuses as a conflict.
log "kubectl apply --server-side --force-conflicts -k deploy/"
kubectl apply --server-side --force-conflicts -k deploy/
kubectl wait --for=condition=Established --timeout=60s crd/meshes.weft.dev >/dev/null
if [[ -n $before && $before != "$after" ]]; then
  log "the operator image changed; replacing its pods"
  kubectl -n weft-system delete pods -l app.kubernetes.io/name=weft-operator --wait=false
fi
kubectl -n weft-system rollout status deployment/weft-operator --timeout=180s
# The Mesh `default` becomes exactly examples/mesh.yaml. A server-side apply alone keeps
# the fields another field manager set (a `kubectl patch --type=merge` of a test killed
# mid-way, such as 1-minute lifetimes), so an existing Mesh is replaced first, which
# drops them; then it is applied server-side, as a GitOps tool applies it.
if [[ -n $(kubectl get mesh default --ignore-not-found -o name) ]]; then
  log "kubectl replace -f examples/mesh.yaml"
  # kubectl replace sends the resourceVersion it read, and the operator may write the
  # Mesh's status in between (a conflict): try again.
  for attempt in 1 2 3 4 5; do
    kubectl replace -f examples/mesh.yaml && break
    ((attempt < 5)) || die "cannot replace the Mesh default with examples/mesh.yaml"
    sleep 1
  done
fi
log "kubectl apply --server-side --force-conflicts -f examples/mesh.yaml"
kubectl apply --server-side --force-conflicts -f examples/mesh.yaml
