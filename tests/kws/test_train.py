"""kws train / eval / compress on a tiny tone dataset in the Speech Commands layout: training runs,
checkpoints and resumes exactly, learns, evaluation matches a hand count, compressed exports match
torch under ONNX Runtime and LiteRT, bad inputs give clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgepack.cli import main
from edgepack.compression import compressed_size_bytes, load_checkpoint, save_checkpoint
from edgepack.compression.checkpoint import read_checkpoint_fields
from edgepack.demo import digits_mlp
from edgepack.errors import EdgepackError
from edgepack.kws import train as train_module
from edgepack.kws.compress_kws import compress_run
from edgepack.kws.evaluate import evaluate
from edgepack.kws.labels import CLASSES, KEYWORDS
from edgepack.kws.models import ds_cnn, ds_cnn_l, fold_batchnorms
from edgepack.kws.train import features, load_data, train
from edgepack.kws.wav import write_wav
from edgepack.runtime_kernels import onnx_session, tflite_interpreter

SPEAKERS = {"train": ["a1", "a2", "a3", "a4"], "validation": ["v1"], "test": ["t1", "t2"]}
FAST = {"batch_size": 24, "learning_rates": (3e-3, 1e-3, 3e-4)}  # a tiny set needs more, larger steps


def _tone(freq: float, rng: np.random.Generator) -> np.ndarray:
    """A 0.5 s two-partial tone at a random place in 1 s, slightly detuned, over faint noise."""
    t = np.arange(16000) / 16000
    envelope = np.zeros(16000)
    start = int(rng.integers(2000, 5000))
    envelope[start:start + 8000] = np.hanning(8000)
    f = freq * rng.uniform(0.97, 1.03)
    tone = np.sin(2 * np.pi * f * t) + 0.5 * np.sin(2 * np.pi * 2.1 * f * t)
    return (0.4 * envelope * tone + 0.01 * rng.standard_normal(16000)).astype(np.float32)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Each keyword (and two "unknown" words) a tone of its own pitch; 7 speakers split 4/1/2; noise."""
    root = tmp_path_factory.mktemp("tones")
    rng = np.random.default_rng(0)
    lists = {"validation": [], "test": []}
    for index, word in enumerate([*KEYWORDS, "bed", "cat"]):
        (root / word).mkdir()
        for split, speakers in SPEAKERS.items():
            for speaker in speakers:
                for n in range(3):
                    rel = f"{word}/{speaker}_nohash_{n}.wav"
                    write_wav(root / rel, _tone(250 * 1.25 ** index, rng))
                    if split in lists:
                        lists[split].append(rel)
    (root / "validation_list.txt").write_text("\n".join(lists["validation"]) + "\n")
    (root / "testing_list.txt").write_text("\n".join(lists["test"]) + "\n")
    (root / "_background_noise_").mkdir()
    write_wav(root / "_background_noise_" / "white.wav", np.clip(0.3 * rng.standard_normal(48000), -1, 1))
    return root


@pytest.fixture(scope="module")
def run(tree, tmp_path_factory):
    """A DS-CNN-S trained 8 epochs on the tones."""
    folder = tmp_path_factory.mktemp("run")
    state = train(tree, folder, epochs=8, **FAST)
    return folder, state


def test_training_writes_checkpoints_and_a_log_and_learns(run):
    folder, state = run
    log = json.loads((folder / "train.json").read_text())
    assert log == json.loads(json.dumps(state))
    assert [row["epoch"] for row in log["history"]] == list(range(1, 9))
    best = max(log["history"], key=lambda row: row["val_accuracy"])
    assert log["best"]["val_accuracy"] == best["val_accuracy"]
    assert [row["lr"] for row in log["history"]] == [3e-3] * 3 + [1e-3] * 3 + [3e-4] * 2  # epoch·3 // 8
    for name in ("best.safetensors", "last.safetensors", "optimizer.pt"):
        assert (folder / name).is_file()
    model = load_checkpoint(folder / "best.safetensors")
    assert sum(p.numel() for p in model.parameters()) == 23_180  # DS-CNN-S
    assert log["test_accuracy"] > 0.6  # chance is 1/12
    assert log["config"]["time_shift_ms"] == 100.0  # MLPerf Tiny's augmentation by default


