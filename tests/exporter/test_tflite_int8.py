"""QDQ ONNX (made by ONNX Runtime's own quantizer) → fully int8 TFLite from our writer: outputs of
LiteRT with XNNPACK, LiteRT's builtin kernels and tflite-runtime 2.14 within one output quantization
step of ONNX Runtime running the QDQ model; int8 and float IO; the DS-CNN-S file size; bad input."""

import os
import subprocess
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import tflite
import torch
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from torch import nn

from edgepack.exporter import inspect_tflite
from edgepack.exporter.tflite_export import ConversionError, convert_and_verify
from edgepack.exporter.tflite_int8_layers import int8_layers, layer_steps
from edgepack.exporter.tflite_verify import check_layers, ort_session
from edgepack.kws.models import ds_cnn

ai_edge_litert = pytest.importorskip("ai_edge_litert")
from ai_edge_litert import interpreter as litert  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TFLITE214_PYTHON = Path(os.environ.get("EDGEPACK_TFLITE214_PYTHON", ROOT / ".venv-tflite214" / "bin" / "python"))
INPUTS = 4  # random inputs per model


class SmallConvNet(nn.Module):
    """conv + BN + ReLU, depthwise + ReLU, pointwise + ReLU6, a residual Add, max and average pools, FC
    (ORT's quantizer drops the ReLUs: its output quantization clamps instead)."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8 * 3 * 3, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.relu(self.dw(x))
        x = torch.clamp(self.pw(x), 0, 6) + x
        x = nn.functional.avg_pool2d(nn.functional.max_pool2d(x, 2), 1)
        return self.fc(x.flatten(1))


class SeqNet(nn.Module):
    """A 3-D MatMul + bias Add, a Mul by a constant, Concat (inputs of other scales), Transpose, Flatten."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        h = torch.cat([self.lin(x), x * 0.5], dim=-1)
        return h.transpose(1, 2).flatten(1)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 10), nn.Softmax(dim=-1))


def small_conv_net() -> nn.Module:
    torch.manual_seed(1)
    model = SmallConvNet()
    model.bn.running_mean.uniform_(-0.5, 0.5)
    model.bn.running_var.uniform_(0.5, 1.5)
    return model


class Calibration(CalibrationDataReader):
    def __init__(self, name: str, shape, count: int = 8):
        self.batches = iter([{name: np.random.default_rng(100 + i).standard_normal(shape).astype(np.float32)}
                             for i in range(count)])

    def get_next(self):
        return next(self.batches, None)


def qdq_model(folder: Path, name: str, model: nn.Module, shape, *, per_channel=True,
              activations=QuantType.QInt8, weights=QuantType.QInt8, extra_options=None) -> Path:
    """``model`` exported to ONNX and quantized to QDQ by onnxruntime.quantization.quantize_static."""
    torch.manual_seed(0)
    float_path, qdq_path = folder / f"{name}.onnx", folder / f"{name}_qdq.onnx"
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model.eval(), torch.randn(*shape), str(float_path), input_names=["x"],
                          output_names=["y"], opset_version=17, dynamo=False)
    quantize_static(str(float_path), str(qdq_path), Calibration("x", shape), quant_format=QuantFormat.QDQ,
                    per_channel=per_channel, activation_type=activations, weight_type=weights,
                    extra_options=extra_options)
    return qdq_path


