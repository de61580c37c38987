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
echo "== MFCC front end, every variant against a double-precision reference"
"$BUILD/test_mfcc"
echo "== thread pool and split drivers (ASan/UBSan, then ThreadSanitizer)"
"$BUILD/test_threads"
TSAN="$BUILD-tsan"
cmake -S . -B "$TSAN" -DCMAKE_BUILD_TYPE=Debug -DEDGEPACK_PYTHON_LIB_DIR= -DEDGEPACK_BUILD_ORT=OFF \
      -DEDGEPACK_BUILD_TFLITE=OFF -DEDGEPACK_BUILD_BENCH=OFF -DCMAKE_C_FLAGS="-O1 -g -Werror -fsanitize=thread" \
      -DCMAKE_EXE_LINKER_FLAGS=-fsanitize=thread -DCMAKE_SHARED_LINKER_FLAGS=-fsanitize=thread >/dev/null
cmake --build "$TSAN" -j"$(nproc 2>/dev/null || echo 2)" --target test_threads >/dev/null
TSAN_OPTIONS=halt_on_error=1 "$TSAN/test_threads"
"$BUILD/edgepack-bench" kernels --sizes 64,256 --batch 1,3 --runs 3 --warmup 1 --json > /dev/null
echo "== edgepack_kws_stream (ASan/UBSan): a stream through host ORT, raw PCM on stdin, malformed WAVs refused"
# without --lib: libedgepack_ort keeps its ORT registration for the process's life (LeakSanitizer would
# report it); the toy model needs no ai.edgepack op
PY=${PYTHON:-$(cd .. && pwd)/.venv/bin/python}
KWS="$BUILD/kws"
mkdir -p "$KWS"
ORT_LIB=$("$PY" -c "from edgepack.runtime_kernels.artifacts import onnxruntime_library_path as p; print(p())")
"$PY" - "$KWS" <<'EOF'
import struct
import sys

import numpy as np
from onnx import TensorProto, helper, numpy_helper, save

from edgepack.kws.wav import write_wav

out, rng = sys.argv[1], np.random.default_rng(0)
w = numpy_helper.from_array(rng.standard_normal((490, 12)).astype(np.float32) * 0.05, "w")
shape = numpy_helper.from_array(np.array([1, 490]), "shape")
nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"]), helper.make_node("MatMul", ["r", "w"], ["y"])]
g = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 49, 10])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 12])], initializer=[w, shape])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
m.ir_version = 9
save(m, f"{out}/linear.onnx")
audio = rng.standard_normal(16000 * 3).astype(np.float32) * 0.2
write_wav(f"{out}/stream.wav", audio)
open(f"{out}/stream.raw", "wb").write(np.round(audio * 32767).astype("<i2").tobytes() + b"\0")  # odd length
fmt = struct.pack("<HHIIHH", 1, 2, 16000, 64000, 4, 16)
head = b"RIFF" + struct.pack("<I", 36 + 4000) + b"WAVE" + b"fmt " + struct.pack("<I", 16)
open(f"{out}/empty.wav", "wb").close()
open(f"{out}/stereo.wav", "wb").write(head + fmt + b"data" + struct.pack("<I", 4000) + bytes(4000))
open(f"{out}/truncated.wav", "wb").write(open(f"{out}/stream.wav", "rb").read()[:3000])
EOF
KWS_RUN=("$BUILD/ort/edgepack_kws_stream" --ort "$ORT_LIB" --model "$KWS/linear.onnx")
"${KWS_RUN[@]}" --threshold 0.0 "$KWS/stream.wav" > /dev/null
KWS_BENCH=$("${KWS_RUN[@]}" --bench --hop-ms 60 "$KWS/stream.wav")
[[ $KWS_BENCH == *'"status": "ok"'* ]] || { echo "ci_native: kws_stream --bench: $KWS_BENCH" >&2; exit 1; }
set +e
"${KWS_RUN[@]}" - < "$KWS/stream.raw" > "$KWS/raw.out"; rc_raw=$?
for bad in empty stereo truncated; do
  "${KWS_RUN[@]}" "$KWS/$bad.wav" > "$KWS/$bad.out"
  rc=$?
  [ $rc = 2 ] && grep -q '"status": "error"' "$KWS/$bad.out" || { echo "ci_native: kws_stream on $bad.wav: exit $rc" >&2; exit 1; }
done
set -e
[ $rc_raw = 2 ] && grep -q "half a sample" "$KWS/raw.out" || { echo "ci_native: kws_stream on odd raw PCM: exit $rc_raw" >&2; exit 1; }
echo "== edgepack_ort_runner: decode at load under ASan/UBSan (the fuzz seeds, then cut short)"
PY=${PYTHON:-../.venv/bin/python}
ORT_LIB=$("$PY" -c 'from edgepack.runtime_kernels.artifacts import onnxruntime_library_path as p; print(p())')
mkdir -p "$BUILD/decode"
for seed in fuzz/corpus/fuzz_onnx_decode/*; do
  head -c "$(( $(wc -c < "$seed") * 2 / 3 ))" "$seed" > "$BUILD/decode/cut_$(basename "$seed")"
  for m in "$seed" "$BUILD/decode/cut_$(basename "$seed")"; do
    rc=0  # ORT itself leaks at exit (with --keep-fused too): leaks are not checked here
    ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 "$BUILD/ort/edgepack_ort_runner" --bench --runs 1 --warmup 0 \
      --ort-lib "$ORT_LIB" --custom-ops "$BUILD/ort/libedgepack_ort.so" "$m" > "$BUILD/decode/out.json" || rc=$?
    tail -n 1 "$BUILD/decode/out.json" | grep -q '"status": "\(ok\|error\)"' && [ $rc -le 2 ] \
      || { echo "ci_native: edgepack_ort_runner on $m: exit $rc" >&2; exit 1; }
  done
done
echo "ci_native: OK"
