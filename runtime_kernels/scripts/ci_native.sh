#!/usr/bin/env bash
# Build the kernels with ASan+UBSan into build/asan and run the C test runner.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=build/asan
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Debug -DEDGEPACK_SANITIZE=ON -DEDGEPACK_PYTHON_LIB_DIR= \
      -DCMAKE_C_FLAGS="-O1 -Werror"
cmake --build "$BUILD" -j"$(nproc 2>/dev/null || echo 2)"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
for v in auto ref; do
  echo "== EDGEPACK_KERNELS=$v"
  EDGEPACK_KERNELS=$v "$BUILD/test_kernels"
done
echo "== micro-kernels, every variant against the reference"
"$BUILD/test_microkernels"
echo "== thread pool and split drivers (ASan/UBSan, then ThreadSanitizer)"
"$BUILD/test_threads"
TSAN="$BUILD-tsan"
cmake -S . -B "$TSAN" -DCMAKE_BUILD_TYPE=Debug -DEDGEPACK_PYTHON_LIB_DIR= -DEDGEPACK_BUILD_ORT=OFF \
      -DEDGEPACK_BUILD_TFLITE=OFF -DEDGEPACK_BUILD_BENCH=OFF -DCMAKE_C_FLAGS="-O1 -g -Werror -fsanitize=thread" \
      -DCMAKE_EXE_LINKER_FLAGS=-fsanitize=thread -DCMAKE_SHARED_LINKER_FLAGS=-fsanitize=thread >/dev/null
cmake --build "$TSAN" -j"$(nproc 2>/dev/null || echo 2)" --target test_threads >/dev/null
TSAN_OPTIONS=halt_on_error=1 "$TSAN/test_threads"
"$BUILD/edgepack-bench" kernels --sizes 64,256 --batch 1,3 --runs 3 --warmup 1 --json > /dev/null
echo "ci_native: OK"
