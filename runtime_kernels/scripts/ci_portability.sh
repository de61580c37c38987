#!/usr/bin/env bash
# Portability checks for the mobile targets we cannot build natively here:
#  1. Apple arm64 (aarch64-macos) with `zig cc` from the ziglang wheel, a stand-in for Xcode:
#     every library and runner compiles (-Werror) and links as Mach-O (.dylib, libSystem,
#     undefined symbols are link errors). Nothing runs. The ORT runner dlopens libonnxruntime, so
#     it needs no ORT at link time; a probe linked against the darwin-arm64 libonnxruntime dylib of
#     the npm package onnxruntime-node checks that it exports OrtGetApiBase, the runner's entry.
#  2. 32-bit ARM with armeabi-v7a's ISA (gcc-arm-linux-gnueabihf, -march=armv7-a -mfpu=neon
#     -mfloat-abi=hard): everything builds, and the C tests (NEON and ref kernels, the TFLite
#     delegate) and a short bench run under qemu-arm. There is no 32-bit ARM libonnxruntime to
#     run the ORT runner with, so it is built only.
# Needs: the ziglang package (requirements.txt; or ZIG=/path/to/zig), gcc-arm-linux-gnueabihf,
# libc6-dev-armhf-cross, qemu-user, cmake, npm (first run only, shared cache with
# ci_ort_aarch64.sh). The Android NDK cannot be installed here; see runtime_kernels/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(cd .. && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3
JOBS=$(nproc 2>/dev/null || echo 2)
MAC=build/zig-macos-arm64
ARM=build/armv7
ARM_SYSROOT=${ARMV7_SYSROOT:-/usr/arm-linux-gnueabihf}
ORT_NPM_DIR=build/ort-npm
source scripts/ort_npm.sh
t0=$SECONDS

need() { command -v "$1" >/dev/null || { echo "ci_portability: $1 not found ($2)" >&2; exit 2; }; }
need cmake "apt-get install cmake"
need arm-linux-gnueabihf-gcc "apt-get install gcc-arm-linux-gnueabihf libc6-dev-armhf-cross"
need qemu-arm "apt-get install qemu-user"
if [ -z "${ZIG:-}" ]; then
  ZIG=$("$PY" -c 'import os, ziglang; print(os.path.join(os.path.dirname(ziglang.__file__), "zig"))' 2>/dev/null) \
    || { echo "ci_portability: zig not found (pip install -r requirements.txt, or set ZIG=/path/to/zig)" >&2; exit 2; }
fi
export ZIG
echo "ci_portability: zig $("$ZIG" version) at $ZIG"

macho_arm64() {  # Mach-O 64-bit (cf fa ed fe) for CPU type arm64 (0x0100000c)
  [ "$(od -An -tx1 -N8 "$1" | tr -d ' \n')" = "cffaedfe0c000001" ] \
    || { echo "ci_portability: $1 is not a Mach-O arm64 file" >&2; exit 1; }
}

# 1. aarch64-macos with zig cc
cmake -S . -B "$MAC" -DCMAKE_TOOLCHAIN_FILE=cmake/zig-aarch64-macos.cmake -DCMAKE_BUILD_TYPE=Release \
      -DEDGEPACK_PYTHON_LIB_DIR= -DCMAKE_C_FLAGS="-Werror" --no-warn-unused-cli >/dev/null
cmake --build "$MAC" -j"$JOBS" >/dev/null
for f in libedgepack_kernels.dylib libedgepack_kernels_static.a ort/libedgepack_ort.dylib \
         ort/edgepack_ort_runner tflite/libedgepack_tflite_delegate.dylib edgepack-bench test_kernels \
         test_microkernels tflite/test_tflite_delegate; do
  [ -f "$MAC/$f" ] || { echo "ci_portability: $MAC/$f was not built" >&2; exit 1; }
  case $f in *.a) ;; *) macho_arm64 "$MAC/$f" ;; esac