CASES = {  # name: (model, input shape, quantize_static options)
    "conv_net": (small_conv_net, (1, 3, 12, 12), {}),
    "mlp_uint8_per_tensor": (mlp, (1, 20), {"per_channel": False, "activations": QuantType.QUInt8}),
    "seq_matmul_concat": (SeqNet, (1, 6, 8), {}),
    "ds_cnn_s": (ds_cnn, (1, 1, 49, 10), {}),
}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Per case and IO type: the .tflite, its inputs and ONNX Runtime's QDQ outputs, and the converter."""
    folder = tmp_path_factory.mktemp("int8")
    results = {}
    for name, (make, shape, options) in CASES.items():
        qdq = qdq_model(folder, name, make(), shape, **options)
        session = ort_session(onnx.load(qdq))
        xs = [np.random.default_rng(seed).standard_normal(shape).astype(np.float32) for seed in range(INPUTS)]
        expected = [session.run(None, {"x": x})[0] for x in xs]
        for io_type in ("float", "int8"):
            path = folder / f"{name}_{io_type}.tflite"
            _, verification = convert_and_verify(qdq, path, io_type=io_type)
            results[name, io_type] = (path, xs, expected, verification, qdq)
    return results


def tflite_io(path: Path):
    """(input scale, zero point, dtype), (output scale, zero point, dtype) as the file declares them."""
    interpreter = litert.Interpreter(model_path=str(path))
    details = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    return [(*d["quantization"], d["dtype"]) for d in details]


def to_feed(path: Path, x: np.ndarray) -> np.ndarray:
    (scale, zero_point, dtype), _ = tflite_io(path)
    if dtype == np.int8:
        return np.clip(np.rint(x / np.float32(scale)) + zero_point, -128, 127).astype(np.int8)
    return x


def steps_off(path: Path, got: np.ndarray, want: np.ndarray) -> float:
    """The largest |TFLite − ORT| in output quantization steps (the int8 output dequantized first)."""
    _, (scale, zero_point, dtype) = tflite_io(path)
    if dtype == np.int8:
        got = (got.astype(np.float32) - zero_point) * np.float32(scale)
    else:  # float output: the step of the tensor DEQUANTIZE reads
        scale = output_step(path)
    assert got.shape == want.shape
    return float(np.abs(got.astype(np.float64) - want).max() / scale)


def output_step(path: Path) -> float:
    model = tflite.Model.GetRootAsModel(path.read_bytes(), 0)
    graph = model.Subgraphs(0)
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        if op.Outputs(0) == graph.Outputs(0):
            return float(graph.Tensors(op.Inputs(0)).Quantization().Scale(0))
    raise AssertionError("no operator writes the output")


def run_litert(path: Path, xs, resolver) -> list[np.ndarray]:
    interpreter = litert.Interpreter(model_path=str(path), experimental_op_resolver_type=resolver)
    interpreter.allocate_tensors()
    outputs = []
    for x in xs:
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], to_feed(path, x))
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))
    return outputs


@pytest.mark.parametrize("io_type", ["float", "int8"])
@pytest.mark.parametrize("name", list(CASES))
def test_litert_within_one_step_of_ort_qdq(converted, name, io_type):
    path, xs, expected, verification, _ = converted[name, io_type]
    assert verification.max_steps <= 1 + 1e-3
    for resolver in (litert.OpResolverType.AUTO, litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES):
        worst = max(steps_off(path, got, want) for got, want in zip(run_litert(path, xs, resolver), expected))
        assert worst <= 1 + 1e-3, (name, io_type, resolver, worst)


_TFLITE214 = """
import json, sys, numpy as np
from tflite_runtime.interpreter import Interpreter, OpResolverType, load_delegate
library, paths = sys.argv[1], sys.argv[2:]
for path in paths:
    data = np.load(path + ".npz")
    for resolver in ("AUTO", "BUILTIN_WITHOUT_DEFAULT_DELEGATES"):
        delegates = [load_delegate(library)] if library else []
        it = Interpreter(model_path=path, experimental_op_resolver_type=getattr(OpResolverType, resolver),
                         experimental_delegates=delegates)
        it.allocate_tensors()
        ys = []
        for x in data["xs"]:
            it.set_tensor(it.get_input_details()[0]["index"], x)
            it.invoke()
            ys.append(it.get_tensor(it.get_output_details()[0]["index"]))
        np.save(path + "." + resolver + ".npy", np.stack(ys))
        print(json.dumps({"path": path, "resolver": resolver}))
"""


