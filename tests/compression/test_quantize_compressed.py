"""int8 storage of hashed / codebook layers (compression/quantize_compressed.py): the int8 weight decoded from
int8 buckets / codebook against torch's reference round(decoded float / s) of the spec, the per-channel scale
s·g with the folded BatchNorm factor g, PTQ and QAT accuracy on a tiny task, checkpoint replay with int8
buffers, the stage report's bytes, and the refusals."""

from collections import OrderedDict

import pytest
import torch
from compression_helpers import train
from safetensors import safe_open
from torch import nn

from edgepack.compression import (
    CodebookConv2d,
    CodebookLinear,
    HashedConv2d,
    HashedLinear,
    load_checkpoint,
    register_builder,
    save_checkpoint,
)
from edgepack.compression.quantize import (
    FakeQuantLayer,
    QuantizeError,
    QuantLinear,
    QuantPassThrough,
    calibrate,
    prepare,
)
from edgepack.compression.quantize_compressed import (
    INT8_STORED,
    FakeQuantCompressed,
    QuantCodebookConv2d,
    QuantCodebookLinear,
    QuantHashedConv2d,
    QuantHashedLinear,
)
from edgepack.compression.stages import StageData, evaluate, run_stage

RECIPE = {"conv": {"method": "hashed", "ratio": 0.5, "seed": 3}, "dw": {"method": "codebook"},
          "fc1": {"method": "hashed", "ratio": 0.25, "seed": 5}, "fc3": {"method": "codebook", "sparse": True}}


@register_builder("tests.int8_storage_net")
def storage_net() -> nn.Sequential:
    """Conv + BN + ReLU, depthwise conv + BN + ReLU, max-pool, flatten, FC + ReLU, FC + ReLU, FC."""
    return nn.Sequential(OrderedDict([
        ("conv", nn.Conv2d(1, 6, 3, padding=1, bias=False)), ("bn", nn.BatchNorm2d(6)), ("relu", nn.ReLU()),
        ("dw", nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6)), ("dw_bn", nn.BatchNorm2d(6)),
        ("dw_relu", nn.ReLU()), ("pool", nn.MaxPool2d(2)), ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(24, 16)), ("fc1_relu", nn.ReLU()), ("fc2", nn.Linear(16, 8)), ("fc2_relu", nn.ReLU()),
        ("fc3", nn.Linear(8, 3)),
    ]))


@pytest.fixture(scope="module")
def compressed(cnn_data):
    """The dense net trained, fc3 half pruned, then the recipe stage: hashed conv and fc1, codebook dw (dense
    form) and fc3 (sparse form), fine-tuned; returns (model, recipe report)."""
    torch.manual_seed(0)
    model = train(storage_net(), cnn_data, 4)
    with torch.no_grad():
        weight = model.fc3.weight
        weight.mul_(weight.abs() >= weight.abs().median())
        for bn in (model.bn, model.dw_bn):  # BatchNorm statistics that make g differ per channel
            bn.running_var.mul_(torch.linspace(0.5, 2.0, 6))
    model, report = run_stage("recipe", model, cnn_data, recipe=RECIPE, epochs=3, lr=1e-2, progress=False)
    assert [type(model.get_submodule(n)) for n in RECIPE] == [HashedConv2d, CodebookConv2d, HashedLinear,
                                                               CodebookLinear]
    assert model.fc3.sparse and not model.dw.sparse
    return model, report


@pytest.fixture(scope="module")
def ptq(compressed, cnn_data):
    return run_stage("quantize", compressed[0], cnn_data, progress=False)


