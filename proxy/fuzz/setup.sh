#!/usr/bin/env bash
# Installs what `make fuzz` needs: a nightly toolchain (libFuzzer's instrumentation)
# and cargo-fuzz, built into $WEFT_CACHE/tools.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../e2e/cluster/lib.sh"

tools="${WEFT_CACHE:-$HOME/.cache/weft}/tools"
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  log "installing a nightly Rust toolchain for cargo-fuzz"
  rustup toolchain install nightly --profile minimal
fi
if [[ ! -x $tools/bin/cargo-fuzz ]]; then
  log "building cargo-fuzz into $tools"
  cargo install --locked --quiet cargo-fuzz --root "$tools"
fi
