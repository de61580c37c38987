#!/usr/bin/env bash
# libedgepack_ort on aarch64: cross-compile the ORT custom-op library and the C runner, fetch the
# arm64 libonnxruntime from the npm package onnxruntime-node (cached in build/ort-npm), run one
# model per ai.edgepack op under qemu-user (NEON and ref kernels; decode at load, the runner's
# default, and --keep-fused) and compare with host ORT.
#
# Needs gcc-aarch64-linux-gnu, qemu-user, cmake, npm (first run only) and the project venv
# (onnx, onnxruntime, numpy). ORT_NODE_VERSION picks the onnxruntime-node release.
# ORT's CPU detection parses /proc/cpuinfo; under qemu-user on x86 it sees the host's and
# crashes, so (as root) an ARM-looking cpuinfo is bind-mounted in a private mount namespace.
set -euo pipefail
cd "$(dirname "$0")/.."
RK=$(pwd)
ROOT=$(cd .. && pwd)
ORT_NPM_DIR=build/ort-npm
source "$RK/scripts/ort_npm.sh"
VERSION=$ORT_NODE_VERSION
SYSROOT=${AARCH64_SYSROOT:-/usr/aarch64-linux-gnu}
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3
BUILD=build/ort-aarch64
HOST=build/ort-host
WORK=$BUILD/parity
NATIVE=0
[ "$(uname -m)" = aarch64 ] && NATIVE=1

need() { command -v "$1" >/dev/null || { echo "ci_ort_aarch64: $1 not found ($2)" >&2; exit 2; }; }
need cmake "apt-get install cmake"
if [ $NATIVE = 0 ]; then
  need aarch64-linux-gnu-gcc "apt-get install gcc-aarch64-linux-gnu"
  need qemu-aarch64 "apt-get install qemu-user"
fi

# 1. arm64 libonnxruntime from onnxruntime-node (downloaded once, then reused)
ORT_LIB=$(ort_npm_lib "linux/arm64/libonnxruntime.so*")
echo "ci_ort_aarch64: arm64 ONNX Runtime $VERSION: $ORT_LIB"

# 2. builds: aarch64 (cross unless native) and host (for the reference results)
if [ $NATIVE = 1 ]; then TC=(); else TC=(-DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake); fi
cmake -S . -B "$BUILD" "${TC[@]}" -DCMAKE_BUILD_TYPE=Release -DEDGEPACK_PYTHON_LIB_DIR= \
      -DCMAKE_C_FLAGS="-Werror" --no-warn-unused-cli >/dev/null
cmake --build "$BUILD" --target edgepack_ort edgepack_ort_runner edgepack_kws_stream \
  -j"$(nproc 2>/dev/null || echo 2)" >/dev/null
cmake -S . -B "$HOST" -DCMAKE_BUILD_TYPE=Release -DEDGEPACK_PYTHON_LIB_DIR= -DCMAKE_C_FLAGS="-Werror" --no-warn-unused-cli >/dev/null
cmake --build "$HOST" --target edgepack_ort -j"$(nproc 2>/dev/null || echo 2)" >/dev/null

# 3. models, one per op (weights as initializers; one with weights as graph inputs)
rm -rf "$WORK" && mkdir -p "$WORK"
"$PY" - "$WORK" <<'EOF'
import sys
import numpy as np
from onnx import TensorProto, helper, numpy_helper, save

