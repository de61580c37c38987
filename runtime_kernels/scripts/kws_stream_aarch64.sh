#!/usr/bin/env bash
# Run edgepack_kws_stream for aarch64 (under qemu-user on other hosts) on one model and one stream:
#   kws_stream_aarch64.sh MODEL.onnx STREAM.wav [edgepack_kws_stream flags, e.g. --bench]
# Cross-builds the runner and libedgepack_ort into build/ort-aarch64 (incremental) and takes the
# arm64 ONNX Runtime from the npm package onnxruntime-node (cached in build/ort-npm). Prints the
# runner's output. `edgepack demo` calls it; under qemu the timings are emulated, not an ARM core's.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 MODEL.onnx STREAM.wav [flags]" >&2; exit 2; }
MODEL=$(realpath "$1") WAV=$(realpath "$2")
shift 2
cd "$(dirname "$0")/.."
RK=$(pwd)
SYSROOT=${AARCH64_SYSROOT:-/usr/aarch64-linux-gnu}
BUILD=build/ort-aarch64
ORT_NPM_DIR=build/ort-npm
source "$RK/scripts/ort_npm.sh"
for tool in cmake aarch64-linux-gnu-gcc qemu-aarch64; do
  [ "$(uname -m)" = aarch64 ] && [ "$tool" != cmake ] && continue
  command -v "$tool" >/dev/null || { echo "kws_stream_aarch64: $tool not found (scripts/setup-system.sh installs it)" >&2; exit 2; }
done
ORT_LIB=$(ort_npm_lib "linux/arm64/libonnxruntime.so*")
TC=()
[ "$(uname -m)" = aarch64 ] || TC=(-DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake)
cmake -S . -B "$BUILD" "${TC[@]}" -DCMAKE_BUILD_TYPE=Release -DEDGEPACK_PYTHON_LIB_DIR= \
      -DCMAKE_C_FLAGS="-Werror" --no-warn-unused-cli >/dev/null  # as ci_ort_aarch64.sh: one cached build
cmake --build "$BUILD" --target edgepack_ort edgepack_kws_stream -j"$(nproc 2>/dev/null || echo 2)" >/dev/null
source "$RK/scripts/arm_exec.sh"
trap 'rm -f "$ARM_CPUINFO"' EXIT
arm_exec "$BUILD/ort/edgepack_kws_stream" --ort "$ORT_LIB" --lib "$BUILD/ort/libedgepack_ort.so" \
  --model "$MODEL" "$@" "$WAV"
