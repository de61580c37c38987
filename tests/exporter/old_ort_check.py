"""Run in a second venv holding an older onnxruntime: check exported files against expected outputs.

Usage: python old_ort_check.py LIBEDGEPACK_ORT DIR — DIR holds NAME.onnx + NAME.npz (x, y).
Prints one JSON line per file and runtime path; exits 1 on any mismatch.
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort


def main(library: str, directory: str) -> int:
    failures = 0
    for model in sorted(Path(directory).glob("*.onnx")):
        data = np.load(model.with_suffix(".npz"))
        for use_kernels in (True, False):
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            if use_kernels:
                options.register_custom_ops_library(library)
            session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
            y = session.run(None, {session.get_inputs()[0].name: data["x"]})[0]
            error = float(np.abs(y - data["y"]).max() / max(np.abs(data["y"]).max(), 1e-6))
            ok = y.shape == data["y"].shape and error <= 1e-4
            failures += not ok
            print(json.dumps({"model": model.name, "kernels": use_kernels, "ort": ort.__version__,
                              "relative_error": error, "ok": ok}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
