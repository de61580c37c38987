"""Check a converted TFLite model against ONNX Runtime before it is written (``verify=True``).

Both run the same inputs: a few seeded random ones, plus samples from a calibration ``.npz``
when given. Every output must agree within ``ATOL + RTOL * max|ONNX output|``. On a mismatch both
run again keeping every intermediate value, and the error names the first ONNX node whose output
diverges, so a wrong lowering is refused instead of written. An int8 model (from a QDQ model) is
checked in output quantization steps instead, on inputs drawn over each input's quantized range: within
``INT8_STEPS`` of ONNX Runtime running the QDQ model with LiteRT's default XNNPACK delegate, and within
``INT8_BUILTIN_STEPS`` with its builtin kernels alone, where each int8 conv / depthwise / FC must also be
within ``INT8_LAYER_STEPS`` of exact arithmetic on the int8 input the kernel was given.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from .fallbacks import DOMAIN
from .model_files import ModelFileError, load_npz
from .tflite_export import TO_NCHW, ConversionError
from .tflite_int8_layers import Int8Layer, int8_layers

ATOL, RTOL = 1e-5, 1e-3
INT8_STEPS = 2  # one output quantization step, plus one for a rounding difference carried through the layers
# TFLite's builtin int8 kernels round requantization differently from ORT and XNNPACK: a one-step difference in
# a few elements of one layer grows through the next (measured on the trained KWS DS-CNN-S: up to 3 steps after
# one depthwise conv, 7 inside, 2 at the output on real features, 5 on random in-range inputs; mean < 0.5).
# A wrong scale, zero point or layout is off by far more.
INT8_BUILTIN_STEPS = 8
# Layer by layer the builtin kernels stay within one step of exact arithmetic on their own int8 inputs
# (tflite_int8_layers): the drift above is rounding carried on, not a wrong lowering.
INT8_LAYER_STEPS = 1
MAX_CALIBRATION_SAMPLES = 16


@dataclass
class Verification:
    """What was compared: the reference runtime, how many inputs, the largest output error."""

    reference: str
    random_inputs: int
    calibration_samples: int
    max_abs_error: float
    max_steps: float | None = None  # int8 models: the largest error in output quantization steps (XNNPACK)
    max_builtin_steps: float | None = None  # the same with LiteRT's builtin kernels
    max_layer_steps: float | None = None  # the builtin kernels' worst conv / FC layer against exact arithmetic

    def summary(self) -> str:
        runs = [f"{self.random_inputs} random input{'s' * (self.random_inputs != 1)}"]
        if self.calibration_samples:
            runs.append(f"{self.calibration_samples} calibration sample{'s' * (self.calibration_samples != 1)}")
        steps = "" if self.max_steps is None else (
            f" ({self.max_steps:.2f} output quantization steps with LiteRT's XNNPACK, tolerance {INT8_STEPS}; "
            f"{self.max_builtin_steps:.2f} with its builtin kernels, tolerance {INT8_BUILTIN_STEPS}, each layer "
            f"within {self.max_layer_steps:.2f} of exact arithmetic, tolerance {INT8_LAYER_STEPS})")
        return (f"verified against {self.reference} on {' and '.join(runs)}: "
                f"max abs error {self.max_abs_error:.1e}{steps}")


def has_edgepack_ops(model: onnx.ModelProto) -> bool:
    return any(node.domain == DOMAIN for node in model.graph.node)


def ort_session(model: onnx.ModelProto):
    """An ORT session for ``model``; ai.edgepack ops run on libedgepack_ort when it is built, else
    on the model's standard-op fallback functions."""
    import onnxruntime

    from edgepack.runtime_kernels import onnx_session, ort_library_path

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: old-opset notices are not the user's concern here
    use_kernels = has_edgepack_ops(model)
    if use_kernels:
        try:
            ort_library_path()
        except FileNotFoundError:
            use_kernels = False
    return onnx_session(model.SerializeToString(), use_kernels=use_kernels, sess_options=options)


