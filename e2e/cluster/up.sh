#!/usr/bin/env bash
# Brings up (or checks) the local single-node Kubernetes cluster:
# builds what is missing (build.sh, images.sh), sets up the pod bridge, routes,
# sysctls and a few iptables guard rules, makes a CA, certificates and
# kubeconfigs with openssl, then starts etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, containerd, kubelet and kube-proxy in
# the background, imports the local images and deploys CoreDNS. Waits until the
# node is Ready and cluster DNS answers. Idempotent: running components are left
# as they are, unless their command line or configuration changed (then they are
# restarted). Root only. Undo everything with down.sh.
#
# Outputs: kubeconfig $WEFT_CACHE/cluster/admin.kubeconfig (printed at the end),
# logs in $WEFT_CACHE/cluster/logs/<component>.log, pids in /run/weft-cluster/pids.
# Env: WEFT_CACHE (default ~/.cache/weft), WEFT_UP_TIMEOUT (seconds per wait, 180).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TIMEOUT=${WEFT_UP_TIMEOUT:-180}
PKI=$CLUSTER_STATE/pki
CONF=$CLUSTER_STATE/config
KUBECONFIGS=$CLUSTER_STATE/kubeconfigs

# Host paths that kubelet, containerd or the CNI plugins create outside the
# state folders; the ones missing before the first up.sh are removed by down.sh.
HOST_PATHS=(/var/lib/cni /var/log/containers /var/log/pods /run/containerd /var/lib/kubelet)
# Sysctls that up.sh, kubelet or kube-proxy may change; saved once, restored by down.sh.
SYSCTLS=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
  net.ipv4.conf.all.route_localnet net.netfilter.nf_conntrack_max vm.overcommit_memory
  vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes)

# wait_for WHAT CMD...: retries CMD every second until it succeeds or TIMEOUT.
wait_for() {
  local what=$1 start=$SECONDS
  shift
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS - start > TIMEOUT)); then
      log "timed out after ${TIMEOUT}s waiting for $what; logs are in $LOG_DIR"
      return 1
    fi
    sleep 1
  done
  log "$what is ready ($((SECONDS - start))s)"
}

# write_if_changed FILE: stdin to FILE, atomically and only when it differs,
# so components that watch their config (kube-proxy exits on any change,
# containerd reloads CNI) see no change on a second run.
write_if_changed() {
  local file=$1
  cat >"$file.tmp"
  if cmp -s "$file.tmp" "$file"; then
    rm -f "$file.tmp"
  else
    mv "$file.tmp" "$file"
  fi
}

# --- host preparation ---------------------------------------------------------

record_host_state() {
  mkdir -p "$CLUSTER_STATE" "$RUN_STATE" "$PID_DIR" "$LOG_DIR" "$CONF" "$KUBECONFIGS"
  if [[ ! -f $CLUSTER_STATE/created-paths ]]; then
    local p
    for p in "${HOST_PATHS[@]}"; do
      if [[ ! -e $p ]]; then echo "$p"; fi
    done >"$CLUSTER_STATE/created-paths.tmp"
    mv "$CLUSTER_STATE/created-paths.tmp" "$CLUSTER_STATE/created-paths"
  fi
  if [[ ! -f $CLUSTER_STATE/saved-sysctls ]]; then
    local s v
    for s in "${SYSCTLS[@]}"; do
      if v=$(sysctl -n "$s" 2>/dev/null); then printf '%s=%s\n' "$s" "$v"; fi
    done >"$CLUSTER_STATE/saved-sysctls.tmp"
    mv "$CLUSTER_STATE/saved-sysctls.tmp" "$CLUSTER_STATE/saved-sysctls"
  fi
}

setup_kernel() {
  # br_netfilter is built into some kernels (then /proc/sys/net/bridge exists).
  [[ -d /proc/sys/net/bridge ]] || modprobe br_netfilter 2>/dev/null ||
    log "warning: br_netfilter is not available; pod-to-service traffic on the bridge may fail"
  sysctl -qw net.ipv4.ip_forward=1
  if [[ -d /proc/sys/net/bridge ]]; then
    sysctl -qw net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1
  fi
  grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null ||
    die "the kernel has no overlay filesystem (containerd's overlayfs snapshotter needs it)"
}

