#!/usr/bin/env bash
# Cross-compile lib + tests + bench for aarch64 into build/aarch64 and run the tests (NEON and
# ref variants) under qemu-user. Needs gcc-aarch64-linux-gnu and qemu-user.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=build/aarch64
SYSROOT=${AARCH64_SYSROOT:-/usr/aarch64-linux-gnu}
for tool in aarch64-linux-gnu-gcc qemu-aarch64; do
  command -v "$tool" >/dev/null || { echo "ci_aarch64: $tool not found (apt-get install gcc-aarch64-linux-gnu qemu-user)" >&2; exit 2; }
done
cmake -S . -B "$BUILD" -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake -DCMAKE_BUILD_TYPE=Release \
      -DEDGEPACK_PYTHON_LIB_DIR= -DCMAKE_C_FLAGS="-Werror"
cmake --build "$BUILD" -j"$(nproc 2>/dev/null || echo 2)"
file "$BUILD/test_kernels" 2>/dev/null || true
out=$(qemu-aarch64 -L "$SYSROOT" "$BUILD/test_kernels")
echo "$out" | tail -n 5
echo "$out" | head -n 1 | grep -q neon || { echo "ci_aarch64: NEON variant missing" >&2; exit 1; }
EDGEPACK_KERNELS=ref qemu-aarch64 -L "$SYSROOT" "$BUILD/test_kernels" | tail -n 1
out=$(qemu-aarch64 -L "$SYSROOT" "$BUILD/test_microkernels") || { echo "$out"; exit 1; }
echo "$out" | grep -q "^neon    gemm" || { echo "ci_aarch64: NEON micro-kernels not tested" >&2; exit 1; }
echo "$out" | tail -n 1
qemu-aarch64 -L "$SYSROOT" "$BUILD/test_threads" | tail -n 1
qemu-aarch64 -L "$SYSROOT" "$BUILD/test_mfcc" | tail -n 1
qemu-aarch64 -L "$SYSROOT" "$BUILD/edgepack-bench" kernels --sizes 64 --batch 1 --runs 2 --warmup 1 --json > /dev/null
echo "ci_aarch64: OK (timings under qemu are emulated, not meaningful)"
