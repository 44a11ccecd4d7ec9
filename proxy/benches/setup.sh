#!/usr/bin/env bash
# Installs what the data-plane benchmark compares against: Debian's haproxy.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../e2e/cluster/lib.sh"

if ! command -v haproxy >/dev/null; then
  need_root
  log "installing Debian's haproxy for the data-plane benchmark"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy >/dev/null
fi
