"""Pipelines: stages checked before anything runs, one checkpoint per stage that reloads to the same outputs,
rows measured against hand counts, resume that skips exactly the unchanged leading stages, no half-written
checkpoint after a crash; and the method stages (recipe, hyper, sws) against their functions run directly."""

import functools
import json

import numpy as np
import pytest
import torch
from torch import nn

from edgepack.compression import hyper_compress, load_checkpoint
from edgepack.compression import pipeline as pipelines
from edgepack.compression.checkpoint import read_checkpoint_fields
from edgepack.compression.pipeline import check_stages, load_pipeline, run_pipeline
from edgepack.compression.stages import STAGES, StageData, StageError, fine_tune, register_stage, stage_report
from edgepack.demo import digits_mlp
from edgepack.pipeline_data import load_data_spec

BUILDER, KWARGS = "edgepack.demo:digits_mlp", {"hidden": 16}
HASHED = {"recipe": {"recipe": {"fc1": {"method": "hashed", "ratio": 0.25}}, "epochs": 1}}
SWS = {"sws": {"tau": 1.0, "epochs": 1, "layers": "head"}}


@pytest.fixture(scope="module")
def data():
    return load_data_spec("digits")


@pytest.fixture(scope="module")
def trained(data):
    torch.manual_seed(0)
    return fine_tune(digits_mlp(16), data, epochs=8, lr=3e-3, progress=False)


def counting(monkeypatch, name: str) -> list:
    """Wrap the registered stage ``name`` so each call is recorded (its signature stays the stage's)."""
    calls, stage = [], STAGES[name]

    @functools.wraps(stage)
    def wrapper(model, data, **params):
        calls.append(params)
        return stage(model, data, **params)

    monkeypatch.setitem(STAGES, name, wrapper)
    return calls


def run(model, data, stages, out, **options):
    lines = []
    result = run_pipeline(model, data, stages, out, BUILDER, KWARGS, progress=False, echo=lines.append, **options)
    return (*result, "\n".join(lines))


def outputs(model, data):
    with torch.no_grad():
        return model.eval()(data.val[0])


