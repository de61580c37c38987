"""Opset-dependent semantics in the ONNX→TFLite converter, each op at each opset that changed it,
checked in LiteRT against ONNX Runtime (or numpy where ORT lacks the old opset); and the
verification that refuses a file which disagrees with ONNX Runtime."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tflite_ops_check
from onnx import TensorProto, helper, numpy_helper

from edgepack.cli import main
from edgepack.exporter.tflite_export import HANDLERS, ConversionError, convert_and_verify, convert_onnx_to_tflite

interpreter = pytest.importorskip("ai_edge_litert.interpreter")
SHAPE = (1, 8, 6, 6)


def make_model(nodes, opset: int, shape=SHAPE, initializers=(), outputs=("y",), nhwc=True,
               conv_weight=None) -> onnx.ModelProto:
    """A model of ``nodes`` reading "a"; with ``nhwc`` a 1×1 Conv (random, or ``conv_weight``) makes
    "a" from input "x", so the converter holds it in NHWC, else "a" is the input itself."""
    rng = np.random.default_rng(7)
    inits = list(initializers)
    if nhwc:
        weight = rng.standard_normal((shape[1], shape[1])) if conv_weight is None else conv_weight
        weight = weight.astype(np.float32).reshape(shape[1], shape[1], 1, 1)
        inits.append(numpy_helper.from_array(weight, "conv_w"))
        nodes = [helper.make_node("Conv", ["x", "conv_w"], ["a"], name="conv")] + list(nodes)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x" if nhwc else "a", TensorProto.FLOAT,
                                                                         shape)],
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 7 if opset < 13 else model.ir_version)
    return model


def run_litert(path, feeds: list[np.ndarray]) -> list[np.ndarray]:
    """The outputs of ``path`` in LiteRT with its default resolver, inputs in graph order."""
    names = [d["name"] for d in interpreter.Interpreter(model_path=str(path)).get_input_details()]
    return tflite_ops_check.run_litert(path, dict(zip(names, feeds)), tflite_ops_check.RESOLVERS[0])


def random_input(model: onnx.ModelProto, seed: int = 0) -> np.ndarray:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return np.random.default_rng(seed).standard_normal([d.dim_value for d in dims]).astype(np.float32)


def check_against(model, tmp_path, expected_fn, rtol=1e-4) -> list[np.ndarray]:
    """Convert without verification, run in LiteRT, compare with ``expected_fn(x)``."""
    path = convert_onnx_to_tflite(model, tmp_path / "m.tflite", verify=False)
    x = random_input(model)
    expected = expected_fn(x)
    for resolver in tflite_ops_check.RESOLVERS:  # XNNPACK and the builtin kernels
        actual = tflite_ops_check.run_litert(path, {model.graph.input[0].name: x}, resolver)
        for got, want in zip(actual, expected):
            scale = max(float(np.abs(want).max()), 1e-6)
            assert got.shape == want.shape, (got.shape, want.shape)
            assert float(np.abs(got - want).max()) <= rtol * scale, (resolver, float(np.abs(got - want).max()))
    return actual


def ort_outputs(model):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {model.graph.input[0].name: x})


def check(model, tmp_path, rtol=1e-4):
    return check_against(model, tmp_path, ort_outputs(model), rtol)


# ---- Softmax family --------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
@pytest.mark.parametrize("opset", [9, 11, 13])
@pytest.mark.parametrize("axis", [None, 0, 1, 2, -1])
@pytest.mark.parametrize("nhwc", [True, False])
def test_softmax_family_axis_and_2d_coercion(op, opset, axis, nhwc, tmp_path):
    attributes = {} if axis is None else {"axis": axis}
    model = make_model([helper.make_node(op, ["a"], ["y"], name="sm", **attributes)], opset, nhwc=nhwc)
    check(model, tmp_path)


def test_opset9_softmax_on_channels_is_not_over_width(tmp_path):
    """The issue's small check: opset-9 Softmax(axis=1) on [1, 8, 6, 6] normalises over C·H·W."""
    model = make_model([helper.make_node("Softmax", ["a"], ["y"], axis=1)], 9)
    (y,) = check(model, tmp_path)
    assert abs(float(y.sum()) - 1.0) < 1e-4