def with_all_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs also list every node output (for intermediates)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {value.name for value in copy.graph.output}
    names = dict.fromkeys(name for node in copy.graph.node for name in node.output if name and name not in present)
    copy.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names)
    return copy


def onnx_runtime_values(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every node output (and the feeds) of one ONNX Runtime run."""
    session = ort_session(with_all_outputs(model))
    names = [output.name for output in session.get_outputs()]
    return dict(feeds) | dict(zip(names, session.run(None, feeds)))


class OnnxReference:
    """Runs the source model: ONNX Runtime, or onnx's ReferenceEvaluator where ORT cannot load it."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.outputs = [value.name for value in model.graph.output]
        try:
            self.session = ort_session(model)
            self.name = "ONNX Runtime"
        except Exception as error:  # noqa: BLE001 - any ORT refusal: use the reference instead
            self._use_reference(error)

    def _use_reference(self, error: Exception) -> None:
        from onnx.reference import ReferenceEvaluator

        self.session = None
        self.name = f"onnx's ReferenceEvaluator (ONNX Runtime cannot run the model: {str(error)[:200]})"
        try:
            self.evaluator = ReferenceEvaluator(self.model)
        except Exception as reference_error:  # noqa: BLE001
            raise ConversionError(f"cannot verify: {self.name}; the ReferenceEvaluator fails too "
                                  f"({reference_error}); pass --no-verify to convert unverified") from error

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.session is not None:
            try:
                return self.session.run(self.outputs, feeds)
            except Exception as error:  # noqa: BLE001 - e.g. an op ORT implements only at load time
                self._use_reference(error)
        try:
            return self.evaluator.run(self.outputs, feeds)
        except Exception as error:  # noqa: BLE001
            raise ConversionError(f"cannot verify: neither ONNX Runtime nor onnx's ReferenceEvaluator runs the "
                                  f"model ({error}); pass --no-verify to convert unverified") from error

    def intermediates(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.session is not None:
            return onnx_runtime_values(self.model, feeds)
        return self.evaluator.run(None, feeds, intermediate=True)


def tflite_runner(data: bytes, custom_ops: bool, preserve_all_tensors: bool = False, builtin_only: bool = False):
    """An allocated LiteRT (or tflite-runtime) interpreter for ``data``; the edgepack delegate runs
    the ai.edgepack CUSTOM ops. ``preserve_all_tensors`` keeps intermediates readable (and turns
    off the default XNNPACK delegate); ``builtin_only`` runs the builtin kernels without it."""
    try:
        from ai_edge_litert import interpreter as runtime
    except ImportError:
        try:
            from tflite_runtime import interpreter as runtime
        except ImportError as error:
            raise ConversionError("cannot verify the converted model: no TFLite runtime "
                                  "(pip install ai-edge-litert), or pass --no-verify") from error
    delegates = []
    if custom_ops:
        from edgepack.runtime_kernels import delegate_library_path

        try:
            delegates.append(runtime.load_delegate(str(delegate_library_path())))
        except (FileNotFoundError, ValueError, OSError) as error:
            raise ConversionError(f"cannot verify the ai.edgepack CUSTOM ops: {error}; build the delegate "
                                  "with `make kernels`, or pass --no-verify") from error
    try:
        with warnings.catch_warnings():  # LiteRT warns that preserving tensors costs memory: intended
            warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
            resolver = {"experimental_op_resolver_type": runtime.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES} \
                if builtin_only else {}
            interpreter = runtime.Interpreter(model_content=data, experimental_delegates=delegates,
                                              experimental_preserve_all_tensors=preserve_all_tensors, **resolver)
        interpreter.edgepack_keep_alive = (data, delegates)
        interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as error:
        raise ConversionError(f"the converted model does not load in LiteRT ({error}); nothing was "
                              "written (--no-verify writes it anyway)") from error
    return interpreter


def run_tflite(interpreter, inputs: list[np.ndarray]) -> list[np.ndarray]:
    try:
        for detail, value in zip(interpreter.get_input_details(), inputs):
            interpreter.set_tensor(detail["index"], value)
        interpreter.invoke()
    except (RuntimeError, ValueError) as error:
        raise ConversionError(f"the converted model fails in LiteRT ({error}); nothing was written "
                              "(--no-verify writes it anyway)") from error
    return [interpreter.get_tensor(detail["index"]) for detail in interpreter.get_output_details()]


def compare(actual: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """(max abs error, tolerance); a different shape is an infinite error; NaN or ±inf count as
    equal only where both sides agree."""
    expected = np.asarray(expected)
    if actual.shape != expected.shape:
        return np.inf, 0.0
    actual, expected = actual.astype(np.float64), expected.astype(np.float64)
    same = (actual == expected) | (np.isnan(actual) & np.isnan(expected))
    error = np.where(same, 0.0, np.nan_to_num(np.abs(actual - expected), nan=np.inf))
    finite = np.abs(expected[np.isfinite(expected)])
    scale = float(finite.max()) if finite.size else 0.0
    return (float(error.max()) if error.size else 0.0), ATOL + RTOL * scale


def calibration_samples(path: str | os.PathLike, shapes: dict[str, tuple[int, ...]],
                        dtypes: dict[str, np.dtype]) -> list[dict]:
    """Feeds from an .npz: one array per input name (or ``x`` for a one-input model), samples
    along the first axis, each reshaped to the input's static shape and cast to its type; at most
    16 are used."""
    try:
        arrays = load_npz(path, f"--calibration-data {str(path)!r}")
    except ModelFileError as error:
        raise ConversionError(str(error)) from None
    if len(shapes) == 1 and "x" in arrays and next(iter(shapes)) not in arrays:
        arrays[next(iter(shapes))] = arrays["x"]
    missing = [name for name in shapes if name not in arrays]
    if missing:
        raise ConversionError(f"--calibration-data {str(path)!r} has arrays {sorted(arrays)}; it needs one named "
                              f"after each input ({', '.join(map(repr, shapes))}) or 'x' for a one-input model")
    per_input = {}
    for name, shape in shapes.items():
        array, size = arrays[name], int(np.prod(shape))
        if array.dtype.kind not in "fiub" or size == 0 or array.size % size:
            raise ConversionError(f"--calibration-data {str(path)!r}: array {name!r} of shape {array.shape} "
                                  f"({array.dtype}) is not numeric samples of input shape {shape}")
        per_input[name] = array.astype(dtypes[name]).reshape((-1, *shape))
    count = min(len(a) for a in per_input.values())
    return [{name: a[i] for name, a in per_input.items()} for i in range(min(count, MAX_CALIBRATION_SAMPLES))]


def random_feeds(converter, seed: int) -> dict[str, np.ndarray]:
    """Standard normal float32 inputs; integer inputs uniform over the indices valid for their Gathers."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, shape in converter.input_shapes.items():
        dtype = converter.input_dtypes[name]
        if dtype == np.float32:
            feeds[name] = rng.standard_normal(shape).astype(np.float32)
        else:
            bound = converter.index_bound(name)
            feeds[name] = rng.integers(-bound, bound, shape).astype(dtype)
    return feeds


def verify_conversion(model: onnx.ModelProto, data: bytes, converter, seeds: int = 3,
                      calibration: str | os.PathLike | Path | None = None) -> Verification:
    """Run ``data`` (the converter's output) and ``model`` on the same inputs; raise
    ConversionError naming the first diverging node when any output disagrees."""
    if hasattr(converter, "output_params"):
        return verify_int8(model, data, converter, seeds, calibration)
    shapes = converter.input_shapes
    feeds = [random_feeds(converter, seed) for seed in range(seeds)]
    samples = calibration_samples(calibration, shapes, converter.input_dtypes) if calibration is not None else []
    reference = OnnxReference(model)
    custom = has_edgepack_ops(model)
    interpreter = tflite_runner(data, custom)
    worst = 0.0
    for number, feed in enumerate(feeds + samples):
        expected = reference.run(feed)
        actual = run_tflite(interpreter, [feed[value.name] for value in converter.inputs])
        for name, got, want in zip(reference.outputs, actual, expected):
            want = np.asarray(want)
            error, tolerance = compare(got, want)
            if error > tolerance:
                what = f"random input {number}" if number < seeds else f"calibration sample {number - seeds}"
                how = (f"max abs error {error:.3g} > tolerance {tolerance:.3g}" if got.shape == want.shape
                       else f"shape {got.shape} in TFLite, {want.shape} in ONNX")
                where = first_divergence(reference, data, converter, feed, custom)
                raise ConversionError(f"the converted model disagrees with {reference.name} on {what}: output "
                                      f"{name!r} {how}; {where}. Nothing was written (--no-verify writes it anyway)")
            worst = max(worst, error)
    return Verification(reference.name, seeds, len(samples), worst)


def first_divergence(reference: OnnxReference, data: bytes, converter, feed: dict, custom: bool) -> str:
    """The first ONNX node (in graph order) whose TFLite tensor differs from its ONNX value."""
    expected = reference.intermediates(feed)
    interpreter = tflite_runner(data, custom, preserve_all_tensors=True)
    run_tflite(interpreter, [feed[value.name] for value in converter.inputs])
    for node in reference.model.graph.node:
        for name in node.output:
            value = converter.values.get(name)
            if value is None or value.index is None or value.const is not None or name not in expected:
                continue
            want = np.asarray(expected[name])
            if want.dtype.kind != "f":
                continue
            got = interpreter.get_tensor(value.index)
            got = got.transpose(TO_NCHW) if value.nhwc else got
            error, tolerance = compare(got, want)
            if error > tolerance:
                return (f"first diverging node: {node.name or '(unnamed)'!r} ({node.op_type}), output {name!r}: "
                        f"max abs error {error:.3g} (tolerance {tolerance:.3g}, TFLite shape {got.shape}, "
                        f"ONNX shape {want.shape})")
    return ("no intermediate value diverges with LiteRT's builtin kernels alone, so the difference comes "
            "from its default XNNPACK delegate")


def int8_feed(converter, feed: dict) -> list[np.ndarray]:
    """The TFLite inputs for ``feed``: quantized with the inputs' parameters for an int8-IO model."""
    return [converter.input_params[v.name].quantize(feed[v.name]) if v.name in converter.input_params
            else feed[v.name] for v in converter.inputs]


def int8_steps(converter, name: str, got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    """(max abs error, the same in output quantization steps) of a TFLite output against ONNX."""
    params = converter.output_params[name]
    got = params.dequantize(got) if got.dtype == np.int8 else got
    if got.shape != np.shape(want):
        return np.inf, np.inf
    error = float(np.abs(got.astype(np.float64) - np.asarray(want, np.float64)).max(initial=0.0))
    return error, round(error / params.scale, 4)  # outputs are whole steps apart: no float fuzz


def int8_random_feeds(converter, seed: int) -> dict[str, np.ndarray]:
    """Random float inputs uniform over each quantized input's representable range (the calibrated one);
    other inputs as ``random_feeds``."""
    rng, feeds = np.random.default_rng(seed), random_feeds(converter, seed)
    for name, params in converter.input_params.items():
        low, high = params.dequantize(np.array([-128, 127], np.int8))
        feeds[name] = rng.uniform(low, high, converter.input_shapes[name]).astype(np.float32)
    return feeds


def verify_int8(model: onnx.ModelProto, data: bytes, converter, seeds: int = 3,
                calibration: str | os.PathLike | Path | None = None) -> Verification:
    """An int8 model against ONNX Runtime running the QDQ model: every output within INT8_STEPS of its
    quantization step with LiteRT's XNNPACK delegate, within INT8_BUILTIN_STEPS with its builtin kernels."""
    feeds = [int8_random_feeds(converter, seed) for seed in range(seeds)]
    samples = calibration_samples(calibration, converter.input_shapes, converter.input_dtypes) \
        if calibration is not None else []
    reference = OnnxReference(model)
    expected = [reference.run(feed) for feed in feeds + samples]
    worst, worst_steps, worst_layer = 0.0, {}, 0.0
    for label, builtin_only, tolerance in (("XNNPACK", False, INT8_STEPS),
                                           ("builtin kernels", True, INT8_BUILTIN_STEPS)):
        interpreter = tflite_runner(data, False, preserve_all_tensors=builtin_only, builtin_only=builtin_only)
        layers = int8_layers(data, interpreter) if builtin_only else []
        for number, feed in enumerate(feeds + samples):
            actual = run_tflite(interpreter, int8_feed(converter, feed))
            if layers:
                worst_layer = max(worst_layer, check_layers(layers, interpreter))
            for name, got, want in zip(reference.outputs, actual, expected[number]):
                error, steps = int8_steps(converter, name, got, want)
                if steps > tolerance:
                    what = f"random input {number}" if number < seeds else f"calibration sample {number - seeds}"
                    where = first_int8_divergence(reference, data, converter, feed)
                    raise ConversionError(
                        f"the int8 model (LiteRT, {label}) disagrees with {reference.name} on {what}: output {name!r} "
                        f"is {steps:.3g} quantization steps off (tolerance {tolerance}); {where}. Nothing was written "
                        "(--no-verify writes it anyway)")
                worst, worst_steps[label] = max(worst, error), max(worst_steps.get(label, 0.0), steps)
    return Verification(reference.name, seeds, len(samples), worst, worst_steps["XNNPACK"],
                        worst_steps["builtin kernels"], worst_layer)


def check_layers(layers: list[Int8Layer], interpreter) -> float:
    """The builtin kernels' worst int8 conv / FC layer on the last input, in output steps off exact arithmetic;
    more than INT8_LAYER_STEPS → ConversionError naming it."""
    worst = max((layer.steps(interpreter) for layer in layers), key=lambda result: result.steps, default=None)
    if worst is not None and worst.steps > INT8_LAYER_STEPS:
        raise ConversionError(
            f"LiteRT's builtin {worst.kind} (operator {worst.index}, output {worst.output!r}) is {worst.steps:.3g} "
            f"quantization steps off exact int8 arithmetic on its own input (tolerance {INT8_LAYER_STEPS}): the "
            "file says something the kernel reads differently. Nothing was written (--no-verify writes it anyway)")
    return 0.0 if worst is None else worst.steps


def first_int8_divergence(reference: OnnxReference, data: bytes, converter, feed: dict) -> str:
    """The first ONNX node whose dequantized int8 TFLite tensor is more than INT8_STEPS off."""
    expected = reference.intermediates(feed)
    interpreter = tflite_runner(data, False, preserve_all_tensors=True)
    run_tflite(interpreter, int8_feed(converter, feed))
    for node in reference.model.graph.node:
        for name in node.output:
            value, params = converter.values.get(name), converter.params.get(name)
            if value is None or value.index is None or params is None or name not in expected:
                continue
            want = np.asarray(expected[name])
            if want.dtype.kind != "f":
                continue
            got = params.dequantize(interpreter.get_tensor(value.index))
            got = got.transpose(TO_NCHW) if value.nhwc else got
            if got.shape == want.shape and np.abs(got - want).max(initial=0.0) / params.scale > INT8_STEPS:
                return f"first diverging node: {node.name or '(unnamed)'!r} ({node.op_type}), output {name!r}"
    return "no intermediate value diverges with LiteRT's builtin kernels alone"
