"""TFLite lowerings of ONNX ops whose attributes changed meaning between opsets.

Each handler reads ``Converter.opset`` (the model's default-domain opset): Softmax / LogSoftmax /
Hardmax coerce to 2-D before opset 13 (axis 1 by default) and use one axis (-1) after; Reduce*
take ``axes`` as an attribute before opset 18 (ReduceSum: 13) and as an input after; Split's sizes
(attribute, input or ``num_outputs``) and Upsample / Resize's output sizes come from the static
run; Resize's coordinate transformation is probed in ONNX Runtime and matched to TFLite's
align_corners / half_pixel_centers, or refused.
"""

import numpy as np
import onnx
import tflite
from onnx import helper, numpy_helper

from .tflite_export import OP, TO_NHWC, Converter, handles
from .tflite_writer import Options

SOFTMAX_OPTIONS = {"Softmax": Options("SoftmaxOptions", {"Beta": 1.0}), "LogSoftmax": Options("LogSoftmaxOptions")}


def _emit_last_axis(c: Converter, op_type: str, x: int, out: int, shape: tuple[int, ...]) -> None:
    """Softmax / LogSoftmax / Hardmax of TFLite tensor ``x`` over its last axis into ``out``."""
    if op_type in SOFTMAX_OPTIONS:
        code = OP.SOFTMAX if op_type == "Softmax" else OP.LOG_SOFTMAX
        c.builder.operator(code, [x], [out], SOFTMAX_OPTIONS[op_type])
        return
    indices = c.builder.tensor(f"{c.node.output[0]}_argmax", shape[:-1], np.int32)
    c.builder.operator(OP.ARG_MAX, [x, c.int32([len(shape) - 1])], [indices],
                       Options("ArgMaxOptions", {"OutputType": tflite.TensorType.INT32}))
    on, off = (c.builder.constant(f"{c.node.output[0]}_{v}", np.float32(v)) for v in (1.0, 0.0))
    c.builder.operator(OP.ONE_HOT, [indices, c.int32(shape[-1]), on, off], [out],
                       Options("OneHotOptions", {"Axis": -1}))


@handles("Softmax", "LogSoftmax", "Hardmax")
def convert_softmax(c: Converter, node: onnx.NodeProto) -> None:
    value = c.values[node.input[0]]
    rank = len(value.shape)
    coerced = c.opset < 13  # before 13: axis 1 by default, over the input flattened to 2-D at axis
    axis = c.axis(rank, 1 if coerced else -1)
    if coerced and axis < rank - 1:
        outer, inner = int(np.prod(value.shape[:axis])), int(np.prod(value.shape[axis:]))
        # Softmax/LogSoftmax over every axis from 1 on ignore element order: keep NHWC as it is.
        nhwc = value.nhwc and axis == 1 and node.op_type != "Hardmax"
        x = c.tensor(node.input[0], "nhwc" if nhwc else "onnx")
        flat = c.builder.tensor(f"{node.input[0]}_2d", (outer, inner))
        c.builder.operator(OP.RESHAPE, [x, c.int32((outer, inner))], [flat])
        normalised = c.builder.tensor(f"{node.output[0]}_2d", (outer, inner))
        _emit_last_axis(c, node.op_type, flat, normalised, (outer, inner))
        out = c.output(node.output[0], nhwc)
        c.builder.operator(OP.RESHAPE, [normalised, c.int32(c.tflite_shape(value.shape, nhwc))], [out])
        return
    if (value.nhwc and axis == 1) or axis == rank - 1:  # channels are the last NHWC axis
        nhwc = value.nhwc and axis == 1
        shape = c.tflite_shape(value.shape, nhwc)
        _emit_last_axis(c, node.op_type, c.tensor(node.input[0], "nhwc" if nhwc else "onnx"),
                        c.output(node.output[0], nhwc), shape)
        return
    perm = [i for i in range(rank) if i != axis] + [axis]  # move the axis last and back
    moved_shape = tuple(value.shape[i] for i in perm)
    moved = c.builder.tensor(f"{node.input[0]}_axis_last", moved_shape)
    c.builder.operator(OP.TRANSPOSE, [c.tensor(node.input[0]), c.int32(perm)], [moved])
    normalised = c.builder.tensor(f"{node.output[0]}_axis_last", moved_shape)
    _emit_last_axis(c, node.op_type, moved, normalised, moved_shape)
    c.builder.operator(OP.TRANSPOSE, [normalised, c.int32(np.argsort(perm))], [c.output(node.output[0])])


REDUCERS = {"ReduceMean": OP.MEAN, "ReduceMax": OP.REDUCE_MAX, "ReduceMin": OP.REDUCE_MIN,
            "ReduceSum": OP.SUM, "ReduceProd": OP.REDUCE_PROD}