def fire(prefix: str, x: str, squeeze: int, expand: int, channels: int, rng) -> tuple[list, list]:
    """A SqueezeNet fire module: squeeze 1×1 → ReLU → (1×1 ‖ 3×3 pad 1) expand → ReLU → Concat."""
    weights = {f"{prefix}_s": (squeeze, channels, 1, 1), f"{prefix}_e1": (expand, squeeze, 1, 1),
               f"{prefix}_e3": (expand, squeeze, 3, 3)}
    inits = [numpy_helper.from_array((rng.standard_normal(s) / np.sqrt(np.prod(s[1:]))).astype(np.float32), n)
             for n, s in weights.items()]
    inits += [numpy_helper.from_array(rng.standard_normal(s[0]).astype(np.float32) * 0.1, f"{n}_b")
              for n, s in weights.items()]
    nodes = [
        helper.make_node("Conv", [x, f"{prefix}_s", f"{prefix}_s_b"], [f"{prefix}_sq"], kernel_shape=[1, 1]),
        helper.make_node("Relu", [f"{prefix}_sq"], [f"{prefix}_sqr"]),
        helper.make_node("Conv", [f"{prefix}_sqr", f"{prefix}_e1", f"{prefix}_e1_b"], [f"{prefix}_x1"],
                         kernel_shape=[1, 1]),
        helper.make_node("Conv", [f"{prefix}_sqr", f"{prefix}_e3", f"{prefix}_e3_b"], [f"{prefix}_x3"],
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", [f"{prefix}_x1"], [f"{prefix}_r1"]),
        helper.make_node("Relu", [f"{prefix}_x3"], [f"{prefix}_r3"]),
        helper.make_node("Concat", [f"{prefix}_r1", f"{prefix}_r3"], [f"{prefix}_out"], axis=1),
    ]
    return nodes, inits


def squeezenet_like(opset: int = 9) -> onnx.ModelProto:
    """The issue's model shape: conv stem, max pool, fire modules, 1×1 classifier conv,
    GlobalAveragePool, Softmax without ``axis`` (opset 9: over C·1·1 after 2-D coercion)."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array((rng.standard_normal((16, 3, 3, 3)) * 0.3).astype(np.float32), "stem_w")]
    nodes = [helper.make_node("Conv", ["data", "stem_w"], ["stem"], kernel_shape=[3, 3], strides=[2, 2]),
             helper.make_node("Relu", ["stem"], ["stem_r"]),
             helper.make_node("MaxPool", ["stem_r"], ["pool"], kernel_shape=[2, 2], strides=[2, 2])]
    x, channels = "pool", 16
    for i, (squeeze, expand) in enumerate([(4, 8), (4, 8), (8, 16)]):
        more, more_inits = fire(f"fire{i}", x, squeeze, expand, channels, rng)
        nodes, inits, x, channels = nodes + more, inits + more_inits, f"fire{i}_out", 2 * expand
    inits.append(numpy_helper.from_array((rng.standard_normal((10, channels, 1, 1)) * 0.5).astype(np.float32),
                                         "cls_w"))
    nodes += [helper.make_node("Conv", [x, "cls_w"], ["cls"], kernel_shape=[1, 1]),
              helper.make_node("Relu", ["cls"], ["cls_r"]),
              helper.make_node("GlobalAveragePool", ["cls_r"], ["gap"]),
              helper.make_node("Softmax", ["gap"], ["prob"], name="softmax")]
    graph = helper.make_graph(nodes, "fire_net", [helper.make_tensor_value_info("data", TensorProto.FLOAT,
                                                                                [1, 3, 33, 33])],
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 10, 1, 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 4
    return model


def test_fire_module_cnn_at_opset9_gives_probabilities(tmp_path):
    model = squeezenet_like(9)
    (prob,) = check(model, tmp_path)
    assert prob.shape == (1, 10, 1, 1) and abs(float(prob.sum()) - 1.0) < 1e-4 and prob.max() < 0.999
    _, verification = convert_and_verify(model, tmp_path / "verified.tflite")
    assert verification.max_abs_error < 1e-5


# ---- Reduce* ---------------------------------------------------------------------------------
REDUCE_OPS = ["ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd"]


def reduce_node(op: str, opset: int, axes, keepdims: int, noop: int = 0):
    """The node plus its initializers: axes as an attribute before 18 (ReduceSum: 13), else an input."""
    input_form = opset >= (13 if op == "ReduceSum" else 18)
    attributes = {"keepdims": keepdims} | ({"noop_with_empty_axes": noop} if input_form and noop else {})
    if input_form:
        inputs = ["a", "axes"] if axes is not None else ["a"]
        inits = [numpy_helper.from_array(np.array(axes, np.int64), "axes")] if axes is not None else []
        return helper.make_node(op, inputs, ["y"], name="reduce", **attributes), inits
    return helper.make_node(op, ["a"], ["y"], name="reduce", **attributes, **({"axes": axes} if axes else {})), []


@pytest.mark.parametrize("op", REDUCE_OPS)
@pytest.mark.parametrize("opset", [11, 13, 18])
@pytest.mark.parametrize("axes", [None, [1], [2, 3], [0], [-1], [1, 3]])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_axes_attribute_or_input(op, opset, axes, keepdims, tmp_path):
    node, inits = reduce_node(op, opset, axes, keepdims)
    model = make_model([node], opset, shape=(1, 4, 3, 3), initializers=inits)
    check(model, tmp_path, rtol=1e-3 if op == "ReduceProd" else 1e-4)


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceSum"])
def test_reduce_noop_with_empty_axes(op, tmp_path):
    node, inits = reduce_node(op, 18, None, 1, noop=1)
    check(make_model([node], 18, initializers=inits), tmp_path)


def test_reduce_axes_input_at_an_old_opset_is_refused(tmp_path):
    node = helper.make_node("ReduceMean", ["a", "axes"], ["y"], name="rm")
    model = make_model([node], 13, initializers=[numpy_helper.from_array(np.array([1], np.int64), "axes")])
    with pytest.raises(ConversionError, match=r"rm.*ReduceMean.*has input size 2"):  # ORT's word on it
        convert_onnx_to_tflite(model, tmp_path / "m.tflite", verify=False)


# ---- Split -----------------------------------------------------------------------------------
@pytest.mark.parametrize("opset, form", [(11, "attribute"), (11, "equal"), (13, "input"), (13, "equal"),
                                         (18, "input"), (18, "num_outputs")])
@pytest.mark.parametrize("axis", [1, 2, -1])
def test_split_sizes_by_opset(opset, form, axis, tmp_path):
    sizes = [2, 1, 3]
    inits, attributes, inputs = [], {"axis": axis}, ["a"]
    if form == "attribute":
        attributes["split"] = sizes
    elif form == "input":
        inits, inputs = [numpy_helper.from_array(np.array(sizes, np.int64), "split")], ["a", "split"]
    elif form == "num_outputs":
        attributes["num_outputs"] = 3
    shape = (1, 6, 6, 6) if form != "num_outputs" else (1, 7, 7, 7)  # 18: uneven last chunk
    node = helper.make_node("Split", inputs, ["y0", "y1", "y2"], **attributes)
    check(make_model([node], opset, shape=shape, initializers=inits, outputs=("y0", "y1", "y2")), tmp_path)


# ---- Pad / Slice / Clip ----------------------------------------------------------------------
@pytest.mark.parametrize("opset", [2, 11, 18])
@pytest.mark.parametrize("mode, value", [("constant", 0.0), ("constant", 1.5), ("reflect", 0.0)])
def test_pad_attributes_or_inputs(opset, mode, value, tmp_path):
    pads = [0, 1, 2, 0, 0, 2, 1, 1]
    if opset < 11:
        node, inits = helper.make_node("Pad", ["a"], ["y"], mode=mode, pads=pads, value=value), []
    else:
        inits = [numpy_helper.from_array(np.array(pads, np.int64), "pads"),
                 numpy_helper.from_array(np.array(value, np.float32), "value")]
        node = helper.make_node("Pad", ["a", "pads", "value"], ["y"], mode=mode)
    check(make_model([node], opset, initializers=inits), tmp_path)


def test_pad_opset1_paddings_attribute(tmp_path):
    """Pad-1 names its attribute ``paddings``; ORT has no Pad-1, so numpy is the reference and the
    verification falls back to onnx's ReferenceEvaluator (and says so)."""
    node = helper.make_node("Pad", ["a"], ["y"], paddings=[0, 1, 2, 0, 0, 2, 1, 1], value=0.5)
    model = make_model([node], 1, nhwc=False)
    check_against(model, tmp_path, lambda a: [np.pad(a, [(0, 0), (1, 2), (2, 1), (0, 1)], constant_values=0.5)])
    _, verification = convert_and_verify(model, tmp_path / "verified.tflite")
    assert verification.reference.startswith("onnx's ReferenceEvaluator (ONNX Runtime cannot run the model")


def test_pad_axes_input_opset18(tmp_path):
    inits = [numpy_helper.from_array(np.array([1, 2, 3, 0], np.int64), "pads"),
             numpy_helper.from_array(np.array([3, 1], np.int64), "axes")]
    node = helper.make_node("Pad", ["a", "pads", "", "axes"], ["y"])
    check(make_model([node], 18, initializers=inits), tmp_path)


@pytest.mark.parametrize("opset", [9, 10, 13])
@pytest.mark.parametrize("nhwc", [True, False])
def test_slice_attributes_or_inputs(opset, nhwc, tmp_path):
    starts, ends, axes = [1, -4, 0], [7, 100, 5], [1, 3, 2]
    if opset < 10:
        node, inits = helper.make_node("Slice", ["a"], ["y"], starts=starts, ends=ends, axes=axes), []
    else:
        steps = [2, 1, 3] if opset == 10 else [-1, 2, -2]
        starts = starts if opset == 10 else [6, 0, -1]
        ends = ends if opset == 10 else [-100, 100, 0]
        arrays = {"starts": starts, "ends": ends, "axes": axes, "steps": steps}
        inits = [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in arrays.items()]
        node = helper.make_node("Slice", ["a", *arrays], ["y"])
    check(make_model([node], opset, initializers=inits, nhwc=nhwc), tmp_path)


@pytest.mark.parametrize("opset, bounds", [(6, {"min": -0.5, "max": 0.7}), (6, {"max": 0.2}),
                                           (11, {"min": -0.5, "max": 0.7}), (13, {"max": 0.2}),
                                           (13, {"min": 0.0, "max": 6.0}), (13, {"min": 0.3})])
def test_clip_attributes_or_inputs(opset, bounds, tmp_path):
    if opset < 11:
        node, inits = helper.make_node("Clip", ["a"], ["y"], **bounds), []
    else:
        inits = [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in bounds.items()]
        node = helper.make_node("Clip", ["a", "min" if "min" in bounds else "", "max" if "max" in bounds else ""],
                                ["y"])
    check(make_model([node], opset, initializers=inits), tmp_path)


# ---- Upsample / Resize -----------------------------------------------------------------------
def resize_model(opset: int, op: str = "Resize", mode: str = "nearest", scales=(1, 1, 2, 2), sizes=None,
                 shape=(1, 3, 4, 5), **attributes) -> onnx.ModelProto:
    inits, inputs = [], ["a"]
    if op == "Upsample" and opset < 9:
        attributes["scales"] = list(map(float, scales))
    elif op == "Upsample" or opset < 11:
        inits, inputs = [numpy_helper.from_array(np.array(scales, np.float32), "scales")], ["a", "scales"]
    else:
        roi = numpy_helper.from_array(np.zeros(0, np.float32), "roi")
        if sizes is None:
            inits = [roi, numpy_helper.from_array(np.array(scales, np.float32), "scales")]
            inputs = ["a", "roi", "scales"]
        else:
            inits = [roi, numpy_helper.from_array(np.zeros(0, np.float32), "scales"),
                     numpy_helper.from_array(np.array(sizes, np.int64), "sizes")]
            inputs = ["a", "roi", "scales", "sizes"]
    node = helper.make_node(op, inputs, ["y"], mode=mode, name="resize", **attributes)
    return make_model([node], opset, shape=shape, initializers=inits)


@pytest.mark.parametrize("opset, op, mode", [(7, "Upsample", "nearest"), (7, "Upsample", "linear"),
                                             (9, "Upsample", "nearest"), (9, "Upsample", "linear"),
                                             (10, "Resize", "nearest"), (10, "Resize", "linear")])
def test_upsample_and_resize10_are_asymmetric(opset, op, mode, tmp_path):
    check(resize_model(opset, op, mode), tmp_path)


@pytest.mark.parametrize("opset", [11, 13, 19])
@pytest.mark.parametrize("mode, transform, nearest_mode", [
    ("nearest", "asymmetric", "floor"), ("nearest", "half_pixel", "round_prefer_ceil"),
    ("nearest", "tf_half_pixel_for_nn", "floor"), ("nearest", "align_corners", "round_prefer_ceil"),
    ("linear", "half_pixel", None), ("linear", "asymmetric", None), ("linear", "align_corners", None),
    ("linear", "pytorch_half_pixel", None), ("nearest", None, None)])
@pytest.mark.parametrize("scales, sizes", [((1, 1, 2, 2), None), ((1, 1, 3, 3), None), (None, (1, 3, 9, 7)),
                                           (None, (1, 3, 2, 3))])
def test_resize_coordinate_modes(opset, mode, transform, nearest_mode, scales, sizes, tmp_path):
    attributes = {k: v for k, v in (("coordinate_transformation_mode", transform), ("nearest_mode", nearest_mode))
                  if v is not None}
    model = resize_model(opset, mode=mode, scales=scales, sizes=sizes, **attributes)
    if mode == "nearest" and transform is None and sizes is not None:
        # ONNX's default (half_pixel, round_prefer_floor) rounds the ties of non-integer scales
        # (4 → 9: output 4 samples 1.5) down where TFLite rounds up: refused, not converted wrong.
        with pytest.raises(ConversionError, match="samples other positions than TFLite's resize"):
            convert_onnx_to_tflite(model, tmp_path / "m.tflite", verify=False)
        return
    check(model, tmp_path)


@pytest.mark.parametrize("mode, transform, nearest_mode, message", [
    ("cubic", "half_pixel", None, "mode 'cubic' is not supported"),
    ("nearest", "tf_crop_and_resize", None, "'tf_crop_and_resize' .* is not supported"),
    ("linear", "half_pixel_symmetric", None, "samples other positions"),
    ("nearest", "half_pixel", "floor", "samples other positions"),
    ("nearest", "asymmetric", "round_prefer_floor", "samples other positions")])
def test_resize_refuses_what_tflite_cannot_sample(mode, transform, nearest_mode, message, tmp_path):
    attributes = {"nearest_mode": nearest_mode} if nearest_mode else {}
    scales = (1, 1, 1.5, 1.5) if transform == "half_pixel_symmetric" else (1, 1, 3, 3)  # 5 × 1.5 → 7
    model = resize_model(19, mode=mode, scales=scales, coordinate_transformation_mode=transform, **attributes)
    if transform == "tf_crop_and_resize":
        model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.array([0, 0, 0, 0, 1, 1, 1, 1], np.float32),
                                                                    "roi"))
    with pytest.raises(ConversionError, match=rf"node 'resize' \(Resize\): .*{message}"):
        convert_onnx_to_tflite(model, tmp_path / "m.tflite", verify=False)


