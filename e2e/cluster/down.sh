#!/usr/bin/env bash
# Tears down the local cluster that up.sh made: stops every pod and component
# process, unmounts everything under the state folders, removes the kubepods
# cgroups, the bridge, the routes, the iptables chains and rules (WEFT-*,
# KUBE-*, CNI-*), restores the sysctls it changed and deletes the state.
# Built binaries and images in $WEFT_CACHE stay. Safe to run twice.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root

# stop NAME...: SIGTERM the recorded pids together, SIGKILL what is left after 15s.
stop() {
  local name pid pids=() i alive
  for name in "$@"; do
    [[ -f $PID_DIR/$name.pid ]] || continue
    pid=$(cat "$PID_DIR/$name.pid")
    if [[ -d /proc/$pid ]] && grep -qa -- "$name" "/proc/$pid/cmdline"; then
      log "stopping $name (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
    rm -f "$PID_DIR/$name.pid"
  done
  for ((i = 0; i < 150; i++)); do
    alive=0
    for pid in "${pids[@]}"; do [[ ! -d /proc/$pid ]] || alive=1; done
    ((alive)) || return 0
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    [[ -d /proc/$pid ]] || continue
    log "pid $pid did not stop, killing it"
    kill -KILL "$pid" 2>/dev/null || true
  done
}

ctr_k8s() { ctr --address "$CONTAINERD_SOCK" --namespace k8s.io "$@"; }

# pids of every process in the kubepods cgroups (all pod processes).
pod_pids() {
  local d
  for d in /sys/fs/cgroup/*/kubepods; do
    if [[ -d $d ]]; then find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null; fi
  done | sort -un
}

# Kill every pod process, then delete the tasks and containers through
# containerd so the shims exit and clean up after themselves.
remove_containers() {
  local pids i id ids
  for ((i = 0; i < 50; i++)); do
    pids=$(pod_pids)
    [[ -n $pids ]] || break
    # shellcheck disable=SC2086 # one pid per word
    kill -KILL $pids 2>/dev/null || true
    sleep 0.2
  done
  [[ -S $CONTAINERD_SOCK ]] && ctr_k8s version >/dev/null 2>&1 || return 0
  ids=$(ctr_k8s tasks ls -q 2>/dev/null || true)
  for id in $ids; do ctr_k8s tasks delete --force "$id" >/dev/null 2>&1 || true; done
  for id in $(ctr_k8s containers ls -q 2>/dev/null || true); do
    ctr_k8s containers delete "$id" >/dev/null 2>&1 || true
  done
  [[ -z $ids ]] || log "removed $(wc -w <<<"$ids") containers"
}

# Last resort for processes left behind: shims of our containerd (found by the
# socket address on their command line) and pod processes.
kill_leftovers() {
  local pid pids=() f
  for f in /proc/[0-9]*/cmdline; do
    pid=${f#/proc/}
    pid=${pid%/cmdline}
    if tr '\0' ' ' <"$f" 2>/dev/null | grep -q -- "-address $CONTAINERD_SOCK"; then pids+=("$pid"); fi
  done
  while IFS= read -r pid; do pids+=("$pid"); done < <(pod_pids)
  if [[ ${#pids[@]} -gt 0 ]]; then
    log "killing ${#pids[@]} leftover processes"
    kill -KILL "${pids[@]}" 2>/dev/null || true
    sleep 1
  fi
}

unmount_all() {
  local m
  # Deepest first; lazily if something still holds a mount.
  while IFS= read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "warning: could not unmount $m"
  done < <(awk -v a="$CLUSTER_STATE/" -v b="$RUN_STATE/" \
    'index($5, a) == 1 || index($5, b) == 1 || $5 == substr(a, 1, length(a) - 1) { print $5 }' \
    /proc/self/mountinfo | awk '{ print length, $0 }' | sort -rn | cut -d' ' -f2-)
}

remove_cgroups() {
  local d
  for d in /sys/fs/cgroup/*/kubepods; do
    [[ -d $d ]] || continue
    find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || log "warning: could not remove all of $d"
  done
}

remove_network() {
  local link
  for link in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{ print $2 }' | cut -d@ -f1); do
    ip link del "$link" 2>/dev/null || true
  done
  ! ip link show "$BRIDGE" >/dev/null 2>&1 || ip link del "$BRIDGE"
  ip route del blackhole "$BLACKHOLE_CIDR" 2>/dev/null || true
  ip route del "$SERVICE_CIDR" 2>/dev/null || true
}

# Removes the chains made by up.sh, kubelet, kube-proxy and the CNI plugins
# (WEFT-*, KUBE-*, CNI-*) and every rule that mentions them; other rules stay.
remove_iptables() {
  local cmd table dump
  for cmd in iptables ip6tables; do
    command -v "$cmd-save" >/dev/null || continue
    for table in filter nat mangle raw; do
      dump=$("$cmd-save" -t "$table" 2>/dev/null) || continue
      grep -qE '(WEFT|KUBE|CNI)-' <<<"$dump" || continue
      grep -vE '(WEFT|KUBE|CNI)-' <<<"$dump" | "$cmd-restore" -w -T "$table"
      log "removed cluster rules from $cmd table $table"
    done
  done
}

restore_sysctls() {
  local f=$CLUSTER_STATE/saved-sysctls line
  [[ -f $f ]] || return 0
  while IFS= read -r line; do
    sysctl -qw "$line" 2>/dev/null || true
  done <"$f"
  log "restored sysctls"
}

remove_host_paths() {
  local f=$CLUSTER_STATE/created-paths p
  [[ -f $f ]] || return 0
  while IFS= read -r p; do
    [[ -n $p && -e $p ]] || continue
    if findmnt -rn -o TARGET | grep -q "^$p"; then
      log "warning: $p still has mounts, left in place"
    else
      rm -rf "$p"
    fi
  done <"$f"
}

main() {
  stop kube-proxy kubelet kube-scheduler kube-controller-manager
  remove_containers
  stop containerd
  kill_leftovers
  stop kube-apiserver
  stop etcd
  unmount_all
  remove_cgroups
  remove_network
  remove_iptables
  restore_sysctls
  remove_host_paths
  rm -rf "$CLUSTER_STATE" "$RUN_STATE"
  log "cluster removed (binaries and images stay in $WEFT_CACHE)"
}

main "$@"