def batchnorm_factor(bn: nn.BatchNorm2d) -> torch.Tensor:
    return (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()


def reference_int8(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The spec's reference: (round(decoded float weight / s) clamped to ±127, s) with s = max |stored| / 127."""
    stored = layer.buckets if isinstance(layer, (HashedLinear, HashedConv2d)) else layer.codebook
    scale = (stored.detach().abs().max() / 127).float()
    weight = layer.dense_weight().detach()
    return torch.round(weight / scale).clamp(-127, 127).to(torch.int8), scale


def check_int8_storage(source: nn.Module, quantized: nn.Module, factors: dict[str, torch.Tensor]) -> None:
    """Every int8-stored layer of ``quantized`` against the float layer of ``source`` it came from."""
    for name in RECIPE:
        float_layer, int8_layer = source.get_submodule(name), quantized.get_submodule(name)
        expected, scale = reference_int8(float_layer)
        assert torch.equal(int8_layer.weight, expected), name
        factor = factors.get(name, torch.ones(int8_layer.weight_scale.numel()))
        torch.testing.assert_close(int8_layer.weight_scale, scale * factor, rtol=1e-6, atol=0)
        # the dequantized weight is the float (BatchNorm-folded) weight within half a step per channel
        folded = float_layer.dense_weight().detach() * factor.view(-1, *[1] * (expected.dim() - 1))
        step = int8_layer.weight_scale.view(-1, *[1] * (expected.dim() - 1))
        assert bool(((int8_layer.dequantized_weight() - folded).abs() <= step / 2 + 1e-6).all()), name


def test_ptq_int8_weights_are_the_reference_and_accuracy_holds(compressed, ptq, cnn_data):
    source, _ = compressed
    model, report = ptq
    assert [type(model.get_submodule(n)) for n in RECIPE] == [QuantHashedConv2d, QuantCodebookConv2d,
                                                               QuantHashedLinear, QuantCodebookLinear]
    assert model.conv.buckets.dtype == model.fc1.buckets.dtype == model.dw.codebook.dtype == torch.int8
    assert model.fc3.sparse and int(model.fc3.row_ptr[-1]) == int(source.fc3.row_ptr[-1])
    check_int8_storage(source, model, {"conv": batchnorm_factor(source.bn), "dw": batchnorm_factor(source.dw_bn)})
    assert type(model.fc2) is QuantLinear  # the dense layer next to them
    # folding and fusion as for dense layers: both BatchNorms and every ReLU became Identity
    assert report.transform["params"]["identity"] == ["bn", "relu", "dw_bn", "dw_relu", "fc1_relu", "fc2_relu"]
    assert model.conv.relu and model.dw.relu and model.fc1.relu and not model.fc3.relu
    # input linking: dw reads conv's output, fc1 the max-pool / flatten's, which share dw's parameters
    assert model.dw.input_quantized and model.fc1.input_quantized and not model.conv.input_quantized
    assert model.dw.qparams("input") == model.conv.qparams("output")
    assert [type(model.pool), type(model.flatten)] == [QuantPassThrough] * 2
    assert model.fc1.qparams("input") == model.flatten.qparams() == model.dw.qparams("output")
    # tolerance: the int8 model within 3 points of the float one on the 200 validation examples
    float_accuracy = evaluate(source, cnn_data)
    assert float_accuracy > 0.8 and report.accuracy >= float_accuracy - 0.03
    assert report.extra["int8_layers"] == 5 and report.bitops == report.macs * 64


def test_int8_layer_arithmetic_is_the_dequantized_dense_layer(ptq, cnn_data):
    """Each int8-stored layer computes what QuantLinear / Conv2d of its decoded int8 weight computes."""
    model, _ = ptq
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda m, args: inputs.__setitem__(m, args[0]))
             for m in model.modules() if isinstance(m, INT8_STORED)]
    with torch.no_grad():
        model(cnn_data.val[0][:20])
    for hook in hooks:
        hook.remove()
    assert len(inputs) == 4
    for layer, x in inputs.items():
        x_q = torch.fake_quantize_per_tensor_affine(x, *layer.qparams("input"), -128, 127)
        weight = layer.weight.float() * layer.weight_scale.view(-1, *[1] * (layer.weight.dim() - 1))
        if isinstance(layer, (QuantHashedLinear, QuantCodebookLinear)):
            y = nn.functional.linear(x_q, weight, layer.bias)
        else:
            y = nn.functional.conv2d(x_q, weight, layer.bias, layer.stride, layer.padding, layer.dilation,
                                     layer.groups)
        y = torch.relu(y) if layer.relu else y
        with torch.no_grad():
            assert torch.equal(layer(x), torch.fake_quantize_per_tensor_affine(y, *layer.qparams("output"), -128, 127))