def test_rows_checkpoints_and_table(trained, data, tmp_path):
    model, reports, printed = run(trained, data, [HASHED, SWS], tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "pipeline.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2] and [r["stage"] for r in rows] == ["input", "recipe", "sws"]
    assert [r["checkpoint"] for r in rows] == [None, "01-recipe.safetensors", "02-sws.safetensors"]
    assert rows[1]["spec"] == {"stage": "recipe", "params": HASHED["recipe"]}
    # row 0 against hand counts: accuracy by numpy, float32 bytes of 64·16 + 16 + 16·16 + 16 + 16·10 + 10 weights
    logits = outputs(trained, data).numpy()
    assert rows[0]["accuracy"] == pytest.approx(float((logits.argmax(1) == data.val[1].numpy()).mean()))
    dense = 64 * 16 + 16 + 16 * 16 + 16 + 16 * 10 + 10
    assert rows[0]["weight_bytes"] == 4 * dense and rows[0]["macs"] == 64 * 16 + 16 * 16 + 16 * 10
    assert rows[0]["bitops"] == rows[0]["macs"] * 32 * 32
    # hashing fc1 to a quarter: its 1024 weights become 256 buckets (bias kept), the rest unchanged
    assert rows[1]["weight_bytes"] == 4 * (dense - 64 * 16 + 256)
    assert rows[2]["weight_bytes"] < rows[1]["weight_bytes"]
    assert rows[1]["macs"] == rows[0]["macs"]  # dense-equivalent compute is unchanged by storage methods
    # every checkpoint reloads to what the stage produced; transforms accumulate in order
    final = load_checkpoint(tmp_path / "02-sws.safetensors")
    assert torch.equal(outputs(final, data), outputs(model, data))
    transforms = read_checkpoint_fields(tmp_path / "02-sws.safetensors").transforms
    assert transforms == [rows[1]["transform"], rows[2]["transform"]]
    assert read_checkpoint_fields(tmp_path / "01-recipe.safetensors").transforms == [rows[1]["transform"]]
    # the printed table and summary.md carry each row, with the ratios against row 0
    ratio = f"{rows[0]['weight_bytes'] / rows[1]['weight_bytes']:.2f}x"
    assert ratio in printed and "02-sws.safetensors" in printed.splitlines()[-1]
    summary = (tmp_path / "summary.md").read_text()
    assert f"| 1 | recipe | {100 * rows[1]['accuracy']:.2f}% |" in summary and ratio in summary
    assert [r.stage for r in reports] == ["input", "recipe", "sws"]


def test_resume_skips_unchanged_stages_and_reruns_from_a_change(trained, data, tmp_path, monkeypatch):
    recipe_calls, sws_calls = counting(monkeypatch, "recipe"), counting(monkeypatch, "sws")
    run(trained, data, [HASHED], tmp_path)
    model, _, printed = run(trained, data, [HASHED, SWS], tmp_path)
    assert (len(recipe_calls), len(sws_calls)) == (1, 1) and "resuming: stages 1..1" in printed
    # resuming gives what one uninterrupted run gives
    fresh, _, _ = run(trained, data, [HASHED, SWS], tmp_path / "fresh")
    assert torch.equal(outputs(model, data), outputs(fresh, data))
    changed = {"sws": {**SWS["sws"], "tau": 2.0}}
    _, _, printed = run(trained, data, [HASHED, changed], tmp_path)
    assert (len(recipe_calls), len(sws_calls)) == (2, 3) and "stage 2 'sws' differs" in printed
    _, _, printed = run(trained, data, [HASHED, changed], tmp_path)
    assert (len(recipe_calls), len(sws_calls)) == (2, 3) and "stages 1..2 are done" in printed
    _, _, printed = run(trained, data, [{"recipe": {**HASHED["recipe"], "epochs": 0}}, changed], tmp_path)
    assert (len(recipe_calls), len(sws_calls)) == (3, 4)
    run(trained, data, [HASHED], tmp_path, resume=False)
    assert len(recipe_calls) == 4 and not (tmp_path / "02-sws.safetensors").exists()
    # other data (or another input model) is another run: nothing is reused
    other = StageData(data.train, (data.val[0][:100], data.val[1][:100]))
    _, _, printed = run(trained, other, [HASHED], tmp_path)
    assert len(recipe_calls) == 5 and "differ from the recorded run" in printed


def test_a_crash_leaves_no_half_checkpoint_and_the_rerun_goes_on(trained, data, tmp_path, monkeypatch):
    def broken_save(model, path, *args, **kwargs):
        path.write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt

    run(trained, data, [HASHED], tmp_path)
    monkeypatch.setattr(pipelines, "save_checkpoint", broken_save)
    with pytest.raises(KeyboardInterrupt):
        run(trained, data, [HASHED, SWS], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["01-recipe.safetensors", "pipeline.jsonl"]
    monkeypatch.undo()
    recipe_calls = counting(monkeypatch, "recipe")
    _, reports, _ = run(trained, data, [HASHED, SWS], tmp_path)
    assert recipe_calls == [] and [r.stage for r in reports] == ["input", "recipe", "sws"]


def test_a_stage_without_its_transform_is_caught_at_the_checkpoint(trained, data, tmp_path, monkeypatch):
    @register_stage("test-widen-silently")
    def widen(model, data):
        model = nn.Sequential(*model[:4], nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 10))
        return model, stage_report("test-widen-silently", model, data, {})

    monkeypatch.setitem(STAGES, "test-widen-silently", STAGES.pop("test-widen-silently"))
    with pytest.raises(StageError, match="stage 1/1 'test-widen-silently': its checkpoint does not reload"):
        run(trained, data, ["test-widen-silently"], tmp_path)
    assert not list(tmp_path.glob("*.safetensors"))


@pytest.mark.parametrize("stages, message", [
    ([], "non-empty list of stages"),
    ([HASHED, {"nope": {}}], "pipeline entry 2 'nope': unknown stage; registered: .*recipe"),
    ([{"recipe": {}, "sws": {}}], "pipeline entry 1: one stage per entry"),
    ([{"prune_me": None}], "entry 1 'prune_me': unknown stage"),
    ([{"sws": {"tau": 1, "colour": 2}}], r"entry 1 'sws': unknown parameters \['colour'\]; valid: .*'tau'"),
    ([HASHED, {"sws": {"epochs": 1}}], r"entry 2 'sws': needs the parameters \['tau'\]"),
    ([{"sws": {"tau": float("nan")}}], "entry 1 'sws'.*plain data"),
    ([{"sws": [1, 2]}], "entry 1 'sws': its parameters must be a map"),
])
def test_bad_stage_lists_are_refused_before_anything_runs(stages, message):
    with pytest.raises(StageError, match=message):
        check_stages(stages)


def test_pipeline_files(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("data: sub/x.npz\nseed: 3\nstages:\n  - recipe: {recipe: {fc1: {method: hashed, ratio: 0.5}}}\n"
                    "  - sws: {tau: 0.5}\n")
    pipeline = load_pipeline(path)
    assert pipeline.stages == [("recipe", {"recipe": {"fc1": {"method": "hashed", "ratio": 0.5}}}),
                               ("sws", {"tau": 0.5})]
    assert (pipeline.data, pipeline.seed, pipeline.batch_size, pipeline.folder) == ("sub/x.npz", 3, 100, tmp_path)
    json_path = tmp_path / "p.json"
    json_path.write_text(json.dumps({"stages": [{"sws": {"tau": 0.5}}]}))
    assert load_pipeline(json_path).stages == [("sws", {"tau": 0.5})]
    assert check_stages(["hyper", ("sws", {"tau": 1})]) == [("hyper", {}), ("sws", {"tau": 1})]
    for text, message in [("stages: [\n", "not valid YAML"), ("- sws: {}\n", "a pipeline is a map"),
                          ("stage: []\n", r"unknown keys \['stage'\]"), ("stages: []\n", "non-empty"),
                          ("seed: -1\nstages: [sws: {tau: 1}]\n", "seed must be an integer >= 0")]:
        path.write_text(text)
        with pytest.raises(StageError, match=message):
            load_pipeline(path)
    with pytest.raises(StageError, match="does not exist"):
        load_pipeline(tmp_path / "none.yaml")
    path.write_text("stages: [sws: {tau: 1}]\n" + "#" * (1 << 20))
    with pytest.raises(StageError, match="a pipeline file is at most 1,048,576"):
        load_pipeline(path)


def test_the_fingerprint_covers_every_tensor_and_the_data(data):
    """Scalar buffers (BatchNorm's counter), weights, labels and the seed all change the start's digest."""
    model = nn.Sequential(nn.Linear(64, 10), nn.BatchNorm1d(10))
    digest = pipelines.fingerprint(model, data, BUILDER, KWARGS, None, [])
    assert digest == pipelines.fingerprint(model, data, BUILDER, KWARGS, None, [])
    model[1].num_batches_tracked += 1
    changed = [pipelines.fingerprint(model, data, BUILDER, KWARGS, None, [])]
    with torch.no_grad():
        model[0].weight[0, 0] += 1e-3
    changed.append(pipelines.fingerprint(model, data, BUILDER, KWARGS, None, []))
    changed.append(pipelines.fingerprint(model, StageData(data.train, (data.val[0], data.val[1].flip(0))), BUILDER,
                                         KWARGS, None, []))
    changed.append(pipelines.fingerprint(model, StageData(data.train, data.val, seed=1), BUILDER, KWARGS, None, []))
    assert len({digest, *changed}) == 5


def test_data_that_does_not_fit_the_model_names_the_shapes(trained, data, tmp_path):
    labels = torch.zeros(4, dtype=torch.long)
    images = StageData((torch.zeros(4, 1, 8, 8), labels), (torch.zeros(4, 1, 8, 8), labels))
    with pytest.raises(StageError, match=r"one example is \[1, 1, 8, 8\].*RuntimeError"):
        run(trained, images, [SWS], tmp_path)
    many = StageData((data.train[0], data.train[1] + 5), data.val)
    with pytest.raises(StageError, match=r"output for one example \[1, 64\] is \[1, 10\].*labels 0..14"):
        run(trained, many, [SWS], tmp_path)
    with pytest.raises(StageError, match="is a file"):
        (tmp_path / "file").write_text("")
        run(trained, data, [SWS], tmp_path / "file")


def test_hyper_stage_equals_hyper_compress_on_the_calibration_inputs(trained, data):
    model, report = STAGES["hyper"](trained, data, budget=0.05, calibration=200, layers="fc*", progress=False)
    expected, choices = hyper_compress(trained, budget=0.05, calibration=data.train[0][:200], names="fc*",
                                       progress=False)
    assert torch.equal(outputs(model, data), outputs(expected, data))
    assert report.transform == {"name": "recipe", "params": {"recipe": choices.recipe}}
    assert report.weight_bytes == choices.model_bytes[1] and report.macs == 64 * 16 + 16 * 16 + 16 * 10
    assert isinstance(trained.fc1, nn.Linear)  # the input model is left as it was
    with pytest.raises(StageError, match="calibration=-1"):
        STAGES["hyper"](trained, data, calibration=-1)


def test_sws_stage_quantizes_to_a_few_shared_values(trained, data):
    model, report = STAGES["sws"](trained, data, tau=1.0, epochs=1, layers=["fc2", "head"], progress=False)
    weights = np.concatenate([getattr(model, name).dense_weight().detach().numpy().ravel() for name in ("fc2", "head")])
    assert len(np.unique(weights)) <= report.extra["values"] <= 17
    assert report.extra["nonzero"] == pytest.approx(float((weights != 0).mean()))
    assert report.transform["params"]["recipe"] == {"fc2": {"method": "codebook"}, "head": {"method": "codebook"}}
    with pytest.raises(StageError, match="layers pattern 'conv' matches no"):
        STAGES["sws"](trained, data, tau=1.0, layers="conv")
    with pytest.raises(StageError, match="tau must be a number >= 0"):
        STAGES["sws"](trained, data, tau=-1.0, progress=False)


def test_recipe_stage_names_each_layer_and_wraps_recipe_errors(trained, data):
    model, report = STAGES["recipe"](trained, data, recipe={"fc*": {"method": "circulant", "block_size": 8}},
                                     epochs=0, progress=False)
    assert report.transform["params"]["recipe"] == {"fc1": {"method": "circulant", "block_size": 8},
                                                    "fc2": {"method": "circulant", "block_size": 8}}
    with pytest.raises(StageError, match="stage 'recipe': recipe pattern 'conv\\*' matches no"):
        STAGES["recipe"](trained, data, recipe={"conv*": {"method": "hashed", "ratio": 0.5}})
    with pytest.raises(StageError, match="unknown method 'zip'"):
        STAGES["recipe"](trained, data, recipe={"fc1": {"method": "zip"}})


def test_yaml_aliases_are_refused_before_they_expand(tmp_path):
    """A billion-laughs file is a few hundred bytes; walking it would take gigabytes."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 30)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\nstages: [{prune: {layers: *a29}}]\n")
    with pytest.raises(StageError, match="aliases .* are not allowed"):
        load_pipeline(bomb)
