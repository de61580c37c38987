"""Measure one model on the machine this script runs on; prints one JSON object.

Self-contained on purpose (only numpy and the runtime): the harness pushes this file to a device
and runs it there with the device's Python. Latency = wall time of one inference; runs go on
until both ``--runs`` and ``--min-seconds`` are reached. Memory = peak RSS over the RSS before
the model was loaded, with the runtime (and edgepack) already imported (Linux /proc/self/status).
A model with ai.edgepack ops has its compressed weights decoded at load when edgepack is installed
next to the runtime (``onnx_session`` / ``tflite_interpreter``); ``--keep-fused``, or no edgepack
on the device, runs them on the pushed library's fused kernels. ``decode_at_load`` in the result
says which (null for a model without ai.edgepack ops).
"""

import argparse
import json
import sys
import time

import numpy as np


def rss_kb(field: str) -> int:
    """VmRSS or VmHWM of this process in kB (0 where /proc is not there)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def edgepack_loader(runtime: str):
    """edgepack's loader with decode at load for ``runtime``, or None when edgepack is not installed.
    The modules the decode imports on first use are imported here, before the memory baseline."""
    import importlib

    names = ["edgepack.exporter.model_files", "edgepack.exporter.validate"] + (
        ["edgepack.runtime_kernels.decode_onnx", "edgepack.runtime_kernels.ort_session"] if runtime == "ort" else
        ["edgepack.runtime_kernels.decode_tflite", "edgepack.runtime_kernels.tflite_runtime"])
    try:
        modules = [importlib.import_module(name) for name in names]
    except ImportError:
        return None
    return modules[-1].onnx_session if runtime == "ort" else modules[-1].tflite_interpreter


def ort_runner(path: str, threads: int, library: str | None, decode=None):
    import onnxruntime as ort

    if decode is not None:
        session = decode(path, threads=threads, decode_at_load=True)
        first = session.get_inputs()[0]
        shape = [d if isinstance(d, int) else 1 for d in first.shape]
        return lambda x: session.run(None, {first.name: x})[0], shape, f"onnxruntime {ort.__version__}"
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if library:
        options.register_custom_ops_library(library)
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    first = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in first.shape]

    def run(x):
        return session.run(None, {first.name: x})[0]
    return run, shape, f"onnxruntime {ort.__version__}"


def tflite_module():
    """LiteRT's or tflite-runtime's interpreter module, and its name."""
    try:
        from ai_edge_litert import interpreter as tfl
        return tfl, "ai-edge-litert"
    except ImportError:
        from tflite_runtime import interpreter as tfl
        return tfl, "tflite-runtime"


def tflite_runner(path: str, threads: int, library: str | None, decode=None):
    tfl, name = tflite_module()
    if decode is not None:
        runner = decode(path, threads=threads, decode_at_load=True)
    else:
        delegates = [tfl.load_delegate(library)] if library else []
        runner = tfl.Interpreter(model_path=path, num_threads=threads, experimental_delegates=delegates)
        runner.allocate_tensors()
    source, sink = runner.get_input_details()[0], runner.get_output_details()[0]

    def run(x):
        runner.set_tensor(source["index"], x)
        runner.invoke()
        return runner.get_tensor(sink["index"])
    return run, [int(d) for d in source["shape"]], name


def measure(args: argparse.Namespace) -> dict:
    if args.runtime == "ort":
        import onnxruntime  # noqa: F401 - imported before the memory baseline
    else:
        tflite_module()
    decode = edgepack_loader(args.runtime) if args.library and not args.keep_fused else None
    rss_before = rss_kb("VmRSS")
    start = time.perf_counter()
    make = ort_runner if args.runtime == "ort" else tflite_runner
    run, shape, runtime_version = make(args.model, args.threads, args.library, decode)
    init_ms = (time.perf_counter() - start) * 1e3
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    start = time.perf_counter()
    run(x)
    first_ms = (time.perf_counter() - start) * 1e3
    for _ in range(args.warmup):
        run(x)
    latencies, began = [], time.perf_counter()
    while len(latencies) < args.runs or time.perf_counter() - began < args.min_seconds:
        start = time.perf_counter()
        run(x)
        latencies.append((time.perf_counter() - start) * 1e3)
    result = {"runtime_version": runtime_version, "input_shape": shape, "init_ms": init_ms,
              "first_inference_ms": first_ms, "latencies_ms": latencies,
              "peak_rss_mb": max(rss_kb("VmHWM") - rss_before, 0) / 1024.0,
              "decode_at_load": None if not args.library else decode is not None}
    if args.dataset:
        data = np.load(args.dataset, allow_pickle=False)
        correct = 0
        for features, label in zip(data["x"], data["y"]):
            correct += int(np.argmax(run(features.reshape(shape).astype(np.float32))) == int(label))
        result["accuracy"] = correct / max(len(data["y"]), 1)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--runtime", choices=["ort", "tflite"], required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--min-seconds", type=float, default=0.0)
    parser.add_argument("--library", help="libedgepack_ort.so or the TFLite delegate to load")
    parser.add_argument("--dataset", help=".npz with x (inputs) and y (labels) for accuracy")
    parser.add_argument("--keep-fused", action="store_true",
                        help="run ai.edgepack ops on the library's fused kernels instead of decoding at load")
    args = parser.parse_args()
    try:
        print(json.dumps({"status": "ok", **measure(args)}))
    except Exception as error:  # reported to the harness as data, not a traceback
        print(json.dumps({"status": "error", "error": f"{type(error).__name__}: {error}"}))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
