"""Pruning stages: magnitude pruning against numpy thresholds, masks held while fine-tuning, the sparse
codebook export run in ORT, and channel pruning checked against hand-counted MACs / ONNX sizes and
hand-built smaller models with the kept channels' weights copied."""

import copy
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from edgepack.benchmarks.lenet import lenet_5, lenet_300_100, train_classifier
from edgepack.benchmarks.mnist import load_mnist
from edgepack.compression import load_checkpoint, save_checkpoint
from edgepack.compression.codebook import CodebookConv2d, CodebookLinear
from edgepack.compression.prune import (
    channel_groups,
    magnitude_masks,
    resize_channels,
    schedule_sparsity,
    to_sparse_codebook,
)
from edgepack.compression.stages import StageData, StageError, count_macs, evaluate, run_stage
from edgepack.exporter.onnx_export import export_onnx
from edgepack.kws.models import ds_cnn

LENET_LAYERS = ["fc1", "fc2", "fc3"]


@pytest.fixture(scope="module")
def mnist_data() -> StageData:
    """5,000 MNIST training images (4,000 train / 1,000 val)."""
    subset = load_mnist("train", limit=5000, seed=0)
    x, y = subset.images, subset.labels
    return StageData((x[:4000], y[:4000]), (x[4000:], y[4000:]), batch_size=100)


@pytest.fixture(scope="module")
def dense_lenet(mnist_data) -> nn.Module:
    torch.manual_seed(0)
    model = lenet_300_100()
    train_classifier(model, *mnist_data.train, epochs=4, batch_size=100)
    return model.eval()


