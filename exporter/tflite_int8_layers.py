"""Each int8 CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED of a TFLite model recomputed in exact arithmetic
from the int8 input the runtime gave it: how many output quantization steps the runtime's kernel is off.

End to end, TFLite's builtin kernels drift a few steps from ORT / XNNPACK (their fixed-point requantization
rounds differently and the layers carry each difference on); layer by layer a correct lowering stays within
one step, so this check tells a rounding difference from a wrong scale, zero point, layout or padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tflite
import torch

_CONV, _DEPTHWISE, _FC = (tflite.BuiltinOperator.CONV_2D, tflite.BuiltinOperator.DEPTHWISE_CONV_2D,
                          tflite.BuiltinOperator.FULLY_CONNECTED)
_NAMES = {_CONV: "CONV_2D", _DEPTHWISE: "DEPTHWISE_CONV_2D", _FC: "FULLY_CONNECTED"}
_OPTIONS = {_CONV: tflite.Conv2DOptions, _DEPTHWISE: tflite.DepthwiseConv2DOptions,
            _FC: tflite.FullyConnectedOptions}


@dataclass
class LayerSteps:
    """The worst layer: its operator index and kind, its output tensor, and how many steps it is off."""

    index: int
    kind: str
    output: str
    steps: float


def _quantization(details: dict) -> tuple[np.ndarray, np.ndarray]:
    params = details["quantization_parameters"]
    return params["scales"].astype(np.float64), params["zero_points"].astype(np.int64)


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _accumulators(kind: int, options, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Σ (q_x − z_x)·q_w as float64 (exact for these sizes): x already shifted by its zero point, NHWC."""
    if kind == _FC:
        return x.reshape(-1, w.shape[1]) @ w.T
    xt = torch.from_numpy(x).permute(0, 3, 1, 2)
    if kind == _CONV:  # filter O·KH·KW·I
        weight, groups = torch.from_numpy(w).permute(0, 3, 1, 2), x.shape[3] // w.shape[3]
    else:  # depthwise filter 1·KH·KW·O
        weight, groups = torch.from_numpy(w).permute(3, 0, 1, 2), x.shape[3]
    stride, dilation = (options.StrideH(), options.StrideW()), (options.DilationHFactor(), options.DilationWFactor())
    if options.Padding() == tflite.Padding.SAME:
        (top, bottom), (left, right) = (_same_padding(x.shape[1 + d], weight.shape[2 + d], stride[d], dilation[d])
                                        for d in range(2))
        xt = torch.nn.functional.pad(xt, (left, right, top, bottom))
    y = torch.nn.functional.conv2d(xt, weight, None, stride, 0, dilation, groups)
    return y.permute(0, 2, 3, 1).numpy()


def _activation_range(function: int, scale: float, zero: int) -> tuple[int, int]:
    """TFLite's quantized activation range: the fused function's real bounds quantized, within int8."""
    bounds = {tflite.ActivationFunctionType.RELU: (0.0, None), tflite.ActivationFunctionType.RELU6: (0.0, 6.0),
              tflite.ActivationFunctionType.RELU_N1_TO_1: (-1.0, 1.0)}.get(function, (None, None))
    low, high = (None if real is None else zero + int(round(real / scale)) for real in bounds)
    return max(-128 if low is None else low, -128), min(127 if high is None else high, 127)


def layer_steps(data: bytes, interpreter) -> list[LayerSteps]:
    """Per int8 conv / depthwise / FC of the model ``data``: the largest difference, in output steps, between the
    int8 output ``interpreter`` computed on its last invoke (made with ``experimental_preserve_all_tensors``) and
    exact arithmetic (int32 accumulators, float64 requantization rounded to nearest) on the same int8 input."""
    model = tflite.Model.GetRootAsModel(data, 0)
    graph = model.Subgraphs(0)
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    found = []
    for number in range(graph.OperatorsLength()):
        op = graph.Operators(number)
        code = model.OperatorCodes(op.OpcodeIndex())
        kind = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if kind not in _NAMES or details[op.Inputs(0)]["dtype"] != np.int8:
            continue
        x_index, w_index, y_index = op.Inputs(0), op.Inputs(1), op.Outputs(0)
        bias_index = op.Inputs(2) if op.InputsLength() > 2 else -1
        (s_x,), (z_x,) = _quantization(details[x_index])
        s_w, _ = _quantization(details[w_index])
        (s_y,), (z_y,) = _quantization(details[y_index])
        options = _OPTIONS[kind]()
        table = op.BuiltinOptions()
        options.Init(table.Bytes, table.Pos)
        x = interpreter.get_tensor(x_index).astype(np.float64) - z_x
        acc = _accumulators(kind, options, x, interpreter.get_tensor(w_index).astype(np.float64))
        if bias_index >= 0:
            acc = acc + interpreter.get_tensor(bias_index).astype(np.float64)
        low, high = _activation_range(options.FusedActivationFunction(), s_y, z_y)
        want = np.clip(np.round(acc * (s_x * s_w / s_y)) + z_y, low, high)
        got = interpreter.get_tensor(y_index).astype(np.float64)
        steps = float(np.abs(got.reshape(want.shape) - want).max(initial=0.0)) if got.size == want.size else np.inf
        found.append(LayerSteps(number, _NAMES[kind], details[y_index]["name"], steps))
    return found
