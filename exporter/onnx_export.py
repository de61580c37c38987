"""Export a (compressed) torch model to ONNX with ai.edgepack ops and standard-op fallbacks.

Stages (ExecuTorch-style): lower — swap each compressed layer for the module registered for its
class with ``@lowers`` (below), which calls edgepack torch custom ops; trace —
``torch.onnx.export`` (the dynamo exporter; each custom op becomes one ai.edgepack node through a
custom translation, everything else standard ONNX);
finish — attach a model-local FunctionProto per ai.edgepack op so any runtime can run the file,
inline the compute ops in ``portable`` mode, check the model, save.
"""

import copy
import inspect
import logging
import warnings
from pathlib import Path

import onnx
import onnx.inliner
import torch
import torch.nn.functional as F
from torch import nn

from edgepack.compression import (
    CirculantLinear,
    CodebookConv2d,
    CodebookLinear,
    HashedConv2d,
    HashedLinear,
    LDRLinear,
)
from edgepack.compression.codebook import CodebookError, encode_codebook
from edgepack.compression.hyper import HyperConv2d, HyperLinear
from edgepack.compression.sws import SwsConv2d, SwsLinear
from edgepack.errors import EdgepackError
from edgepack.kws.frontend import MFCC
from edgepack.runtime_kernels.op_spec import OPS

from . import torch_ops
from .fallbacks import DOMAIN, FOLD_LIMIT, FUNCTIONS, STANDARD_OPSET, fallback_function
from .passes import fuse_epilogues, store_int8_decoder_inputs, strip_export_trail
from .validate import check_onnx_model

MODES = ("kernels", "portable")
CODEBOOK_OPS = ("decode", "sparse")


class ExportError(EdgepackError, ValueError):
    """The model cannot be exported as asked (bad example inputs, mode, or an op torch cannot export)."""

# compressed layer class -> its lowered module class, built as Lowered(layer, mode, stream)
LOWERINGS: dict[type[nn.Module], type[nn.Module]] = {}


def lowers(layer_class: type[nn.Module]):
    """Class decorator: the decorated module, built as ``Lowered(layer, mode, stream)``, replaces
    every ``layer_class`` layer when a model is lowered for export."""

    def decorate(lowered_class: type[nn.Module]) -> type[nn.Module]:
        if LOWERINGS.get(layer_class, lowered_class) is not lowered_class:
            raise ValueError(f"{layer_class.__name__} is already lowered by {LOWERINGS[layer_class].__name__}")
        LOWERINGS[layer_class] = lowered_class
        return lowered_class

    return decorate


# Recon for K = 1 that is exactly the identity: relu(z) − relu(−z) = z (docs/ops.md).
IDENTITY_RECON = (1.0, -1.0, 0.0, 0.0, 1.0, -1.0, 0.0)


def _hashed_tensors(layer) -> tuple[nn.Parameter, torch.Tensor, torch.Tensor]:
    """Buckets, a recon that is always present, and a bias that is always present."""
    recon = layer.recon if layer.recon is not None else torch.tensor(IDENTITY_RECON)
    bias = layer.dense_bias()
    bias = torch.zeros(layer.rows) if bias is None else bias
    return layer.buckets, recon.detach().clone(), bias.detach().clone()


@lowers(HashedLinear)
class LoweredHashedLinear(nn.Module):
    """HashedLinear as HashedMatMul (kernels) or HashedWeight + Gemm (portable)."""

    def __init__(self, layer: HashedLinear, mode: str = "kernels", stream: bool = False) -> None:
        super().__init__()
        buckets, recon, bias = _hashed_tensors(layer)
        self.buckets = buckets
        self.register_buffer("recon", recon)
        self.register_buffer("bias", bias)
        self.mode, self.stream = mode, int(stream)
        self.shape = [layer.out_features, layer.in_features]
        self.hash = dict(num_hashes=layer.num_hashes, seed=layer.seed, signed=int(layer.signed))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_features, in_features = self.shape
        if self.mode == "kernels":
            return torch.ops.edgepack.hashed_matmul(
                x, self.buckets, self.recon, self.bias, None, in_features, out_features,
                self.hash["num_hashes"], self.hash["seed"], self.hash["signed"], self.stream, 0)
        weight = torch.ops.edgepack.hashed_weight(self.buckets, self.recon, self.shape, **self.hash)
        return F.linear(x, weight, self.bias)