def tflite214_outputs(paths: list, delegate: Path | None = None) -> dict[str, dict[str, np.ndarray]]:
    """{path: {resolver: outputs}} of each .tflite in tflite-runtime 2.14 (second venv), XNNPACK ("AUTO") and the
    builtin kernels, on the inputs saved beside it as PATH.npz (key xs); with ``delegate`` (the edgepack delegate
    library) loaded as the model's first delegate, for the ai.edgepack ops of a model not decoded at load."""
    if not TFLITE214_PYTHON.exists():
        pytest.fail(f"{TFLITE214_PYTHON} is missing: `make test` creates it (make .venv-tflite214)")
    paths = [str(path) for path in paths]
    result = subprocess.run([str(TFLITE214_PYTHON), "-c", _TFLITE214, str(delegate or ""), *paths],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert len([line for line in result.stdout.splitlines() if line.startswith("{")]) == 2 * len(paths)
    resolvers = ("AUTO", "BUILTIN_WITHOUT_DEFAULT_DELEGATES")
    return {path: {resolver: np.load(f"{path}.{resolver}.npy") for resolver in resolvers} for path in paths}


def test_tflite_runtime_214_within_one_step_of_ort_qdq(converted):
    for path, xs, *_ in converted.values():
        np.savez(f"{path}.npz", xs=np.stack([to_feed(path, x) for x in xs]))
    results = tflite214_outputs([path for path, *_ in converted.values()])
    for path, _, expected, *_ in converted.values():
        for resolver, outputs in results[str(path)].items():
            worst = max(steps_off(path, got, want) for got, want in zip(outputs, expected))
            assert worst <= 1 + 1e-3, (path.name, resolver, worst)


def test_ds_cnn_s_is_fully_int8_and_small(converted):
    """≤ 60 KB; every conv / depthwise / FC reads int8 activations and per-channel int8 weights at the
    op versions the runtimes register for int8; only the float IO adds QUANTIZE / DEQUANTIZE."""
    for io_type in ("float", "int8"):
        path = converted["ds_cnn_s", io_type][0]
        assert path.stat().st_size <= 60_000
        model = tflite.Model.GetRootAsModel(path.read_bytes(), 0)
        graph = model.Subgraphs(0)
        codes = {i: (model.OperatorCodes(i).BuiltinCode(), model.OperatorCodes(i).Version())
                 for i in range(model.OperatorCodesLength())}
        names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
        seen = {}
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            code, version = codes[op.OpcodeIndex()]
            seen[names[code]] = seen.get(names[code], 0) + 1
            if names[code] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
                x, w, b = (graph.Tensors(op.Inputs(k)) for k in range(3))
                assert (x.Type(), w.Type(), b.Type()) == (tflite.TensorType.INT8, tflite.TensorType.INT8,
                                                          tflite.TensorType.INT32)
                channels = w.Shape(3 if names[code] == "DEPTHWISE_CONV_2D" else 0)
                assert w.Quantization().ScaleLength() == channels == b.Quantization().ScaleLength()
                assert w.Quantization().QuantizedDimension() == (3 if names[code] == "DEPTHWISE_CONV_2D" else 0)
                assert not w.Quantization().ZeroPointAsNumpy().any()
                assert version == {"CONV_2D": 3, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": 4}[names[code]]
        assert seen["CONV_2D"] == 5 and seen["DEPTHWISE_CONV_2D"] == 4 and seen["FULLY_CONNECTED"] == 1
        assert seen.get("QUANTIZE", 0) == seen.get("DEQUANTIZE", 0) == (io_type == "float")
        assert tflite_io(path)[0][2] == (np.int8 if io_type == "int8" else np.float32)


def test_inspect_counts_int8_weights_as_four_bytes_of_the_float_model(converted):
    """The DS-CNN-S's int8 weights: stored 1 byte each, 4 as a dense (float) model, in .tflite and QDQ ONNX."""
    from edgepack.exporter.inspect_model import inspect_model

    path, qdq = converted["ds_cnn_s", "float"][0], converted["ds_cnn_s", "float"][4]
    weights = 10 * 4 * 64 + 4 * (9 * 64 + 64 * 64) + 64 * 12  # conv, 4 × (depthwise, pointwise), FC
    for summary in (inspect_model(path), inspect_model(qdq)):
        assert summary.dense_bytes - summary.stored_bytes == 3 * weights


def test_uint8_weights_convert_when_symmetric_and_are_refused_otherwise(tmp_path):
    """ORT's per-channel uint8 weights are symmetric (zero point 128: shifted to int8 exactly); moving
    their zero points makes them asymmetric, which TFLite's int8 weights cannot express."""
    qdq = qdq_model(tmp_path, "mlp", mlp(), (1, 20), per_channel=True, activations=QuantType.QUInt8,
                    weights=QuantType.QUInt8)
    _, verification = convert_and_verify(qdq, tmp_path / "symmetric.tflite")
    assert verification.max_steps <= 1 + 1e-3
    model = onnx.load(qdq)
    zero_point = next(t for t in model.graph.initializer if t.name == "0.weight_zero_point")
    zero_point.CopyFrom(numpy_helper.from_array(np.arange(120, 152, dtype=np.uint8), zero_point.name))
    with pytest.raises(ConversionError, match=r"\(Gemm\): weight '0.weight_DequantizeLinear_Output' has zero "
                                              r"points \[-8, -7, -6, -5\].*symmetric"):
        convert_and_verify(model, tmp_path / "m.tflite")
    assert not (tmp_path / "m.tflite").exists()


def without_activation_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """Each Relu / Clip reads its op's float output directly (the Q / DQ pair between them removed):
    the Conv → Relu → QuantizeLinear pattern a fused activation comes from."""
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    dropped = []
    for node in graph.node:
        if node.op_type in ("Relu", "Clip"):
            dq = producers[node.input[0]]
            q = producers[dq.input[0]]
            node.input[0] = q.input[0]
            dropped += [id(q), id(dq)]
    kept = [node for node in graph.node if id(node) not in dropped]
    del graph.node[:]
    graph.node.extend(kept)
    return model


def test_relu_and_clip_standalone_or_fused(tmp_path):
    """ORT keeping its removable activations gives int8 RELU / RELU6 ops; without the Q / DQ pair before
    them they fuse into the convolutions (no RELU op left); both within one step of ORT."""
    qdq = qdq_model(tmp_path, "conv_net", small_conv_net(), (1, 3, 12, 12),
                    extra_options={"QDQKeepRemovableActivations": True})
    _, standalone = convert_and_verify(qdq, tmp_path / "standalone.tflite")
    fused_model = without_activation_qdq(onnx.load(qdq))
    _, fused = convert_and_verify(fused_model, tmp_path / "fused.tflite")
    assert standalone.max_steps <= 1 + 1e-3 and fused.max_steps <= 1 + 1e-3
    ops = {path: inspect_tflite(tmp_path / path).op_counts for path in ("standalone.tflite", "fused.tflite")}
    assert ops["standalone.tflite"]["RELU"] == 2 and ops["standalone.tflite"]["RELU6"] == 1
    assert "RELU" not in ops["fused.tflite"] and "RELU6" not in ops["fused.tflite"]
    model = tflite.Model.GetRootAsModel((tmp_path / "fused.tflite").read_bytes(), 0)
    graph, activations = model.Subgraphs(0), []
    kinds = {tflite.BuiltinOptions.Conv2DOptions: tflite.Conv2DOptions,
             tflite.BuiltinOptions.DepthwiseConv2DOptions: tflite.DepthwiseConv2DOptions}
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        if op.BuiltinOptionsType() in kinds:
            table, options = op.BuiltinOptions(), kinds[op.BuiltinOptionsType()]()
            options.Init(table.Bytes, table.Pos)
            activations.append(options.FusedActivationFunction())
    relu, relu6 = tflite.ActivationFunctionType.RELU, tflite.ActivationFunctionType.RELU6
    assert sorted(activations) == sorted([relu, relu, relu6])
    # the fused activation ranges as the builtin kernels clamp them, layer by layer
    x = np.random.default_rng(5).standard_normal((1, 3, 12, 12)).astype(np.float32)
    layers = layer_steps((tmp_path / "fused.tflite").read_bytes(), builtin_interpreter(tmp_path / "fused.tflite", x))
    assert len(layers) == 4 and max(layer.steps for layer in layers) <= 1, layers
    assert fused.max_layer_steps <= 1 and standalone.max_layer_steps <= 1


def qdq_graph(middle: str, scale_input: bool = False) -> onnx.ModelProto:
    """x → QuantizeLinear → DequantizeLinear → ``middle`` → QuantizeLinear → DequantizeLinear → y."""
    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.05])
    zero = helper.make_tensor("z", TensorProto.INT8, [], [0])
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])]
    if scale_input:
        inputs.append(helper.make_tensor_value_info("x_scale", TensorProto.FLOAT, []))
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale" if scale_input else "s", "z"], ["xq"], name="q_in"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq_in"),
             helper.make_node(middle, ["xd"], ["h"], name="middle"),
             helper.make_node("QuantizeLinear", ["h", "s", "z"], ["hq"], name="q_out"),
             helper.make_node("DequantizeLinear", ["hq", "s", "z"], ["y"], name="dq_out")]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              [scale, zero])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def fake_quant_conv() -> onnx.ModelProto:
    """A float weight → QuantizeLinear (per channel) → DequantizeLinear, a float bias, Conv → Relu →
    QuantizeLinear: the pattern of a fake-quantized (QAT-style) export."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((6, 3, 3, 3)).astype(np.float32) * 0.3
    arrays = {"W": weight, "ws": (np.abs(weight).reshape(6, -1).max(1) / 127).astype(np.float32),
              "wz": np.zeros(6, np.int8), "B": rng.standard_normal(6).astype(np.float32),
              "xs": np.float32(0.03), "xz": np.int8(3), "ys": np.float32(0.05), "yz": np.int8(-128)}
    nodes = [helper.make_node("QuantizeLinear", ["W", "ws", "wz"], ["Wq"], axis=0),
             helper.make_node("DequantizeLinear", ["Wq", "ws", "wz"], ["Wd"], axis=0),
             helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("Conv", ["xd", "Wd", "B"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("QuantizeLinear", ["r", "ys", "yz"], ["rq"]),
             helper.make_node("DequantizeLinear", ["rq", "ys", "yz"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 8, 8])],
                              [numpy_helper.from_array(a, name) for name, a in arrays.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_fake_quantized_weights_float_bias_and_fused_relu(tmp_path):
    path, verification = convert_and_verify(fake_quant_conv(), tmp_path / "conv.tflite", io_type="int8")
    assert verification.max_steps <= 1 + 1e-3
    assert set(inspect_tflite(path).op_counts) == {"CONV_2D", "TRANSPOSE"}


def test_hand_made_qdq_relu_converts(tmp_path):
    _, verification = convert_and_verify(qdq_graph("Relu"), tmp_path / "relu.tflite", io_type="int8")
    assert verification.max_steps <= 1


def test_non_constant_scale_is_refused(tmp_path):
    with pytest.raises(ConversionError, match=r"'q_in' \(QuantizeLinear\): the scale \('x_scale'\) must be a constant"):
        convert_and_verify(qdq_graph("Relu", scale_input=True), tmp_path / "m.tflite")


def test_op_without_int8_lowering_is_refused(tmp_path):
    with pytest.raises(ConversionError, match=r"'middle' \(Sigmoid\): op Sigmoid has no int8 TFLite lowering.*Conv"):
        convert_and_verify(qdq_graph("Sigmoid"), tmp_path / "m.tflite")


def test_int8_io_needs_a_qdq_model(tmp_path):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ConversionError, match="int8 inputs and outputs need a QDQ-quantized model"):
        convert_and_verify(model, tmp_path / "m.tflite", io_type="int8")


def test_cli_convert_int8_io(converted, tmp_path):
    qdq = converted["mlp_uint8_per_tensor", "int8"][4]
    out = tmp_path / "cli.tflite"
    result = subprocess.run([str(ROOT / ".venv" / "bin" / "edgepack"), "convert", str(qdq), "-o", str(out),
                             "--io-type", "int8"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "output quantization steps" in result.stdout
    assert tflite_io(out)[0][2] == tflite_io(out)[1][2] == np.int8


def builtin_interpreter(path: Path, x: np.ndarray):
    """LiteRT's builtin kernels with every intermediate kept, after one invoke on ``x``."""
    interpreter = litert.Interpreter(model_path=str(path), experimental_preserve_all_tensors=True,
                                     experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], to_feed(path, x))
    interpreter.invoke()
    return interpreter