# ---- BatchNormalization ----------------------------------------------------------------------
def batch_norm_model(opset: int, spatial: int | None = None, folded: bool = False, outputs=("y",), **attributes):
    rng = np.random.default_rng(1)
    stats_shape = (8,) if spatial in (None, 1) else (8, 6, 6)
    arrays = {"scale": rng.uniform(0.5, 1.5, stats_shape), "bias": rng.standard_normal(stats_shape),
              "mean": rng.standard_normal(stats_shape), "var": rng.uniform(0.5, 1.5, stats_shape)}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in arrays.items()]
    if spatial is not None:
        attributes["spatial"] = spatial
    source = "a" if folded else "r"
    nodes = ([] if folded else [helper.make_node("Relu", ["a"], ["r"])]) + [
        helper.make_node("BatchNormalization", [source, *arrays], list(outputs), name="bn", epsilon=1e-3,
                         **attributes)]
    return make_model(nodes, opset, initializers=inits, outputs=outputs)


@pytest.mark.parametrize("opset, spatial", [(7, 1), (7, 0), (9, None), (15, None)])
@pytest.mark.parametrize("folded", [True, False])
def test_batch_norm_spatial_and_opsets(opset, spatial, folded, tmp_path):
    check(batch_norm_model(opset, spatial, folded), tmp_path)


