"""Run in the tflite-runtime 2.14 venv (numpy < 2): check exported .tflite files against expected outputs.

Usage: python tflite214_check.py DIR — DIR holds NAME.tflite + NAME.npz (x, y). Each file runs
through the edgepack delegate and through the InterpreterWithCustomOps registrar. Prints one JSON
line per file and route; exits 1 on any mismatch.
"""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("tflite_runtime_edgepack", ROOT / "runtime_kernels/tflite_runtime.py")
runtime = importlib.util.module_from_spec(spec)
spec.loader.exec_module(runtime)


def main(directory: str) -> int:
    import tflite_runtime

    failures = 0
    for model in sorted(Path(directory).glob("*.tflite")):
        data = np.load(model.with_suffix(".npz"))
        for use_delegate in (True, False):
            interpreter = runtime.tflite_interpreter(model, use_delegate=use_delegate, decode_at_load=False)
            interpreter.set_tensor(interpreter.get_input_details()[0]["index"], data["x"])
            interpreter.invoke()
            y = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
            error = float(np.abs(y - data["y"]).max() / max(np.abs(data["y"]).max(), 1e-6))
            ok = y.shape == data["y"].shape and error <= 1e-4
            failures += not ok
            print(json.dumps({"model": model.name, "route": "delegate" if use_delegate else "custom_ops",
                              "tflite_runtime": tflite_runtime.__version__, "relative_error": error, "ok": ok}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
