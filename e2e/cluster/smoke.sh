#!/usr/bin/env bash
# Checks that the running local cluster works end to end: the node is Ready,
# a testapp pod gets a 198.18.0.0/16 address, resolves a Service through
# cluster DNS and reaches another pod through the Service's ClusterIP (by name
# and by IP), and the host reaches the ClusterIP too. Uses a namespace
# weft-smoke-<time> and deletes it afterwards. Exits non-zero on the first failure.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# A fresh namespace each run: cluster DNS caches answers for 30s.
NS=weft-smoke-$(date +%s)
export KUBECONFIG=$KUBECONFIG_PATH
[[ -f $KUBECONFIG ]] || die "no cluster: $KUBECONFIG is missing (run up.sh)"

ok() { log "ok: $*"; }
fail() { log "FAILED: $*"; exit 1; }

cleanup() { kubectl delete namespace "$NS" --ignore-not-found --wait=false >/dev/null 2>&1 || true; }
trap cleanup EXIT

kubectl wait --for=condition=Ready "node/$NODE_NAME" --timeout=60s >/dev/null ||
  fail "node $NODE_NAME is not Ready"
ok "node $NODE_NAME is Ready"

kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Namespace
metadata: {name: $NS}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: $NS, labels: {app: web}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: httpd
      image: $TESTAPP_IMAGE
      imagePullPolicy: IfNotPresent
      command: ["httpd", "-f", "-p", "8080", "-h", "/www"]
      ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: $NS}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: $NS}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: sh
      image: $TESTAPP_IMAGE
      imagePullPolicy: IfNotPresent
      command: ["sleep", "3600"]
EOF
kubectl -n "$NS" wait --for=condition=Ready pod/web pod/client --timeout=120s >/dev/null ||
  fail "test pods did not become Ready"
ok "pods from $TESTAPP_IMAGE are running"

ip=$(kubectl -n "$NS" get pod client -o jsonpath='{.status.podIP}')
[[ $ip == 198.18.* ]] || fail "pod IP $ip is not in $POD_CIDR"
ok "client pod IP $ip is in $POD_CIDR"

svc_ip=$(kubectl -n "$NS" get service web -o jsonpath='{.spec.clusterIP}')
[[ $svc_ip == 198.19.* ]] || fail "ClusterIP $svc_ip is not in $SERVICE_CIDR"
out=$(kubectl -n "$NS" exec client -- nslookup "web.$NS.svc.$CLUSTER_DOMAIN" 2>&1) ||
  fail "DNS lookup failed: $out"
grep -q "Address: $svc_ip" <<<"$out" || fail "DNS answered something else than $svc_ip: $out"
ok "web.$NS.svc.$CLUSTER_DOMAIN resolves to $svc_ip through cluster DNS"

# kube-proxy may need a moment to program a brand new Service.
try_get() { # URL: from the client pod, up to 30 tries
  local i body
  for ((i = 0; i < 30; i++)); do
    # (busybox wget -T crashes in Debian's static build; timeout does the job.)
    body=$(kubectl -n "$NS" exec client -- timeout 5 wget -qO- "$1" 2>/dev/null) || body=""
    [[ $body != "weft testapp" ]] || return 0
    sleep 1
  done
  return 1
}
try_get "http://web.$NS.svc.$CLUSTER_DOMAIN/" || fail "pod -> service name -> pod"
ok "pod -> http://web.$NS.svc.$CLUSTER_DOMAIN/ -> pod"
try_get "http://$svc_ip/" || fail "pod -> ClusterIP -> pod"
ok "pod -> http://$svc_ip/ (ClusterIP) -> pod"

body=$(curl -fsS --max-time 5 "http://$svc_ip/") || body=""
[[ $body == "weft testapp" ]] || fail "host -> ClusterIP -> pod"
ok "host -> http://$svc_ip/ -> pod"

log "smoke: all checks passed"
