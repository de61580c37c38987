"""LiteRT latency of the float and the fully int8 DS-CNN-S from our TFLite writer (a benchmark, not a test).

The float model: ds_cnn() (random weights) exported to ONNX and converted; the int8 model: the same ONNX
quantized to QDQ by onnxruntime.quantization (per-channel int8, calibrated on random 49×10 inputs) and
converted. Both run in one process, 1 thread, with LiteRT's default XNNPACK delegate and with its builtin
kernels; rounds are interleaved (float, int8, float, ...) and each round times ``--invokes`` invokes.
Usage: python scripts/bench_int8_tflite.py [--rounds 30] [--invokes 50]
"""

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from ai_edge_litert import interpreter as litert
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from rich.progress import Progress

from edgepack.exporter.tflite_export import convert_and_verify
from edgepack.kws.models import ds_cnn

SHAPE = (1, 1, 49, 10)


class _Calibration(CalibrationDataReader):
    def __init__(self, count: int = 16):
        self.batches = iter([{"x": np.random.default_rng(i).standard_normal(SHAPE).astype(np.float32)}
                             for i in range(count)])

    def get_next(self):
        return next(self.batches, None)


def build(folder: Path) -> dict[str, Path]:
    """The float and int8 .tflite files of a random-weight DS-CNN-S."""
    torch.manual_seed(0)
    model, onnx_path, qdq_path = ds_cnn().eval(), folder / "ds_cnn.onnx", folder / "ds_cnn_qdq.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, torch.randn(*SHAPE), str(onnx_path), input_names=["x"], output_names=["y"],
                          opset_version=17, dynamo=False)
    quantize_static(str(onnx_path), str(qdq_path), _Calibration(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    return {"float": convert_and_verify(onnx_path, folder / "float.tflite")[0],
            "int8": convert_and_verify(qdq_path, folder / "int8.tflite")[0]}


def interpreter(path: Path, builtin_only: bool):
    resolver = (litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES if builtin_only
                else litert.OpResolverType.AUTO)
    runner = litert.Interpreter(model_path=str(path), num_threads=1, experimental_op_resolver_type=resolver)
    runner.allocate_tensors()
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    runner.set_tensor(runner.get_input_details()[0]["index"], x)  # float IO for both models
    runner.invoke()  # warm-up
    return runner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--invokes", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        paths = build(Path(folder))
        sizes = {kind: path.stat().st_size for kind, path in paths.items()}
        runners = {(kind, builtin): interpreter(path, builtin) for kind, path in paths.items()
                   for builtin in (False, True)}
        times = {key: [] for key in runners}
        with Progress() as progress:
            task = progress.add_task("interleaved rounds", total=args.rounds)
            for _ in range(args.rounds):
                for key, runner in runners.items():
                    start = time.perf_counter()
                    for _ in range(args.invokes):
                        runner.invoke()
                    times[key].append((time.perf_counter() - start) / args.invokes)
                progress.advance(task)
    print(f"file sizes: float {sizes['float']:,} B, int8 {sizes['int8']:,} B")
    for builtin in (False, True):
        label = "builtin kernels" if builtin else "XNNPACK"
        medians = {kind: float(np.median(times[kind, builtin])) * 1e6 for kind in ("float", "int8")}
        print(f"LiteRT {label}, 1 thread: float {medians['float']:.1f} µs, int8 {medians['int8']:.1f} µs "
              f"(median of {args.rounds} rounds × {args.invokes} invokes); int8 / float = "
              f"{medians['int8'] / medians['float']:.2f}")


if __name__ == "__main__":
    main()