@lowers(HashedConv2d)
class LoweredHashedConv2d(nn.Module):
    """HashedConv2d as HashedWeight + Conv in both modes (there is no fused hashed convolution)."""

    def __init__(self, layer: HashedConv2d, mode: str = "kernels", stream: bool = False) -> None:
        super().__init__()
        buckets, recon, bias = _hashed_tensors(layer)
        self.buckets = buckets
        self.register_buffer("recon", recon)
        self.register_buffer("bias", bias)
        self.layer_shape = [layer.out_channels, layer.in_channels // layer.groups, *layer.kernel_size]
        self.conv = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
                         groups=layer.groups)
        self.hash = dict(num_hashes=layer.num_hashes, seed=layer.seed, signed=int(layer.signed))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = torch.ops.edgepack.hashed_weight(self.buckets, self.recon, self.layer_shape,
                                                  **self.hash)
        return F.conv2d(x, weight, self.bias, **self.conv)


@lowers(CirculantLinear)
class LoweredCirculantLinear(nn.Module):
    """CirculantLinear as [Mul by the input signs] + CirculantMatMul."""

    def __init__(self, layer: CirculantLinear, mode: str = "kernels", stream: bool = False) -> None:
        super().__init__()
        self.blocks = layer.blocks
        signs = layer.input_signs
        self.register_buffer("input_signs", None if signs is None else signs.float())
        bias = layer.bias if layer.bias is not None else torch.zeros(layer.out_features)
        self.register_buffer("bias", bias.detach().clone())
        self.sizes = (layer.in_features, layer.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_signs is not None:
            x = x * self.input_signs
        return torch.ops.edgepack.circulant_matmul(x, self.blocks, self.bias, None, *self.sizes, 0)


@lowers(LDRLinear)
class LoweredLDRLinear(nn.Module):
    """LDRLinear as LDRMatMul."""

    def __init__(self, layer: LDRLinear, mode: str = "kernels", stream: bool = False) -> None:
        super().__init__()
        self.G, self.H = layer.G, layer.H
        bias = layer.bias if layer.bias is not None else torch.zeros(layer.out_features)
        self.register_buffer("bias", bias.detach().clone())
        self.sizes = (layer.in_features, layer.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.edgepack.ldr_matmul(x, self.G, self.H, self.bias, None, *self.sizes, 0)


def _codebook_buffers(module: nn.Module, layer, encoded: dict | None = None) -> None:
    """Copy the layer's codebook arrays (or ``encoded``'s) and a bias that is always present."""
    names = OPS["CodebookWeight"].weight_inputs
    source = encoded or {name: getattr(layer, name) for name in names}
    for name in names:
        value = source.get(name)
        value = None if value is None else torch.as_tensor(value).detach().clone()
        module.register_buffer(name, value)
    module.bits = int(layer.bits) if encoded is None else int(encoded["bits"])
    bias = layer.bias if layer.bias is not None else torch.zeros(layer.weight_shape[0])
    module.register_buffer("bias", bias.detach().clone())


@lowers(CodebookLinear)
class LoweredCodebookLinear(nn.Module):
    """CodebookLinear as CodebookWeight + Gemm (``codebook_op="decode"``, decoded at load), or as
    SparseCodebookMatMul (``"sparse"``: computed from the CSR form; a dense-form layer is re-encoded)."""

    def __init__(self, layer: CodebookLinear, mode: str = "kernels", stream: bool = False,
                 codebook_op: str = "decode") -> None:
        super().__init__()
        self.sparse_op = codebook_op == "sparse"
        encoded = None
        if self.sparse_op and not layer.sparse:
            weight = layer.dense_weight().detach().cpu().numpy()
            try:
                encoded = encode_codebook(weight, sparse=True)
            except CodebookError as error:
                raise ExportError(f"{type(layer).__name__}: cannot store it sparse for "
                                  f"SparseCodebookMatMul: {error}") from None
        _codebook_buffers(self, layer, encoded)
        self.sizes = (layer.in_features, layer.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_features, out_features = self.sizes
        if self.sparse_op:
            return torch.ops.edgepack.sparse_codebook_matmul(
                x, self.codebook, self.indices, self.row_ptr, self.col_gaps, self.bias, None,
                in_features, out_features, self.bits, 0)
        weight = torch.ops.edgepack.codebook_weight(self.codebook, self.indices, self.row_ptr, self.col_gaps,
                                                    [out_features, in_features], self.bits)
        return F.linear(x, weight, self.bias)


@lowers(CodebookConv2d)
class LoweredCodebookConv2d(nn.Module):
    """CodebookConv2d as CodebookWeight + Conv (there is no fused codebook convolution)."""

    def __init__(self, layer: CodebookConv2d, mode: str = "kernels", stream: bool = False,
                 codebook_op: str = "decode") -> None:
        super().__init__()
        _codebook_buffers(self, layer)
        self.layer_shape = list(layer.weight_shape)
        self.conv = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
                         groups=layer.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = torch.ops.edgepack.codebook_weight(self.codebook, self.indices, self.row_ptr, self.col_gaps,
                                                    self.layer_shape, self.bits)
        return F.conv2d(x, weight, self.bias, **self.conv)


class _LoweredHyper(nn.Module):
    """A Hyper-Compression layer's arrays (scales only when rings > 0) and a bias that is always
    present; ``weight()`` is one HyperWeight node, decoded once at load."""

    def __init__(self, layer) -> None:
        super().__init__()
        self.attributes = layer.attributes() | {"shape": list(layer.weight_shape)}
        for name in OPS["HyperWeight"].weight_inputs:
            absent = name == "scales" and not self.attributes["rings"]
            self.register_buffer(name, None if absent else getattr(layer, name).detach().clone())
        bias = layer.bias if layer.bias is not None else torch.zeros(layer.weight_shape[0])
        self.register_buffer("bias", bias.detach().clone())

    def weight(self) -> torch.Tensor:
        return torch.ops.edgepack.hyper_weight(self.indices, self.center, self.side, self.scales, **self.attributes)


@lowers(HyperLinear)
class LoweredHyperLinear(_LoweredHyper):
    """HyperLinear as HyperWeight + Gemm."""

    def __init__(self, layer: HyperLinear, mode: str = "kernels", stream: bool = False) -> None:
        super().__init__(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight(), self.bias)


@lowers(HyperConv2d)
class LoweredHyperConv2d(_LoweredHyper):
    """HyperConv2d as HyperWeight + Conv."""

    def __init__(self, layer: HyperConv2d, mode: str = "kernels", stream: bool = False) -> None:
        super().__init__(layer)
        self.conv = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight(), self.bias, **self.conv)


@lowers(SwsLinear)
@lowers(SwsConv2d)
class LoweredSwsLayer(nn.Module):
    """A layer under the soft weight-sharing prior is the dense layer it still is; ``postprocess(...,
    codebook=True)`` or ``to_codebook`` makes it a codebook layer, which exports as CodebookWeight."""

    def __init__(self, layer: nn.Module, mode: str = "kernels", stream: bool = False) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


@lowers(MFCC)
class LoweredMFCC(nn.Module):
    """The MFCC front end (kws/frontend.py) as one ai.edgepack.MFCC node; the op takes the band
    edges in whole Hz and fixes the log offset at 1e-6 (docs/ops.md "Audio front end")."""

    def __init__(self, layer: MFCC, mode: str = "kernels", stream: bool = False) -> None:
        super().__init__()
        c = layer.config
        if c.lower_hz != int(c.lower_hz) or c.upper_hz != int(c.upper_hz) or c.log_offset != 1e-6:
            raise ExportError(f"the MFCC op takes lower_hz / upper_hz in whole Hz and log_offset 1e-6; this front "
                              f"end has lower_hz={c.lower_hz}, upper_hz={c.upper_hz}, log_offset={c.log_offset}")
        self.attributes = (c.sample_rate, c.window_length, c.hop_length, c.fft_length, c.num_mel_bins,
                           c.num_coefficients, int(c.lower_hz), int(c.upper_hz))

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return torch.ops.edgepack.mfcc(audio, *self.attributes)


def _make(make: type[nn.Module], module: nn.Module, mode: str, stream: bool, options: dict) -> nn.Module:
    """``make(module, mode, stream)`` plus the ``options`` its constructor takes (``codebook_op``)."""
    accepted = inspect.signature(make.__init__).parameters
    return make(module, mode, stream, **{k: v for k, v in options.items() if k in accepted})


def lower(model: nn.Module, mode: str = "kernels", stream: bool = False, codebook_op: str = "decode") -> nn.Module:
    """A copy of ``model`` whose compressed layers call the edgepack torch custom ops."""
    if mode not in MODES:
        raise ExportError(f"mode must be one of {MODES}, got {mode!r}")
    if codebook_op not in CODEBOOK_OPS:
        raise ExportError(f"codebook_op must be one of {CODEBOOK_OPS}, got {codebook_op!r}")
    options = {"codebook_op": codebook_op}
    lowered = copy.deepcopy(model).eval()
    for name, module in list(lowered.named_modules()):
        make = LOWERINGS.get(type(module))
        if make is None or not name:
            continue
        lowered.set_submodule(name, _make(make, module, mode, stream, options))
    if type(lowered) in LOWERINGS:  # the model is itself one compressed layer
        lowered = _make(LOWERINGS[type(lowered)], lowered, mode, stream, options)
    _one_codebook_form(lowered)
    return lowered


def _one_codebook_form(lowered: nn.Module) -> None:
    """CodebookWeight nodes all sparse or all dense: a fallback function declares a fixed input
    list, so when some decoders are sparse the dense-form ones are re-encoded sparse (same weights)."""
    decoders = [(name, m) for name, m in lowered.named_modules()
                if isinstance(m, (LoweredCodebookLinear, LoweredCodebookConv2d)) and not getattr(m, "sparse_op", False)]
    if not any(m.row_ptr is not None for _, m in decoders):
        return
    for name, module in decoders:
        if module.row_ptr is not None:
            continue
        shape = module.layer_shape if isinstance(module, LoweredCodebookConv2d) else module.sizes[::-1]
        weight = torch.ops.edgepack.codebook_weight(module.codebook, module.indices, None, None, list(shape),
                                                    module.bits).cpu().numpy()
        try:
            encoded = encode_codebook(weight, sparse=True)
        except CodebookError as error:
            raise ExportError(f"layer {name!r}: the model's other codebook layers are sparse, so its "
                              f"CodebookWeight must be too, and {error}") from None
        for key in OPS["CodebookWeight"].weight_inputs:
            setattr(module, key, torch.from_numpy(encoded[key]))
        module.bits = encoded["bits"]


def _name_nodes_after_layers(model: onnx.ModelProto) -> None:
    """Name each ai.edgepack node after its layer ("fc1" from the initializer "fc1.buckets"),
    so that errors and ``edgepack inspect`` point at the layer."""
    initializers = {t.name for t in model.graph.initializer}
    stored = {node.output[0]: node.input[0] for node in model.graph.node  # int8 storage: Cast(fc1.buckets)
              if node.op_type == "Cast" and len(node.input) == 1 and len(node.output) == 1}
    taken = {node.name for node in model.graph.node}
    for node in model.graph.node:
        weights = [stored.get(name, name) for name in node.input]
        weights = [name for name in weights if name in initializers and "." in name]
        # the first weight may be shared with an earlier layer (the exporter dedupes equal constants)
        name = next((w.rpartition(".")[0] for w in weights if w.rpartition(".")[0] not in taken), None)
        if node.domain == DOMAIN and name is not None:
            node.name = name
            taken.add(name)


def _scaled(model: onnx.ModelProto, name: str) -> bool:
    """Whether a node of op ``name`` has a ``scale`` input (a folded epilogue, exporter/passes.py)."""
    names = OPS[name].input_names
    return "scale" in names and any(node.op_type == name and node.domain == DOMAIN
                                    and dict(zip(names, node.input)).get("scale") for node in model.graph.node)


def _attach_functions(model: onnx.ModelProto, mode: str, fold_limit: int) -> onnx.ModelProto:
    """Add one fallback FunctionProto per ai.edgepack op used; inline compute ops if portable."""
    _name_nodes_after_layers(model)
    used = sorted({node.op_type for node in model.graph.node if node.domain == DOMAIN})
    unknown = set(used) - set(FUNCTIONS)
    if unknown:
        raise ExportError(f"exported graph has ai.edgepack ops without a fallback: {sorted(unknown)}")
    sparse = any(node.op_type == "CodebookWeight" and node.domain == DOMAIN and len(node.input) > 2
                 for node in model.graph.node)
    for node in model.graph.node:  # HyperWeight's function reads every input, scales "" when absent
        if node.op_type == "HyperWeight" and node.domain == DOMAIN:
            node.input.extend([""] * (len(OPS["HyperWeight"].inputs) - len(node.input)))
    model.functions.extend(fallback_function(name, fold_limit, scaled=_scaled(model, name), sparse=sparse)
                           for name in used)
    if mode == "portable":
        inline = [(DOMAIN, name) for name in used if OPS[name].kind != "decoder"]
        if inline:
            model = onnx.inliner.inline_selected_functions(model, inline, exclude=False)
            kept = [f for f in model.functions if (f.domain, f.name) not in set(inline)]
            del model.functions[:]
            model.functions.extend(kept)
    if not any(node.domain == DOMAIN for node in model.graph.node):
        kept_imports = [o for o in model.opset_import if o.domain != DOMAIN]
        del model.opset_import[:]
        model.opset_import.extend(kept_imports)
    return model


def _first_layer(model: nn.Module) -> str:
    """What the model's first Linear/Conv-like layer expects, for error messages."""
    for name, module in model.named_modules():
        for field in ("in_features", "in_channels"):
            if isinstance(getattr(module, field, None), int):
                return f"; its first layer {name or type(module).__name__!r} takes {field}={getattr(module, field)}"
    return ""


def _check_examples(model: nn.Module, examples: tuple) -> None:
    """Run ``model`` on the example inputs, so a wrong shape fails here and not in the file."""
    if not examples or not all(isinstance(x, torch.Tensor) for x in examples):
        raise ExportError("example inputs must be one or more torch tensors, got "
                          f"{[type(x).__name__ for x in examples]}")
    given = ", ".join(str(list(x.shape)) for x in examples)
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(*examples)
    except Exception as error:
        text = " ".join(str(error).split())[:300]
        raise ExportError(f"the model does not run on example input(s) of shape {given} "
                          f"({type(error).__name__}: {text}){_first_layer(model)}; pass the shape "
                          "the model expects (e.g. --example-shape N,in_features)") from None
    finally:
        model.train(training)


def export_onnx(model: nn.Module, example_inputs, path: str | Path, mode: str = "kernels",
                stream: bool = False, dynamic_batch: bool = True, fallback_fold_limit: int = FOLD_LIMIT,
                codebook_op: str = "decode") -> Path:
    """Export ``model`` to ``path`` (.onnx); see docs/ops.md for the ai.edgepack ops.

    ``mode="kernels"`` emits fused HashedMatMul / CirculantMatMul / LDRMatMul nodes (fast with
    libedgepack_ort.so, runnable anywhere through their fallback functions); ``"portable"``
    emits HashedWeight decoders + standard Gemm/Conv, and the structured layers as standard
    ops. ``stream=True`` asks HashedMatMul kernels to hash on the fly (O(buckets) memory).
    ``fallback_fold_limit``: in ORT without our library, hashed matrices up to this many virtual
    weights × hashes are decoded once at session build (dense speed, ~350 bytes per weight while
    building); larger ones by a Loop at every run (session build within 3× the dense bytes).
    ``codebook_op``: codebook Linear layers as CodebookWeight + Gemm (``"decode"``, decoded at load)
    or as SparseCodebookMatMul (``"sparse"``, computed from the CSR form); convolutions always decode.
    """
    if isinstance(fallback_fold_limit, bool) or not isinstance(fallback_fold_limit, int) or fallback_fold_limit < 0:
        raise ExportError(f"fallback_fold_limit must be an int >= 0 (virtual weights × hashes), "
                          f"got {fallback_fold_limit!r}")
    lowered = lower(model, mode, stream, codebook_op)
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    _check_examples(model, example_inputs)
    dynamic_shapes = [{0: "batch"} for _ in example_inputs] if dynamic_batch else None
    torch_ops.register_schemas()
    # The exporter warns once per missing torchvision op; that is noise for our users.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                lowered, example_inputs, dynamo=True, opset_version=STANDARD_OPSET,
                custom_translation_table=torch_ops.TRANSLATIONS, dynamic_shapes=dynamic_shapes,
                verbose=False, optimize=True)
        except Exception as error:
            text = " ".join(str(error).split())[:600]
            raise ExportError(f"torch.onnx.export failed for {type(model).__name__}: "
                              f"{type(error).__name__}: {text}") from error
    proto = fuse_epilogues(store_int8_decoder_inputs(program.model_proto))
    proto = _attach_functions(strip_export_trail(proto), mode, fallback_fold_limit)
    onnx.checker.check_model(proto, full_check=True)
    check_onnx_model(proto, f"export to {path}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, path)
    return path


from . import onnx_quant  # noqa: E402, F401 (its @lowers registers the int8 layers; it imports ``lowers`` above)
