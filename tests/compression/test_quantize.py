"""int8 quantization (compression/quantize.py): the layers against integer arithmetic in numpy, BatchNorm
folding and ReLU fusion against the float model, the observers against numpy, PTQ / QAT through the
"quantize" stage, checkpoint replay, and the stage's errors."""

from collections import OrderedDict

import numpy as np
import pytest
import torch
from compression_helpers import train
from torch import nn

from edgepack.compression import load_checkpoint, save_checkpoint
from edgepack.compression.quantize import (
    FakeQuantLayer,
    QuantConv2d,
    QuantLinear,
    QuantPassThrough,
    RangeObserver,
    activation_qparams,
    calibrate,
    convert,
    prepare,
)
from edgepack.compression.stages import StageData, StageError, evaluate, run_stage
from edgepack.kws.models import ds_cnn


def small_cnn() -> nn.Sequential:
    """Conv + BN + ReLU, depthwise conv + BN + ReLU, max-pool, flatten, FC + ReLU, FC."""
    return nn.Sequential(OrderedDict([
        ("conv", nn.Conv2d(1, 6, 3, padding=1, bias=False)), ("bn", nn.BatchNorm2d(6)), ("relu", nn.ReLU()),
        ("dw", nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6)), ("dw_bn", nn.BatchNorm2d(6)),
        ("dw_relu", nn.ReLU()), ("pool", nn.MaxPool2d(2)), ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(24, 16)), ("fc1_relu", nn.ReLU()), ("fc2", nn.Linear(16, 3)),
    ]))


def randomize_batchnorms(model: nn.Module) -> nn.Module:
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            for tensor, low, high in ((module.running_mean, -0.5, 0.5), (module.running_var, 0.5, 2.0),
                                      (module.weight.data, 0.5, 1.5), (module.bias.data, -0.3, 0.3)):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)
    return model.eval()


@pytest.fixture(scope="module")
def trained_cnn(cnn_data):
    torch.manual_seed(0)
    return train(randomize_batchnorms(small_cnn()), cnn_data, 4)


@pytest.fixture(scope="module")
def ptq(trained_cnn, cnn_data):
    return run_stage("quantize", trained_cnn, cnn_data, progress=False)


def numpy_int8_layer(layer, x: np.ndarray) -> np.ndarray:
    """The TFLite int8 arithmetic in numpy: int8 input, int32 accumulators of (q_x − zp_x)·q_w, int32
    bias round(b / (s_x·s_w)), rescale, ReLU, requantize to int8, dequantize."""
    s_x, z_x = layer.qparams("input")
    s_y, z_y = layer.qparams("output")
    q_x = np.clip(np.round(x / s_x) + z_x, -128, 127).astype(np.int64) - z_x
    q_w = layer.weight.numpy().astype(np.int64)
    s_w = layer.weight_scale.numpy().astype(np.float64)
    bias = np.round(layer.bias.numpy() / (s_x * s_w)).astype(np.int64)
    if isinstance(layer, QuantLinear):
        acc = q_x @ q_w.T + bias
        real = acc * (s_x * s_w)
    else:
        acc = torch.nn.functional.conv2d(torch.from_numpy(q_x).double(), torch.from_numpy(q_w).double(), None,
                                         layer.stride, layer.padding, layer.dilation, layer.groups).numpy()
        acc = acc.round().astype(np.int64) + bias[None, :, None, None]
        real = acc * (s_x * s_w)[None, :, None, None]
    if layer.relu:
        real = np.maximum(real, 0)
    q_y = np.clip(np.round(real / s_y) + z_y, -128, 127)
    return (q_y - z_y) * s_y


def test_activation_qparams_cover_the_range_and_zero():
    scale, zero = activation_qparams(-1.0, 3.0)
    assert scale == pytest.approx(4.0 / 255) and -128 <= zero <= 127
    assert (-128 - zero) * scale == pytest.approx(-1.0, abs=scale)
    assert (127 - zero) * scale == pytest.approx(3.0, abs=scale)
    scale, zero = activation_qparams(0.5, 2.0)  # zero stays representable: the range widens to [0, 2]
    assert zero == -128 and scale == pytest.approx(2.0 / 255)


def test_observers_against_numpy():
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(1000, generator=generator) for _ in range(3)]
    batches[1][7] = 40.0  # an outlier: min/max follows it, the percentile does not
    minmax, percentile = RangeObserver("minmax"), RangeObserver("percentile", 99.9)
    for batch in batches:
        minmax.update(batch)
        percentile.update(batch)
    minmax.finish_calibration()
    percentile.finish_calibration()
    values = torch.cat(batches).numpy()
    assert (minmax.low, minmax.high) == (pytest.approx(values.min()), pytest.approx(40.0))
    assert percentile.low == pytest.approx(np.percentile(values, 0.1), rel=1e-4)
    assert percentile.high == pytest.approx(np.percentile(values, 99.9), rel=1e-4)


def test_quantized_layers_match_integer_arithmetic(ptq, cnn_data):
    model, _ = ptq
    x = cnn_data.val[0][:20]
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda m, args: inputs.__setitem__(m, args[0]))
             for m in model.modules() if isinstance(m, (QuantLinear, QuantConv2d))]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    assert {type(m) for m in inputs} == {QuantLinear, QuantConv2d} and any(m.groups == 6 for m in inputs
                                                                           if isinstance(m, QuantConv2d))
    for layer, given in inputs.items():
        with torch.no_grad():
            ours = layer(given).numpy()
        step = layer.qparams("output")[0]
        assert np.abs(ours - numpy_int8_layer(layer, given.double().numpy())).max() <= step * 1.001


