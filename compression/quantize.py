"""int8 quantization on the TFLite int8 spec: post-training calibration (PTQ) and quantization-aware
training (QAT) of a model's dense Linear / Conv2d layers and of its hashed / codebook layers (int8 buckets /
codebook, compression/quantize_compressed.py), so one model exports to ONNX QDQ and to int8 TFLite.

Weights: int8 symmetric per output channel (zero point 0, −127..127), stored as an int8 buffer plus float32
scales. Activations: int8 asymmetric per tensor (−128..127), observed at each layer's input and output (after
its ReLU when the ReLU is fused). Biases stay float32, snapped to the int32 grid of input scale × weight
scale, so a converter's int32 bias is exact. BatchNorm2d right after a Conv2d in an ``nn.Sequential`` is
folded first (into a hashed / codebook conv's per-channel weight scale); an ``nn.ReLU`` right after a
quantized layer (Identity children skipped) is fused into it. Circulant, LDR and hyper layers stay float.
Parameter-free modules next to them (pool, flatten) become ``QuantPassThrough``: each tensor is quantized once.
Flow: ``prepare`` (fold, fuse, wrap in ``FakeQuantLayer``) → ``calibrate`` → [QAT: ``fine_tune`` with fake
quant] → ``convert`` (``QuantLinear`` / ``QuantConv2d``), and the ``quantize`` stage doing all of it.
"""

from __future__ import annotations

import copy
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from edgepack.errors import EdgepackError

from .common import set_conv_geometry
from .stages import (
    StageData,
    StageError,
    StageReport,
    fine_tune,
    register_stage,
    register_transform,
    run_every_output,
    stage_report,
)

ACTIVATION_MIN, ACTIVATION_MAX = -128, 127
WEIGHT_MAX = 127
OBSERVERS = ("minmax", "percentile")
MODES = ("ptq", "qat")
SUPPORTED_BITS = (8,)
SMALLEST_SCALE = 1e-8
PERCENTILE_SAMPLES = 1 << 20  # values kept per calibration batch by the percentile observer
# modules that commute with quantization (a chain of them on the model input is quantized at its start)
VALUE_PRESERVING = (nn.Flatten, nn.Unflatten, nn.Dropout, nn.MaxPool1d, nn.MaxPool2d, nn.ReLU)
# modules whose output keeps its input's quantization (a following layer shares the upstream parameters)
AVERAGING = (nn.AvgPool2d, nn.AdaptiveAvgPool2d)  # TFLite MEAN: the output gets its own range
PASS_THROUGH = (nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.MaxPool1d, nn.MaxPool2d, nn.ReLU,
                nn.AvgPool2d, nn.AdaptiveAvgPool2d)


class QuantizeError(EdgepackError, ValueError):
    """A model or layer cannot be quantized as asked; the message names the layer and what is valid."""


def activation_qparams(low: float, high: float) -> tuple[float, int]:
    """(scale, zero point) of int8 asymmetric activations covering [low, high] and always 0 exactly."""
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    scale = max((high - low) / (ACTIVATION_MAX - ACTIVATION_MIN), SMALLEST_SCALE)
    zero_point = int(min(max(round(ACTIVATION_MIN - low / scale), ACTIVATION_MIN), ACTIVATION_MAX))
    return scale, zero_point