@pytest.fixture(scope="module")
def pruned_lenet(dense_lenet, mnist_data):
    """LeNet-300-100 pruned to 90% (global, 2 cubic steps of 2 epochs each)."""
    return run_stage("prune", dense_lenet, mnist_data, sparsity=0.9, steps=2, epochs=2, progress=False)


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """BatchNorms with non-trivial statistics and affine terms, so that dropping a wrong channel shows."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) * 2 - 1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) * 2 - 1)
    return model.eval()


def test_magnitude_masks_match_numpy_thresholds():
    generator = torch.Generator().manual_seed(0)
    weights = {"a": torch.randn(40, 30, generator=generator), "b": torch.randn(8, 4, 3, 3, generator=generator) * 3}
    masks = magnitude_masks(weights, 0.7, "global")
    every = np.concatenate([np.abs(w.numpy()).ravel() for w in weights.values()])
    threshold = np.sort(every)[round(0.7 * every.size) - 1]
    for name, w in weights.items():
        assert np.array_equal(masks[name].numpy(), np.abs(w.numpy()) > threshold)
    for name, mask in magnitude_masks(weights, 0.7, "layer").items():
        magnitudes = np.abs(weights[name].numpy())
        cut = np.sort(magnitudes.ravel())[round(0.7 * magnitudes.size) - 1]
        assert np.array_equal(mask.numpy(), magnitudes > cut)
    assert [round(schedule_sparsity(0.9, t, 3), 4) for t in (1, 2, 3)] == [0.6333, 0.8667, 0.9]
    assert [round(schedule_sparsity(0.9, t, 3, "linear"), 4) for t in (1, 2, 3)] == [0.3, 0.6, 0.9]


def test_magnitude_pruning_holds_the_masks_and_keeps_accuracy(dense_lenet, pruned_lenet, mnist_data):
    model, report = pruned_lenet
    weights = {name: model.get_submodule(name).weight.detach() for name in LENET_LAYERS}
    total = sum(w.numel() for w in weights.values())
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    # exactly the scheduled count is zero after the last fine-tuning: pruned weights never moved
    assert zeros == round(0.9 * total) and report.extra["nonzeros"] == total - zeros
    assert report.extra["sparsity"] == pytest.approx(0.9, abs=1e-6)
    for name, w in weights.items():
        assert report.extra["layer_sparsity"][name] == pytest.approx(float((w == 0).float().mean()))
        assert int((model.get_submodule(name).bias == 0).sum()) == 0  # biases are never pruned
    assert all(int((w == 0).sum()) == 0 for w in (dense_lenet.fc1.weight, dense_lenet.fc3.weight))  # input unchanged
    dense = evaluate(dense_lenet, mnist_data)
    assert report.accuracy == pytest.approx(evaluate(model, mnist_data))
    # 5k-image CI bound (the full-MNIST figure, within 1 point, is in the README)
    assert report.accuracy >= dense - 0.02, (report.accuracy, dense)
    assert report.transform is None and report.macs == 784 * 300 + 300 * 100 + 100 * 10


def test_layer_scope_and_patterns_prune_only_the_matched_layers(dense_lenet, mnist_data):
    model, report = run_stage("prune", dense_lenet, mnist_data, sparsity=0.5, scope="layer", steps=1, epochs=0,
                              layers=["fc1", "fc2"], progress=False)
    assert report.extra["layer_sparsity"] == {"fc1": 0.5, "fc2": 0.5}
    assert torch.equal(model.fc3.weight, dense_lenet.fc3.weight)
    kept = magnitude_masks({"fc1": dense_lenet.fc1.weight}, 0.5)["fc1"]
    assert torch.equal(model.fc1.weight, torch.where(kept, dense_lenet.fc1.weight, 0.0))


def test_sparse_export_runs_in_onnxruntime_and_reloads(pruned_lenet, mnist_data, tmp_path):
    pruned, _ = pruned_lenet
    sparse = copy.deepcopy(pruned)
    transform = to_sparse_codebook(sparse, LENET_LAYERS, seed=0)
    for name in LENET_LAYERS:
        layer, reference = sparse.get_submodule(name), pruned.get_submodule(name).weight.detach()
        decoded = layer.dense_weight()
        assert isinstance(layer, CodebookLinear) and layer.sparse
        assert torch.equal(decoded == 0, reference == 0)  # the same non-zeros, shared into ≤ 255 values
        assert len(torch.unique(decoded[decoded != 0])) <= 255
        assert float((decoded - reference).abs().max()) < 0.02 * float(reference.abs().max())
    images = mnist_data.val[0][:200]
    expected = sparse(images).detach().numpy()
    assert evaluate(sparse, mnist_data) >= evaluate(pruned, mnist_data) - 0.01
    path = export_onnx(sparse, images[:1], tmp_path / "sparse.onnx", codebook_op="sparse")
    assert {n.op_type for n in onnx.load(path).graph.node} >= {"SparseCodebookMatMul"}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    reloaded = load_checkpoint(save_checkpoint(sparse, tmp_path / "sparse.safetensors", lenet_300_100,
                                               transforms=[transform]))
    assert torch.equal(reloaded(images), sparse(images))


def test_sparse_stage_converts_convs_too(mnist_data, tmp_path):
    torch.manual_seed(0)
    model = lenet_5().eval()
    small = StageData((mnist_data.train[0][:200], mnist_data.train[1][:200]), mnist_data.val, batch_size=100)
    pruned, report = run_stage("prune", model, small, sparsity=0.8, steps=1, epochs=0, export="sparse",
                               layers="conv*", progress=False)
    assert isinstance(pruned.conv1, CodebookConv2d) and isinstance(pruned.conv2, CodebookConv2d)
    assert type(pruned.fc1) is nn.Linear and "accuracy_before_sharing" in report.extra
    assert sum(int((pruned.get_submodule(n).dense_weight() != 0).sum()) for n in ("conv1", "conv2")) \
        == report.extra["nonzeros"] == round(0.2 * (500 + 25000))
    assert report.weight_bytes < sum(t.numel() * 4 for t in model.state_dict().values())
    assert report.macs == sum(c.macs for c in count_macs(model, small.example))  # dense-equivalent
    path = export_onnx(pruned, small.example, tmp_path / "conv.onnx")
    assert [n.op_type for n in onnx.load(path).graph.node].count("CodebookWeight") == 2
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = small.val[0][:100]
    got = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
    np.testing.assert_allclose(got, pruned(images).detach().numpy(), atol=1e-4, rtol=1e-4)


def _ds_cnn_macs(channels: int) -> int:
    """DS-CNN-S MACs by hand on 49×10 input: conv 10×4/2 → 25×5, 4 × (depthwise 3×3 + pointwise), FC."""
    positions = 25 * 5
    return positions * channels * 40 + 4 * (positions * channels * 9 + positions * channels * channels) + channels * 12


def _ds_cnn_floats(channels: int) -> int:
    """Float initializers of the exported DS-CNN-S (BatchNorm folded into biased convs) by hand."""
    return (40 + 1) * channels + 4 * (9 + 1) * channels + 4 * (channels + 1) * channels + 12 * channels + 12


def _float_initializers(path) -> int:
    return sum(math.prod(t.dims) for t in onnx.load(path).graph.initializer if t.data_type == onnx.TensorProto.FLOAT)


def _keep(weight: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` output filters of largest L1 norm, in their original order (numpy reference)."""
    norms = np.abs(weight.detach().numpy()).reshape(weight.shape[0], -1).sum(axis=1)
    return torch.from_numpy(np.sort(np.argsort(-norms, kind="stable")[:count]))


