"""Convolution, pooling and BatchNormalization for the TFLite writer, in NHWC.

1-D ops run as 2-D with H = 1. ONNX pads that TFLite's SAME / VALID cannot express become an
explicit PAD (lowest float for max pooling) and a VALID op; an average pool is then rescaled to
ONNX's divisor. A BatchNormalization right after a convolution is folded into it before lowering
(``passes.fold_batch_norms``), and a 1×1 convolution of a HashedWeight has become a HashedMatMul
(``passes.fuse_hashed_pointwise_convs``); the others become MUL + ADD, or batch statistics in training mode.
"""

from collections.abc import Callable

import numpy as np
import onnx
import tflite

from .tflite_export import OP, TO_NHWC, Converter, handles
from .tflite_writer import Options


def spatial_2d(c: Converter, rank: int, name: str, default, size: int) -> list[int]:
    """A 1-D or 2-D spatial attribute as its 2-D form (1-D ops run as 2-D with H = 1)."""
    values = list(c.attribute(name, default * (rank - 2)))
    if rank == 3:
        values = [0, values[0], 0, values[1]] if size == 4 else [1 if name != "pads" else 0, values[0]]
    return values


def nhwc_input(c: Converter, name: str) -> tuple[int, tuple[int, ...]]:
    """The input of a convolution or pool as NHWC; (N, C, L) becomes (N, 1, L, C)."""
    value = c.values[name]
    if len(value.shape) == 4:
        return c.tensor(name, "nhwc"), c.tflite_shape(value.shape, True)
    if len(value.shape) != 3:
        raise c.fail(f"only 1-D and 2-D inputs are supported, got shape {value.shape}")
    n, channels, length = value.shape
    transposed = c.builder.tensor(f"{name}_nlc", (n, length, channels))
    c.builder.operator(OP.TRANSPOSE, [c.tensor(name), c.int32([0, 2, 1])], [transposed])
    shape = (n, 1, length, channels)
    lifted = c.builder.tensor(f"{name}_nhwc", shape)
    c.builder.operator(OP.RESHAPE, [transposed, c.int32(shape)], [lifted])
    return lifted, shape


def nhwc_output(c: Converter, name: str) -> tuple[int, Callable[[], None]]:
    """The tensor a convolution or pool writes, and a step that finishes a 1-D output."""
    shape = tuple(np.shape(c.static[name]))
    if len(shape) == 4:
        return c.output(name, nhwc=True), lambda: None
    n, channels, length = shape
    raw = c.builder.tensor(f"{name}_nhwc", (n, 1, length, channels))

    def finish() -> None:
        flat = c.builder.tensor(f"{name}_nlc", (n, length, channels))
        c.builder.operator(OP.RESHAPE, [raw, c.int32((n, length, channels))], [flat])
        c.builder.operator(OP.TRANSPOSE, [flat, c.int32([0, 2, 1])], [c.output(name)])
    return raw, finish


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TFLite's SAME padding of one spatial axis: (before, after)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def tflite_padding(in_hw, kernel, strides, dilations, pads) -> int | None:
    """SAME or VALID when the ONNX pads [top, left, bottom, right] equal TFLite's, else None."""
    if not any(pads):
        return tflite.Padding.VALID
    same = [same_padding(*axis) for axis in zip(in_hw, kernel, strides, dilations)]
    if [pads[0], pads[2]] == list(same[0]) and [pads[1], pads[3]] == list(same[1]):
        return tflite.Padding.SAME
    return None


def pad_nhwc(c: Converter, x: int, name: str, shape, pads) -> tuple[int, tuple[int, ...]]:
    """Explicit zero PAD of an NHWC tensor by ONNX pads [top, left, bottom, right]."""
    paddings = [[0, 0], [pads[0], pads[2]], [pads[1], pads[3]], [0, 0]]
    shape = (shape[0], shape[1] + pads[0] + pads[2], shape[2] + pads[1] + pads[3], shape[3])
    out = c.builder.tensor(f"{name}_padded", shape)
    c.builder.operator(OP.PAD, [x, c.int32(paddings)], [out])
    return out, shape


