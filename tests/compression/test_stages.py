"""The stage interface: data checks, MAC / BitOps counting against hand counts, fine-tuning, reports,
and checkpoints that replay the stages' structural transforms."""

import pytest
import torch
from torch import nn

from edgepack.compression import load_checkpoint, save_checkpoint
from edgepack.compression.checkpoint import CheckpointError, read_checkpoint_fields
from edgepack.compression.stages import (
    STAGES,
    StageData,
    StageError,
    count_macs,
    evaluate,
    fine_tune,
    register_stage,
    register_transform,
    run_stage,
    stage_report,
)
from edgepack.kws.models import ds_cnn


def blobs(n=400, seed=0):
    """Two separable Gaussian blobs in 8-D (labels 0/1)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    inputs = torch.randn(n, 8, generator=g) + 3.0 * labels[:, None].float()
    return inputs, labels


@pytest.fixture(scope="module")
def data():
    return StageData(train=blobs(400, 0), val=blobs(200, 1), batch_size=50)


def test_ds_cnn_s_macs_equal_the_hand_count():
    """DS-CNN-S on 49×10: conv 25×5×64×(10·4), 4 × (depthwise 25×5×64×9 + pointwise 25×5×64×64), FC 64×12."""
    costs = count_macs(ds_cnn(), torch.zeros(1, 1, 49, 10))
    by_name = {c.name: c.macs for c in costs}
    assert by_name["conv"] == 25 * 5 * 64 * 40 and by_name["dw0"] == 25 * 5 * 64 * 9
    assert by_name["pw3"] == 25 * 5 * 64 * 64 and by_name["fc"] == 64 * 12
    assert sum(by_name.values()) == 25 * 5 * 64 * 40 + 4 * (25 * 5 * 64 * 9 + 25 * 5 * 64 * 64) + 64 * 12
    assert all(c.bitops == c.macs * 32 * 32 for c in costs)


def test_bit_widths_weigh_bitops_and_wrapped_layers_count_once():
    class Int8Linear(nn.Module):
        weight_bits, activation_bits = 8, 8

        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(8, 4)
            self.in_features, self.out_features = 8, 4

        def forward(self, x):
            return self.inner(x)

    model = nn.Sequential(Int8Linear(), nn.ReLU(), nn.Linear(4, 2))
    costs = count_macs(model, torch.zeros(1, 8))
    assert [(c.name, c.macs, c.bitops) for c in costs] == [("0", 32, 32 * 64), ("2", 8, 8 * 1024)]


def test_bad_data_is_refused_by_name():
    inputs, labels = blobs(10)
    with pytest.raises(StageError, match="data.val is empty"):
        StageData(train=(inputs, labels), val=(inputs[:0], labels[:0]))
    with pytest.raises(StageError, match="data.train: inputs .* same length"):
        StageData(train=(inputs, labels[:5]), val=(inputs, labels))
    with pytest.raises(StageError, match="labels integers"):
        StageData(train=(inputs, labels.float()), val=(inputs, labels))
    with pytest.raises(StageError, match="count >= 1"):
        StageData(train=(inputs, labels), val=(inputs, labels)).calibration(0)


def test_batches_are_a_deterministic_permutation(data):
    first = torch.cat([y for _, y in data.batches(3)])
    assert torch.equal(first, torch.cat([y for _, y in data.batches(3)]))
    assert not torch.equal(first, torch.cat([y for _, y in data.batches(4)]))
    assert sorted(first.tolist()) == sorted(data.train[1].tolist())


def test_fine_tune_learns_and_the_report_measures(data):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    fine_tune(model, data, epochs=5, lr=1e-2, progress=False)
    accuracy = evaluate(model, data)
    inputs, labels = data.val
    assert accuracy == pytest.approx(float((model(inputs).argmax(1) == labels).double().mean())) and accuracy > 0.95
    report = stage_report("demo", model, data, {"epochs": 5})
    assert report.macs == 8 * 16 + 16 * 2 and report.bitops == report.macs * 1024
    assert report.weight_bytes == 4 * (8 * 16 + 16 + 16 * 2 + 2) and report.row()["accuracy"] == accuracy


def test_run_stage_names_unknown_stages_and_parameters(data):
    @register_stage("test-identity")
    def identity(model, data, *, note: str = ""):
        return model, stage_report("test-identity", model, data, {"note": note})

    try:
        with pytest.raises(StageError, match="unknown stage 'nope'; valid: .*test-identity"):
            run_stage("nope", nn.Linear(8, 2), data)
        with pytest.raises(StageError, match=r"unknown parameters \['colour'\]; valid: \['note'\]"):
            run_stage("test-identity", nn.Linear(8, 2), data, colour=1)
        assert run_stage("test-identity", nn.Linear(8, 2), data, note="x")[1].params == {"note": "x"}
    finally:
        STAGES.pop("test-identity")


def widen(model, width):
    """A test transform: the first layer's outputs become ``width`` (the next layer's inputs follow)."""
    model[0], model[2] = nn.Linear(8, width), nn.Linear(width, 2)
    return model


register_transform("test-widen")(widen)


def small_mlp():
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))


def test_checkpoints_replay_transforms_after_the_recipe(tmp_path):
    """A model whose shapes a stage changed, then hashed by a recipe, reloads to the same outputs."""
    from edgepack.compression import compress

    model = widen(small_mlp(), 6)
    model, _ = compress(model, {"0": {"method": "hashed", "ratio": 0.5}})
    transforms = [{"name": "test-widen", "params": {"width": 6}},
                  {"name": "recipe", "params": {"recipe": {"0": {"method": "hashed", "ratio": 0.5}}}}]
    path = save_checkpoint(model, tmp_path / "m.safetensors", small_mlp, transforms=transforms)
    assert read_checkpoint_fields(path).transforms == transforms
    loaded = load_checkpoint(path, trust_builder=f"{__name__}:small_mlp")
    x = torch.randn(5, 8)
    assert torch.equal(loaded(x), model.eval()(x))


def test_unknown_or_malformed_transforms_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="transforms must be a list"):
        save_checkpoint(small_mlp(), tmp_path / "a.safetensors", small_mlp, transforms=[{"name": "x"}])
    path = save_checkpoint(small_mlp(), tmp_path / "b.safetensors", small_mlp,
                           transforms=[{"name": "no-such", "params": {}}])
    with pytest.raises(CheckpointError, match="transform 0 'no-such' is not registered"):
        load_checkpoint(path, trust_builder=f"{__name__}:small_mlp")
    path = save_checkpoint(small_mlp(), tmp_path / "c.safetensors", small_mlp,
                           transforms=[{"name": "test-widen", "params": {"depth": 2}}])
    with pytest.raises(CheckpointError, match="transform 0 'test-widen' cannot be applied: TypeError"):
        load_checkpoint(path, trust_builder=f"{__name__}:small_mlp")


def test_compressed_layers_count_their_dense_equivalent_macs():
    """Decoder layers (decoded at load) and compute layers count as the dense layer they replace."""
    from edgepack.compression import compress

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    compressed, _ = compress(model, {"0": {"method": "hashed", "ratio": 0.5}, "2": {"method": "hashed", "ratio": 0.5}})
    expected = [c.macs for c in count_macs(model, torch.zeros(1, 3, 6, 6))]
    assert expected == [4 * 4 * 8 * 27, 128 * 10]
    assert [c.macs for c in count_macs(compressed, torch.zeros(1, 3, 6, 6))] == expected