@pytest.mark.parametrize("name", list(CASES))
def test_builtin_kernels_are_within_one_step_of_exact_arithmetic_layer_by_layer(converted, name):
    """Each int8 conv / depthwise / FC, recomputed exactly from the int8 input the builtin kernel was given, is
    within one output step of the kernel's output; the verifier checked the same on its own inputs."""
    path, xs, _, verification, _ = converted[name, "float"]
    kinds = {"conv_net": 4, "mlp_uint8_per_tensor": 2, "seq_matmul_concat": 1, "ds_cnn_s": 10}[name]
    for x in xs:
        layers = layer_steps(path.read_bytes(), builtin_interpreter(path, x))
        assert len(layers) == kinds and max(layer.steps for layer in layers) <= 1, layers
    assert verification.max_layer_steps <= 1


def test_a_layer_two_steps_off_is_named(converted):
    """A conv output changed by two steps after the run (what a kernel reading the file differently would give)
    is found, and the verifier's check refuses it naming the operator."""
    path, xs, *_ = converted["ds_cnn_s", "int8"]
    interpreter = builtin_interpreter(path, xs[0])
    target = layer_steps(path.read_bytes(), interpreter)[3]
    details = next(d for d in interpreter.get_tensor_details() if d["name"] == target.output)
    value = interpreter.get_tensor(details["index"])
    value.flat[5] = value.flat[5] - 2 if value.flat[5] > 0 else value.flat[5] + 2
    interpreter.set_tensor(details["index"], value)
    steps = {layer.index: layer.steps for layer in layer_steps(path.read_bytes(), interpreter)}
    assert steps[target.index] == 2 and all(s <= 1 for i, s in steps.items() if i != target.index)
    with pytest.raises(ConversionError, match=rf"{target.kind} \(operator {target.index},.*2 quantization steps"):
        check_layers(int8_layers(path.read_bytes(), interpreter), interpreter)


def test_fused_activation_ranges_as_tflite_quantizes_them():
    """TFLite clamps a fused activation at its real bounds quantized with the output's scale and zero point, within
    int8 (what the layer check recomputes; the converted models above only reach the int8 limits)."""
    from edgepack.exporter.tflite_int8_layers import _activation_range

    act = tflite.ActivationFunctionType
    assert _activation_range(act.RELU6, 0.05, -20) == (-20, 100)  # 0 → z, 6 → z + 120
    assert _activation_range(act.RELU, 0.05, -20) == (-20, 127)
    assert _activation_range(act.RELU_N1_TO_1, 0.01, 3) == (-97, 103)
    assert _activation_range(act.NONE, 0.05, -20) == (-128, 127)
    assert _activation_range(act.RELU6, 0.01, 0) == (0, 127)  # 6 → 600, beyond int8