def test_qat_trains_buckets_and_codebook_through_fake_quant(compressed, cnn_data):
    source, _ = compressed
    prepared = calibrate(prepare(source), cnn_data.calibration(200), progress=False)
    assert isinstance(prepared.conv, FakeQuantCompressed) and type(prepared.fc2) is FakeQuantLayer
    loss = nn.functional.cross_entropy(prepared.train()(cnn_data.train[0][:50]), cnn_data.train[1][:50])
    loss.backward()
    for name, values in (("conv", prepared.conv.layer.buckets), ("fc1", prepared.fc1.layer.buckets),
                         ("dw", prepared.dw.layer.codebook), ("fc3", prepared.fc3.layer.codebook)):
        assert values.grad is not None and values.grad.abs().sum() > 0, name  # straight-through estimator
    # the fake-quantized weight is the int8 weight the conversion stores, times its scale
    conv = prepared.conv.eval()
    expected, scale = reference_int8(conv.layer)
    with torch.no_grad():
        torch.testing.assert_close(conv.weight(), expected.float() * scale * conv.factor.view(-1, 1, 1, 1),
                                   rtol=1e-6, atol=1e-7)
    model, report = run_stage("quantize", source, cnn_data, mode="qat", epochs=2, lr=1e-3, progress=False)
    assert report.accuracy >= evaluate(source, cnn_data) - 0.03
    assert not torch.equal(model.conv.buckets, run_stage("quantize", source, cnn_data, progress=False)[0].conv.buckets)


def test_qat_conversion_is_the_reference_of_the_trained_values(compressed, cnn_data):
    """After QAT the int8 buckets / codebook are the spec's rounding of the trained float values."""
    from edgepack.compression.quantize import convert
    from edgepack.compression.stages import fine_tune

    source, _ = compressed
    prepared = calibrate(prepare(source), cnn_data.calibration(200), progress=False)
    fine_tune(prepared, cnn_data, epochs=1, lr=1e-3, progress=False)
    trained = {name: prepared.get_submodule(name).layer for name in RECIPE}
    factors = {name: prepared.get_submodule(name).factor.clone() for name in RECIPE}
    model = convert(prepared)[0]
    for name, layer in trained.items():
        expected, scale = reference_int8(layer)
        assert torch.equal(model.get_submodule(name).weight, expected), name
        torch.testing.assert_close(model.get_submodule(name).weight_scale, scale * factors[name], rtol=1e-6, atol=0)


def test_checkpoint_round_trip_keeps_int8_buffers(compressed, ptq, cnn_data, tmp_path):
    source, recipe_report = compressed
    model, report = ptq
    path = save_checkpoint(model, tmp_path / "int8.safetensors", "tests.int8_storage_net",
                           transforms=[recipe_report.transform, report.transform])
    with safe_open(str(path), "pt") as stored:
        dtypes = {key: stored.get_slice(key).get_dtype() for key in stored.keys()}
    assert dtypes["conv.buckets"] == dtypes["fc1.buckets"] == dtypes["dw.codebook"] == dtypes["fc3.codebook"] == "I8"
    assert "conv.weight" not in dtypes and "fc1.weight" not in dtypes  # no decoded weight is stored
    loaded = load_checkpoint(path)
    assert [type(loaded.get_submodule(n)) for n in RECIPE] == [type(model.get_submodule(n)) for n in RECIPE]
    x = cnn_data.val[0]
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    for name in RECIPE:
        assert torch.equal(loaded.get_submodule(name).weight, model.get_submodule(name).weight)