@pytest.fixture(scope="module")
def ds_cnn_pruned():
    torch.manual_seed(0)
    dense = _randomize_bn(ds_cnn())
    x = torch.randn(60, 1, 49, 10, generator=torch.Generator().manual_seed(1))
    data = StageData((x, torch.arange(60) % 12), (x[:30], torch.arange(30) % 12), batch_size=30)
    return dense, data, *run_stage("prune_channels", dense, data, ratio=0.5, epochs=0, progress=False)


def test_channel_pruning_shrinks_macs_and_onnx_by_the_hand_counts(ds_cnn_pruned, tmp_path):
    dense, data, pruned, report = ds_cnn_pruned
    assert _ds_cnn_macs(64) == sum(c.macs for c in count_macs(dense, data.example)) == 2_656_768
    assert report.macs == sum(c.macs for c in count_macs(pruned, data.example)) == _ds_cnn_macs(32) == 816_384
    assert report.extra["channels"] == {name: [64, 32] for name in ("conv", "pw0", "pw1", "pw2", "pw3")}
    dense_path = export_onnx(dense, data.example, tmp_path / "dense.onnx")
    pruned_path = export_onnx(pruned, data.example, tmp_path / "pruned.onnx")
    assert _float_initializers(dense_path) == _ds_cnn_floats(64) == 22_604
    assert _float_initializers(pruned_path) == _ds_cnn_floats(32) == 7_212
    saved = dense_path.stat().st_size - pruned_path.stat().st_size
    assert abs(saved - 4 * (22_604 - 7_212)) < 1024, saved
    session = ort.InferenceSession(str(pruned_path), providers=["CPUExecutionProvider"])
    x = data.val[0]
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, pruned(x).detach().numpy(), atol=1e-4, rtol=1e-4)


def test_channel_pruned_ds_cnn_equals_a_hand_built_small_model(ds_cnn_pruned, tmp_path):
    dense, data, pruned, report = ds_cnn_pruned
    small = ds_cnn(channels=32).eval()
    source, target = dense.state_dict(), small.state_dict()
    previous = None
    for i, producer in enumerate(["conv", "pw0", "pw1", "pw2", "pw3"]):
        keep = _keep(source[f"{producer}.weight"], 32)
        weight = source[f"{producer}.weight"][keep]
        target[f"{producer}.weight"] = weight if previous is None else weight[:, previous]
        followers = ["bn" if producer == "conv" else f"{producer}_bn"] + ([f"dw{i}", f"dw{i}_bn"] if i < 4 else [])
        for name in followers:
            for key in ("weight", "bias", "running_mean", "running_var"):
                if f"{name}.{key}" in source:
                    target[f"{name}.{key}"] = source[f"{name}.{key}"][keep]
        previous = keep
    target["fc.weight"], target["fc.bias"] = source["fc.weight"][:, previous], source["fc.bias"]
    small.load_state_dict(target)
    x = data.val[0]
    torch.testing.assert_close(pruned(x), small(x), atol=1e-5, rtol=1e-5)
    path = save_checkpoint(pruned, tmp_path / "pruned.safetensors", "edgepack.kws.models:ds_cnn",
                           transforms=[report.transform])
    assert torch.equal(load_checkpoint(path)(x), pruned(x))
    trained, _ = run_stage("prune_channels", dense, data, ratio=0.5, epochs=1, progress=False)
    assert not torch.equal(trained.pw0.weight, pruned.pw0.weight) and trained.pw0.weight.shape == (32, 32, 1, 1)


