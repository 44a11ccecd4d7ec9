#!/usr/bin/env bash
# Builds container images without Docker or a registry and loads them into the
# cluster's containerd (namespace k8s.io). An image is one uncompressed layer
# packed as an OCI image-layout tarball in $WEFT_CACHE/images/; up.sh imports
# every tarball found there, and a build while the cluster runs imports at once
# (also when the tarball was already up to date).
#
#   images.sh build                      pause, testapp and coredns images
#   images.sh from-binary NAME:TAG BINARY [ARG...]
#                                        image with BINARY (as its entrypoint,
#                                        followed by ARGs) plus exactly the shared
#                                        libraries ldd lists, /etc/passwd with
#                                        user weft (uid 2102, the image's user)
#                                        and /tmp. WEFT_IMAGE_EXTRA="/path ..."
#                                        adds more files or folders (and their
#                                        libraries) at the same paths.
#   images.sh import [TARBALL...]        import (default: all) into containerd
#   images.sh list                       images containerd holds
#   images.sh rm NAME:TAG...             forget an image (tarball and containerd)
#
# It can also be sourced for its functions (image_from_binary, image_import...).
# All names are under weft.local/; manifests use imagePullPolicy: IfNotPresent.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

WEFT_UID=2102
IMAGE_PATH_ENV="PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"

# --- small helpers -----------------------------------------------------------