out, rng = sys.argv[1], np.random.default_rng(3)
def model(name, op, x_shape, weights, attrs, as_inputs=False):
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x_shape))]
    inits, names = [], ["X"]
    for wname, w in weights:
        names.append(wname if w is not None else "")
        if w is None:
            continue
        if as_inputs:
            inputs.append(helper.make_tensor_value_info(wname, TensorProto.FLOAT, list(w.shape)))
        else:
            inits.append(numpy_helper.from_array(w.astype(np.float32), wname))
    node = helper.make_node(op, names, ["Y"], domain="ai.edgepack", name=name, **attrs)
    g = helper.make_graph([node], name, inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                          initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.edgepack", 1)])
    m.ir_version = 9
    save(m, f"{out}/{name}.onnx")
r = lambda *s: rng.standard_normal(s).astype(np.float32)
hm = dict(in_features=37, out_features=19, num_hashes=3, seed=77, signed=1)
model("hashed_expand", "HashedMatMul", (4, 37), [("buckets", r(101)), ("recon", r(4 * 5 + 1)), ("bias", r(19))],
      dict(hm, mode=0))
model("hashed_stream", "HashedMatMul", (2, 3, 37), [("buckets", r(101)), ("recon", r(4 * 5 + 1))], dict(hm, mode=1))
model("hashed_k1_inputs", "HashedMatMul", (3, 37), [("buckets", r(50)), ("recon", None), ("bias", r(19))],
      dict(hm, num_hashes=1), as_inputs=True)
model("circulant", "CirculantMatMul", (5, 45), [("blocks", r(3, 3, 16)), ("bias", r(40))],
      dict(in_features=45, out_features=40))
model("ldr", "LDRMatMul", (2, 2, 30), [("G", r(2, 32)), ("H", r(2, 32)), ("bias", r(27))],
      dict(in_features=30, out_features=27))
from onnx import load  # decode at load with the weights in external data (model.onnx.data)
save(load(f"{out}/hashed_expand.onnx"), f"{out}/hashed_expand_ext.onnx", save_as_external_data=True,
     all_tensors_to_one_file=True, location="hashed_expand_ext.onnx.data", size_threshold=0)
EOF

# 4. run under qemu (or natively), both kernel variants
ARM_CPUINFO=$WORK/cpuinfo
source "$RK/scripts/arm_exec.sh"
run_arm() {
  arm_exec "$BUILD/ort/edgepack_ort_runner" --ort "$ORT_LIB" --lib "$BUILD/ort/libedgepack_ort.so" --model "$@"
}

for m in "$WORK"/*.onnx; do
  for variant in neon ref; do
    EDGEPACK_KERNELS=$variant run_arm "$m" > "${m%.onnx}.$variant.json"
  done
  run_arm "$m" --keep-fused > "${m%.onnx}.fused.json"
done

# 5. compare with host ORT + host libedgepack_ort, same deterministic feed as the runner
"$PY" - "$WORK" "$RK/$HOST/ort/libedgepack_ort.so" <<'EOF'
import glob
import json
import sys

import numpy as np
import onnxruntime as ort

import os
work, fails = sys.argv[1], 0
for path in sorted(glob.glob(f"{work}/*.onnx")):
    so = ort.SessionOptions()
    so.register_custom_ops_library(sys.argv[2])
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feeds = {}
    for k, meta in enumerate(sess.get_inputs()):
        shape = [d if isinstance(d, int) and d >= 0 else 1 for d in meta.shape]
        i = np.arange(int(np.prod(shape)), dtype=np.int64)
        feeds[meta.name] = (((i * 7919 + (k + 1) * 104729) % 2001 - 1000) / 1000).astype(np.float32).reshape(shape)
    want = sess.run(None, feeds)[0]
    for variant in ("neon", "ref", "fused"):
        result = json.load(open(path[:-5] + f".{variant}.json"))
        decoded = 1 if "hashed_expand" in path and variant != "fused" else 0  # decode at load, or not
        if result["decoded_nodes"] != decoded:
            fails += 1
            print(f"  {os.path.basename(path)} {variant}: {result['decoded_nodes']} nodes decoded, not {decoded}")
        got = result["outputs"]["Y"]
        arr = np.array(got["data"], np.float32).reshape(got["shape"])
        err = float(np.abs(arr - want).max()) if arr.shape == want.shape else float("inf")
        ok = err <= 1e-4 * max(1.0, float(np.abs(want).max()))
        fails += not ok
        print(f"  {os.path.basename(path):24s} {variant:5s} shape {tuple(arr.shape)} max|diff| {err:.2e} "
              f"{'ok' if ok else 'MISMATCH'}")
sys.exit(1 if fails else 0)
EOF
# 6. the runner's --bench mode (the harness's fallback for devices without Python) on one model
BENCH=$(arm_exec "$BUILD/ort/edgepack_ort_runner" --bench --ort-lib "$ORT_LIB" \
          --custom-ops "$BUILD/ort/libedgepack_ort.so" --runs 3 --warmup 1 "$WORK/hashed_expand.onnx") \
  || { echo "ci_ort_aarch64: --bench failed: $BENCH" >&2; exit 1; }
"$PY" - "$BENCH" <<'EOF'
import json
import sys

result = json.loads(sys.argv[1].strip().splitlines()[-1])
if result.get("status") != "ok" or len(result.get("latencies_ms", [])) < 3:
    sys.exit(f"ci_ort_aarch64: --bench did not report status ok with 3 runs: {result}")
print(f"  --bench: {result['runtime_version']}, input {result['input_shape']}, "
      f"{len(result['latencies_ms'])} timed runs: status ok")
EOF
# 7. the streaming keyword runner (edgepack_kws_stream) under qemu: a toy model ('yes' when the last half
#    second is loud) on a 13 s stream with three loud seconds; the detections must match the Python
#    detector (kws/detector.py, host ORT + host libedgepack_ort), then its --bench mode once
KWS=$WORK/kws
mkdir -p "$KWS"
EDGEPACK_LIB_DIR="$RK/$HOST/ort" "$PY" - "$KWS" <<'EOF'
import json
import sys

import numpy as np
from onnx import TensorProto, helper, numpy_helper, save

from edgepack.kws.detector import detect_stream
from edgepack.kws.frontend import mfcc_numpy
from edgepack.kws.wav import read_wav, write_wav

out, rng = sys.argv[1], np.random.default_rng(1)
quiet, loud = (mfcc_numpy(rng.standard_normal(16000) * a)[:, 0].mean() for a in (0.003, 0.3))
w, b = np.zeros((1, 12), np.float32), np.full((1, 12), -10.0, np.float32)
w[0, 0], w[0, 2], b[0, 0], b[0, 2] = -2.0, 2.0, 0.0, 0.0  # logits: silence -z, yes z, the rest -10
consts = {"starts": np.array([25, 0]), "ends": np.array([49, 1]), "axes": np.array([2, 3]),
          "shape": np.array([1, 1]), "t": np.array([[(quiet + loud) / 2]], np.float32), "w": w, "b": b}
nodes = [helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["s"]),
         helper.make_node("ReduceMean", ["s"], ["m"], axes=[1, 2, 3], keepdims=1),
         helper.make_node("Reshape", ["m", "shape"], ["r"]), helper.make_node("Sub", ["r", "t"], ["d"]),
         helper.make_node("Mul", ["d", "w"], ["dw"]), helper.make_node("Add", ["dw", "b"], ["y"])]
g = helper.make_graph(nodes, "energy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 49, 10])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 12])],
                      initializer=[numpy_helper.from_array(v, k) for k, v in consts.items()])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
m.ir_version = 9
save(m, f"{out}/energy.onnx")
audio = (rng.standard_normal(16000 * 13) * 0.003).astype(np.float32)
for s in (2, 6, 10):
    audio[s * 16000:(s + 1) * 16000] = rng.standard_normal(16000) * 0.3
write_wav(f"{out}/stream.wav", audio)
want = [d.as_dict() for d in detect_stream(f"{out}/energy.onnx", read_wav(f"{out}/stream.wav"))[0]]
if [d["label"] for d in want] != ["yes"] * 3:
    sys.exit(f"ci_ort_aarch64: the Python detector found {want} in the toy stream, not three 'yes'")
json.dump(want, open(f"{out}/want.json", "w"))
EOF
arm_exec "$BUILD/ort/edgepack_kws_stream" --ort "$ORT_LIB" --lib "$BUILD/ort/libedgepack_ort.so" \
  --model "$KWS/energy.onnx" "$KWS/stream.wav" > "$KWS/got.jsonl"
KWS_BENCH=$(arm_exec "$BUILD/ort/edgepack_kws_stream" --ort "$ORT_LIB" --model "$KWS/energy.onnx" --bench \
              "$KWS/stream.wav") || { echo "ci_ort_aarch64: kws_stream --bench failed: $KWS_BENCH" >&2; exit 1; }
"$PY" - "$KWS" "$KWS_BENCH" <<'EOF'
import json
import sys

want = json.load(open(f"{sys.argv[1]}/want.json"))
got = [json.loads(line) for line in open(f"{sys.argv[1]}/got.jsonl")]
bench = json.loads(sys.argv[2].strip().splitlines()[-1])
same = [(g["label"], g["time_s"]) for g in got] == [(w["label"], w["time_s"]) for w in want] and all(
    abs(g["score"] - w["score"]) <= 2e-4 for g, w in zip(got, want))
if not same or bench.get("status") != "ok" or len(bench["detections"]) != len(want):
    sys.exit(f"ci_ort_aarch64: edgepack_kws_stream on aarch64 found {got} (bench {bench.get('status')}), "
             f"the Python detector {want}")
print(f"  edgepack_kws_stream: {len(got)} detections = the Python detector's; --bench {bench['hops']} hops, "
      f"median {bench['hop_total_ms']['median']:.3f} ms per hop (emulated)")
EOF
echo "ci_ort_aarch64: OK (aarch64 libedgepack_ort in ONNX Runtime $VERSION matches host ORT; emulated timings are not meaningful)"
