#!/usr/bin/env bash
# Builds the `runnel` container image from the binary compiled on this machine: nothing is pulled.
#   scripts/image.sh            build the binary if needed, then the image runnel:latest
#   scripts/image.sh --chaos    also runnel:chaos = runnel:latest + libfaketime (clock-skew faults)
# The image is FROM scratch: the binary, the shared libraries `ldd` names, a passwd entry for the
# unprivileged user `runnel` (uid 10001) and an empty /data owned by it. See deploy/image/Dockerfile.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/env.sh"
cd "$here/.."

chaos=0
tag="${RUNNEL_IMAGE:-runnel:latest}"
for arg in "$@"; do
  case "$arg" in
    --chaos) chaos=1 ;;
    *) echo "image.sh: unknown argument '$arg' (takes --chaos)" >&2; exit 2 ;;
  esac
done

if ! command -v docker >/dev/null 2>&1; then
  echo "image.sh: docker is not installed" >&2
  exit 1
fi
if [ ! -x "$RUNNEL_BIN" ] || [ -z "${RUNNEL_IMAGE_NO_BUILD:-}" ]; then
  "$here/setup.sh"
  cargo build --bin runnel
fi

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT

# Copies a file and every shared library it loads (as ldd resolves them on this machine) into the
# staged root, at the same paths, so the dynamic loader finds them inside the image.
copy_with_libs() {
  local file="$1" dest="$2"
  mkdir -p "$stage/rootfs$(dirname "$dest")"
  cp -L "$file" "$stage/rootfs$dest"
  ldd "$file" | grep -o '/[^ ]*' | sort -u | while read -r lib; do
    [ -e "$lib" ] || continue
    mkdir -p "$stage/rootfs$(dirname "$lib")"
    cp -L "$lib" "$stage/rootfs$lib"
  done
}

copy_with_libs "$RUNNEL_BIN" /usr/local/bin/runnel
# Line tables are for debugging builds; the image carries symbols only (a third of the size).
strip --strip-debug "$stage/rootfs/usr/local/bin/runnel"
mkdir -p "$stage/rootfs/etc" "$stage/rootfs/tmp" "$stage/data"
echo "runnel:x:10001:10001:runnel:/data:/nonexistent" >"$stage/rootfs/etc/passwd"
echo "runnel:x:10001:" >"$stage/rootfs/etc/group"
# Name resolution of the peers' host names (compose service names): glibc reads nsswitch.conf.
echo "hosts: files dns" >"$stage/rootfs/etc/nsswitch.conf"
chmod 1777 "$stage/rootfs/tmp"
cp deploy/image/Dockerfile "$stage/Dockerfile"
docker build --quiet -t "$tag" "$stage" >/dev/null
echo "image: $tag ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"

if [ "$chaos" = 1 ]; then
  faketime_lib=/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1
  if [ ! -e "$faketime_lib" ]; then
    echo "image.sh: installing libfaketime (clock-skew faults)" >&2
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libfaketime >/dev/null
  fi
  rm -rf "$stage/rootfs"
  copy_with_libs "$faketime_lib" /usr/lib/faketime/libfaketime.so.1
  printf 'FROM %s\nUSER 0\nCOPY rootfs/ /\nUSER 10001:10001\n' "$tag" >"$stage/Dockerfile"
  docker build --quiet -t "${tag%%:*}:chaos" "$stage" >/dev/null
  echo "image: ${tag%%:*}:chaos (with libfaketime)"
fi
