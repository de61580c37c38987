#!/usr/bin/env bash
# Before/after kernel timings in one process: builds REV's libedgepack_kernels from
# `git archive REV runtime_kernels` (Release) into runtime_kernels/build/bench-base-<rev>, builds
# the current tree (`make kernels`), then runs `edgepack-bench kernels --baseline <REV's library>`
# with the remaining arguments (e.g. --sizes 256,1024,4096 --batch 1,8 --rounds 11 --markdown):
# both sides on the same inputs, outputs compared, timed in interleaved rounds.
# Usage: bash runtime_kernels/scripts/bench_before_after.sh REV [edgepack-bench kernels args...]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(cd .. && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ $# -ge 1 ] || { echo "usage: $0 REV [edgepack-bench kernels args...]" >&2; exit 2; }
REV=$1
shift
SHA=$(git -C "$ROOT" rev-parse --verify --quiet "$REV^{commit}") \
  || { echo "bench_before_after: '$REV' is not a commit of $ROOT" >&2; exit 2; }
git -C "$ROOT" cat-file -e "$SHA:runtime_kernels/CMakeLists.txt" 2>/dev/null \
  || { echo "bench_before_after: $REV has no runtime_kernels/CMakeLists.txt" >&2; exit 2; }
BASE=build/bench-base-${SHA:0:12}

# a commit's sources never change: extract once, so rebuilds stay incremental
if [ ! -f "$BASE/src/runtime_kernels/CMakeLists.txt" ]; then
  rm -rf "$BASE/src"
  mkdir -p "$BASE/src"
  git -C "$ROOT" archive "$SHA" runtime_kernels | tar -x -C "$BASE/src"
fi
echo "bench_before_after: building $REV (${SHA:0:12}) into runtime_kernels/$BASE" >&2
cmake -S "$BASE/src/runtime_kernels" -B "$BASE/build" -DCMAKE_BUILD_TYPE=Release -DEDGEPACK_PYTHON_LIB_DIR= \
      -DEDGEPACK_BUILD_TESTS=OFF -DEDGEPACK_BUILD_BENCH=OFF -DEDGEPACK_BUILD_ORT=OFF -DEDGEPACK_BUILD_TFLITE=OFF \
      --no-warn-unused-cli >/dev/null
cmake --build "$BASE/build" --target edgepack_kernels -j"$(nproc 2>/dev/null || echo 2)" >/dev/null
LIB=
for f in "$BASE"/build/libedgepack_kernels.so "$BASE"/build/libedgepack_kernels.dylib; do
  [ -f "$f" ] && { LIB=$f; break; }
done
[ -n "$LIB" ] || { echo "bench_before_after: no libedgepack_kernels in runtime_kernels/$BASE/build" >&2; exit 1; }

echo "bench_before_after: building the current tree (make kernels)" >&2
make -C "$ROOT" kernels >/dev/null
BENCH=$("$PY" -c 'from edgepack.runtime_kernels.artifacts import find_artifact; print(find_artifact("edgepack-bench"))')
# both sides dlopen'ed, so code placement is the same (a linked-vs-shared control run showed 0.96-1.16)
CURRENT=$("$PY" -c 'from edgepack.runtime_kernels.artifacts import find_artifact; print(find_artifact("libedgepack_kernels.so"))')
CPU=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo 2>/dev/null | head -n 1 || true)
echo "machine: $(uname -sm), ${CPU:-unknown CPU}, $(nproc 2>/dev/null || echo '?') cores, load average $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')"
echo "bench_before_after: $BENCH kernels --baseline runtime_kernels/$LIB --current $CURRENT $*" >&2
exec "$BENCH" kernels --baseline "$PWD/$LIB" --current "$CURRENT" "$@"
