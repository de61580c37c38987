#!/usr/bin/env bash
# libedgepack_tflite_delegate: build the delegate's C test with ASan/UBSan (build/tflite-asan) and
# run it (a fake TfLiteContext drives the delegate and custom-op callbacks for every op, plus
# malformed options and shapes) and the decode-at-load entry point's C test on the seed models of
# fuzz/corpus/fuzz_tflite_decode (their truncations and corruptions included), then cross-compile
# the delegate for aarch64 with -Werror in build/tflite-aarch64 (both C tests also run under
# qemu-aarch64 when installed). The Python tests
# against real runtimes: tests/runtime_kernels/test_tflite_delegate.py (main venv: LiteRT;
# .venv-tflite214: tflite-runtime 2.14).
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=$(nproc 2>/dev/null || echo 2)

cmake -S . -B build/tflite-asan -DCMAKE_BUILD_TYPE=Debug -DEDGEPACK_SANITIZE=ON -DEDGEPACK_PYTHON_LIB_DIR= \
      -DEDGEPACK_BUILD_BENCH=OFF -DCMAKE_C_FLAGS="-Werror" --no-warn-unused-cli >/dev/null
cmake --build build/tflite-asan --target test_tflite_delegate test_tflite_decode edgepack_tflite_delegate \
      -j"$JOBS" >/dev/null
SEEDS=fuzz/corpus/fuzz_tflite_decode
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
./build/tflite-asan/tflite/test_tflite_delegate
./build/tflite-asan/tflite/test_tflite_decode "$SEEDS"

if [ "$(uname -m)" = aarch64 ]; then TC=(); else
  command -v aarch64-linux-gnu-gcc >/dev/null || { echo "ci_tflite: aarch64-linux-gnu-gcc not found (apt-get install gcc-aarch64-linux-gnu)" >&2; exit 2; }
  TC=(-DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake)
fi
cmake -S . -B build/tflite-aarch64 "${TC[@]}" -DCMAKE_BUILD_TYPE=Release -DEDGEPACK_PYTHON_LIB_DIR= \
      -DEDGEPACK_BUILD_BENCH=OFF -DCMAKE_C_FLAGS="-Werror" --no-warn-unused-cli >/dev/null
cmake --build build/tflite-aarch64 --target edgepack_tflite_delegate test_tflite_delegate test_tflite_decode \
      -j"$JOBS" >/dev/null
if [ ${#TC[@]} = 0 ]; then
  ./build/tflite-aarch64/tflite/test_tflite_delegate
  ./build/tflite-aarch64/tflite/test_tflite_decode "$SEEDS"
elif command -v qemu-aarch64 >/dev/null; then  # cheap: the C tests (NEON kernels) under emulation
  qemu-aarch64 -L "${AARCH64_SYSROOT:-/usr/aarch64-linux-gnu}" build/tflite-aarch64/tflite/test_tflite_delegate
  qemu-aarch64 -L "${AARCH64_SYSROOT:-/usr/aarch64-linux-gnu}" build/tflite-aarch64/tflite/test_tflite_decode "$SEEDS"
fi
echo "ci_tflite: OK (ASan/UBSan delegate and decode tests passed; aarch64 delegate built in build/tflite-aarch64)"