@pytest.mark.parametrize("nhwc", [True, False])
def test_batch_norm_training_mode_uses_batch_statistics(nhwc, tmp_path):
    """Opset 14+: training_mode=1 normalises with the batch's statistics and outputs the
    momentum-updated running mean / variance."""
    model = batch_norm_model(15, training_mode=1, momentum=0.8, outputs=("y", "running_mean", "running_var"))
    if not nhwc:
        model.graph.node.remove(model.graph.node[0])
        model.graph.node[0].input[0] = "x"
    outputs = check(model, tmp_path)
    assert [o.shape for o in outputs] == [SHAPE, (8,), (8,)]


def test_batch_norm_training_outputs_before_opset14_are_refused(tmp_path):
    model = batch_norm_model(9, outputs=("y", "mean", "var", "saved_mean", "saved_var"))
    with pytest.raises(ConversionError, match="node 'bn' .*training mode"):
        convert_onnx_to_tflite(model, tmp_path / "m.tflite", verify=False)


# ---- layout-dependent ops on NHWC tensors (numpy references) ---------------------------------
B8, B6 = np.linspace(-1, 1, 8).astype(np.float32), np.linspace(-1, 1, 6).astype(np.float32)


@pytest.mark.parametrize("opset, node, b, expected", [
    (13, helper.make_node("Concat", ["a", "a"], ["y"], axis=-1), None, lambda a: np.concatenate([a, a], 3)),
    (9, helper.make_node("Flatten", ["a"], ["y"]), None, lambda a: a.reshape(1, -1)),
    (9, helper.make_node("Flatten", ["a"], ["y"], axis=2), None, lambda a: a.reshape(8, 36)),
    (13, helper.make_node("Flatten", ["a"], ["y"], axis=-1), None, lambda a: a.reshape(48, 6)),
    (13, helper.make_node("Transpose", ["a"], ["y"], perm=[0, 2, 1, 3]), None, lambda a: a.transpose(0, 2, 1, 3)),
    (9, helper.make_node("Transpose", ["a"], ["y"]), None, lambda a: a.transpose()),
    (11, helper.make_node("Squeeze", ["a"], ["y"], axes=[0]), None, lambda a: a[0]),
    (13, helper.make_node("Squeeze", ["a", "b"], ["y"]), np.array([0], np.int64), lambda a: a[0]),
    (11, helper.make_node("Unsqueeze", ["a"], ["y"], axes=[4]), None, lambda a: a[..., None]),
    (13, helper.make_node("Unsqueeze", ["a", "b"], ["y"]), np.array([2], np.int64), lambda a: a[:, :, None]),
    (13, helper.make_node("Mul", ["a", "b"], ["y"]), B6, lambda a: a * B6),
    (13, helper.make_node("Add", ["a", "b"], ["y"]), B8.reshape(8, 1, 1), lambda a: a + B8.reshape(8, 1, 1)),
])
@pytest.mark.parametrize("nhwc", [True, False])
def test_layout_ops_against_numpy(opset, node, b, expected, nhwc, tmp_path):
    """With ``nhwc`` an identity 1×1 Conv in front makes the converter hold "a" (= the input) in
    NHWC; numpy is the reference."""
    inits = [numpy_helper.from_array(b, "b")] if b is not None else []
    model = make_model([node], opset, initializers=inits, nhwc=nhwc, conv_weight=np.eye(8, dtype=np.float32))
    check_against(model, tmp_path, lambda x: [expected(x)])


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("shape, nhwc", [(SHAPE, True), (SHAPE, False), ((2, 8, 30), False), ((1, 4, 3, 5, 2), False)])
def test_global_pools_of_any_rank(op, shape, nhwc, tmp_path):
    """1-D (keyword-spotting heads), 2-D in NHWC or not, 3-D inputs."""
    check(make_model([helper.make_node(op, ["a"], ["y"])], 13, shape=shape, nhwc=nhwc), tmp_path)


