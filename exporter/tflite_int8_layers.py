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

from .tflite_ops_conv import same_padding

_CONV, _DEPTHWISE, _FC = (tflite.BuiltinOperator.CONV_2D, tflite.BuiltinOperator.DEPTHWISE_CONV_2D,
                          tflite.BuiltinOperator.FULLY_CONNECTED)
_NAMES = {_CONV: "CONV_2D", _DEPTHWISE: "DEPTHWISE_CONV_2D", _FC: "FULLY_CONNECTED"}
_OPTIONS = {_CONV: tflite.Conv2DOptions, _DEPTHWISE: tflite.DepthwiseConv2DOptions,
            _FC: tflite.FullyConnectedOptions}


@dataclass
class LayerSteps:
    """One layer's result: its operator index and kind, its output tensor, and how many steps it is off."""

    index: int
    kind: str
    output: str
    steps: float


@dataclass
class Int8Layer:
    """One int8 conv / depthwise / FC read once from the model: its tensors, constants and options."""

    index: int
    kind: int
    options: object
    x: int
    y: int
    output: str
    x_scale: float
    x_zero: int
    y_scale: float
    y_zero: int
    weight: np.ndarray  # float64
    bias: np.ndarray | None  # float64
    requant: np.ndarray  # s_x · s_w / s_y per output channel
    low: int
    high: int

    def steps(self, interpreter) -> LayerSteps:
        """The layer's output on ``interpreter``'s last invoke against exact arithmetic on its int8 input."""
        acc = _accumulators(self.kind, self.options, interpreter.get_tensor(self.x).astype(np.float64) - self.x_zero,
                            self.weight)
        if self.bias is not None:
            acc = acc + self.bias
        want = np.clip(np.round(acc * self.requant) + self.y_zero, self.low, self.high)
        got = interpreter.get_tensor(self.y).astype(np.float64)
        steps = float(np.abs(got.reshape(want.shape) - want).max(initial=0.0)) if got.size == want.size else np.inf
        return LayerSteps(self.index, _NAMES[self.kind], self.output, steps)


def _quantization(details: dict) -> tuple[np.ndarray, np.ndarray]:
    params = details["quantization_parameters"]
    return params["scales"].astype(np.float64), params["zero_points"].astype(np.int64)


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
        (top, bottom), (left, right) = (same_padding(x.shape[1 + d], weight.shape[2 + d], stride[d], dilation[d])
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


def int8_layers(data: bytes, interpreter) -> list[Int8Layer]:
    """The int8 conv / depthwise / FC layers of the model ``data`` as loaded in ``interpreter`` (made with
    ``experimental_preserve_all_tensors``), read once: check each input with ``layer.steps(interpreter)``."""
    model = tflite.Model.GetRootAsModel(data, 0)
    graph = model.Subgraphs(0)
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    layers = []
    for number in range(graph.OperatorsLength()):
        op = graph.Operators(number)
        code = model.OperatorCodes(op.OpcodeIndex())
        kind = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if kind not in _NAMES or details[op.Inputs(0)]["dtype"] != np.int8:
            continue
        x, w, y = op.Inputs(0), op.Inputs(1), op.Outputs(0)
        bias = op.Inputs(2) if op.InputsLength() > 2 else -1
        (s_x,), (z_x,) = _quantization(details[x])
        s_w, _ = _quantization(details[w])
        (s_y,), (z_y,) = _quantization(details[y])
        options = _OPTIONS[kind]()
        table = op.BuiltinOptions()
        options.Init(table.Bytes, table.Pos)
        low, high = _activation_range(options.FusedActivationFunction(), s_y, z_y)
        layers.append(Int8Layer(number, kind, options, x, y, details[y]["name"], s_x, int(z_x), s_y, int(z_y),
                                interpreter.get_tensor(w).astype(np.float64),
                                interpreter.get_tensor(bias).astype(np.float64) if bias >= 0 else None,
                                s_x * s_w / s_y, low, high))
    return layers


def layer_steps(data: bytes, interpreter) -> list[LayerSteps]:
    """Per int8 conv / depthwise / FC of the model ``data``: the largest difference, in output steps, between the
    int8 output ``interpreter`` computed on its last invoke (made with ``experimental_preserve_all_tensors``) and
    exact arithmetic (int32 accumulators, float64 requantization rounded to nearest) on the same int8 input."""
    return [layer.steps(interpreter) for layer in int8_layers(data, interpreter)]
