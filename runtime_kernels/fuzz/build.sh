#!/usr/bin/env bash
# Build the libFuzzer harnesses with clang (-fsanitize=fuzzer,address,undefined) straight from
# the C sources, no CMake: every src/*.c (the AVX2/AVX-512 files with their own flags), the
# TFLite delegate and the ORT library (-Werror for the harnesses only: the library has its own
# -Werror build). Usage: build.sh [OUT_DIR] (default build/fuzz).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(mkdir -p "${1:-$ROOT/../build/fuzz}" && cd "${1:-$ROOT/../build/fuzz}" && pwd)
cd "$ROOT"
CC=${CC_FUZZ:-clang}
command -v "$CC" >/dev/null || { echo "build.sh: $CC not found (apt-get install clang libclang-rt-dev)" >&2; exit 1; }
mkdir -p "$OUT/obj"

SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
# FUZZ_COVERAGE=1: also source-based coverage (llvm-cov), for coverage.sh
[ "${FUZZ_COVERAGE:-0}" = 1 ] && SAN="$SAN -fprofile-instr-generate -fcoverage-mapping"
CFLAGS="-std=c11 -g -O1 -Wall -Wextra $SAN -Iinclude -Isrc -Itflite -Iort -Ifuzz"
DEFS=""
x86=0
case "$(uname -m)" in x86_64|amd64) x86=1; DEFS="-DEP_WITH_AVX2=1 -DEP_WITH_AVX512=1" ;; esac

objs=()
compile() { # source, extra flags: instrumented for coverage (fuzzer-no-link) like the harness
  local src=$1 obj
  obj="$OUT/obj/$(echo "$src" | tr / _).o"
  shift
  # shellcheck disable=SC2086
  "$CC" $CFLAGS $DEFS -fsanitize=fuzzer-no-link "$@" -c "$src" -o "$obj"
  objs+=("$obj")
}
for src in src/*.c; do
  case "$src" in
    src/kernels_avx2.c) [ $x86 = 1 ] && compile "$src" -mavx2 -mfma ;;
    src/kernels_avx512.c) [ $x86 = 1 ] && compile "$src" -mavx512f -mavx512dq -mavx512vl -mavx2 -mfma ;;
    src/hyper.c) compile "$src" -ffp-contract=off ;;
    *) compile "$src" ;;
  esac
done
kernel_objs=("${objs[@]}")

library() { # the library sources of a folder: not its test programs or the ORT runner (they have main)
  for src in "$1"/*.c; do
    case "$src" in */test_*.c|ort/runner.c|ort/kws_stream.c) ;; *) compile "$src" ;; esac
  done
}
objs=()
library tflite
tflite_objs=("${objs[@]}")
objs=()
library ort
ort_objs=("${objs[@]}")

link() { # target, objects...
  local target=$1
  shift
  # shellcheck disable=SC2086
  "$CC" $CFLAGS -Werror $DEFS -fsanitize=fuzzer "fuzz/$target.c" "$@" -o "$OUT/$target" -lm -ldl
}
link fuzz_flexmap "$OUT/obj/tflite_flexmap.c.o"
link fuzz_kernels "${kernel_objs[@]}"
link fuzz_codebook "${kernel_objs[@]}"
link fuzz_hyper "${kernel_objs[@]}"
link fuzz_mfcc "${kernel_objs[@]}"
link fuzz_tflite "${tflite_objs[@]}" "${kernel_objs[@]}"
link fuzz_tflite_decode "${tflite_objs[@]}" "${kernel_objs[@]}"
link fuzz_ort "${ort_objs[@]}" "${kernel_objs[@]}"
link fuzz_onnx_decode "$OUT/obj/ort_decode_model.c.o" "${kernel_objs[@]}"
link fuzz_wav "$OUT/obj/ort_wav_reader.c.o"
echo "fuzz harnesses in $OUT: fuzz_flexmap fuzz_kernels fuzz_codebook fuzz_hyper fuzz_mfcc fuzz_tflite fuzz_tflite_decode fuzz_ort fuzz_onnx_decode fuzz_wav"