@handles(*REDUCERS)
def convert_reduce(c: Converter, node: onnx.NodeProto) -> None:
    value = c.values[node.input[0]]
    rank = len(value.shape)
    axes_input_since = 13 if node.op_type == "ReduceSum" else 18
    has_input = len(node.input) > 1 and bool(node.input[1])
    if c.opset >= axes_input_since:
        axes = np.ravel(c.const(node.input[1], "axes")).tolist() if has_input else []
        noop = c.attribute("noop_with_empty_axes", 0)
    elif has_input:
        raise c.fail(f"at opset {c.opset} {node.op_type} takes axes as an attribute, not an input "
                     f"(the input form starts at opset {axes_input_since})")
    else:
        axes, noop = list(c.attribute("axes", [])), 0
    if not axes and noop:
        c.values[node.output[0]] = value
        return
    axes = sorted({int(a) % rank for a in axes} if axes else set(range(rank)))
    keep = bool(c.attribute("keepdims", 1))
    nhwc = value.nhwc and rank == 4
    if nhwc:  # reduce in NHWC when the result's axis order stays valid
        kept = [TO_NHWC[i] for i in range(4) if TO_NHWC[i] not in axes]
        nhwc = keep or kept == sorted(kept)
    tflite_axes = [c.tflite_axis(a, nhwc) for a in axes]
    x = c.tensor(node.input[0], "nhwc" if nhwc else "onnx")
    out = c.output(node.output[0], nhwc=nhwc and keep)
    c.builder.operator(REDUCERS[node.op_type], [x, c.int32(tflite_axes)], [out],
                       Options("ReducerOptions", {"KeepDims": keep}))


@handles("Split")
def convert_split(c: Converter, node: onnx.NodeProto) -> None:
    """SPLIT_V with the sizes of the static run (the ``split`` attribute, input or num_outputs)."""
    value = c.values[node.input[0]]
    rank = len(value.shape)
    axis = c.axis(rank, 0)
    sizes = [int(np.shape(c.static[name])[axis]) for name in node.output]
    x = c.tensor(node.input[0], "nhwc" if value.nhwc else "onnx")
    outputs = [c.output(name, value.nhwc) for name in node.output]
    c.builder.operator(OP.SPLIT_V, [x, c.int32(sizes), c.int32(c.tflite_axis(axis, value.nhwc))],
                       outputs, Options("SplitVOptions", {"NumSplits": len(sizes)}))


# ---- Upsample / Resize ------------------------------------------------------------------------
def tflite_resize_matrix(nearest: bool, size_in: int, size_out: int, align: bool, half: bool) -> np.ndarray:
    """[size_out, size_in] weights of TFLite's RESIZE_NEAREST_NEIGHBOR / RESIZE_BILINEAR on one
    axis (its reference kernels' float32 arithmetic)."""
    scale = np.float32(size_in / size_out)
    if align and size_out > 1:
        scale = np.float32((size_in - 1) / (size_out - 1))
    y = np.arange(size_out, dtype=np.float32)
    matrix = np.zeros((size_out, size_in))
    if nearest:
        index = np.floor(y * scale + np.float32(0.5)) if align else np.floor((y + np.float32(0.5 * half)) * scale)
        index = np.clip(index, 0, size_in - 1).astype(int)
        matrix[np.arange(size_out), index] = 1.0
        return matrix
    source = (y + np.float32(0.5)) * scale - np.float32(0.5) if half else y * scale
    low = np.maximum(np.floor(source), 0).astype(int)
    high = np.minimum(np.ceil(source), size_in - 1).astype(int)
    weight = (source - low).astype(np.float64)
    np.add.at(matrix, (np.arange(size_out), low), 1.0 - weight)
    np.add.at(matrix, (np.arange(size_out), high), weight)
    return matrix


