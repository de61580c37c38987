#!/usr/bin/env bash
# libedgepack_ort on aarch64: cross-compile the ORT custom-op library and the C runner, fetch the
# arm64 libonnxruntime from the npm package onnxruntime-node (cached in build/ort-npm), run one
# model per ai.edgepack op under qemu-user (NEON and ref kernels) and compare with host ORT.
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
cmake --build "$BUILD" --target edgepack_ort edgepack_ort_runner -j"$(nproc 2>/dev/null || echo 2)" >/dev/null
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
EOF

# 4. run under qemu (or natively), both kernel variants
arm_exec() {  # an aarch64 command: natively, or under qemu-user with an ARM /proc/cpuinfo
  if [ $NATIVE = 1 ]; then "$@"; return; fi
  if [ "$(id -u)" = 0 ] && command -v unshare >/dev/null; then
    unshare -m sh -c 'mount --bind "$0" /proc/cpuinfo && exec "$@"' "$WORK/cpuinfo" \
      qemu-aarch64 -L "$SYSROOT" "$@"
  else
    echo "ci_ort_aarch64: not root: running without an ARM /proc/cpuinfo (ORT may crash in cpuinfo)" >&2
    qemu-aarch64 -L "$SYSROOT" "$@"
  fi
}
run_arm() {
  arm_exec "$BUILD/ort/edgepack_ort_runner" --ort "$ORT_LIB" --lib "$BUILD/ort/libedgepack_ort.so" --model "$1"
}
ncpu=$(( $(sed 's/.*-//' /sys/devices/system/cpu/possible 2>/dev/null || echo 0) + 1 ))
for ((i = 0; i < ncpu; i++)); do
  printf 'processor\t: %d\nBogoMIPS\t: 100.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n' "$i"
done > "$WORK/cpuinfo"

for m in "$WORK"/*.onnx; do
  for variant in neon ref; do
    EDGEPACK_KERNELS=$variant run_arm "$m" > "${m%.onnx}.$variant.json"
  done
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
    for variant in ("neon", "ref"):
        got = json.load(open(path[:-5] + f".{variant}.json"))["outputs"]["Y"]
        arr = np.array(got["data"], np.float32).reshape(got["shape"])
        err = float(np.abs(arr - want).max()) if arr.shape == want.shape else float("inf")
        ok = err <= 1e-4 * max(1.0, float(np.abs(want).max()))
        fails += not ok
        print(f"  {os.path.basename(path):24s} {variant:4s} shape {tuple(arr.shape)} max|diff| {err:.2e} "
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
echo "ci_ort_aarch64: OK (aarch64 libedgepack_ort in ONNX Runtime $VERSION matches host ORT; emulated timings are not meaningful)"