setup_network() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
  fi
  ip addr replace "$NODE_IP/${POD_CIDR#*/}" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # Nothing in 198.18.0.0/15 may leave the machine: the bridge's own /16 is more
  # specific, services go to the bridge too (kube-proxy DNATs them to pods, so
  # the host and the API server reach ClusterIPs), the rest is dropped.
  ip route replace blackhole "$BLACKHOLE_CIDR"
  ip route replace "$SERVICE_CIDR" dev "$BRIDGE" src "$NODE_IP"

  # Guard rules (chain WEFT-ISOLATE in FORWARD, WEFT-INPUT in INPUT): pods are
  # never forwarded to or from another interface, and the API server and
  # kubelet ports answer only on loopback and the bridge.
  local chain
  for chain in WEFT-ISOLATE WEFT-INPUT; do
    iptables -w -N "$chain" 2>/dev/null || iptables -w -F "$chain"
  done
  iptables -w -A WEFT-ISOLATE -i "$BRIDGE" ! -o "$BRIDGE" -j DROP
  iptables -w -A WEFT-ISOLATE ! -i "$BRIDGE" -o "$BRIDGE" -j DROP
  iptables -w -A WEFT-INPUT -i lo -j RETURN
  iptables -w -A WEFT-INPUT -i "$BRIDGE" -j RETURN
  iptables -w -A WEFT-INPUT -p tcp -m multiport --dports "$APISERVER_PORT,10250" -j DROP
  iptables -w -C FORWARD -j WEFT-ISOLATE 2>/dev/null || iptables -w -I FORWARD 1 -j WEFT-ISOLATE
  iptables -w -C INPUT -j WEFT-INPUT 2>/dev/null || iptables -w -I INPUT 1 -j WEFT-INPUT
}

# --- certificates and kubeconfigs -------------------------------------------------

# new_ca NAME CN: a self-signed ECDSA CA.
new_ca() {
  [[ -f $PKI/$1.crt ]] && return 0
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$PKI/$1.key" -out "$PKI/$1.crt" -days 3650 -sha256 -subj "/CN=$2" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
}

# cert NAME CN O USAGE [SAN] [CA]: an ECDSA key and a certificate signed by CA
# (default: the cluster CA).
cert() {
  local name=$1 cn=$2 o=$3 usage=$4 san=${5:-} ca=${6:-ca}
  [[ -f $PKI/$name.crt ]] && return 0
  local subj="/CN=$cn"
  [[ -z $o ]] || subj+="/O=$o"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$usage"
    [[ -z $san ]] || echo "subjectAltName=$san"
  } >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 3650 -sha256 \
    -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