@handles("Conv")
def convert_conv(c: Converter, node: onnx.NodeProto) -> None:
    x_value, w_value = c.values[node.input[0]], c.values[node.input[1]]
    rank = len(x_value.shape)
    if c.text("auto_pad", "NOTSET") != "NOTSET":
        raise c.fail("auto_pad is not supported; export with explicit pads")
    x, x_shape = nhwc_input(c, node.input[0])
    out_channels, in_per_group = w_value.shape[:2]
    kernel = (1, w_value.shape[2]) if rank == 3 else tuple(w_value.shape[2:])
    in_channels, group = x_value.shape[1], c.attribute("group", 1)
    strides, dilations = spatial_2d(c, rank, "strides", [1], 2), spatial_2d(c, rank, "dilations", [1], 2)
    pads = spatial_2d(c, rank, "pads", [0, 0], 4)
    depthwise = group > 1 and group == in_channels and in_per_group == 1
    perm = (1, 2, 3, 0) if depthwise else TO_NHWC  # ONNX OIHW → TFLite OHWI (or 1HWO)
    if w_value.const is not None:
        filter_oihw = w_value.const.reshape(out_channels, in_per_group, *kernel)
        weight = c.builder.constant(f"{node.input[1]}_tflite", filter_oihw.transpose(perm))
    else:
        if rank != 4:
            raise c.fail("a computed (non-constant) weight needs a 2-D convolution")
        weight = c.builder.tensor(f"{node.input[1]}_tflite", tuple(w_value.shape[i] for i in perm))
        c.builder.operator(OP.TRANSPOSE, [c.tensor(node.input[1]), c.int32(perm)], [weight])
    bias = (c.tensor(node.input[2]) if len(node.input) > 2 and node.input[2]
            else c.builder.constant(f"{node.name}_bias", np.zeros(out_channels, np.float32)))
    padding = tflite_padding(x_shape[1:3], kernel, strides, dilations, pads)
    if padding is None:
        x, x_shape = pad_nhwc(c, x, node.input[0], x_shape, pads)
        padding = tflite.Padding.VALID
    fields = dict(Padding=padding, StrideH=strides[0], StrideW=strides[1],
                  DilationHFactor=dilations[0], DilationWFactor=dilations[1])
    if depthwise:
        options = Options("DepthwiseConv2DOptions", fields | {"DepthMultiplier": out_channels // group})
        code = OP.DEPTHWISE_CONV_2D
    else:  # group > 1: TFLite's CONV_2D takes a filter with in_channels / group channels
        options, code = Options("Conv2DOptions", fields), OP.CONV_2D
    out, finish = nhwc_output(c, node.output[0])
    c.builder.operator(code, [x, weight, bias], [out], options)
    finish()


@handles("MaxPool", "AveragePool")
def convert_pool(c: Converter, node: onnx.NodeProto) -> None:
    """MaxPool / AveragePool in NHWC: TFLite's SAME or VALID when they match; else PAD (lowest float
    for max, zeros for average) and a VALID pool, or for a dilated pool the max / sum of one strided
    slice per kernel tap. An average is then rescaled by a constant map to ONNX's divisor: padded
    cells count only with count_include_pad, cells past the padded input (ceil_mode) never."""
    if len([name for name in node.output if name]) > 1:
        raise c.fail("MaxPool's Indices output is not supported")
    rank = len(c.values[node.input[0]].shape)
    kernel = spatial_2d(c, rank, "kernel_shape", [1], 2)
    strides = spatial_2d(c, rank, "strides", [1], 2)
    dilations = spatial_2d(c, rank, "dilations", [1], 2)
    x, x_shape = nhwc_input(c, node.input[0])
    in_hw = x_shape[1:3]
    spans = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    out_hw = pool_output_hw(c, node.output[0], rank, in_hw, spans, strides)
    pads = pool_pads(c, rank, in_hw, out_hw, spans, strides)
    extra = [max((o - 1) * s + k - (i + pads[a] + pads[a + 2]), 0)  # ceil_mode: past the padded input
             for a, (o, s, k, i) in enumerate(zip(out_hw, strides, spans, in_hw))]
    is_max, dilated = node.op_type == "MaxPool", spans != kernel
    include_pad = not is_max and bool(c.attribute("count_include_pad", 0))
    code = OP.MAX_POOL_2D if is_max else OP.AVERAGE_POOL_2D
    padding = None if any(extra) or dilated else tflite_padding(in_hw, kernel, strides, [1, 1], pads)
    direct = [-(-size // s) if padding == tflite.Padding.SAME else (size - k) // s + 1
              for size, k, s in zip(in_hw, kernel, strides)]
    out, finish = nhwc_output(c, node.output[0])
    if padding is not None and direct == list(out_hw) and not (padding == tflite.Padding.SAME and include_pad):
        c.builder.operator(code, [x], [out], pool_options(padding, kernel, strides))
        finish()
        return
    paddings = [[0, 0], [pads[0], pads[2] + extra[0]], [pads[1], pads[3] + extra[1]], [0, 0]]
    padded_shape = (x_shape[0], x_shape[1] + sum(paddings[1]), x_shape[2] + sum(paddings[2]), x_shape[3])
    padded = c.builder.tensor(f"{node.input[0]}_pool_padded{len(c.builder.tensors)}", padded_shape)
    if is_max:
        lowest = c.builder.constant(f"{node.name}_lowest", np.float32(np.finfo(np.float32).min))
        c.builder.operator(OP.PADV2, [x, c.int32(paddings), lowest], [padded])
        scale = None
    else:
        c.builder.operator(OP.PAD, [x, c.int32(paddings)], [padded])
        divisor = pool_divisor(in_hw, out_hw, kernel, strides, dilations, pads, include_pad)
        if (divisor == 0).any():
            raise c.fail(f"pads {pads} leave pooling windows without any input element")
        scale = ((1 if dilated else kernel[0] * kernel[1]) / divisor).astype(np.float32)
        scale = None if np.all(scale == 1.0) else scale
    pooled = out if scale is None else c.builder.tensor(f"{node.output[0]}_pooled", c.builder.tensors[out].shape)
    if dilated:
        pool_taps(c, padded, padded_shape, pooled, out_hw, kernel, strides, dilations, is_max)
    else:
        c.builder.operator(code, [padded], [pooled], pool_options(tflite.Padding.VALID, kernel, strides))
    if scale is not None:
        scale_map = c.builder.constant(f"{node.name}_pool_scale", scale.reshape(1, *scale.shape, 1))
        c.builder.operator(OP.MUL, [pooled, scale_map], [out])
    finish()


def pool_options(padding: int, kernel, strides) -> Options:
    return Options("Pool2DOptions", dict(Padding=padding, StrideH=strides[0], StrideW=strides[1],
                                         FilterHeight=kernel[0], FilterWidth=kernel[1]))


def pool_taps(c: Converter, x: int, shape, out: int, out_hw, kernel, strides, dilations, is_max: bool) -> None:
    """A dilated pool of an already padded NHWC tensor: MAXIMUM / ADD over one STRIDED_SLICE per tap."""
    taps = [(i * dilations[0], j * dilations[1]) for i in range(kernel[0]) for j in range(kernel[1])]
    tap_shape = (shape[0], *out_hw, shape[3])
    result = None
    for position, (top, left) in enumerate(taps):
        last = position == len(taps) - 1
        tap = out if last and result is None else c.builder.tensor(f"{c.node.output[0]}_tap{position}", tap_shape)
        end = [shape[0], top + (out_hw[0] - 1) * strides[0] + 1, left + (out_hw[1] - 1) * strides[1] + 1, shape[3]]
        c.builder.operator(OP.STRIDED_SLICE, [x, c.int32([0, top, left, 0]), c.int32(end),
                                              c.int32([1, strides[0], strides[1], 1])],
                           [tap], Options("StridedSliceOptions", {}))
        if result is not None:
            combined = out if last else c.builder.tensor(f"{c.node.output[0]}_taps{position}", tap_shape)
            c.builder.operator(OP.MAXIMUM if is_max else OP.ADD, [result, tap], [combined])
            tap = combined
        result = tap


def pool_output_hw(c: Converter, name: str, rank: int, in_hw, spans, strides) -> tuple[int, int]:
    """The (H, W) of a pool's output (H = 1 for a 1-D pool) as the ONNX spec defines it (``spans``:
    the dilated kernel extents), checked against the reference run that gave every static shape."""
    auto_pad = c.text("auto_pad", "NOTSET")
    pads = spatial_2d(c, rank, "pads", [0, 0], 4) if auto_pad in ("NOTSET", "") else [0] * 4
    spec = []
    for a, (size, k, s) in enumerate(zip(in_hw, spans, strides)):
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            spec.append(-(-size // s))
            continue
        extent = size + pads[a] + pads[a + 2] - k
        out = (-(-extent // s) if c.attribute("ceil_mode", 0) else extent // s) + 1
        spec.append(out - 1 if (out - 1) * s >= size + pads[a] else out)  # windows start inside
    shape = tuple(np.shape(c.static[name]))
    static = (1, shape[2]) if len(shape) == 3 else tuple(shape[2:4])
    if tuple(spec) != static:
        raise c.fail(f"the static shape run gives spatial output {list(shape[2:])}, the ONNX spec "
                     f"{spec[-(len(shape) - 2):]}; a pool whose output size is in doubt is not converted")
    return static


def pool_pads(c: Converter, rank: int, in_hw, out_hw, spans, strides) -> list[int]:
    """ONNX pads [top, left, bottom, right], computed for auto_pad SAME_UPPER / SAME_LOWER / VALID."""
    auto_pad = c.text("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", ""):
        return spatial_2d(c, rank, "pads", [0, 0], 4)
    if auto_pad == "VALID":
        return [0, 0, 0, 0]
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise c.fail(f"auto_pad={auto_pad!r} is not valid; valid: NOTSET, SAME_UPPER, SAME_LOWER, VALID")
    totals = [max((o - 1) * s + k - i, 0) for o, s, k, i in zip(out_hw, strides, spans, in_hw)]
    begin = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in totals]
    return begin + [t - b for t, b in zip(totals, begin)]


def pool_divisor(in_hw, out_hw, kernel, strides, dilations, pads, include_pad: bool) -> np.ndarray:
    """ONNX's average-pool divisor per output cell (OH, OW): the kernel taps that land on the input,
    or on the input and its explicit padding with count_include_pad."""
    counts = []
    for a, (i, o, k, s, d) in enumerate(zip(in_hw, out_hw, kernel, strides, dilations)):
        low, high = (0, pads[a] + i + pads[a + 2]) if include_pad else (pads[a], pads[a] + i)
        taps = (np.arange(o) * s)[:, None] + np.arange(k) * d
        counts.append(((taps >= low) & (taps < high)).sum(axis=1))
    return np.outer(*counts)


@handles("GlobalAveragePool", "GlobalMaxPool")
def convert_global_average_pool(c: Converter, node: onnx.NodeProto) -> None:
    """MEAN / REDUCE_MAX over the spatial axes: H, W of NHWC for 2-D, the ONNX axes 2.. otherwise."""
    code = OP.MEAN if node.op_type == "GlobalAveragePool" else OP.REDUCE_MAX
    rank = len(c.values[node.input[0]].shape)
    nhwc = rank == 4
    x = c.tensor(node.input[0], "nhwc" if nhwc else "onnx")
    c.builder.operator(code, [x, c.int32([1, 2] if nhwc else list(range(2, rank)))],
                       [c.output(node.output[0], nhwc)], Options("ReducerOptions", {"KeepDims": True}))


@handles("BatchNormalization")
def convert_batch_norm(c: Converter, node: onnx.NodeProto) -> None:
    """A BatchNormalization not folded into a convolution: MUL + ADD by per-channel constants
    (per-element ones for ``spatial=0``, opsets 7-8); batch statistics in training mode (opset 14+)."""
    if c.opset >= 14 and c.attribute("training_mode", 0):
        batch_norm_training(c, node)
        return
    refuse_training_batch_norm(c, node)
    gamma, beta, mean, var = (c.const(name, what) for name, what in
                              zip(node.input[1:5], ("scale", "bias", "mean", "var")))
    scale = (gamma / np.sqrt(var + c.attribute("epsilon", 1e-5))).astype(np.float32)
    shift = (beta - mean * scale).astype(np.float32)
    value = c.values[node.input[0]]
    rank, nhwc = len(value.shape), len(value.shape) == 4
    x = c.tensor(node.input[0], "nhwc" if nhwc else "onnx")
    full = (1, scale.shape[0]) + (1,) * (rank - 2) if scale.ndim == 1 else (1,) + scale.shape
    constants = [a.reshape(full).transpose(TO_NHWC) if nhwc else a.reshape(full) for a in (scale, shift)]
    scaled = c.builder.tensor(f"{node.output[0]}_scaled", c.tflite_shape(value.shape, nhwc))
    c.builder.operator(OP.MUL, [x, c.builder.constant(f"{node.name}_scale", constants[0])], [scaled])
    c.builder.operator(OP.ADD, [scaled, c.builder.constant(f"{node.name}_shift", constants[1])],
                       [c.output(node.output[0], nhwc)])


def batch_norm_training(c: Converter, node: onnx.NodeProto) -> None:
    """Training mode: normalise with the batch's mean and population variance over every axis but
    the channels, and output the momentum-updated running statistics."""
    value = c.values[node.input[0]]
    rank, nhwc = len(value.shape), len(value.shape) == 4
    channels, epsilon = value.shape[1], c.attribute("epsilon", 1e-5)
    momentum = c.attribute("momentum", 0.9)
    shape = c.tflite_shape(value.shape, nhwc)
    stat_shape = tuple(channels if i == (3 if nhwc else 1) else 1 for i in range(rank))
    axes = c.int32([i for i in range(rank) if i != (3 if nhwc else 1)])
    x, name = c.tensor(node.input[0], "nhwc" if nhwc else "onnx"), node.output[0]
    reducer = Options("ReducerOptions", {"KeepDims": True})

    def emit(code, inputs, tensor_shape, suffix, options=None):
        out = c.builder.tensor(f"{name}_{suffix}", tensor_shape)
        c.builder.operator(code, inputs, [out], options)
        return out

    def const(array, suffix):  # a per-channel array broadcast against the activation, or a scalar
        array = np.asarray(array, np.float32)
        return c.builder.constant(f"{name}_{suffix}", array.reshape(stat_shape) if array.size > 1 else array)

    mean = emit(OP.MEAN, [x, axes], stat_shape, "batch_mean", reducer)
    centred = emit(OP.SUB, [x, mean], shape, "centred")
    var = emit(OP.MEAN, [emit(OP.MUL, [centred, centred], shape, "squared"), axes], stat_shape, "batch_var", reducer)
    inv_std = emit(OP.RSQRT, [emit(OP.ADD, [var, const(epsilon, "epsilon")], stat_shape, "var_eps")],
                   stat_shape, "inv_std")
    gamma, beta = (c.const(n, what) for n, what in zip(node.input[1:3], ("scale", "bias")))
    scaled = emit(OP.MUL, [emit(OP.MUL, [centred, inv_std], shape, "normalised"), const(gamma, "scale")],
                  shape, "scaled")
    c.builder.operator(OP.ADD, [scaled, const(beta, "bias")], [c.output(name, nhwc)])
    for output, batch, source in zip(node.output[1:3], (mean, var), node.input[3:5]):
        if not output:
            continue
        kept = const(c.const(source, "running statistic") * momentum, f"{output}_kept")
        update = emit(OP.MUL, [batch, const(1.0 - momentum, f"{output}_rate")], stat_shape, f"{output}_update")
        summed = emit(OP.ADD, [kept, update], stat_shape, f"{output}_sum")
        c.builder.operator(OP.RESHAPE, [summed, c.int32([channels])], [c.output(output)])


def refuse_training_batch_norm(c: Converter, node: onnx.NodeProto) -> None:
    """Before opset 14, a training-mode BatchNormalization (is_test=0, extra outputs) is refused."""
    training = any(node.output[1:])
    if c.opset < 7:
        training = training or not c.attribute("is_test", 0)
    if training:
        raise c.fail(f"BatchNormalization in training mode at opset {c.opset} (is_test=0 or extra mean/var "
                     "outputs) is not supported; export the model in eval mode (or at opset 14+)")
