"""int8 layers exported as ONNX QDQ (exporter/onnx_quant.py): the graph's structure, torch's quantized
model == ONNX Runtime within one output quantization step, our PTQ against ORT's own static quantizer
(QDQ, per-channel QInt8 weights, QInt8 activations) on the same float model and calibration set, and
``edgepack export`` of an int8 checkpoint."""

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from torch import nn

from edgepack.cli import main
from edgepack.compression import save_checkpoint
from edgepack.compression.quantize import QuantConv2d, QuantLinear, QuantPassThrough
from edgepack.compression.stages import StageData, run_stage
from edgepack.demo import digits_mlp, load_digits_split, train_classifier
from edgepack.exporter import export
from edgepack.kws.models import ds_cnn


def session_run(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


@pytest.fixture(scope="module")
def quantized_dscnn():
    """A DS-CNN-S-shaped net (16 channels, random BatchNorm statistics), int8 by PTQ."""
    torch.manual_seed(0)
    model = ds_cnn(channels=16, blocks=2, classes=5)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    x = torch.randn(200, 1, 49, 10)
    data = StageData((x, torch.arange(200) % 5), (x[:50], torch.arange(50) % 5), batch_size=50)
    quantized, report = run_stage("quantize", model.eval(), data, observer="percentile", progress=False)
    return quantized, report, x


@pytest.fixture(scope="module")
def dscnn_onnx(quantized_dscnn, tmp_path_factory):
    model, _, x = quantized_dscnn
    return export(model, x[:1], tmp_path_factory.mktemp("int8") / "int8.onnx")


def test_qdq_graph_structure(quantized_dscnn, dscnn_onnx):
    model, _, x = quantized_dscnn
    graph = onnx.load(dscnn_onnx).graph
    ops = Counter(node.op_type for node in graph.node)
    layers = [m for m in model.modules() if isinstance(m, (QuantLinear, QuantConv2d))]
    shared = sum(m.input_quantized for m in layers)
    assert ops["Conv"] == 5 and ops["Gemm"] == 1 and ops["Relu"] == 5
    assert model.fc.input_quantized and [type(model.pool), type(model.flatten)] == [QuantPassThrough] * 2
    # the average pool (TFLite MEAN) has its own, narrower range; the Flatten after it shares it
    assert model.fc.qparams("input") == model.flatten.qparams() == model.pool.qparams()
    assert model.pool.qparams()[0] < model.pw1.qparams("output")[0]
    # the outputs of layers and pass-throughs, and the inputs not already quantized
    assert ops["QuantizeLinear"] == 2 * len(layers) - shared + 2
    assert ops["DequantizeLinear"] == ops["QuantizeLinear"] + len(layers)  # + one per weight
    initializers = {t.name: t for t in graph.initializer}
    weight_dqs = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in initializers]
    assert len(weight_dqs) == len(layers)
    for node in weight_dqs:
        weight = numpy_helper.to_array(initializers[node.input[0]])
        scale = numpy_helper.to_array(initializers[node.input[1]])
        assert weight.dtype == np.int8 and np.abs(weight.astype(int)).max() <= 127
        assert scale.dtype == np.float32 and scale.shape == (weight.shape[0],)
        assert dict((a.name, a.i) for a in node.attribute).get("axis", 1) == 0
    assert all(numpy_helper.to_array(initializers[n.input[2]]).dtype == np.int8
               for n in graph.node if n.op_type == "QuantizeLinear")


def test_torch_int8_equals_onnx_runtime(quantized_dscnn, dscnn_onnx):
    model, _, x = quantized_dscnn
    with torch.no_grad():
        ours = model(x).numpy()
    step = model.fc.qparams("output")[0]
    difference = np.abs(session_run(dscnn_onnx, x) - ours)
    assert difference.max() <= step * 1.001
    assert (difference > 0).mean() < 0.01  # off by one step only where a rounding tie falls differently


class Reader(CalibrationDataReader):
    def __init__(self, name: str, inputs: torch.Tensor) -> None:
        self.batches = iter([{name: batch.numpy()} for batch in inputs.split(100)])

    def get_next(self):
        return next(self.batches, None)


