#!/usr/bin/env bash
# Fails when modules of a workspace library import each other in a circle (make lint).
# The graph comes from cargo-modules, pinned here and installed into the cache on first
# use (a few minutes: it builds rust-analyzer's crates); module_cycles.py reads it.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${WEFT_CACHE:-$HOME/.cache/weft}
VERSION=0.27.0 # the newest that builds with the workspace's Rust 1.95
export PATH="$CACHE/tools/bin:$PATH"
if [[ $(cargo modules --version 2>/dev/null) != "cargo-modules $VERSION" ]]; then
  echo "installing cargo-modules $VERSION into $CACHE/tools"
  cargo install --locked --quiet cargo-modules --version "$VERSION" \
    --root "$CACHE/tools" --target-dir "$CACHE/tools-target"
fi
status=0
for crate in weft-api weft-proxy-api weft-sidecar weft-operator weft-proxy; do
  graph=$(cargo modules dependencies -p "$crate" --lib --no-externs --no-sysroot --no-owns)
  if ! python3 tools/module_cycles.py <<<"$graph"; then
    echo "  in $crate"
    status=1
  fi
done
exit "$status"
