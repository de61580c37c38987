"""Build small ONNX graphs and compare the converted TFLite model in LiteRT against ONNX Runtime.

LiteRT runs each model twice: with its default XNNPACK delegate and with the builtin kernels
only, so an op that one of them runs differently (or refuses) is caught.
"""

import numpy as np
import onnx
import onnxruntime as ort
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from onnx import TensorProto, helper, numpy_helper

from edgepack.exporter import convert_onnx_to_tflite, inspect_tflite

RESOLVERS = (OpResolverType.AUTO, OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)


def graph_model(nodes, inputs: dict, outputs, constants: dict | None = None, opset: int = 18,
                output_types: dict | None = None) -> onnx.ModelProto:
    """A model of ``nodes`` with float inputs {name: shape}, initializers {name: array}, and the
    named outputs (float unless ``output_types`` says otherwise; shapes left to inference)."""
    types = output_types or {}
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs.items()],
        [helper.make_tensor_value_info(name, types.get(name, TensorProto.FLOAT), None) for name in outputs],
        [numpy_helper.from_array(np.asarray(array), name) for name, array in (constants or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 10)
    return model


def node_model(op_type: str, inputs: dict, constants: dict | None = None, opset: int = 18,
               outputs=("y",), order=None, **attributes) -> onnx.ModelProto:
    """One ``op_type`` node reading ``order`` (default: the inputs, then the constants)."""
    order = order or list(inputs) + list(constants or {})
    node = helper.make_node(op_type, order, list(outputs), name=f"my_{op_type.lower()}", **attributes)
    return graph_model([node], inputs, outputs, constants, opset)


def random_feeds(model: onnx.ModelProto, seed: int = 0, scale: float = 2.0, positive: bool = False):
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.input:
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        data = rng.standard_normal(shape).astype(np.float32) * scale
        feeds[value.name] = np.abs(data) + 0.1 if positive else data
    return feeds


def run_litert(path, feeds: dict, resolver) -> list[np.ndarray]:
    runner = Interpreter(model_path=str(path), experimental_op_resolver_type=resolver)
    runner.allocate_tensors()
    for detail in runner.get_input_details():
        runner.set_tensor(detail["index"], feeds[detail["name"]])
    runner.invoke()
    return [runner.get_tensor(detail["index"]) for detail in runner.get_output_details()]


def check_against_ort(model: onnx.ModelProto, tmp_path, feeds: dict | None = None, rtol: float = 1e-4,
                      atol: float = 1e-5, reference=None, **feed_options) -> dict[str, int]:
    """Convert ``model``, run it in LiteRT (XNNPACK and builtin kernels) and in ORT (or
    ``reference(feeds)`` where ORT lacks the case) on the same inputs, assert every output
    matches; returns the TFLite model's op counts."""
    feeds = feeds if feeds is not None else random_feeds(model, **feed_options)
    expected = (reference(feeds) if reference is not None
                else ort.InferenceSession(model.SerializeToString()).run(None, feeds))
    path = convert_onnx_to_tflite(model, tmp_path / "model.tflite", verify=False)
    for resolver in RESOLVERS:
        actual = run_litert(path, feeds, resolver)
        assert len(actual) == len(expected)
        for got, want in zip(actual, expected):
            assert got.shape == want.shape and got.dtype == want.dtype, (resolver, got.shape, want.shape,
                                                                         got.dtype, want.dtype)
            np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=str(resolver))
    return inspect_tflite(path).op_counts