json_str() { # one JSON string literal
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\t'/\\t}
  s=${s//$'\r'/\\r}
  printf '"%s"' "$s"
}

json_array() { # JSON array of strings from the arguments
  local out="" a
  for a in "$@"; do out+="${out:+,}$(json_str "$a")"; done
  printf '[%s]' "$out"
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }
size_of() { stat -c %s "$1"; }

# weft.local/testapp:dev -> weft.local_testapp_dev.tar
image_tarball() { printf '%s/%s.tar' "$IMAGES_DIR" "$(printf '%s' "$1" | tr '/:@' '___')"; }

# Minimal account files: root, weft (2102) and nobody.
write_etc() {
  local root=$1
  mkdir -p "$root/etc" "$root/tmp"
  chmod 1777 "$root/tmp"
  cat >"$root/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
weft:x:$WEFT_UID:$WEFT_UID:weft:/tmp:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
EOF
  cat >"$root/etc/group" <<EOF
root:x:0:
weft:x:$WEFT_UID:
nobody:x:65534:
EOF
  echo "hosts: files dns" >"$root/etc/nsswitch.conf"
}

is_elf() { [[ -f $1 && $(head -c 4 "$1" | od -An -c | tr -d ' ') == '177ELF' ]]; }

# Shared libraries (and the ELF interpreter) that ldd lists for a file.
elf_libs() {
  local out
  out=$(ldd "$1" 2>/dev/null) || return 0 # static: "not a dynamic executable"
  awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$out" | sort -u
}

# copy_path ROOT SRC: SRC (file or folder, symlinks followed) into ROOT at the
# same path, with the libraries of every ELF file in it.
copy_path() {
  local root=$1 src=$2 f lib
  [[ -e $src ]] || die "no such file: $src"
  if [[ -d $src ]]; then
    while IFS= read -r -d '' f; do copy_path "$root" "$f"; done < <(find -L "$src" -type f -print0)
    return 0
  fi
  mkdir -p "$root$(dirname "$src")"
  cp -L "$src" "$root$src"
  if is_elf "$src"; then
    for lib in $(elf_libs "$src"); do
      [[ -e $root$lib ]] || copy_path "$root" "$lib"
    done
  fi
}

# --- the image format ----------------------------------------------------------

# oci_image NAME:TAG ROOTFS USER ENTRYPOINT_JSON CMD_JSON
# Packs ROOTFS as one layer and writes the OCI image-layout tarball.
oci_image() {
  local name=$1 rootfs=$2 user=$3 entrypoint=$4 cmd=$5
  local tag=${name##*:} work blobs layer config manifest
  [[ $name == weft.local/* && $name == *:* ]] || die "image names are weft.local/NAME:TAG, got $name"
  work=$(mktemp -d "$IMAGES_DIR/.build.XXXXXX")
  blobs=$work/oci/blobs/sha256
  mkdir -p "$blobs"

  layer=$work/layer.tar
  local entries=()
  mapfile -t entries < <(cd "$rootfs" && ls -A)
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=gnu \
    -C "$rootfs" -cf "$layer" "${entries[@]}"
  local layer_digest layer_size
  layer_digest=$(sha256_of "$layer")
  layer_size=$(size_of "$layer")
  mv "$layer" "$blobs/$layer_digest"

  config=$work/config.json
  {
    printf '{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z",'
    printf '"config":{"User":%s,"Env":%s,"Entrypoint":%s,"Cmd":%s,"WorkingDir":"/"},' \
      "$(json_str "$user")" "$(json_array "$IMAGE_PATH_ENV")" "$entrypoint" "$cmd"
    printf '"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},' "$layer_digest"
    printf '"history":[{"created":"1970-01-01T00:00:00Z","created_by":"e2e/cluster/images.sh"}]}'
  } >"$config"
  local config_digest config_size
  config_digest=$(sha256_of "$config")
  config_size=$(size_of "$config")
  mv "$config" "$blobs/$config_digest"

  manifest=$work/manifest.json
  {
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
    printf '"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},' \
      "$config_digest" "$config_size"
    printf '"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
      "$layer_digest" "$layer_size"
  } >"$manifest"
  local manifest_digest manifest_size
  manifest_digest=$(sha256_of "$manifest")
  manifest_size=$(size_of "$manifest")
  mv "$manifest" "$blobs/$manifest_digest"

  printf '{"imageLayoutVersion":"1.0.0"}' >"$work/oci/oci-layout"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{%s,%s,%s,%s,%s}]}' \
    '"mediaType":"application/vnd.oci.image.manifest.v1+json"' \
    "\"digest\":\"sha256:$manifest_digest\"" "\"size\":$manifest_size" \
    '"platform":{"architecture":"amd64","os":"linux"}' \
    "\"annotations\":{\"io.containerd.image.name\":$(json_str "$name"),\"org.opencontainers.image.ref.name\":$(json_str "$tag")}" \
    >"$work/oci/index.json"

  local out
  out=$(image_tarball "$name")
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
    -C "$work/oci" -cf "$out.partial" oci-layout index.json blobs
  mv "$out.partial" "$out"
  rm -rf "$work"
  log "image $name -> $out ($((layer_size / 1024)) KiB layer)"
}

# cached KEYFILE KEY: true when the image was already built from the same inputs.
cached() { [[ -f $1 && -f ${1%.key}.tar && $(cat "$1") == "$2" ]]; }

# --- images ------------------------------------------------------------------------

# image_from_binary NAME:TAG BINARY [ARG...]
# The binary goes to /usr/local/bin/<its name> and is the entrypoint, with ARGs
# after it; the image runs as weft (2102:2102). Extra paths: WEFT_IMAGE_EXTRA.
image_from_binary() {
  [[ $# -ge 2 ]] || die "usage: image_from_binary NAME:TAG BINARY [ARG...]"
  local name=$1 bin=$2
  shift 2
  [[ -f $bin && -x $bin ]] || die "not an executable file: $bin"
  mkdir -p "$IMAGES_DIR"
  local tarball key keyfile f
  tarball=$(image_tarball "$name")
  keyfile=${tarball%.tar}.key
  key="v2 $(sha256_of "$bin") $(json_array "$@") ${WEFT_IMAGE_EXTRA:-}"
  for f in ${WEFT_IMAGE_EXTRA:-}; do [[ ! -f $f ]] || key+=" $(sha256_of "$f")"; done
  if cached "$keyfile" "$key"; then
    log "image $name is up to date"
  else
    local rootfs target
    rootfs=$(mktemp -d "$IMAGES_DIR/.rootfs.XXXXXX")
    write_etc "$rootfs"
    target=/usr/local/bin/$(basename "$bin")
    mkdir -p "$rootfs/usr/local/bin"
    cp -L "$bin" "$rootfs$target"
    chmod 0755 "$rootfs$target"
    local lib
    for lib in $(elf_libs "$bin"); do copy_path "$rootfs" "$lib"; done
    for f in ${WEFT_IMAGE_EXTRA:-}; do copy_path "$rootfs" "$f"; done
    oci_image "$name" "$rootfs" "$WEFT_UID:$WEFT_UID" "$(json_array "$target" "$@")" "[]"
    rm -rf "$rootfs"
    printf '%s' "$key" >"$keyfile"
  fi
  ! containerd_running || image_import "$tarball"
}

# The sandbox ("pause") image: a static C program, run as 65535 like upstream's.
image_pause() {
  local tarball keyfile key src=$CLUSTER_DIR/pause/pause.c
  tarball=$(image_tarball "$PAUSE_IMAGE")
  keyfile=${tarball%.tar}.key
  key="v2 $(sha256_of "$src") $(gcc -dumpfullversion)"
  if cached "$keyfile" "$key"; then
    log "image $PAUSE_IMAGE is up to date"
  else
    local rootfs
    rootfs=$(mktemp -d "$IMAGES_DIR/.rootfs.XXXXXX")
    gcc -static -O2 -Wall -Wextra -o "$rootfs/pause" "$src"
    strip "$rootfs/pause"
    oci_image "$PAUSE_IMAGE" "$rootfs" "65535:65535" '["/pause"]' '[]'
    rm -rf "$rootfs"
    printf '%s' "$key" >"$keyfile"
  fi
  ! containerd_running || image_import "$tarball"
}

# The test application: busybox (sh, wget, nc, nslookup, httpd, ...) and curl
# (HTTP/1.1 and HTTP/2 with prior knowledge) as root, with /www/index.html for
# `httpd -f -p 8080 -h /www`.
image_testapp() {
  local tarball keyfile key busybox=/bin/busybox curl=/usr/bin/curl
  if ! is_elf "$busybox" || ldd "$busybox" >/dev/null 2>&1; then
    die "$busybox is not the static busybox (install busybox-static)"
  fi
  tarball=$(image_tarball "$TESTAPP_IMAGE")
  keyfile=${tarball%.tar}.key
  key="v3 $(sha256_of "$busybox") $(sha256_of "$curl")"
  if cached "$keyfile" "$key"; then
    log "image $TESTAPP_IMAGE is up to date"
  else
    local rootfs applet
    rootfs=$(mktemp -d "$IMAGES_DIR/.rootfs.XXXXXX")
    write_etc "$rootfs"
    mkdir -p "$rootfs/bin" "$rootfs/www" "$rootfs/root"
    cp "$busybox" "$rootfs/bin/busybox"
    for applet in $("$busybox" --list); do
      [[ $applet == busybox || -e $rootfs/bin/$applet ]] || ln -s busybox "$rootfs/bin/$applet"
    done
    copy_path "$rootfs" "$curl"
    echo "weft testapp" >"$rootfs/www/index.html"
    oci_image "$TESTAPP_IMAGE" "$rootfs" "0:0" '[]' '["sh"]'
    rm -rf "$rootfs"
    printf '%s' "$key" >"$keyfile"
  fi
  ! containerd_running || image_import "$tarball"
}

image_coredns() {
  [[ -x $COREDNS_BIN/coredns ]] || die "coredns is not built (run build.sh)"
  image_from_binary "$COREDNS_IMAGE" "$COREDNS_BIN/coredns"
}

build_all() {
  mkdir -p "$IMAGES_DIR"
  rm -rf "$IMAGES_DIR"/.build.* "$IMAGES_DIR"/.rootfs.*
  image_pause
  image_testapp
  image_coredns
}

# --- containerd ----------------------------------------------------------------

ctr_k8s() { ctr --address "$CONTAINERD_SOCK" --namespace k8s.io "$@"; }

containerd_running() { [[ -S $CONTAINERD_SOCK ]] && ctr_k8s version >/dev/null 2>&1; }

image_import() {
  local t
  containerd_running || die "the cluster's containerd is not running (up.sh starts it)"
  for t in "$@"; do
    ctr_k8s images import "$t" >/dev/null
    log "imported $t"
  done
}

# image_remove NAME:TAG...: drops the tarball and, if the cluster runs, the image.
image_remove() {
  local name t
  for name in "$@"; do
    t=$(image_tarball "$name")
    rm -f "$t" "${t%.tar}.key"
    ! containerd_running || ctr_k8s images rm "$name" >/dev/null 2>&1 || true
    log "removed $name"
  done
}

import_all() {
  local tarballs=("$IMAGES_DIR"/*.tar)
  [[ -e ${tarballs[0]} ]] || die "no image tarballs in $IMAGES_DIR (run images.sh build)"
  image_import "${tarballs[@]}"
}

main() {
  local cmd=${1:-build}
  shift || true
  case $cmd in
    build) build_all ;;
    from-binary) image_from_binary "$@" ;;
    import) if [[ $# -gt 0 ]]; then image_import "$@"; else import_all; fi ;;
    list) ctr_k8s images ls -q | grep -v '^sha256:' ;;
    rm) image_remove "$@" ;;
    *) die "unknown command $cmd (build, from-binary, import, list, rm)" ;;
  esac
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  main "$@"
fi