def weight_scales(weight: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric scales: max |w| of each channel / 127."""
    amax = weight.detach().abs().reshape(weight.shape[0], -1).amax(dim=1)
    return (amax / WEIGHT_MAX).clamp(min=SMALLEST_SCALE).float()


def _channel_view(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``values`` [out] shaped to broadcast over a weight [out, ...]."""
    return values.view(-1, *([1] * (weight.dim() - 1)))


def quantize_weight(weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """int8 weights: round(w / scale) clamped to −127..127, per output channel."""
    q = torch.round(weight.detach() / _channel_view(scales, weight))
    return q.clamp(-WEIGHT_MAX, WEIGHT_MAX).to(torch.int8)


def fake_quant(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """Quantize to int8 and back (straight-through gradient inside the range)."""
    return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, ACTIVATION_MIN, ACTIVATION_MAX)


class RangeObserver(nn.Module):
    """The range [low, high] of the tensors it sees: min/max or a percentile (e.g. 99.99 % of |values| on
    each side) over the calibration batches, then, during QAT, an exponential moving average of each
    training batch's statistic (torch.ao's MovingAverageMinMaxObserver, momentum 0.01)."""

    def __init__(self, method: str = "minmax", percentile: float = 99.99, momentum: float = 0.01) -> None:
        super().__init__()
        self.method, self.percentile, self.momentum = method, percentile, momentum
        self.reset()

    def reset(self) -> None:
        """Forget everything seen."""
        self.moving = False
        self.samples: list[torch.Tensor] = []
        self.low, self.high = math.inf, -math.inf
        self.generator = torch.Generator().manual_seed(0)

    def _statistic(self, values: torch.Tensor) -> tuple[float, float]:
        if self.method == "minmax":
            return float(values.min()), float(values.max())
        q = torch.tensor([1 - self.percentile / 100, self.percentile / 100], dtype=values.dtype)
        return tuple(float(v) for v in torch.quantile(self._subsample(values), q))

    def _subsample(self, values: torch.Tensor) -> torch.Tensor:
        values = values.detach().flatten().float()
        if values.numel() <= PERCENTILE_SAMPLES:
            return values
        return values[torch.randint(values.numel(), (PERCENTILE_SAMPLES,), generator=self.generator)]

    def update(self, x: torch.Tensor) -> None:
        """Take one batch into account."""
        if x.numel() == 0:
            return
        if self.moving:
            low, high = self._statistic(x.detach())
            self.low += self.momentum * (low - self.low)
            self.high += self.momentum * (high - self.high)
        elif self.method == "percentile":
            self.samples.append(self._subsample(x))
        else:
            self.low, self.high = min(self.low, float(x.min())), max(self.high, float(x.max()))

    def finish_calibration(self) -> None:
        """Turn the collected samples into the range; later updates are moving averages (QAT)."""
        if self.samples:
            values = torch.cat(self.samples)
            if values.numel() > 16 * PERCENTILE_SAMPLES:  # torch.quantile's input limit is 2**24
                values = values[torch.randint(values.numel(), (16 * PERCENTILE_SAMPLES,), generator=self.generator)]
            self.low, self.high = self._statistic(values)
            self.samples = []
        self.moving = True

    def qparams(self) -> tuple[float, int]:
        """(scale, zero point) of the range seen so far."""
        if not math.isfinite(self.low):
            return activation_qparams(0.0, 0.0)
        return activation_qparams(self.low, self.high)


class FakeQuantLayer(nn.Module):
    """A dense Linear / Conv2d while it is calibrated (``observing``) or trained with fake quant (QAT):
    input and output observers, per-channel fake-quant weights, an optional fused ReLU."""

    def __init__(self, layer: nn.Linear | nn.Conv2d, relu: bool, observer: str, percentile: float) -> None:
        super().__init__()
        self.layer, self.relu = layer, relu
        self.input_observer = RangeObserver(observer, percentile)
        self.output_observer = RangeObserver(observer, percentile)
        self.observing, self.fake = True, False
        self.upstream: list[nn.Module] = []  # the module whose output this reads (a list: no submodule)
        self.input_quantized = False

    def input_qparams(self) -> tuple[float, int]:
        """The input's (scale, zero point): the upstream module's output ones when shared."""
        return self.upstream[0].output_qparams() if self.upstream else self.input_observer.qparams()

    def output_qparams(self) -> tuple[float, int]:
        """The output's (scale, zero point)."""
        return self.output_observer.qparams()

    def layer_bias(self) -> torch.Tensor | None:
        """The float bias."""
        return self.layer.bias

    def quant_layer(self, spec: dict) -> nn.Module:
        """The int8 layer this one converts to (filled by its ``set_quantization``)."""
        return QUANT_LAYERS[type(self.layer)].from_dense(self.layer, **spec)

    def weight(self) -> torch.Tensor:
        """The float weight, fake-quantized per channel when ``fake``."""
        weight = self.layer.weight
        if not self.fake:
            return weight
        zero = torch.zeros(weight.shape[0], dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(weight, weight_scales(weight), zero, 0, -WEIGHT_MAX, WEIGHT_MAX)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        observe = self.observing or (self.fake and self.training)
        if observe and not self.upstream:
            self.input_observer.update(x)
        if self.fake:
            x = fake_quant(x, *self.input_qparams())
        y = _compute(self.layer, x, self.weight(), self.layer_bias())
        if self.relu:
            y = torch.relu(y)
        if observe:
            self.output_observer.update(y)
        return fake_quant(y, *self.output_qparams()) if self.fake else y


def _compute(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The layer's linear map with the given weight (Conv2d geometry taken from ``layer``)."""
    if not hasattr(layer, "kernel_size"):
        return F.linear(x, weight, bias)
    return F.conv2d(x, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups)


class _QuantLayer(nn.Module):
    """What QuantLinear and QuantConv2d share: int8 weight [out, ...] + float32 per-channel scales, a float
    bias on the int32 grid, the input / output (scale, zero point); forward = the int8 model's arithmetic
    in float (fake-quant input → dequantized weights → ReLU if fused → fake-quant output)."""

    weight_bits = 8
    activation_bits = 8

    def _init_quant(self, shape: tuple[int, ...], bias: bool, relu: bool, input_quantized: bool) -> None:
        self.register_buffer("weight", torch.zeros(shape, dtype=torch.int8))
        self._init_buffers(shape[0], bias, relu, input_quantized)

    def _init_buffers(self, out: int, bias: bool, relu: bool, input_quantized: bool) -> None:
        """Everything but the int8 weight: scales [out], bias, activation parameters."""
        self.relu, self.input_quantized = bool(relu), bool(input_quantized)
        self.register_buffer("weight_scale", torch.ones(out))
        self.register_buffer("bias", torch.zeros(out) if bias else None)
        for name in ("input", "output"):
            self.register_buffer(f"{name}_scale", torch.tensor(1.0))
            self.register_buffer(f"{name}_zero_point", torch.tensor(0, dtype=torch.int32))

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight the int8 values and scales stand for."""
        return self.weight.float() * _channel_view(self.weight_scale, self.weight)

    def qparams(self, name: str) -> tuple[float, int]:
        """(scale, zero point) of the "input" or the "output"."""
        return float(getattr(self, f"{name}_scale")), int(getattr(self, f"{name}_zero_point"))

    def set_quantization(self, layer: FakeQuantLayer) -> None:
        """Fill the buffers from a calibrated / QAT-trained ``FakeQuantLayer``."""
        scales = weight_scales(layer.layer.weight)
        self.weight.copy_(quantize_weight(layer.layer.weight, scales))
        self.weight_scale.copy_(scales)
        self._set_activations(layer, scales)

    def _set_activations(self, layer: FakeQuantLayer, scales: torch.Tensor) -> None:
        """The activation parameters and the bias on the int32 grid of input scale × ``scales``."""
        input_scale, input_zero = layer.input_qparams()
        output_scale, output_zero = layer.output_qparams()
        self.input_scale.fill_(input_scale)
        self.input_zero_point.fill_(input_zero)
        self.output_scale.fill_(output_scale)
        self.output_zero_point.fill_(output_zero)
        if self.bias is not None:
            step = self.input_scale * scales  # the int32 bias grid of the TFLite spec
            limit = 2.0 ** 31 - 1
            self.bias.copy_(torch.round(layer.layer_bias().detach() / step).clamp(-limit, limit) * step)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = fake_quant(x, *self.qparams("input"))
        y = _compute(self, x, self.dequantized_weight(), self.bias)
        if self.relu:
            y = torch.relu(y)
        return fake_quant(y, *self.qparams("output"))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, relu={self.relu}, input_quantized={self.input_quantized}"


class QuantLinear(_QuantLayer):
    """An int8 Linear (per-channel weights, per-tensor activations)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, relu: bool = False,
                 input_quantized: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_quant((out_features, in_features), bias, relu, input_quantized)

    @classmethod
    def from_dense(cls, layer: nn.Linear, *, bias: bool | None = None, relu: bool = False,
                   input_quantized: bool = False) -> QuantLinear:
        """An int8 layer of ``layer``'s shape (weights filled by ``set_quantization`` or a state dict)."""
        bias = layer.bias is not None if bias is None else bias
        return cls(layer.in_features, layer.out_features, bias, relu, input_quantized)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}" + super().extra_repr()


class QuantConv2d(_QuantLayer):
    """An int8 Conv2d (depthwise and grouped included; zero padding)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, relu: bool = False, input_quantized: bool = False) -> None:
        super().__init__()
        shape = set_conv_geometry(self, in_channels, out_channels, kernel_size, nn.modules.utils._pair(stride),
                                  padding if isinstance(padding, str) else nn.modules.utils._pair(padding),
                                  nn.modules.utils._pair(dilation), groups, QuantizeError)
        self._init_quant(shape, bias, relu, input_quantized)

    @classmethod
    def from_dense(cls, layer: nn.Conv2d, *, bias: bool | None = None, relu: bool = False,
                   input_quantized: bool = False) -> QuantConv2d:
        """An int8 layer of ``layer``'s geometry (weights filled by ``set_quantization`` or a state dict)."""
        bias = layer.bias is not None if bias is None else bias
        return cls(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                   layer.dilation, layer.groups, bias, relu, input_quantized)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}") + super().extra_repr()


QUANT_LAYERS = {nn.Linear: QuantLinear, nn.Conv2d: QuantConv2d}


def _sequentials(model: nn.Module):
    """(dotted name prefix, module) of every nn.Sequential in ``model``, the model itself included."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Sequential):
            yield (f"{name}." if name else ""), module


def fold_batchnorms(model: nn.Module) -> list[str]:
    """Fold every BatchNorm2d that directly follows a dense Conv2d in an nn.Sequential into that conv (eval
    statistics) and replace it by nn.Identity, in place; returns the BatchNorms' names. Others stay (and
    stay float: a BatchNorm that follows no conv, or one inside a custom module's forward)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = []
    for prefix, sequential in _sequentials(model):
        children = list(sequential.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.running_mean is not None
                    and bn.num_features == conv.out_channels):
                setattr(sequential, conv_name, fuse_conv_bn_eval(conv.eval(), bn.eval()))
                setattr(sequential, bn_name, nn.Identity())
                folded.append(prefix + bn_name)
    return folded


def _fusable_relus(model: nn.Module) -> dict[str, str]:
    """{layer name: ReLU name} for each nn.ReLU that follows a dense Linear / Conv2d or a hashed / codebook
    layer in an nn.Sequential (nn.Identity children in between are skipped)."""
    from .quantize_compressed import QUANT_COMPRESSED, unstorable_reason

    fused = {}
    for prefix, sequential in _sequentials(model):
        previous = None
        for name, child in sequential.named_children():
            if isinstance(child, nn.Identity):
                continue
            if type(child) is nn.ReLU and previous is not None:
                fused[prefix + previous] = prefix + name
            storable = type(child) in QUANT_COMPRESSED and unstorable_reason(child) is None
            previous = name if type(child) in QUANT_LAYERS or storable else None
    return fused


def _get(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _dense_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The dense nn.Linear / nn.Conv2d layers (exact types: compressed layers stay as they are)."""
    return {name: m for name, m in model.named_modules() if type(m) in QUANT_LAYERS and name}


def prepare(model: nn.Module, observer: str = "minmax", percentile: float = 99.99) -> nn.Module:
    """A copy of ``model`` with BatchNorms folded, ReLUs fused and every dense Linear / Conv2d wrapped in a
    ``FakeQuantLayer`` that observes its activation ranges (a hashed / codebook layer in a
    ``FakeQuantCompressed``; one that cannot store int8 values stays float)."""
    from .quantize_compressed import FakeQuantCompressed, fold_compressed_batchnorms, storable_layers

    prepared = copy.deepcopy(model).eval()
    compressed = storable_layers(prepared)
    fold_batchnorms(prepared)
    folded, kept_float = fold_compressed_batchnorms(prepared)
    compressed = {name: layer for name, layer in compressed.items() if name not in kept_float}
    relus = _fusable_relus(prepared)
    layers = _dense_layers(prepared)
    if not layers and not compressed:
        raise QuantizeError(f"{type(model).__name__} has no dense nn.Linear / nn.Conv2d layer (nor a hashed / "
                            "codebook one) to quantize")
    for name, layer in layers.items():
        if isinstance(layer, nn.Conv2d) and layer.padding_mode != "zeros":
            raise QuantizeError(f"layer {name!r}: padding_mode={layer.padding_mode!r}; int8 convs support "
                                "padding_mode='zeros' only")
        prepared.set_submodule(name, FakeQuantLayer(layer, name in relus, observer, percentile))
    for name, layer in compressed.items():
        prepared.set_submodule(name, FakeQuantCompressed(layer, name in relus, observer, percentile, folded.get(name)))
    for relu in relus.values():
        prepared.set_submodule(relu, nn.Identity())
    return prepared


def _fake_layers(model: nn.Module) -> dict[str, FakeQuantLayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, FakeQuantLayer)}


class QuantPassThrough(nn.Module):
    """A parameter-free module (pool, flatten, ReLU, dropout) next to int8 layers. ``side="output"``: it reads
    an int8 tensor and its output is quantized with that tensor's (scale, zero point), as TFLite's int8
    pooling / reshape kernels want, or, for an average pool (TFLite MEAN), with its own observed range.
    ``side="input"``: it reads a float tensor (the model's input) on the way to an int8 layer and quantizes
    its input with that layer's input parameters, so the exported graph quantizes the model input first."""

    def __init__(self, module: nn.Module, side: str = "output") -> None:
        super().__init__()
        if side not in ("input", "output"):
            raise QuantizeError(f"QuantPassThrough: side={side!r}; valid: input, output")
        self.module, self.side = module, side
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))
        self.source: list[nn.Module] = []  # while calibrating / in QAT: the module providing the parameters
        self.observer: RangeObserver | None = None
        self.observing, self.fake = True, False

    def qparams(self) -> tuple[float, int]:
        """(scale, zero point) of the quantized side."""
        if not self.source:
            return float(self.scale), int(self.zero_point)
        if self.side == "input":
            return self.source[0].input_qparams()
        return self.observer.qparams() if self.observer is not None else self.source[0].output_qparams()

    output_qparams = qparams

    def freeze(self) -> None:
        """Keep the current parameters in the buffers and drop the links and the observer (``convert``)."""
        scale, zero_point = self.qparams()
        self.scale.fill_(scale)
        self.zero_point.fill_(zero_point)
        self.source, self.observer = [], None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        quantize = self.fake or not self.source
        if self.side == "input":
            return self.module(fake_quant(x, *self.qparams()) if quantize else x)
        y = self.module(x)
        if self.source and self.observer is not None and (self.observing or (self.fake and self.training)):
            self.observer.update(y)
        return fake_quant(y, *self.qparams()) if quantize else y


def _trace_sources(model: nn.Module, example: torch.Tensor) -> tuple[dict[nn.Module, tuple], dict]:
    """Follow one forward pass: ({module: (upstream FakeQuantLayer, whether its input is that layer's very
    output tensor)} for every FakeQuantLayer and pass-through module whose input comes from an int8 layer,
    {FakeQuantLayer: first module of the value-preserving chain (Flatten, MaxPool, ...) between a float
    tensor and it})."""
    sources: dict[int, tuple] = {}  # id(tensor) -> (tensor kept alive, so ids stay unique, layer)
    chains: dict[int, tuple] = {}  # id(float tensor) -> (tensor, first pass-through module that made it)
    found: dict[nn.Module, tuple] = {}
    starts: dict[nn.Module, nn.Module] = {}
    calls: dict[nn.Module, int] = {}
    handles = []

    def before(module, inputs):
        calls[module] = calls.get(module, 0) + 1
        if not inputs:
            return
        source = sources.get(id(inputs[0]))
        if source is not None:
            found[module] = (source[1], source[0] is inputs[0])
        elif isinstance(module, FakeQuantLayer) and id(inputs[0]) in chains:
            starts[module] = chains[id(inputs[0])][1]

    def after(module, inputs, output):
        if not isinstance(output, torch.Tensor) or not inputs:
            return
        if isinstance(module, FakeQuantLayer):
            sources[id(output)] = (output, module)
        elif isinstance(module, QuantPassThrough) and module.source and module.side == "output":
            sources[id(output)] = (output, module)
        elif module in found:
            sources[id(output)] = (output, found[module][0])
        elif type(module) in VALUE_PRESERVING and output is not inputs[0]:
            chains[id(output)] = (output, chains[id(inputs[0])][1] if id(inputs[0]) in chains else module)

    for module in model.modules():
        if isinstance(module, (FakeQuantLayer, QuantPassThrough)) or type(module) in PASS_THROUGH:
            handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        with torch.no_grad():
            run_every_output(model, example)
    finally:
        for handle in handles:
            handle.remove()
    once = {module for module, count in calls.items() if count == 1}  # reused modules stay float
    return ({module: link for module, link in found.items() if module in once},
            {layer: start for layer, start in starts.items() if layer in once and start in once})


def link_inputs(model: nn.Module, example: torch.Tensor) -> None:
    """Share quantization along the graph, as the TFLite int8 spec wants: each pass-through module (Flatten,
    MaxPool, AvgPool, ReLU, ...) that reads an int8 layer's output is wrapped in ``QuantPassThrough`` with
    that layer's output parameters, and a layer whose input is such a quantized tensor takes its (scale,
    zero point) and is ``input_quantized`` (the export writes no second QuantizeLinear for it). A chain of
    value-preserving modules between the model input and a layer gets the layer's input quantization at
    its start."""
    names = {module: name for name, module in model.named_modules()}
    links, starts = _trace_sources(model, example)
    for module, (layer, _) in links.items():
        if type(module) in PASS_THROUGH and not isinstance(module, nn.Identity) and names.get(module):
            wrapper = QuantPassThrough(module)
            wrapper.source = [layer]
            if isinstance(module, AVERAGING):
                wrapper.observer = RangeObserver(layer.output_observer.method, layer.output_observer.percentile)
            model.set_submodule(names[module], wrapper)
    for layer, module in starts.items():
        if names.get(module):
            wrapper = QuantPassThrough(module, "input")
            wrapper.source = [layer]
            model.set_submodule(names[module], wrapper)
    for module, (provider, direct) in _trace_sources(model, example)[0].items():
        if isinstance(module, FakeQuantLayer):
            module.upstream, module.input_quantized = [provider], direct
        elif isinstance(module, QuantPassThrough) and module.side == "output":
            module.source = [provider]


def calibrate(model: nn.Module, inputs: torch.Tensor, batch_size: int = 100, progress: bool = True) -> nn.Module:
    """PTQ calibration of a ``prepare``d model: link shared inputs, run ``inputs`` in batches through the
    float model while the observers record ranges; then the observers switch to moving averages (QAT)."""
    if len(inputs) == 0:
        raise QuantizeError("the calibration set is empty; give at least one input")
    from .progress import progress_bar

    model.eval()
    link_inputs(model, inputs[:1])
    quantizing = [m for m in model.modules() if isinstance(m, (FakeQuantLayer, QuantPassThrough))]
    observers = [m for m in model.modules() if isinstance(m, RangeObserver)]
    for module in quantizing:
        module.observing, module.fake = True, False
    for observer in observers:
        observer.reset()  # forget the linking passes
    batches = inputs.split(max(int(batch_size), 1))
    with progress_bar(enabled=progress) as bar, torch.no_grad():
        task = bar.add_task("int8 calibration", total=len(batches))
        for batch in batches:
            run_every_output(model, batch)
            bar.advance(task)
    for module in quantizing:
        module.observing, module.fake = False, True
    for observer in observers:
        observer.finish_calibration()
    return model


def convert(model: nn.Module) -> tuple[nn.Module, dict, dict[str, str]]:
    """Replace each ``FakeQuantLayer`` by its QuantLinear / QuantConv2d (int8 weights) and freeze the
    ``QuantPassThrough`` parameters; returns the model, the per-layer structure ``{name: {"relu",
    "input_quantized", "bias"}}`` and the pass-throughs ``{name: side}``, which the "quantize" transform replays."""
    structure = {}
    for name, fake in _fake_layers(model).items():
        spec = {"relu": fake.relu, "input_quantized": fake.input_quantized, "bias": fake.layer_bias() is not None}
        quant = fake.quant_layer(spec)
        with torch.no_grad():
            quant.set_quantization(fake)
        model.set_submodule(name, quant)
        structure[name] = spec
    passing = {name: m.side for name, m in model.named_modules() if isinstance(m, QuantPassThrough)}
    for name in passing:
        model.get_submodule(name).freeze()
    return model.eval(), structure, passing


@register_transform("quantize")
def quantize_transform(model: nn.Module, layers: dict, identity: list, pass_through: dict | None = None) -> nn.Module:
    """Rebuild a quantized model's architecture from the dense one (checkpoint replay): the ``identity``
    modules (folded BatchNorms, fused ReLUs) become nn.Identity, the ``layers`` QuantLinear / QuantConv2d (or,
    for hashed / codebook layers, their int8 forms), the ``pass_through`` modules ({name: "input" | "output"})
    are wrapped in QuantPassThrough."""
    from .quantize_compressed import QUANT_COMPRESSED, storable_layers

    replacements = [(name, lambda module: nn.Identity()) for name in identity]
    replacements += [(name, lambda module, side=side: QuantPassThrough(module, side))
                     for name, side in (pass_through or {}).items()]
    for name, make in replacements:
        module = _get(model, name)
        if module is None:
            raise QuantizeError(f"quantize transform: the model has no module {name!r} to replace")
        model.set_submodule(name, make(module))
    dense = _dense_layers(model) | storable_layers(model)
    for name, spec in layers.items():
        if name not in dense:
            raise QuantizeError(f"quantize transform: {name!r} is not a dense nn.Linear / nn.Conv2d or a hashed / "
                                f"codebook layer of the model; those layers: {sorted(dense)}")
        layer = dense[name]
        if type(layer) in QUANT_COMPRESSED:
            model.set_submodule(name, QUANT_COMPRESSED[type(layer)].from_compressed(layer, **spec))
        else:
            model.set_submodule(name, QUANT_LAYERS[type(layer)].from_dense(layer, **spec))
    return model


def float_compressed_layers(model: nn.Module) -> list[str]:
    """The names of the hashed / codebook layers an int8 model keeps float (functional hashing, a hashed bias, a
    BatchNorm factor <= 0 after the conv): they do not convert to a fully int8 TFLite file."""
    from .quantize_compressed import QUANT_COMPRESSED

    return [name for name, module in model.named_modules() if type(module) in QUANT_COMPRESSED]


def _check_params(mode, bits, observer, percentile, epochs, lr, calibration_batches) -> None:
    """StageError for a quantize parameter outside its valid values."""
    if mode not in MODES:
        raise StageError(f"quantize: mode={mode!r}; valid: {', '.join(MODES)}")
    if bits not in SUPPORTED_BITS or isinstance(bits, bool):
        raise StageError(f"quantize: bits={bits!r} is not supported; valid: {', '.join(map(str, SUPPORTED_BITS))}")
    if observer not in OBSERVERS:
        raise StageError(f"quantize: observer={observer!r}; valid: {', '.join(OBSERVERS)}")
    if not (isinstance(percentile, (int, float)) and 50 < percentile <= 100):
        raise StageError(f"quantize: percentile={percentile!r}; valid: a number in (50, 100]")
    if not (isinstance(epochs, int) and epochs >= 0):
        raise StageError(f"quantize: epochs={epochs!r}; valid: an int >= 0")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise StageError(f"quantize: lr={lr!r}; valid: a number > 0")
    if calibration_batches is not None and not (isinstance(calibration_batches, int) and calibration_batches >= 1):
        raise StageError(f"quantize: calibration_batches={calibration_batches!r} (the calibration set must not "
                         "be empty); valid: an int >= 1 (batches of data.batch_size inputs) or None (512 inputs)")


@register_stage("quantize")
def quantize_stage(model: nn.Module, data: StageData, *, mode: str = "ptq", bits: int = 8, observer: str = "minmax",
                   percentile: float = 99.99, epochs: int = 2, lr: float = 1e-4,
                   calibration_batches: int | None = None, progress: bool = True) -> tuple[nn.Module, StageReport]:
    """int8 quantization: PTQ (calibrate on ``calibration_batches`` × batch size training inputs, default 512)
    or QAT (PTQ, then ``epochs`` of fine-tuning with fake quant and moving-average ranges)."""
    started = time.perf_counter()
    _check_params(mode, bits, observer, percentile, epochs, lr, calibration_batches)
    count = 512 if calibration_batches is None else calibration_batches * data.batch_size
    inputs = data.calibration(count)
    if len(inputs) == 0:
        raise StageError("quantize: the calibration set is empty (data.train has no inputs); give at least one")
    try:
        prepared = prepare(model, observer, percentile)
        identity = [name for name, m in prepared.named_modules()
                    if isinstance(m, nn.Identity) and not isinstance(_get(model, name), nn.Identity)]
        calibrate(prepared, inputs, data.batch_size, progress)
    except QuantizeError as error:
        raise StageError(f"quantize: {error}") from None
    if mode == "qat" and epochs:
        fine_tune(prepared, data, epochs=epochs, lr=lr, progress=progress, description="int8 QAT")
    quantized, layers, pass_through = convert(prepared)
    params = dict(mode=mode, bits=bits, observer=observer, percentile=percentile, epochs=epochs, lr=lr,
                  calibration_batches=calibration_batches)
    transform = {"name": "quantize", "params": {"layers": layers, "identity": identity, "pass_through": pass_through}}
    extra = {"calibration_inputs": len(inputs), "int8_layers": len(layers), "folded_or_fused": len(identity),
             "float_compressed_layers": float_compressed_layers(quantized)}
    return quantized, stage_report("quantize", quantized, data, params, transform=transform, extra=extra,
                                   started=started)
