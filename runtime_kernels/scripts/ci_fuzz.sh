#!/usr/bin/env bash
# Build the libFuzzer harnesses (runtime_kernels/fuzz) and run each for FUZZ_SECONDS (default 12)
# from its committed seed corpus: first every committed input once (regressions), then new
# inputs. New corpus entries and crash artifacts go under build/fuzz, never into the repository.
# FUZZ_TARGETS (space-separated) picks targets; FUZZ_JOBS>1 runs that many workers per target.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_EACH=${FUZZ_SECONDS:-12}
TARGETS=${FUZZ_TARGETS:-"fuzz_flexmap fuzz_kernels fuzz_codebook fuzz_hyper fuzz_mfcc fuzz_tflite fuzz_tflite_decode fuzz_ort fuzz_onnx_decode fuzz_wav"}
OUT=build/fuzz
bash runtime_kernels/fuzz/build.sh "$OUT"
mkdir -p "$OUT/artifacts"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
for target in $TARGETS; do
  seeds=runtime_kernels/fuzz/corpus/$target
  work=$OUT/corpus/$target
  mkdir -p "$work"
  echo "== $target: ${SECONDS_EACH}s"
  log=$OUT/$target.log
  if ! "$OUT/$target" "$work" "$seeds" -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 \
       -max_len=4096 -print_final_stats=1 -artifact_prefix="$OUT/artifacts/$target-" \
       ${FUZZ_JOBS:+-jobs=$FUZZ_JOBS -workers=$FUZZ_JOBS} > "$log" 2>&1; then
    tail -n 60 "$log"
    echo "ci_fuzz: $target FAILED (log: $log; reproducer in $OUT/artifacts/; rerun: $OUT/$target <file>)" >&2
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -n 1)
  echo "   $runs runs, $rate exec/s, $cov"
done
echo "ci_fuzz: OK"