def test_an_interrupted_run_resumes_to_the_same_weights(tree, tmp_path, monkeypatch):
    """Also with the voice augmentations: train.json records them and the resumed run keeps them."""
    voices = {"frequency_scale": (0.9, 1.3), "random_eq": 0.5, "formant_warp": 0.3}
    straight = tmp_path / "straight"
    train(tree, straight, epochs=3, **FAST, **voices)
    real_epoch, calls = train_module.train_epoch, []

    def interrupt_third_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_epoch", interrupt_third_epoch)
    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train(tree, resumed, epochs=3, **FAST, **voices)
    saved = json.loads((resumed / "train.json").read_text())
    assert saved["epochs_done"] == 2
    assert saved["config"]["frequency_scale"] == [0.9, 1.3] and saved["config"]["random_eq"] == 0.5
    assert saved["config"]["formant_warp"] == 0.3
    monkeypatch.setattr(train_module, "train_epoch", real_epoch)
    state = train(tree, resumed, **FAST)  # the command again (augmentations as saved): epoch 3 only
    assert [row["epoch"] for row in state["history"]] == [1, 2, 3]
    a = load_checkpoint(straight / "last.safetensors").state_dict()
    b = load_checkpoint(resumed / "last.safetensors").state_dict()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6)


def test_eval_matches_a_hand_count(run, tree, tmp_path):
    folder, _ = run
    result = evaluate(folder, tree, "test", output=tmp_path)
    model = load_checkpoint(folder / "best.safetensors")
    test = load_data(tree, ("test",))["test"]
    with torch.no_grad():
        predicted = model(features(test.audio)).argmax(1).tolist()
    truth = test.labels.tolist()
    matrix = [[sum(1 for t, p in zip(truth, predicted) if (t, p) == (i, j)) for j in range(12)] for i in range(12)]
    assert result["confusion"] == matrix
    assert result["accuracy"] == pytest.approx(sum(t == p for t, p in zip(truth, predicted)) / len(truth))
    for i, name in enumerate(CLASSES):
        count = truth.count(i)
        assert result["per_class"][name] == (pytest.approx(matrix[i][i] / count) if count else None)
    plot = tmp_path / f"eval-{folder.name}-safetensors-test.png"
    assert result["plot"] == str(plot) and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(plot.with_suffix(".json").read_text())["confusion"] == matrix


def test_compressed_export_matches_torch_in_ort_and_litert(run, tree, tmp_path):
    folder, _ = run
    recipe = tmp_path / "mixed.yaml"  # hashed conv and depthwise, Functional Hashing pointwise, circulant FC
    recipe.write_text("conv: {method: hashed, ratio: 0.25}\ndw*: {method: hashed, ratio: 0.25}\n"
                      "pw*: {method: hashed, ratio: 0.125, num_hashes: 2}\nfc: {method: circulant, block_size: 4}\n")
    [row] = compress_run(folder, [str(recipe)], tmp_path / "out", finetune_epochs=1, **FAST)
    out = tmp_path / "out"
    model = load_checkpoint(out / "model.safetensors")
    assert row["bytes"] == compressed_size_bytes(model) and row["ratio"] > 4  # >= 4x fewer weight bytes
    x, expected = _onnx_equals_torch(model, out / "model.onnx", tree)
    interpreter = tflite_interpreter(out / "model.tflite")
    inp, outp = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    for i in range(len(x)):
        interpreter.set_tensor(inp["index"], x[i:i + 1].numpy())
        interpreter.invoke()
        np.testing.assert_allclose(interpreter.get_tensor(outp["index"])[0], expected[i], rtol=0, atol=1e-4)
    assert row["onnx"]["max_abs_diff_vs_torch"] < 1e-4 and row["tflite"]["max_abs_diff_vs_torch"] < 1e-4
    assert row["onnx"]["accuracy"] == row["tflite"]["accuracy"] == row["accuracy"]  # measured on what ships
    assert json.loads((out / "compress.json").read_text())["recipe"] == "mixed"


def test_ds_cnn_l_round_trips_through_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = ds_cnn_l().eval()
    assert sum(p.numel() for p in model.parameters()) == 413_736  # conv 276x10x4, 5 blocks of 276, FC
    path = save_checkpoint(model, tmp_path / "l.safetensors", "edgepack.kws.models:ds_cnn_l", {"classes": 12})
    x = torch.randn(3, 1, 49, 10)
    with torch.no_grad():
        torch.testing.assert_close(load_checkpoint(path)(x), model(x), rtol=0, atol=0)
        assert model.conv(x).shape[2:] == (25, 9) and model[:7](x).shape[2:] == (13, 5)  # strides (2,1), then 2