def onnx_resize_matrix(c: Converter, node: onnx.NodeProto, axis: int, scale: float | None, size_out: int):
    """[size_out, size_in] weights of this Resize / Upsample node on one spatial axis, measured in
    ONNX Runtime on one-hot inputs (the op is separable and linear in its input)."""
    from .tflite_verify import ort_session

    size_in = c.values[node.input[0]].shape[axis]
    shape = [1, size_in, 1, 1]
    shape[axis] = size_in
    probe = np.eye(size_in, dtype=np.float32).reshape(shape)
    scales = np.ones(4, np.float32)
    scales[axis] = scale if scale is not None else size_out / size_in
    sizes = np.array([1, size_in, 1, 1], np.int64)
    sizes[axis] = size_out
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name not in ("axes", "scales")}
    initializers = []
    if node.op_type == "Upsample" and c.opset < 9:
        attributes["scales"] = scales.tolist()
        inputs = ["x"]
    elif node.op_type == "Upsample" or c.opset < 11:
        initializers, inputs = [numpy_helper.from_array(scales, "scales")], ["x", "scales"]
    else:
        roi, empty = numpy_helper.from_array(np.zeros(0, np.float32), "roi"), np.zeros(0, np.float32)
        initializers = [roi, numpy_helper.from_array(scales if scale is not None else empty, "scales")]
        inputs = ["x", "roi", "scales"]
        if scale is None:
            initializers.append(numpy_helper.from_array(sizes, "sizes"))
            inputs.append("sizes")
    graph = helper.make_graph(
        [helper.make_node(node.op_type, inputs, ["y"], **attributes)], "probe",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", c.opset)])
    model.ir_version = c.model.ir_version
    try:
        out = ort_session(model).run(None, {"x": probe})[0]
    except Exception as error:  # noqa: BLE001 - ORT's refusal becomes the node's error
        raise c.fail(f"ONNX Runtime cannot run this {node.op_type} configuration ({error})") from error
    return out.reshape(size_in, size_out).T  # channel k holds the one-hot at input position k


def resize_scales(c: Converter, node: onnx.NodeProto) -> np.ndarray | None:
    """The node's per-axis scales (None when it gives output sizes instead)."""
    if node.op_type == "Upsample" and c.opset < 9:
        return np.asarray(c.attribute("scales"), np.float32)
    index = 1 if node.op_type == "Upsample" or c.opset < 11 else 2
    if len(node.input) > index and node.input[index] and c.const(node.input[index], "scales").size:
        scales = np.ravel(c.const(node.input[index], "scales")).astype(np.float32)
        axes = c.attribute("axes")
        if axes is not None:
            full = np.ones(4, np.float32)
            full[[int(a) % 4 for a in axes]] = scales
            scales = full
        return scales
    return None


@handles("Resize", "Upsample")
def convert_resize(c: Converter, node: onnx.NodeProto) -> None:
    for name in node.input[1:]:
        if name:
            c.const(name, f"{node.op_type}'s roi / scales / sizes")
    value = c.values[node.input[0]]
    out_shape = tuple(np.shape(c.static[node.output[0]]))
    if len(value.shape) != 4 or out_shape[:2] != value.shape[:2]:
        raise c.fail(f"only resizing H and W of a 4-D (N, C, H, W) input is supported; input {value.shape} "
                     f"→ output {out_shape}")
    mode = c.text("mode", "nearest")
    if mode not in ("nearest", "linear", "bilinear"):
        raise c.fail(f"mode {mode!r} is not supported; supported: nearest, linear (bilinear)")
    transform = c.text("coordinate_transformation_mode", "half_pixel" if c.opset >= 11 else "asymmetric")
    if transform == "tf_crop_and_resize" or c.text("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise c.fail(f"coordinate_transformation_mode {transform!r} / keep_aspect_ratio_policy "
                     f"{c.text('keep_aspect_ratio_policy', 'stretch')!r} is not supported")
    scales = resize_scales(c, node)
    expected = {axis: onnx_resize_matrix(c, node, axis, None if scales is None else float(scales[axis]),
                                         out_shape[axis]) for axis in (2, 3)}
    nearest = mode == "nearest"
    for align, half in ((False, False), (True, False), (False, True)):
        if all(np.allclose(tflite_resize_matrix(nearest, value.shape[axis], out_shape[axis], align, half),
                           matrix, atol=1e-5) for axis, matrix in expected.items()):
            break
    else:
        raise c.fail(f"mode {mode!r} with coordinate_transformation_mode {transform!r}, nearest_mode "
                     f"{c.text('nearest_mode', 'round_prefer_floor')!r} and scales "
                     f"{None if scales is None else scales.tolist()} from {value.shape[2:]} to {out_shape[2:]} "
                     "samples other positions than TFLite's resize (supported: asymmetric, align_corners, "
                     "half_pixel / pytorch_half_pixel with output size = input size × scale; nearest also "
                     "tf_half_pixel_for_nn or half_pixel with round_prefer_ceil)")
    code, kind = ((OP.RESIZE_NEAREST_NEIGHBOR, "ResizeNearestNeighborOptions") if nearest
                  else (OP.RESIZE_BILINEAR, "ResizeBilinearOptions"))
    c.builder.operator(code, [c.tensor(node.input[0], "nhwc"), c.int32(out_shape[2:])],
                       [c.output(node.output[0], True)],
                       Options(kind, {"AlignCorners": align, "HalfPixelCenters": half}))