def test_ptq_against_onnx_runtime_quantizer(tmp_path):
    torch.manual_seed(0)
    split = load_digits_split(0)
    model = train_classifier(digits_mlp(128), split, epochs=12)
    data = StageData((split.x_train, split.y_train), (split.x_test, split.y_test), batch_size=100)
    calibration = data.calibration(512)

    float_path = export(model, split.x_test[:1], tmp_path / "float.onnx")
    ort_path = tmp_path / "ort_int8.onnx"
    quantize_static(str(float_path), str(ort_path), Reader(ort.InferenceSession(str(float_path)).get_inputs()[0].name,
                                                            calibration),
                    quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
    quantized, report = run_stage("quantize", model, data, progress=False)
    ours_path = export(quantized, split.x_test[:1], tmp_path / "ours_int8.onnx")

    def accuracy(path) -> float:
        return float((session_run(path, split.x_test).argmax(1) == split.y_test.numpy()).mean())

    float_accuracy, ort_accuracy, our_accuracy = accuracy(float_path), accuracy(ort_path), accuracy(ours_path)
    assert float_accuracy > 0.93
    assert abs(ort_accuracy - float_accuracy) <= 0.01 and abs(our_accuracy - float_accuracy) <= 0.01
    assert our_accuracy == pytest.approx(report.accuracy, abs=0.005)  # ORT QDQ agrees with the torch reference
    assert Counter(n.op_type for n in onnx.load(ours_path).graph.node)["QuantizeLinear"] > 0


def test_export_command_writes_qdq_for_an_int8_checkpoint(quantized_dscnn, tmp_path, capsys):
    model, report, x = quantized_dscnn
    path = save_checkpoint(model, tmp_path / "int8.safetensors", "edgepack.kws.models:ds_cnn",
                           {"channels": 16, "blocks": 2, "classes": 5}, transforms=[report.transform])
    out = tmp_path / "int8.onnx"
    assert main(["export", str(path), "--example-shape", "1,1,49,10", "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in onnx.load(out).graph.node}
    with torch.no_grad():
        ours = model(x[:20]).numpy()
    assert np.abs(session_run(out, x[:20]) - ours).max() <= model.fc.qparams("output")[0] * 1.001


def test_int8_tflite_from_our_qdq_equals_torch(quantized_dscnn, dscnn_onnx, tmp_path):
    """Our QDQ file through the QDQ → int8 TFLite converter, run by LiteRT on XNNPACK and on the builtin
    kernels: the torch quantized reference within one output quantization step."""
    from ai_edge_litert import interpreter as litert

    from edgepack.exporter import convert_onnx_to_tflite

    model, _, x = quantized_dscnn
    path = convert_onnx_to_tflite(dscnn_onnx, tmp_path / "int8.tflite")
    with torch.no_grad():
        want = model(x[:10]).numpy()
    step = model.fc.qparams("output")[0]
    for resolver in (litert.OpResolverType.AUTO, litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES):
        interpreter = litert.Interpreter(str(path), experimental_op_resolver_type=resolver)
        interpreter.allocate_tensors()
        given, output = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        got = []
        for row in x[:10]:
            interpreter.set_tensor(given["index"], row[None].numpy())
            interpreter.invoke()
            got.append(interpreter.get_tensor(output["index"]))
        assert np.abs(np.concatenate(got) - want).max() <= step * 1.001


def test_a_model_starting_with_flatten_converts_to_int8_tflite(tmp_path):
    """The model input is quantized before its Flatten (a QDQ model quantizes each input before any op)."""
    from edgepack.exporter import convert_onnx_to_tflite

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))
    x = torch.rand(100, 1, 4, 4)
    quantized, _ = run_stage("quantize", model, StageData((x, torch.arange(100) % 3), (x, torch.arange(100) % 3)),
                             progress=False)
    onnx_path = export(quantized, x[:1], tmp_path / "mlp.onnx")
    graph = onnx.load(onnx_path).graph
    assert graph.node[0].op_type == "QuantizeLinear" and graph.node[0].input[0] == graph.input[0].name
    path = convert_onnx_to_tflite(onnx_path, tmp_path / "mlp.tflite")  # verified against ORT before it is written
    with torch.no_grad():
        want = quantized(x[:1]).numpy()
    from ai_edge_litert import interpreter as litert

    interpreter = litert.Interpreter(str(path))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x[:1].numpy())
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    assert np.abs(got - want).max() <= quantized[3].qparams("output")[0] * 1.001