def test_cli_trains_and_evaluates(tree, tmp_path, capsys):
    assert main(["kws", "train", "--data", str(tree), "-o", str(tmp_path / "r"), "--quick", "--epochs", "2"]) == 0
    log = json.loads((tmp_path / "r" / "train.json").read_text())
    assert [row["lr"] for row in log["history"]] == [3e-3, 1e-3]  # --quick's rates
    assert (tmp_path / "r" / "best.safetensors").is_file()
    assert main(["kws", "eval", str(tmp_path / "r"), "--data", str(tree), "--split", "validation"]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_bad_inputs_give_clear_errors(run, tree, tmp_path, capsys):
    folder, _ = run
    with pytest.raises(EdgepackError, match="no-such-data.*not a folder"):
        train(tmp_path / "no-such-data", tmp_path / "r")
    with pytest.raises(EdgepackError, match=r"--time-shift-ms must be in \[0, 500\], got 900"):
        train(tree, tmp_path / "r", time_shift_ms=900)
    with pytest.raises(EdgepackError, match="holds a run with model='ds-cnn-s', not 'ds-cnn-l'"):
        train(tree, folder, model="ds-cnn-l")
    digits = save_checkpoint(digits_mlp(), tmp_path / "digits.safetensors", digits_mlp)
    with pytest.raises(EdgepackError, match="digits.safetensors: not a keyword-spotting model"):
        evaluate(digits, tree)
    with pytest.raises(EdgepackError, match="unknown recipe 'nope'; valid: dense, hashed-pw"):
        compress_run(folder, ["nope"], tmp_path / "c")
    with pytest.raises(EdgepackError, match="without best.safetensors"):
        evaluate(tmp_path, tree)
    assert main(["kws", "compress", str(folder), "--recipe", "nope", "-o", str(tmp_path / "c")]) == 2
    assert "edgepack kws: error: unknown recipe 'nope'" in capsys.readouterr().err


def test_resume_without_the_optimizer_state_says_how_to_start_over(run, tree, tmp_path):
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(run[0], folder)
    (folder / "optimizer.pt").unlink()
    with pytest.raises(train_module.KwsTrainError, match=r"run: cannot resume: last.safetensors is there but "
                                                         r"optimizer.pt .* is missing; remove the run folder"):
        train(tree, folder, **FAST)


def test_fine_tuning_shifts_like_the_dense_run(run, tree, tmp_path, monkeypatch):
    """compress fine-tunes with the time shift recorded in the run's train.json (default 100 ms when absent);
    a corrupt train.json is a KwsTrainError."""
    import shutil

    from edgepack.kws import augment

    shifts = []

    class Recording(augment.Augmenter):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            shifts.append(self.shift)
    monkeypatch.setattr(augment, "Augmenter", Recording)
    folder = tmp_path / "run"
    shutil.copytree(run[0], folder)
    state = json.loads((folder / "train.json").read_text())
    for shift_ms, want in ((35.0, 560), (None, 1600)):
        if shift_ms is None:
            del state["config"]["time_shift_ms"]
        else:
            state["config"]["time_shift_ms"] = shift_ms
        (folder / "train.json").write_text(json.dumps(state))
        compress_run(folder, ["hashed-pw"], tmp_path / "out", finetune_epochs=1, export=False, **FAST)
        assert shifts[-1] == want  # samples at 16 kHz
    (folder / "train.json").write_text("{not json")
    with pytest.raises(train_module.KwsTrainError, match="train.json: not valid JSON"):
        compress_run(folder, ["hashed-pw"], tmp_path / "out", finetune_epochs=1, export=False, **FAST)


def test_each_recipe_retrains_its_own_epochs_unless_told(run, tmp_path, monkeypatch):
    """Without --finetune-epochs a recipe in FINETUNE retrains its own epochs at its own rates, the others
    the defaults; an explicit count applies to every recipe (counted as passes of the training loop)."""
    from edgepack.kws import compress_kws

    passes = []
    real_epoch = compress_kws.train_epoch

    def counting(model, *args, **kwargs):
        passes.append(args[8].split(":")[0])  # the progress description names the recipe
        return real_epoch(model, *args, **kwargs)
    monkeypatch.setattr(compress_kws, "train_epoch", counting)
    monkeypatch.setattr(compress_kws, "FINETUNE_EPOCHS", 1)
    monkeypatch.setattr(compress_kws, "FINETUNE", {"hashed-pw": {"epochs": 3, "learning_rates": (2e-3, 1e-3)}})
    rows = compress_run(run[0], ["hashed-pw", "ldr-fc"], tmp_path / "out", export=False, batch_size=24)
    assert passes == ["hashed-pw"] * 3 + ["ldr-fc"] and [r["finetune_epochs"] for r in rows] == [3, 1]
    assert [r["learning_rates"] for r in rows] == [[2e-3, 1e-3], list(compress_kws.FINETUNE_RATES)]
    assert [r["averaged_epochs"] for r in rows] == [0, 0]
    passes.clear()
    rows = compress_run(run[0], ["hashed-pw", "ldr-fc"], tmp_path / "out", finetune_epochs=2, export=False, **FAST)
    assert passes == ["hashed-pw"] * 2 + ["ldr-fc"] * 2 and [r["finetune_epochs"] for r in rows] == [2, 2]


def test_averaging_keeps_the_mean_of_the_last_epochs(run, tmp_path, monkeypatch):
    """A recipe with "average_last": 2 saves the mean of the weights and BatchNorm statistics after each of its
    last 2 epochs (checked against numpy's mean of the states the training loop left)."""
    from edgepack.kws import compress_kws

    states = []
    real_epoch = compress_kws.train_epoch

    def recording(model, *args, **kwargs):
        result = real_epoch(model, *args, **kwargs)
        states.append({k: t.double().numpy().copy() for k, t in model.state_dict().items()})
        return result
    monkeypatch.setattr(compress_kws, "train_epoch", recording)
    monkeypatch.setattr(compress_kws, "FINETUNE", {"hashed-pw": {"epochs": 3, "average_last": 2}})
    [row] = compress_run(run[0], ["hashed-pw"], tmp_path / "out", export=False, **FAST)
    assert row["averaged_epochs"] == 2 and len(states) == 3
    saved = load_checkpoint(tmp_path / "out" / "model.safetensors").state_dict()
    for key in ("pw0.buckets", "pw0_bn.running_mean", "fc.weight", "conv.weight"):
        expected = np.mean([states[1][key], states[2][key]], axis=0)
        np.testing.assert_allclose(saved[key].numpy(), expected, rtol=1e-6, atol=1e-7)
    assert not np.allclose(states[1]["pw0.buckets"], states[2]["pw0.buckets"])  # the epochs did differ


def test_sws_recipe_makes_codebook_layers_that_export_exactly(run, tree, tmp_path, monkeypatch):
    """``--recipe sws`` retrains with the mixture prior and saves codebook layers for conv, depthwise, pointwise
    and FC (BatchNorm dense): each decodes to few shared values including 0, the ONNX file holds CodebookWeight
    nodes and equals torch in ONNX Runtime, and the weight bytes are below the dense model's."""
    import onnx

    from edgepack.compression import decode_codebook
    from edgepack.compression.codebook import CodebookConv2d, CodebookLinear
    from edgepack.kws import compress_kws

    folder, _ = run
    monkeypatch.setitem(compress_kws.FINETUNE, "sws", {**compress_kws.FINETUNE["sws"], "bn_epochs": 1})
    [row] = compress_run(folder, ["sws"], tmp_path / "out", finetune_epochs=1, tau=5e-3, batch_size=24,
                         learning_rates=(1e-3,))
    assert row["bn_epochs"] == 1 and len(row["sws_history"]) == 1
    out = tmp_path / "out"
    model = load_checkpoint(out / "model.safetensors")
    dense = load_checkpoint(folder / "best.safetensors")
    modules = dict(model.named_modules())
    layers = {n: modules[n] for n, m in dense.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    assert len(layers) == 10 and all(isinstance(m, (CodebookConv2d, CodebookLinear)) for m in layers.values())
    assert all(isinstance(modules[n], torch.nn.BatchNorm2d) for n, m in dense.named_modules()
               if isinstance(m, torch.nn.BatchNorm2d))
    for name, layer in layers.items():
        buffers = {k: (None if v is None else v.numpy()) for k, v in layer.named_buffers()}
        weight = decode_codebook(buffers["codebook"], buffers["indices"], layer.weight_shape, int(layer.bits),
                                 buffers.get("row_ptr"), buffers.get("col_gaps"))
        np.testing.assert_array_equal(weight, layer.dense_weight().numpy())
        assert set(np.unique(weight)) <= set(np.float32(row["codebook"])) and 0.0 in row["codebook"], name
    assert row["bytes"] == compressed_size_bytes(model) < compressed_size_bytes(dense) == row["dense_bytes"]
    assert 0 < row["nonzero_percent"] < 100 and row["deep_compression"]["rate"] > 1
    graph = onnx.load(out / "model.onnx").graph
    assert sum(n.op_type == "CodebookWeight" and n.domain == "ai.edgepack" for n in graph.node) == len(layers)
    _onnx_equals_torch(model, out / "model.onnx", tree)
    assert row["onnx"]["accuracy"] == row["tflite"]["accuracy"] == row["accuracy"]


def test_hyper_recipe_encodes_without_retraining_and_exports_exactly(run, tree, tmp_path):
    """``--recipe hyper`` folds BatchNorm into the convs, swaps conv, depthwise, pointwise and FC for
    Hyper-Compression layers calibrated on training clips, retrains nothing, saves the chosen (side, points, rings)
    per layer (and fold_bn=True for the builder), lists them in compress.json, and the ONNX file (HyperWeight
    nodes, no BatchNormalization) equals torch in ONNX Runtime at ≥ 3× fewer weight bytes."""
    import onnx

    from edgepack.compression.hyper import HyperConv2d, HyperLinear

    folder, _ = run
    [row] = compress_run(folder, ["hyper"], tmp_path / "out", finetune_epochs=3, **FAST)
    out = tmp_path / "out"
    model = load_checkpoint(out / "model.safetensors")
    hyper = {n for n, m in model.named_modules() if isinstance(m, (HyperConv2d, HyperLinear))}
    assert len(hyper) == 10 and row["bytes"] == compressed_size_bytes(model) and row["ratio"] >= 3
    assert row["finetune_epochs"] == row["bn_epochs"] == 0 and row["accuracy"] == row["accuracy_compressed"]
    assert row["calibration_clips"] == len(load_data(tree, ("train",))["train"].labels) and row["budget"] == 0.05
    table = json.loads((out / "compress.json").read_text())["layers"]
    assert {r["name"] for r in table} == hyper and all(r["method"] == "hyper" for r in table)
    assert all(r["ratio"] > 1 and 0 < r["error"] <= 0.05 and r["measured"] == "output" for r in table)
    graph = onnx.load(out / "model.onnx").graph
    assert sum(n.op_type == "HyperWeight" and n.domain == "ai.edgepack" for n in graph.node) == len(hyper)
    assert row["fold_bn"] and not any(n.op_type == "BatchNormalization" for n in graph.node)
    assert row["bytes"] == sum(r["stored_bytes"] for r in table)  # no float32 BatchNorm left beside the layers
    assert read_checkpoint_fields(out / "model.safetensors")[1]["fold_bn"] is True
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    _onnx_equals_torch(model, out / "model.onnx", tree)
    assert row["onnx"]["accuracy"] == row["tflite"]["accuracy"] == row["accuracy"]
    [tuned] = compress_run(folder, ["hyper-bn"], tmp_path / "bn", export=False, **FAST)  # then BatchNorm tuned
    assert tuned["budget"] == 0.1 and tuned["bn_epochs"] == tuned["finetune_epochs"] == 3 and not tuned["fold_bn"]
    assert all(0 < r["error"] <= 0.1 for r in tuned["layers"]) and tuned["bytes"] < tuned["dense_bytes"]
    dense, bn = load_checkpoint(folder / "best.safetensors"), load_checkpoint(tmp_path / "bn" / "model.safetensors")
    assert not torch.equal(dense.state_dict()["bn.weight"], bn.state_dict()["bn.weight"])
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps({"conv": {"method": "hyper"}, "fc": {"method": "hashed", "ratio": 0.25}}))
    with pytest.raises(EdgepackError, match="mixes \"hyper\" with other methods"):
        compress_run(folder, [str(mixed)], tmp_path / "mixed", export=False)


def test_folding_batchnorm_keeps_the_dense_outputs(run, tree):
    """fold_batchnorms leaves the trained DS-CNN's outputs unchanged (eval statistics), leaves the original alone,
    loads into ds_cnn(fold_bn=True) (how a checkpoint rebuilds it), and refuses by name a BatchNorm it cannot fold."""
    folder, _ = run
    dense = load_checkpoint(folder / "best.safetensors")
    folded = fold_batchnorms(dense)
    x = features(load_data(tree, ("test",))["test"].audio)[:20]
    with torch.no_grad():
        np.testing.assert_allclose(folded(x).numpy(), dense(x).numpy(), rtol=0, atol=1e-5)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert isinstance(dense.bn, torch.nn.BatchNorm2d) and dense.conv.bias is None
    ds_cnn(fold_bn=True).load_state_dict(folded.state_dict())
    after_relu = torch.nn.Sequential(dense.conv, dense.relu, dense.bn)
    with pytest.raises(EdgepackError, match="cannot fold '2' \\(BatchNorm2d\\) into '1' \\(ReLU\\)"):
        fold_batchnorms(after_relu)


def _onnx_equals_torch(model, onnx_path, tree):
    """The exported file in ONNX Runtime gives the torch model's outputs on 20 test clips (both returned)."""
    x = features(load_data(tree, ("test",))["test"].audio)[:20]
    with torch.no_grad():
        expected = model(x).numpy()
    session = onnx_session(onnx_path)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    return x, expected