@pytest.mark.parametrize("opset", [9, 13])
def test_gemm_alpha_beta(opset, tmp_path):
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.standard_normal((5, 16)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "c")]
    node = helper.make_node("Gemm", ["a", "w", "c"], ["y"], alpha=0.5, beta=2.0, transB=1)
    check(make_model([node], opset, shape=(3, 16), initializers=inits, nhwc=False), tmp_path)


# ---- verification ----------------------------------------------------------------------------
def three_layer_model() -> onnx.ModelProto:
    nodes = [helper.make_node("Relu", ["a"], ["r"], name="act"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Softmax", ["g"], ["y"], name="softmax")]
    return make_model(nodes, 9)


def test_verification_refuses_a_wrong_lowering_and_names_the_node(tmp_path, monkeypatch):
    from edgepack.exporter import tflite_export

    def wrong_relu(c, node):  # TANH instead of RELU: every later value is off
        nhwc = c.values[node.input[0]].nhwc
        c.builder.operator(tflite_export.OP.TANH, [c.tensor(node.input[0], "nhwc" if nhwc else "onnx")],
                           [c.output(node.output[0], nhwc)])

    monkeypatch.setitem(HANDLERS, "Relu", wrong_relu)
    target = tmp_path / "out" / "m.tflite"
    with pytest.raises(ConversionError, match=r"disagrees with ONNX Runtime on random input 0: output 'y' .*"
                                              r"first diverging node: 'act' \(Relu\), output 'r': max abs error"):
        convert_onnx_to_tflite(three_layer_model(), target)
    assert not target.exists() and not list(tmp_path.rglob("*.partial"))
    convert_onnx_to_tflite(three_layer_model(), target, verify=False)  # --no-verify writes it anyway
    assert target.exists()


def test_verification_refuses_an_output_of_the_wrong_shape(tmp_path, monkeypatch):
    """The right values in the wrong shape ([2, 3] for [3, 2]) used to pass: outputs were reshaped."""
    from edgepack.exporter import tflite_export

    def wrong_reshape(c, node):
        c.builder.operator(tflite_export.OP.RESHAPE, [c.tensor(node.input[0]), c.int32([2, 3])],
                           [c.output(node.output[0])])

    monkeypatch.setitem(HANDLERS, "Reshape", wrong_reshape)
    nodes = [helper.make_node("Relu", ["a"], ["r"], name="act"), helper.make_node("Reshape", ["r", "s"], ["y"])]
    model = make_model(nodes, 18, shape=(2, 3), nhwc=False,
                       initializers=[numpy_helper.from_array(np.array([3, 2], np.int64), "s")])
    with pytest.raises(ConversionError, match=r"output 'y' shape \(2, 3\) in TFLite, \(3, 2\) in ONNX"):
        convert_onnx_to_tflite(model, tmp_path / "m.tflite")
    assert not (tmp_path / "m.tflite").exists()


def test_a_file_litert_cannot_load_is_refused(tmp_path, monkeypatch):
    from edgepack.exporter import tflite_export

    def bad_reshape(c, node):  # 288 values into 7: LiteRT refuses at allocate_tensors
        c.builder.operator(tflite_export.OP.RESHAPE, [c.tensor(node.input[0]), c.int32([7])],
                           [c.output(node.output[0])])

    monkeypatch.setitem(HANDLERS, "Relu", bad_reshape)
    with pytest.raises(ConversionError, match="the converted model does not load in LiteRT .*nothing was written"):
        convert_onnx_to_tflite(three_layer_model(), tmp_path / "m.tflite")
    assert not (tmp_path / "m.tflite").exists()


def test_verification_catches_the_old_softmax_default(tmp_path, monkeypatch):
    """The issue's bug (opset-9 Softmax lowered with the opset-13 default axis) is refused, naming
    the Softmax: the converter can no longer write a silently wrong file."""
    from edgepack.exporter.tflite_export import OP, Options

    def opset13_softmax(c, node):  # the last ONNX axis (W, of size 1), as before the fix
        c.builder.operator(OP.SOFTMAX, [c.tensor(node.input[0])], [c.output(node.output[0])],
                           Options("SoftmaxOptions", {"Beta": 1.0}))

    monkeypatch.setitem(HANDLERS, "Softmax", opset13_softmax)
    with pytest.raises(ConversionError, match=r"first diverging node: 'softmax' \(Softmax\)"):
        convert_onnx_to_tflite(squeezenet_like(9), tmp_path / "m.tflite")


def test_calibration_data_layouts(tmp_path):
    model = three_layer_model()
    np.savez(tmp_path / "by_name.npz", x=np.random.default_rng(0).standard_normal((5, *SHAPE)).astype(np.float32))
    _, verification = convert_and_verify(model, tmp_path / "a.tflite", calibration_data=tmp_path / "by_name.npz")
    assert verification.calibration_samples == 5 and verification.random_inputs == 3
    assert "on 3 random inputs and 5 calibration samples" in verification.summary()
    np.savez(tmp_path / "wrong.npz", images=np.zeros((2, *SHAPE), np.float32))
    with pytest.raises(ConversionError, match=r"has arrays \['images'\]; it needs one named after each input \('x'\)"):
        convert_and_verify(model, tmp_path / "b.tflite", calibration_data=tmp_path / "wrong.npz")
    np.savez(tmp_path / "shape.npz", x=np.zeros((2, 7), np.float32))
    with pytest.raises(ConversionError, match=r"array 'x' of shape \(2, 7\) .* input shape \(1, 8, 6, 6\)"):
        convert_and_verify(model, tmp_path / "c.tflite", calibration_data=tmp_path / "shape.npz")
    with pytest.raises(ConversionError, match="cannot go with --no-verify"):
        convert_and_verify(model, tmp_path / "d.tflite", verify=False, calibration_data=tmp_path / "by_name.npz")
    assert sorted(p.name for p in tmp_path.glob("*.tflite")) == ["a.tflite"]  # refusals write nothing


# ---- --input-shape ---------------------------------------------------------------------------
def audio_model() -> onnx.ModelProto:
    """A waveform input [batch, samples] with both axes dynamic."""
    inits = [numpy_helper.from_array(np.array([1, 1, -1], np.int64), "shape"),
             numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 1, 9)).astype(np.float32), "w")]
    nodes = [helper.make_node("Reshape", ["audio", "shape"], ["wave"]),
             helper.make_node("Conv", ["wave", "w"], ["feat"], kernel_shape=[9], strides=[4]),
             helper.make_node("Relu", ["feat"], ["y"])]
    graph = helper.make_graph(nodes, "kws", [helper.make_tensor_value_info("audio", TensorProto.FLOAT,
                                                                           ["batch", "samples"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_input_shape_fixes_dynamic_axes(tmp_path):
    model = audio_model()
    with pytest.raises(ConversionError, match=r"input 'audio' has a dynamic axis other than the batch: "
                                              r"\['batch', 'samples'\]; fix it with --input-shape audio=1,N"):
        convert_onnx_to_tflite(model, tmp_path / "m.tflite")
    with pytest.raises(ConversionError, match=r"--input-shape names 'wave', .*the inputs are: 'audio'"):
        convert_onnx_to_tflite(model, tmp_path / "m.tflite", input_shapes={"wave": (1, 16000)})
    path = convert_onnx_to_tflite(model, tmp_path / "m.tflite", input_shapes={"audio": (1, 16000)})
    runner = interpreter.Interpreter(model_path=str(path))
    assert list(runner.get_input_details()[0]["shape"]) == [1, 16000]
    x = np.random.default_rng(1).standard_normal((1, 16000)).astype(np.float32)
    assert np.allclose(run_litert(path, [x])[0], ort_outputs(model)(x)[0], atol=1e-4)


def test_cli_convert_input_shape_and_verification_summary(tmp_path, capsys):
    onnx.save(audio_model(), tmp_path / "kws.onnx")
    out = tmp_path / "kws.tflite"
    assert main(["convert", str(tmp_path / "kws.onnx"), "-o", str(out), "--input-shape", "audio=1,16000"]) == 0
    printed = capsys.readouterr().out
    assert "verified against ONNX Runtime on 3 random inputs: max abs error" in printed and out.exists()
    assert main(["convert", str(tmp_path / "kws.onnx"), "-o", str(out), "--input-shape", "audio=2,800",
                 "--no-verify"]) == 0
    assert "not verified (--no-verify)" in capsys.readouterr().out
    assert main(["convert", str(tmp_path / "kws.onnx"), "-o", str(tmp_path / "x.tflite")]) != 0
    assert "--input-shape audio=1,N" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["convert", str(tmp_path / "kws.onnx"), "-o", str(out), "--input-shape", "audio:1,16000"])


def test_verification_runs_edgepack_custom_ops_and_names_a_wrong_one(tmp_path, monkeypatch):
    """ai.edgepack ops run on libedgepack_ort (ORT) and the delegate (LiteRT, intermediates kept):
    the honest file verifies; a HashedMatMul given the wrong seed is the node named."""
    import torch
    from export_helpers import MixedNet, randomize_batchnorm

    from edgepack.exporter import export_onnx, tflite_export

    torch.manual_seed(6)
    onnx_path = export_onnx(randomize_batchnorm(MixedNet()), (torch.randn(1, 1, 9, 9),), tmp_path / "m.onnx",
                            dynamic_batch=False)
    _, verification = convert_and_verify(onnx_path, tmp_path / "ok.tflite")
    assert verification.reference == "ONNX Runtime" and verification.max_abs_error < 1e-4
    honest = tflite_export.custom_attributes

    def wrong_seed(node):
        attributes = honest(node)
        return attributes | {"seed": attributes["seed"] + 1} if node.op_type == "HashedMatMul" else attributes

    monkeypatch.setattr(tflite_export, "custom_attributes", wrong_seed)
    with pytest.raises(ConversionError, match=r"first diverging node: '[^']*' \(HashedMatMul\)"):
        convert_onnx_to_tflite(onnx_path, tmp_path / "bad.tflite")
    assert not (tmp_path / "bad.tflite").exists()