@pytest.mark.parametrize("build, shapes", [
    (lenet_300_100, {"fc1": (150, 784), "fc2": (50, 150), "fc3": (10, 50)}),
    (lenet_5, {"conv1": (10, 1, 5, 5), "conv2": (25, 10, 5, 5), "fc1": (250, 400), "fc2": (10, 250)}),
])
def test_channel_pruning_follows_flatten_into_linear(build, shapes):
    torch.manual_seed(0)
    dense = build().eval()
    x = torch.rand(16, 1, 28, 28)
    data = StageData((x, torch.arange(16) % 10), (x, torch.arange(16) % 10), batch_size=16)
    pruned, report = run_stage("prune_channels", dense, data, ratio=0.5, epochs=0, progress=False)
    assert {name: tuple(pruned.get_submodule(name).weight.shape) for name in shapes} == shapes
    # reference: copy the kept rows / columns into a model of the pruned shapes, dense math in torch
    reference = resize_channels(build(), **report.transform["params"]).eval()
    state = {key: value.clone() for key, value in dense.state_dict().items()}
    names = list(shapes)
    spatial = {"conv2": 16}  # LeNet-5's conv2 output is 50 × 4 × 4 before the Flatten
    for producer, consumer in zip(names[:-1], names[1:]):
        keep = _keep(dense.get_submodule(producer).weight, shapes[producer][0])
        state[f"{producer}.weight"] = state[f"{producer}.weight"][keep]
        state[f"{producer}.bias"] = state[f"{producer}.bias"][keep]
        s = spatial.get(producer, 1)
        columns = (keep[:, None] * s + torch.arange(s)).reshape(-1)
        state[f"{consumer}.weight"] = state[f"{consumer}.weight"][:, columns]
    reference.load_state_dict(state)
    torch.testing.assert_close(pruned(x), reference(x), atol=1e-5, rtol=1e-5)


def test_channel_groups_follow_nested_sequentials():
    model = nn.Sequential(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()),
                          nn.Sequential(nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 4, 1)),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    groups = [(g.producer, g.followers, g.consumer) for g in channel_groups(model)]
    assert groups == [("0.0", ["0.1", "1.0"], "1.1"), ("1.1", [], "4")]


def test_bad_parameters_are_stage_errors(dense_lenet, mnist_data):
    for params, message in [
        ({"sparsity": 0}, "0 < sparsity < 1"), ({"sparsity": 1.0}, "0 < sparsity < 1"),
        ({"sparsity": True}, "0 < sparsity < 1"), ({"scope": "model"}, "valid: \\['global', 'layer'\\]"),
        ({"export": "csr"}, "valid: \\['dense', 'sparse'\\]"), ({"steps": 0}, "steps=0"),
        ({"schedule": "exp"}, "valid: \\['cubic', 'linear'\\]"),
        ({"layers": "conv*"}, "'conv\\*' matches no .*\\['fc1', 'fc2', 'fc3'\\]"),
    ]:
        with pytest.raises(StageError, match=message):
            run_stage("prune", dense_lenet, mnist_data, **params)
    for params, message in [
        ({"ratio": 1}, "0 < ratio < 1"), ({"ratio": 0.0}, "0 < ratio < 1"),
        ({"layers": "fc3"}, "'fc3' matches no prunable layer .*\\['fc1', 'fc2'\\]"),
    ]:
        with pytest.raises(StageError, match=message):
            run_stage("prune_channels", dense_lenet, mnist_data, **params)
    tiny = nn.Sequential(nn.Flatten(), nn.Linear(784, 2), nn.ReLU(), nn.Linear(2, 10))
    with pytest.raises(StageError, match="ratio=0.8 removes all 2 channels of layer '1'"):
        run_stage("prune_channels", tiny, mnist_data, ratio=0.8)


@pytest.mark.parametrize("model, message", [
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.PReLU(4), nn.Conv2d(4, 2, 1)), "layer '1' \\(PReLU\\)"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(4, 2, 1)),
     "layer '1': a grouped Conv2d \\(groups=2"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.Linear(26, 10)),
     "layer '1': a Linear fed by the Conv2d '0' without a Flatten"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(30, 2)),
     "layer '2': 30 inputs do not match the 4 channels of '0' \\(× spatial positions\\)"),
    (nn.Sequential(nn.Linear(4, 3), nn.Linear(6, 2)), "layer '1': 6 inputs do not match the 3 channels of '0'"),
    (lenet_5().conv1, "follows nn.Sequential chains .* Conv2d"),
])
def test_structures_it_cannot_follow_are_named(model, message):
    with pytest.raises(StageError, match=message):
        channel_groups(model)


def test_transform_with_bad_channels_is_a_stage_error():
    with pytest.raises(StageError, match="\\['fc3'\\] are not prunable layers; prunable: \\['fc1', 'fc2'\\]"):
        resize_channels(lenet_300_100(), channels={"fc3": 5})
    with pytest.raises(StageError, match="'fc1' keeps 0 channels; must be 1..300"):
        resize_channels(lenet_300_100(), channels={"fc1": 0})
