#!/usr/bin/env bash
# Line/region coverage of the library sources reached by each harness's corpus: builds the
# harnesses with llvm source-based coverage into build/fuzz-cov, replays every input once
# (build/fuzz/corpus/<target> after a fuzz run, plus the committed seeds) and prints llvm-cov's
# per-file report. Usage: coverage.sh [target ...] (default: all four).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=build/fuzz-cov
TARGETS=${*:-"fuzz_flexmap fuzz_kernels fuzz_tflite fuzz_ort"}
FUZZ_COVERAGE=1 bash runtime_kernels/fuzz/build.sh "$OUT" > /dev/null
PROFDATA=$(command -v llvm-profdata || command -v llvm-profdata-14)
COV=$(command -v llvm-cov || command -v llvm-cov-14)
for target in $TARGETS; do
  dirs=(runtime_kernels/fuzz/corpus/"$target")
  [ -d build/fuzz/corpus/"$target" ] && dirs+=(build/fuzz/corpus/"$target")
  rm -f "$OUT/$target".profraw
  LLVM_PROFILE_FILE="$OUT/$target.profraw" "$OUT/$target" -runs=0 "${dirs[@]}" > "$OUT/$target.cov.log" 2>&1
  "$PROFDATA" merge -sparse "$OUT/$target.profraw" -o "$OUT/$target.profdata"
  echo "== $target (inputs: ${dirs[*]})"
  "$COV" report "$OUT/$target" -instr-profile="$OUT/$target.profdata" \
    -ignore-filename-regex='fuzz/|kernels_neon' | sed 's#.*/runtime_kernels/##'
done
