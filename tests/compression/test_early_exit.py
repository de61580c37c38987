"""The early_exit stage: threshold calibration against a brute-force search, the expected MACs against a
hand count, checkpoint reload, and the exported segments in ONNX Runtime and LiteRT against the torch model."""

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from edgepack.benchmarks.early_exit import bench_early_exit
from edgepack.compression import load_checkpoint, register_builder, save_checkpoint
from edgepack.compression.early_exit import EarlyExitNet, early_exit_stage, exit_logits
from edgepack.compression.stages import StageData, StageError, fine_tune
from edgepack.demo import load_digits_split
from edgepack.exporter.early_exit_export import EarlyExitError, EarlyExitRunner, export_early_exit

C = 8  # channels of the test CNN
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def digits_cnn(channels: int = C) -> nn.Sequential:
    """A small CNN for 8×8 digits: three 3×3 conv blocks, average pool, FC."""
    layers = []
    for i, inputs in enumerate((1, channels, channels), start=1):
        layers += [(f"conv{i}", nn.Conv2d(inputs, channels, 3, padding=1)), (f"bn{i}", nn.BatchNorm2d(channels)),
                   (f"relu{i}", nn.ReLU())]
    layers += [("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(channels, 10))]
    return nn.Sequential(OrderedDict(layers))


register_builder("tests.early_exit:digits_cnn", digits_cnn)


@pytest.fixture(scope="module")
def trained():
    """(data, trained backbone, early-exit net, report) on the scikit-learn digits as 1×8×8 images."""
    split = load_digits_split(0)
    x = split.x_train.reshape(-1, 1, 8, 8)
    data = StageData(train=(x[:1000], split.y_train[:1000]), val=(x[1000:], split.y_train[1000:]),
                     test=(split.x_test.reshape(-1, 1, 8, 8), split.y_test), batch_size=50)
    torch.manual_seed(0)
    backbone = fine_tune(digits_cnn(), data, epochs=6, lr=3e-3, progress=False)
    net, report = early_exit_stage(backbone, data, exits=["relu1", "relu2"], epochs=4, lr=3e-3, progress=False)
    return data, backbone, net, report


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """The net with a threshold that sends examples to every exit, saved as a checkpoint and exported to ONNX and
    TFLite by ``edgepack export --early-exit``; (net, manifest path)."""
    from edgepack.cli import main

    data, _, net, _ = trained
    net = EarlyExitNet(list(net.segments), list(net.heads), net.exits, threshold=0.0)
    confidence = torch.softmax(exit_logits(net, data.val[0])[0], 1).amax(1)
    net.threshold = float(confidence.quantile(0.7))
    folder = tmp_path_factory.mktemp("early_exit")
    checkpoint = save_checkpoint(net, folder / "ee.safetensors", "tests.early_exit:digits_cnn", {},
                                 transforms=[{"name": "early_exit", "params": net.spec()}])
    assert main(["export", str(checkpoint), "--example-shape", "2,1,8,8", "-o", str(folder / "out"), "--early-exit",
                 "--format", "onnx,tflite"]) == 0
    return net, folder / "out" / "manifest.json"


def _early_accuracy(confidences: np.ndarray, correct: np.ndarray, threshold: float) -> float:
    """Accuracy when each example stops at its first exit with confidence >= threshold (plain loops)."""
    hits = 0
    for n in range(correct.shape[1]):
        exit_index = next((i for i in range(len(confidences)) if confidences[i, n] >= threshold), len(confidences))
        hits += bool(correct[exit_index, n])
    return hits / correct.shape[1]


def test_threshold_is_the_lowest_within_the_drop(trained):
    data, _, net, report = trained
    logits = exit_logits(net, data.val[0])
    labels = data.val[1].numpy()
    confidences = np.stack([torch.softmax(out, 1).amax(1).numpy() for out in logits[:-1]]).astype(np.float64)
    correct = np.stack([out.argmax(1).numpy() == labels for out in logits])
    goal = correct[-1].mean() - 0.01
    threshold = report.extra["threshold"]
    assert _early_accuracy(confidences, correct, threshold) >= goal - 1e-12
    assert report.accuracy == pytest.approx(_early_accuracy(confidences, correct, threshold))
    # every lower threshold that changes which examples stop early misses the goal
    lower = [0.0] + sorted(set(confidences[confidences < threshold].tolist()))
    assert all(_early_accuracy(confidences, correct, t) < goal for t in lower)
    assert 0 < threshold < 1 and sum(row["fraction"] for row in report.extra["exits"]) == pytest.approx(1)


def test_forward_is_the_backbone_and_expected_macs_match_a_hand_count(trained):
    data, backbone, net, report = trained
    x = data.val[0][:16]
    with torch.no_grad():
        assert torch.allclose(net(x), net.forward_exits(x)[-1])
        assert net(x).shape == backbone(x).shape
    conv1, conv = 64 * C * 1 * 9, 64 * C * C * 9  # 8×8 outputs × channels × inputs × 3×3
    head = fc = C * 10
    costs = [conv1 + head, conv1 + head + conv + head, conv1 + head + 2 * conv + head + fc]
    assert [row["macs"] for row in report.extra["exits"]] == costs
    assert report.extra["backbone_macs"] == conv1 + 2 * conv + fc
    fractions = [row["fraction"] for row in report.extra["exits"]]
    assert report.macs == round(sum(f * c for f, c in zip(fractions, costs)))
    assert report.bitops == round(sum(f * c * 32 * 32 for f, c in zip(fractions, costs)))


def test_a_stage_after_early_exit_reports_the_expected_int8_cost(trained):
    """int8 after early exit: the report is the quantized net as deployed (stops early, 8 × 8 bits)."""
    from edgepack.compression import run_stage

    data, _, net, _ = trained
    quantized, report = run_stage("quantize", net, data, progress=False)
    predictions, chosen = quantized.predict(data.val[0])
    fractions = [float((chosen == i).float().mean()) for i in range(3)]
    conv1, conv = 64 * C * 1 * 9, 64 * C * C * 9
    costs = [conv1 + C * 10, conv1 + conv + 2 * C * 10, conv1 + 2 * conv + 3 * C * 10]
    assert report.macs == round(sum(f * c for f, c in zip(fractions, costs))) < costs[-1]
    assert report.bitops == round(sum(f * c * 8 * 8 for f, c in zip(fractions, costs)))
    assert report.accuracy == pytest.approx(float((predictions == data.val[1]).float().mean()))


def test_checkpoint_reloads_the_early_exit_net(trained, tmp_path):
    data, _, net, report = trained
    path = save_checkpoint(net, tmp_path / "ee.safetensors", "tests.early_exit:digits_cnn", {},
                           transforms=[report.transform])
    loaded = load_checkpoint(path)
    assert isinstance(loaded, EarlyExitNet) and loaded.threshold == net.threshold and loaded.exits == net.exits
    x = data.val[0][:32]
    for mine, theirs in zip(net.forward_exits(x), loaded.eval().forward_exits(x)):
        assert torch.equal(mine, theirs)


def test_exported_runner_matches_torch(exported, trained):
    data, _, _, _ = trained
    net, manifest = exported
    x = data.val[0]
    classes, chosen = net.predict(x)
    runner = EarlyExitRunner(manifest)
    ort_classes, ort_chosen = runner.predict(x.numpy())
    assert set(ort_chosen.tolist()) == {0, 1, 2}  # every exit is used
    np.testing.assert_array_equal(ort_chosen, chosen.numpy())
    np.testing.assert_array_equal(ort_classes, classes.numpy())
    for n in range(0, len(x), 37):
        assert runner.run_one(x[n:n + 1].numpy()) == (int(classes[n]), int(chosen[n]))
        assert runner.run_full(x[n:n + 1].numpy()) == int(net(x[n:n + 1]).argmax())


def test_tflite_runner_matches_onnx_runtime_and_torch(exported, trained, tmp_path):
    """LiteRT runs the verified batch-1 .tflite segments: the same classes and exits as ORT and torch."""
    import json

    data, _, _, _ = trained
    net, manifest = exported
    fields = json.loads(manifest.read_text())
    assert [entry["tflite"] for entry in fields["segments"]] == [f"segment{i}.tflite" for i in range(3)]
    assert fields["full"]["tflite"] == "full.tflite" and fields["tflite_custom_ops"] is False
    x = data.val[0][:300]
    classes, chosen = net.predict(x)
    runner = EarlyExitRunner(manifest, runtime="tflite")
    lite_classes, lite_chosen = runner.predict(x.numpy())
    assert set(lite_chosen.tolist()) == {0, 1, 2}
    np.testing.assert_array_equal(lite_chosen, chosen.numpy())
    np.testing.assert_array_equal(lite_classes, classes.numpy())
    ort_classes, ort_chosen = EarlyExitRunner(manifest).predict(x.numpy())
    np.testing.assert_array_equal(lite_chosen, ort_chosen)
    np.testing.assert_array_equal(lite_classes, ort_classes)
    for n in range(0, len(x), 50):
        assert runner.run_full(x[n:n + 1].numpy()) == int(net(x[n:n + 1]).argmax())
    del fields["full"]["tflite"]
    (tmp_path / "manifest.json").write_text(json.dumps(fields))
    for path in [*manifest.parent.glob("*.onnx"), *manifest.parent.glob("*.tflite")]:
        (tmp_path / path.name).write_bytes(path.read_bytes())
    with pytest.raises(EarlyExitError, match="full has no 'tflite' file"):
        EarlyExitRunner(tmp_path / "manifest.json", runtime="tflite")
    with pytest.raises(EarlyExitError, match="runtime 'litert' is not valid"):
        EarlyExitRunner(manifest, runtime="litert")


def test_export_command_refuses_what_is_not_early_exit(trained, tmp_path, capsys):
    from edgepack.cli import main

    data, backbone, _, _ = trained
    checkpoint = save_checkpoint(backbone, tmp_path / "plain.safetensors", "tests.early_exit:digits_cnn", {})
    command = ["export", str(checkpoint), "--example-shape", "1,1,8,8", "-o", str(tmp_path / "out")]
    assert main(command + ["--early-exit"]) == 2
    assert "needs a checkpoint of the early_exit stage" in capsys.readouterr().err
    assert main(command + ["--format", "onnx,tflite"]) == 2
    assert "--format goes with --early-exit" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_int8_segments_run_in_onnx_runtime(trained, tmp_path):
    """An int8 net's segments quantize their input (the previous segment's int8 activation) and output (activation,
    logits); the runner computes the confidence (manifest ``confidence: "logits"``). TFLite:
    tests/exporter/test_early_exit_int8_tflite.py."""
    import onnx

    from edgepack.compression import run_stage

    data, _, net, _ = trained
    quantized, _ = run_stage("quantize", net, data, calibration_batches=2, progress=False)
    quantized.threshold = float(torch.softmax(quantized.forward_exits(data.val[0])[0], 1).amax(1).quantile(0.7))
    manifest = export_early_exit(quantized, data.val[0][:2], tmp_path / "int8")
    assert '"confidence": "logits"' in manifest.read_text()
    assert onnx.load(str(tmp_path / "int8" / "segment1.onnx")).graph.node[0].op_type == "QuantizeLinear"
    classes, chosen = quantized.predict(data.val[0])
    ort_classes, ort_chosen = EarlyExitRunner(manifest).predict(data.val[0].numpy())
    assert (ort_classes != classes.numpy()).mean() <= 0.01 and (ort_chosen != chosen.numpy()).mean() <= 0.01


def test_bench_reports_the_accuracy_the_runner_gets(exported, trained, tmp_path):
    data, _, _, _ = trained
    net, manifest = exported
    x, y = data.val[0][:60], data.val[1][:60]
    np.savez(tmp_path / "val.npz", x=x.numpy(), y=y.numpy())
    result = bench_early_exit(manifest, tmp_path / "val.npz", rounds=2, warmup=2, progress=False)
    classes, chosen = net.predict(x)
    assert result["early_exit_accuracy"] == pytest.approx(float((classes == y).float().mean()))
    assert result["full_accuracy"] == pytest.approx(float((net(x).argmax(1) == y).float().mean()))
    assert result["exit_fractions"] == pytest.approx([float((chosen == i).float().mean()) for i in range(3)])
    assert result["early_exit_ms"] > 0 and result["full_ms"] > 0
    np.savez(tmp_path / "bad.npz", x=np.zeros((3, 1, 8, 9), np.float32), y=np.zeros(3, np.int64))
    with pytest.raises(EarlyExitError, match=r"must be \[N, 1, 8, 8\]"):
        bench_early_exit(manifest, tmp_path / "bad.npz", progress=False)


def test_fraction_exits_resolve_past_batchnorm_and_relu(trained):
    data, backbone, _, _ = trained
    net, report = early_exit_stage(backbone, data, exits=[0.5], epochs=0, progress=False)
    # conv1 + conv2 hold 41,472 of the 78,416 MACs, the first to reach half: the exit follows conv2's BN and ReLU
    assert net.exits == ["relu2"] and report.params["exits"] == ["relu2"]


@pytest.mark.parametrize("params, message", [
    ({"exits": ["nope"]}, "exit 'nope' is not a child"),
    ({"exits": ["fc"]}, "exit 'fc' is not a child"),
    ({"exits": []}, "exits is empty"),
    ({"exits": ["relu2", "relu1"]}, "distinct and in the model's order"),
    ({"exits": [1.5]}, "fraction of the MACs"),
    ({"exits": ["relu1"], "weights": [1.0]}, "one loss weight per exit"),
    ({"exits": ["relu1"], "weights": [-1, 1]}, "finite numbers >= 0"),
    ({"exits": ["relu1"], "target_accuracy_drop": 2}, "target_accuracy_drop must be in"),
])
def test_bad_parameters_are_refused(trained, params, message):
    data, backbone, _, _ = trained
    with pytest.raises(StageError, match=message):
        early_exit_stage(backbone, data, epochs=0, progress=False, **params)


def test_a_model_that_is_not_sequential_is_refused(trained):
    data, backbone, _, _ = trained

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = backbone

        def forward(self, x):
            return self.inner(x)

    with pytest.raises(StageError, match="needs an nn.Sequential backbone.*got Wrapped"):
        early_exit_stage(Wrapped(), data, exits=["relu1"], epochs=0, progress=False)


def test_bench_command_line(exported, trained, tmp_path, capsys):
    from edgepack.cli import main

    data, _, _, _ = trained
    _, manifest = exported
    np.savez(tmp_path / "val.npz", x=data.val[0][:20].numpy(), y=data.val[1][:20].numpy())
    assert main(["bench", str(manifest), "--early-exit", "--dataset", str(tmp_path / "val.npz"), "--warmup", "1"]) == 0
    assert "ms/example" in capsys.readouterr().out
    assert main(["bench", str(manifest), "--early-exit"]) == 2
    assert "needs --dataset" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text('{"format": "edgepack.early_exit", "version": 1, "threshold": 0.5}')
    assert main(["bench", str(tmp_path / "bad.json"), "--early-exit", "--dataset", str(tmp_path / "val.npz")]) == 2
    assert "field 'segments' must be a non-empty list" in capsys.readouterr().err
    (tmp_path / "big.json").write_text(" " * (1 << 20) + "{}")
    assert main(["bench", str(tmp_path / "big.json"), "--early-exit", "--dataset", str(tmp_path / "val.npz")]) == 2
    assert "a manifest is at most 1,048,576" in capsys.readouterr().err


def test_bench_tflite_appends_a_results_record(exported, trained, tmp_path, capsys):
    from edgepack.benchmarks.results import read_results
    from edgepack.cli import main

    data, _, _, _ = trained
    net, manifest = exported
    x, y = data.val[0][:40], data.val[1][:40]
    np.savez(tmp_path / "val.npz", x=x.numpy(), y=y.numpy())
    results = tmp_path / "results.jsonl"
    command = ["bench", str(manifest), "--early-exit", "--dataset", str(tmp_path / "val.npz"), "--warmup", "1"]
    assert main(command + ["--runtime", "tflite", "-o", str(results)]) == 0
    assert "tflite" in capsys.readouterr().out
    [record] = read_results(results)
    classes, chosen = net.predict(x)
    assert record["runtime"] == "tflite" and record["threads"] == 1 and record["status"] == "ok"
    assert record["model_path"] == str(manifest.resolve()) and record["kind"] == "early_exit"
    metrics = record["metrics"]
    assert metrics["early_exit_accuracy"] == pytest.approx(float((classes == y).float().mean()))
    assert metrics["full_accuracy"] == pytest.approx(float((net(x).argmax(1) == y).float().mean()))
    assert metrics["speedup"] == pytest.approx(metrics["full_latency_ms"] / metrics["early_exit_latency_ms"])
    assert record["early_exit"]["exit_names"] == ["relu1", "relu2", "final"]
    assert record["early_exit"]["exit_fractions"] == pytest.approx([float((chosen == i).float().mean())
                                                                    for i in range(3)])
    assert main(command + ["--runtime", "tflite", "--threads", "2"]) == 2
    assert "runs LiteRT with 1 thread" in capsys.readouterr().err
    assert main(command + ["--runtime", "native"]) == 2
    assert "--runtime auto, ort or tflite" in capsys.readouterr().err
    assert len(read_results(results)) == 1
