#!/usr/bin/env bash
# Builds tests/c/smoke.c the way firmware would: the static library found
# through pkg-config (runtime/unet_runtime.pc.in installed into a scratch
# prefix), checks the program has no executable stack, and runs it on each
# back end given (under valgrind too when UNET_VALGRIND=1).
#
# usage: smoke.sh LIBUNET_RUNTIME.a MODEL.onnx BACKEND...   (run by the Rust test `c_abi`)
set -euo pipefail
lib="$1" model="$2"
shift 2
here="$(cd "$(dirname "$0")" && pwd)"
runtime="$(cd "$here/../.." && pwd)"
for tool in pkg-config readelf "${CC:-cc}"; do
  command -v "$tool" >/dev/null || { echo "smoke.sh: $tool is not installed" >&2; exit 1; }
done

prefix="$(mktemp -d)"
trap 'rm -rf "$prefix"' EXIT
mkdir -p "$prefix/lib/pkgconfig" "$prefix/include"
# Only the static library in the prefix, as on a firmware sysroot.
cp "$lib" "$prefix/lib/libunet_runtime.a"
cp "$runtime/include/unet_runtime.h" "$prefix/include/"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$runtime/../Cargo.toml" | head -n1)"
sed -e "s|@libdir@|$prefix/lib|" -e "s|@includedir@|$prefix/include|" -e "s|@version@|$version|" \
  "$runtime/unet_runtime.pc.in" > "$prefix/lib/pkgconfig/unet_runtime.pc"
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
pkg-config --exists --print-errors unet_runtime
[ "$(pkg-config --modversion unet_runtime)" = "$version" ]
# shellcheck disable=SC2046 # word splitting of the flags is intended
"${CC:-cc}" -std=c99 -Wall -Wextra -Werror -pthread -o "$prefix/smoke" "$here/smoke.c" \
  $(pkg-config --static --cflags --libs unet_runtime)

# GNU_STACK must be RW, not RWE: an executable stack is what the linker
# gives a program when an object lacks .note.GNU-stack.
stack="$(readelf -lW "$prefix/smoke" | grep GNU_STACK || true)"
if [ -z "$stack" ] || echo "$stack" | awk '{ exit !($7 ~ /E/) }'; then
  echo "smoke.sh: the program has an executable stack: ${stack:-no GNU_STACK header}" >&2
  exit 1
fi

for backend in "$@"; do
  "$prefix/smoke" "$model" "$backend"
  if [ "${UNET_VALGRIND:-0}" = 1 ]; then
    valgrind --error-exitcode=99 --quiet "$prefix/smoke" "$model" "$backend"
  fi
done