done
# the runtimes' entry points are exported, the static kernels inside are not (as on Linux)
exports() {  # $1: a dylib; $2...: symbols a program must be able to link from it
  local lib=$1 probe=$MAC/export_probe
  shift
  { for s in "$@"; do echo "void $s(void);"; done
    printf 'int main(void) {\n'; for s in "$@"; do echo "    $s();"; done; printf '    return 0;\n}\n'; } > "$probe.c"
  "$ZIG" cc -target aarch64-macos -o "$probe" "$probe.c" "$lib"
  printf 'void ep_variant(void);\nint main(void) { ep_variant(); return 0; }\n' > "$probe.c"
  if "$ZIG" cc -target aarch64-macos -o "$probe" "$probe.c" "$lib" 2> "$probe.err"; then
    echo "ci_portability: $lib exports the static kernels (ep_variant)" >&2; exit 1
  fi
  grep -q "undefined symbol: _ep_variant" "$probe.err" \
    || { echo "ci_portability: unexpected link error for $lib:" >&2; cat "$probe.err" >&2; exit 1; }
}
exports "$MAC/ort/libedgepack_ort.dylib" RegisterCustomOps edgepack_ort_set_limits
exports "$MAC/tflite/libedgepack_tflite_delegate.dylib" tflite_plugin_create_delegate \
  tflite_plugin_destroy_delegate edgepack_register_tflite_ops edgepack_tflite_registration
echo "ci_portability: aarch64-macos: kernels, ORT library + runner, TFLite delegate, bench, tests build and link"

ORT_DYLIB=$(ort_npm_lib "darwin/arm64/libonnxruntime.1.dylib")
PROBE=$MAC/ort_probe
printf 'typedef struct OrtApiBase OrtApiBase;\nconst OrtApiBase *OrtGetApiBase(void);\nint main(void) { return OrtGetApiBase() == 0; }\n' \
  > "$PROBE.c"
"$ZIG" cc -target aarch64-macos -Werror -o "$PROBE" "$PROBE.c" "$ORT_DYLIB"
macho_arm64 "$PROBE"
echo "ci_portability: aarch64-macos: links against $ORT_DYLIB (OrtGetApiBase)"

# 2. armv7 (armeabi-v7a ISA) with gcc-arm-linux-gnueabihf, tests under qemu-arm
cmake -S . -B "$ARM" -DCMAKE_TOOLCHAIN_FILE=cmake/armv7-linux-gnueabihf.cmake -DCMAKE_BUILD_TYPE=Release \
      -DEDGEPACK_PYTHON_LIB_DIR= -DCMAKE_C_FLAGS="-Werror" --no-warn-unused-cli >/dev/null
cmake --build "$ARM" -j"$JOBS" >/dev/null
run_arm() { qemu-arm -L "$ARM_SYSROOT" "$@"; }
out=$(run_arm "$ARM/test_kernels")
echo "$out" | head -n 1
echo "$out" | tail -n 1
echo "$out" | head -n 1 | grep -q "default neon" || { echo "ci_portability: armv7 NEON variant missing" >&2; exit 1; }
EDGEPACK_KERNELS=ref run_arm "$ARM/test_kernels" | tail -n 1
out=$(run_arm "$ARM/test_microkernels") || { echo "$out"; exit 1; }
echo "$out" | grep -q "^neon    gemm" || { echo "ci_portability: armv7 NEON micro-kernels not tested" >&2; exit 1; }
echo "$out" | tail -n 1
run_arm "$ARM/test_threads" | tail -n 1
run_arm "$ARM/tflite/test_tflite_delegate" | tail -n 1
run_arm "$ARM/edgepack-bench" kernels --sizes 64 --batch 1,3 --runs 2 --warmup 1 --json > /dev/null
[ -f "$ARM/ort/libedgepack_ort.so" ] && [ -f "$ARM/ort/edgepack_ort_runner" ] \
  || { echo "ci_portability: armv7 ORT library or runner was not built" >&2; exit 1; }
echo "ci_portability: OK in $((SECONDS - t0)) s (armv7 tests under qemu-arm; aarch64-macos build and link only)"