def test_folding_and_fusion_keep_the_float_model(trained_cnn, cnn_data):
    prepared = prepare(trained_cnn)
    replaced = ("bn", "relu", "dw_bn", "dw_relu", "fc1_relu")
    assert [type(prepared.get_submodule(name)) for name in replaced] == [nn.Identity] * 5
    assert type(prepared.pool) is nn.MaxPool2d and isinstance(prepared.fc2, FakeQuantLayer) and not prepared.fc2.relu
    x = cnn_data.val[0]
    with torch.no_grad():
        torch.testing.assert_close(prepared(x), trained_cnn(x), atol=1e-5, rtol=1e-5)


def test_ptq_report_and_shared_quantization(ptq, trained_cnn, cnn_data):
    model, report = ptq
    float_accuracy = evaluate(trained_cnn, cnn_data)
    assert float_accuracy > 0.8 and report.accuracy >= float_accuracy - 0.02
    assert model.dw.input_quantized and not model.conv.input_quantized
    assert model.fc1.qparams("input") == model.dw.qparams("output")  # through MaxPool and Flatten
    assert model.fc1.input_quantized and model.fc2.input_quantized
    assert [type(model.pool), type(model.flatten)] == [QuantPassThrough] * 2
    assert model.pool.qparams() == model.flatten.qparams() == model.dw.qparams("output")
    assert model.conv.weight.dtype == torch.int8
    assert report.bitops == report.macs * 64 and report.macs > 0
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, (QuantLinear, QuantConv2d)))
    floats = sum(m.weight_scale.numel() + m.bias.numel() + 4 for m in model.modules()
                 if isinstance(m, (QuantLinear, QuantConv2d)))
    assert report.weight_bytes == weights + 4 * floats + 2 * 8  # + the pass-throughs' scale, zero point
    assert report.transform["name"] == "quantize"
    assert report.transform["params"]["pass_through"] == {"pool": "output", "flatten": "output"}


def test_qat_trains_through_fake_quant(trained_cnn, cnn_data):
    prepared = calibrate(prepare(trained_cnn, "percentile", 99.9), cnn_data.calibration(200), progress=False)
    before = prepared.fc1.layer.weight.detach().clone()
    loss = nn.functional.cross_entropy(prepared.train()(cnn_data.train[0][:50]), cnn_data.train[1][:50])
    loss.backward()
    assert prepared.fc1.layer.weight.grad.abs().sum() > 0  # the straight-through estimator passes gradients
    prepared.zero_grad()
    model, report = run_stage("quantize", trained_cnn, cnn_data, mode="qat", epochs=1, lr=1e-3, progress=False)
    assert report.accuracy >= evaluate(trained_cnn, cnn_data) - 0.03
    assert convert(prepared)[0].fc1.weight.dtype == torch.int8 and before.shape == model.fc1.weight.shape


def test_checkpoint_of_a_quantized_dscnn_reloads(tmp_path):
    model = randomize_batchnorms(ds_cnn(channels=8, blocks=1, classes=3))
    x = torch.randn(60, 1, 49, 10, generator=torch.Generator().manual_seed(3))
    data = StageData((x, torch.arange(60) % 3), (x[:20], torch.arange(20) % 3), batch_size=20)
    quantized, report = run_stage("quantize", model, data, calibration_batches=2, progress=False)
    assert report.extra["calibration_inputs"] == 40
    path = save_checkpoint(quantized, tmp_path / "int8.safetensors", "edgepack.kws.models:ds_cnn",
                           {"channels": 8, "blocks": 1, "classes": 3}, transforms=[report.transform])
    loaded = load_checkpoint(path)
    assert isinstance(loaded.dw0, QuantConv2d) and loaded.dw0.relu and loaded.dw0.weight.dtype == torch.int8
    with torch.no_grad():
        assert torch.equal(loaded(x), quantized(x))


@pytest.mark.parametrize("params, message", [
    ({"bits": 4}, "bits=4 is not supported; valid: 8"),
    ({"calibration_batches": 0}, "calibration set must not be empty"),
    ({"observer": "entropy"}, "valid: minmax, percentile"),
    ({"mode": "int4"}, "valid: ptq, qat"),
    ({"percentile": 20}, "percentile=20"),
])
def test_bad_stage_parameters(trained_cnn, cnn_data, params, message):
    with pytest.raises(StageError, match=message):
        run_stage("quantize", trained_cnn, cnn_data, progress=False, **params)


def test_a_model_without_dense_layers_is_refused(cnn_data):
    with pytest.raises(StageError, match="no dense nn.Linear / nn.Conv2d"):
        run_stage("quantize", nn.Sequential(nn.Flatten()), cnn_data, progress=False)


def test_a_flatten_on_the_model_input_quantizes_its_input(tmp_path):
    """Flatten → Linear: the model input is quantized before the Flatten, with the Linear's input parameters."""
    from edgepack.benchmarks.lenet import lenet_300_100

    x = torch.rand(100, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    data = StageData((x, torch.arange(100) % 10), (x[:20], torch.arange(20) % 10), batch_size=50)
    model, report = run_stage("quantize", lenet_300_100(), data, progress=False)
    assert type(model.flatten) is QuantPassThrough and model.flatten.side == "input"
    assert model.flatten.qparams() == model.fc1.qparams("input") and not model.fc1.input_quantized
    assert report.transform["params"]["pass_through"] == {"flatten": "input"}
    path = save_checkpoint(model, tmp_path / "int8.safetensors", "edgepack.benchmarks.lenet:lenet_300_100",
                           transforms=[report.transform])
    with torch.no_grad():
        assert torch.equal(load_checkpoint(path)(x), model(x))