def test_report_counts_int8_buckets_and_codebooks_as_one_byte(ptq):
    model, report = ptq
    out = {"conv": 6, "dw": 6, "fc1": 16, "fc3": 3}
    qparams = 4 * 4  # input / output scale (float32) and zero point (int32)
    assert model.conv.buckets.numel() == 27 and model.fc1.buckets.numel() == 96
    expected = {"conv": 27, "fc1": 96,
                "dw": model.dw.codebook.numel() + model.dw.indices.numel() + 1,  # + bits
                "fc3": model.fc3.codebook.numel() + model.fc3.indices.numel() + 1 + 4 * model.fc3.row_ptr.numel()
                + model.fc3.col_gaps.numel()}
    for name, stored in expected.items():
        layer = model.get_submodule(name)
        layer_bytes = sum(t.numel() * t.element_size() for t in layer.state_dict().values())
        assert layer_bytes == stored + 2 * 4 * out[name] + qparams, name  # + scales and bias (float32)
    dense = sum(t.numel() * t.element_size() for t in model.fc2.state_dict().values())
    assert report.weight_bytes == sum(expected.values()) + sum(2 * 4 * n + qparams for n in out.values()) \
        + dense + 2 * 8  # + the pass-throughs' scale and zero point


def codebook_conv() -> CodebookConv2d:
    dense = nn.Conv2d(1, 4, 3, padding=1)
    with torch.no_grad():
        dense.weight.copy_(torch.round(dense.weight * 4) / 4)
    return CodebookConv2d.from_dense(dense)


@pytest.mark.parametrize("make", [lambda: HashedConv2d(1, 4, 3, ratio=0.5, padding=1), codebook_conv])
def test_a_batchnorm_factor_below_zero_keeps_the_conv_float(make):
    """The factor would become part of a per-channel weight scale, which must be > 0: that conv and its BatchNorm
    stay float (named in the report), the dense layer after them is quantized."""
    model = nn.Sequential(OrderedDict([("conv", make()), ("bn", nn.BatchNorm2d(4)), ("relu", nn.ReLU()),
                                       ("flatten", nn.Flatten()), ("fc", nn.Linear(256, 3))])).eval()
    with torch.no_grad():
        model.bn.weight.copy_(torch.tensor([1.0, 0.5, -0.5, 2.0]))
    x = torch.randn(20, 1, 8, 8)
    stage_data = StageData((x, torch.arange(20) % 3), (x[:10], torch.arange(10) % 3), batch_size=10)
    quantized, report = run_stage("quantize", model, stage_data, progress=False)
    assert type(quantized.conv) is type(model.conv) and type(quantized.bn) is nn.BatchNorm2d
    assert type(quantized.fc).__name__ == "QuantLinear" and report.extra["float_compressed_layers"] == ["conv"]
    with torch.no_grad():
        assert torch.equal(quantized.bn(quantized.conv(x)), model.bn(model.conv(x)))


def test_a_hashed_int8_state_must_hold_int8_buckets():
    layer = QuantHashedLinear(8, 4, num_buckets=6)
    good = layer.state_dict()
    layer.load_state_dict(good)
    for bad in (good["buckets"].float(), torch.tensor([1, -128, 3, 0, 0, 0], dtype=torch.int8),
                torch.zeros(5, dtype=torch.int8)):
        with pytest.raises(QuantizeError, match=r"state 'buckets' must be int8 of shape \[6\] with values in -127"):
            layer.load_state_dict({**good, "buckets": bad})


@pytest.mark.parametrize("make", [lambda: HashedLinear(64, 16, ratio=0.25, num_hashes=2),
                                  lambda: HashedLinear(64, 16, ratio=0.25, hashed_bias=True)])
def test_layers_that_cannot_store_int8_stay_float_and_keep_their_relu(make):
    model = nn.Sequential(OrderedDict([("hashed", make()), ("relu", nn.ReLU()), ("fc", nn.Linear(16, 3))])).eval()
    x = torch.randn(40, 64)
    stage_data = StageData((x, torch.arange(40) % 3), (x[:10], torch.arange(10) % 3), batch_size=10)
    quantized, _ = run_stage("quantize", model, stage_data, progress=False)
    assert type(quantized.hashed) is type(model.hashed)
    assert isinstance(quantized.relu, nn.ReLU) or type(quantized.relu.module) is nn.ReLU  # not fused away
    assert type(quantized.fc).__name__ == "QuantLinear"
    with torch.no_grad():
        hidden = torch.relu(model.hashed(x))
        assert torch.equal(quantized.hashed(x), model.hashed(x)) and (quantized.relu.module(hidden) == hidden).all()