setup_pki() {
  mkdir -p "$PKI"
  chmod 700 "$PKI"
  [[ -f $PKI/ca.crt ]] || log "generating the cluster CAs and certificates in $PKI"
  new_ca ca weft-cluster-ca
  # The aggregation layer's CA (request-header authentication), as kubeadm does.
  new_ca front-proxy-ca weft-front-proxy-ca
  cert front-proxy-client front-proxy-client "" clientAuth "" front-proxy-ca
  local svc_dns="DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
  svc_dns+=",DNS:kubernetes.default.svc.$CLUSTER_DOMAIN,DNS:localhost"
  cert apiserver kube-apiserver "" serverAuth \
    "$svc_dns,IP:127.0.0.1,IP:$NODE_IP,IP:$KUBERNETES_SVC_IP"
  cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters clientAuth
  cert admin weft-admin system:masters clientAuth
  cert controller-manager system:kube-controller-manager "" clientAuth
  cert scheduler system:kube-scheduler "" clientAuth
  cert kube-proxy system:kube-proxy "" clientAuth
  cert kubelet-client "system:node:$NODE_NAME" system:nodes clientAuth
  cert kubelet-server "$NODE_NAME" "" serverAuth "DNS:$NODE_NAME,IP:$NODE_IP,IP:127.0.0.1"
  if [[ ! -f $PKI/sa.key ]]; then
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI/sa.key" 2>/dev/null
    openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"
  fi
  chmod 600 "$PKI"/*.key
}

# kubeconfig FILE CERT_NAME USER: a self-contained kubeconfig (data inlined).
kubeconfig() {
  local file=$1 name=$2 user=$3
  write_if_changed "$file" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: weft
    cluster:
      server: https://127.0.0.1:$APISERVER_PORT
      certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
  - name: $user
    user:
      client-certificate-data: $(base64 -w0 "$PKI/$name.crt")
      client-key-data: $(base64 -w0 "$PKI/$name.key")
contexts:
  - name: weft
    context:
      cluster: weft
      user: $user
current-context: weft
EOF
  chmod 600 "$file"
}

setup_kubeconfigs() {
  kubeconfig "$KUBECONFIG_PATH" admin weft-admin
  kubeconfig "$KUBECONFIGS/controller-manager.kubeconfig" controller-manager system:kube-controller-manager
  kubeconfig "$KUBECONFIGS/scheduler.kubeconfig" scheduler system:kube-scheduler
  kubeconfig "$KUBECONFIGS/kube-proxy.kubeconfig" kube-proxy system:kube-proxy
  kubeconfig "$KUBECONFIGS/kubelet.kubeconfig" kubelet-client "system:node:$NODE_NAME"
}

# --- component configuration --------------------------------------------------------

write_configs() {
  mkdir -p "$CONF/cni" "$CLUSTER_STATE/cni/ipam"
  write_if_changed "$CONF/containerd.toml" <<EOF
# containerd for the local cluster: own root, state and socket; cgroupfs (cgroup v1).
version = 2
root = "$CLUSTER_STATE/containerd"
state = "$RUN_STATE/containerd/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "$CONTAINERD_SOCK"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  netns_mounts_under_state_dir = true
  # Never set an OOM score below containerd's own: without CAP_SYS_RESOURCE
  # (some VMs and sandboxes drop it) runc fails on the sandbox's -998.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$RUN_STATE/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$CONF/cni"
    max_conf_num = 1
EOF

  write_if_changed "$CONF/cni/10-weft.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "weft",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$CLUSTER_STATE/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "rangeStart": "198.18.0.10",
                     "rangeEnd": "198.18.255.254", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF

  write_if_changed "$CONF/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $PKI/kubelet-server.crt
tlsPrivateKeyFile: $PKI/kubelet-server.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
imageServiceEndpoint: unix://$CONTAINERD_SOCK
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
clusterDNS: [$DNS_SVC_IP]
clusterDomain: $CLUSTER_DOMAIN
# No host resolver in pods: names outside the cluster are not resolvable.
resolvConf: ""
podLogsDirectory: $CLUSTER_STATE/pod-logs
protectKernelDefaults: false
# Lowering an OOM score needs CAP_SYS_RESOURCE, which this host may not have.
oomScoreAdj: 0
rotateCertificates: false
serverTLSBootstrap: false
# Local images cannot be pulled again, so the image GC never removes them,
# and a full disk does not evict test pods.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
maxPods: 110
EOF

  # The API server records every write to Weft's own objects (who, from which
  # address, which subresource) in $CLUSTER_STATE/audit.log, so the e2e tests can
  # count the operator's status writes and see which replica made them.
  write_if_changed "$CONF/audit-policy.yaml" <<EOF
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  verbs: [create, update, patch, delete]
  resources:
  - group: weft.dev
- level: None
EOF

  write_if_changed "$CONF/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $KUBECONFIGS/kube-proxy.kubeconfig
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE_NAME
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
nodePortAddresses: [primary]
detectLocalMode: ClusterCIDR
oomScoreAdj: 0
iptables:
  localhostNodePorts: false
  masqueradeAll: false
  syncPeriod: 30s
  minSyncPeriod: 1s
conntrack:
  # 0: leave the host's conntrack settings as they are.
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
}

# --- processes --------------------------------------------------------------------------

running() { # NAME: true when the recorded pid is alive and is still that binary
  local pidfile=$PID_DIR/$1.pid pid
  [[ -f $pidfile ]] || return 1
  pid=$(cat "$pidfile")
  [[ -d /proc/$pid ]] && grep -qa -- "$1" "/proc/$pid/cmdline"
}

# fingerprint CMD...: the command line plus the content of every file it
# names (configs, kubeconfigs, certificates).
fingerprint() {
  local a
  for a in "$@"; do
    printf '%s\n' "$a"
    [[ ! -f $a ]] || sha256sum "$a"
  done | sha256sum | cut -d' ' -f1
}

# start NAME CMD...: runs CMD detached (setsid), log to logs/NAME.log. A
# running NAME started with the same command and files is left alone; one
# started differently is stopped and started again.
# Sets STARTED to 1 when it started the process, 0 when it was running.
STARTED=0
start() {
  local name=$1 fp pid
  shift
  fp=$(fingerprint "$@")
  STARTED=0
  if running "$name"; then
    pid=$(cat "$PID_DIR/$name.pid")
    if [[ $(cat "$PID_DIR/$name.fingerprint" 2>/dev/null) == "$fp" ]]; then
      log "$name is running (pid $pid)"
      return 0
    fi
    log "restarting $name (its command or configuration changed)"
    kill -TERM "$pid"
    local i
    for ((i = 0; i < 75; i++)); do
      [[ -d /proc/$pid ]] || break
      sleep 0.2
    done
    [[ ! -d /proc/$pid ]] || kill -KILL "$pid"
  fi
  log "starting $name"
  echo "=== $(date -u +%FT%TZ) $*" >>"$LOG_DIR/$name.log"
  setsid "$@" </dev/null >>"$LOG_DIR/$name.log" 2>&1 &
  echo $! >"$PID_DIR/$name.pid"
  echo "$fp" >"$PID_DIR/$name.fingerprint"
  STARTED=1
}

kubectl_() { kubectl --kubeconfig "$KUBECONFIG_PATH" "$@"; }

start_etcd() {
  start etcd "$ETCD_BIN/etcd" --name weft --data-dir "$CLUSTER_STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "weft=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync --log-level warn
  wait_for etcd curl -fsS "http://127.0.0.1:$ETCD_CLIENT_PORT/health"
}

start_control_plane() {
  start kube-apiserver "$K8S_BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --bind-address 0.0.0.0 --secure-port "$APISERVER_PORT" --advertise-address "$NODE_IP" \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" \
    --authorization-mode Node,RBAC \
    --enable-admission-plugins NodeRestriction,MutatingAdmissionWebhook,ValidatingAdmissionWebhook \
    --allow-privileged=true \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --service-account-issuer "https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
    --api-audiences "https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
    --service-account-key-file "$PKI/sa.pub" \
    --service-account-signing-key-file "$PKI/sa.key" \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$PKI/ca.crt" \
    --kubelet-preferred-address-types InternalIP \
    --enable-aggregator-routing=true \
    --requestheader-client-ca-file "$PKI/front-proxy-ca.crt" \
    --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User \
    --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$PKI/front-proxy-client.crt" \
    --proxy-client-key-file "$PKI/front-proxy-client.key" \
    --audit-policy-file "$CONF/audit-policy.yaml" \
    --audit-log-path "$CLUSTER_STATE/audit.log" --audit-log-maxsize 100 --audit-log-maxbackup 1 \
    --profiling=false
  wait_for kube-apiserver kubectl_ get --raw /readyz

  start kube-controller-manager "$K8S_BIN/kube-controller-manager" \
    --kubeconfig "$KUBECONFIGS/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$KUBECONFIGS/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$KUBECONFIGS/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
    --use-service-account-credentials=true \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --allocate-node-cidrs=false --cluster-cidr "$POD_CIDR" \
    --service-cluster-ip-range "$SERVICE_CIDR" --cluster-name weft \
    --profiling=false

  start kube-scheduler "$K8S_BIN/kube-scheduler" \
    --kubeconfig "$KUBECONFIGS/scheduler.kubeconfig" \
    --authentication-kubeconfig "$KUBECONFIGS/scheduler.kubeconfig" \
    --authorization-kubeconfig "$KUBECONFIGS/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false --profiling=false
}

start_node() {
  mkdir -p "$RUN_STATE/containerd" "$CLUSTER_STATE/kubelet" "$CLUSTER_STATE/pod-logs"
  start containerd /usr/bin/containerd --config "$CONF/containerd.toml"
  if ((STARTED)); then
    wait_for containerd ctr --address "$CONTAINERD_SOCK" version
    # (A containerd that was already running got them from images.sh build.)
    "$CLUSTER_DIR/images.sh" import
  fi

  start kubelet "$K8S_BIN/kubelet" --config "$CONF/kubelet.yaml" \
    --kubeconfig "$KUBECONFIGS/kubelet.kubeconfig" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" \
    --root-dir "$CLUSTER_STATE/kubelet" --cert-dir "$CLUSTER_STATE/kubelet/pki"

  start kube-proxy "$K8S_BIN/kube-proxy" --config "$CONF/kube-proxy.yaml"

  wait_for "node $NODE_NAME to register" kubectl_ get node "$NODE_NAME"
  wait_for "node $NODE_NAME to be Ready" \
    kubectl_ wait --for=condition=Ready "node/$NODE_NAME" --timeout=5s
}

deploy_dns() {
  sed -e "s|@DNS_SVC_IP@|$DNS_SVC_IP|g" -e "s|@COREDNS_IMAGE@|$COREDNS_IMAGE|g" \
    -e "s|@CLUSTER_DOMAIN@|$CLUSTER_DOMAIN|g" "$CLUSTER_DIR/manifests/coredns.yaml" |
    write_if_changed "$CONF/coredns.yaml"
  kubectl_ apply -f "$CONF/coredns.yaml" >/dev/null
  wait_for "CoreDNS rollout" kubectl_ -n kube-system rollout status deployment/coredns --timeout=5s
  wait_for "cluster DNS ($DNS_SVC_IP)" \
    busybox nslookup "kubernetes.default.svc.$CLUSTER_DOMAIN" "$DNS_SVC_IP"
}

main() {
  need_root
  local start_time=$SECONDS
  "$CLUSTER_DIR/build.sh"
  "$CLUSTER_DIR/images.sh" build
  record_host_state
  setup_kernel
  setup_network
  setup_pki
  setup_kubeconfigs
  write_configs
  start_etcd
  start_control_plane
  start_node
  deploy_dns
  log "cluster is up in $((SECONDS - start_time))s; logs: $LOG_DIR"
  cat <<EOF

Cluster is ready. Point kubectl at it with:
  export KUBECONFIG=$KUBECONFIG_PATH
  export PATH=$K8S_BIN:\$PATH   # kubectl $K8S_VERSION
EOF
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  main "$@"
fi
