"""An int8 early-exit net (``quantize`` after ``early_exit``) as fully int8 TFLite segments: exported by
``edgepack export CKPT --early-exit --format onnx,tflite``, run by ``EarlyExitRunner(runtime="tflite")`` and
``edgepack bench --early-exit --runtime tflite``, against ONNX Runtime and torch's int8 model.

The agreement rule: every exit's int8 logits, with the segments chained in the runtime (each segment reading
the runtime's own activation), are within STEPS = 2 output steps of torch's (the converter's tolerance against
ORT; measured here: at most 1 step, in LiteRT with XNNPACK and in ORT alike). So an example may get another
class or exit only where torch's decision is within that reach of flipping (``disagreements``): some early exit's
max softmax c with |ln c − ln threshold| ≤ 2·e, or some exit's top-two logit margin ≤ 2·e, with e = STEPS × that
exit's logit scale (logits each moving by at most e move ln c and a margin by at most 2·e). Every other example
must agree exactly, and borderline ones that disagree must be rare (≤ 2 %; measured: none of 797).
"""

import json
from collections import OrderedDict

import numpy as np
import pytest
import tflite
import torch
from torch import nn

from edgepack.compression import register_builder, run_stage, save_checkpoint
from edgepack.compression.early_exit import early_exit_stage
from edgepack.compression.stages import StageData, fine_tune
from edgepack.demo import load_digits_split
from edgepack.exporter.early_exit_export import EarlyExitError, EarlyExitRunner, max_softmax, output_qparams

pytest.importorskip("ai_edge_litert")
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

C = 16  # channels
STEPS = 2  # output steps a runtime's exit logit may be off torch's (test_exit_logits_within_two_steps)


def tiny_ds_cnn(channels: int = C) -> nn.Sequential:
    """A DS-CNN-like net for 8×8 digits: conv, two depthwise-separable blocks (BatchNorm + ReLU each), pool, FC."""
    layers = [("conv0", nn.Conv2d(1, channels, 3, padding=1)), ("conv0_bn", nn.BatchNorm2d(channels)),
              ("conv0_relu", nn.ReLU())]
    for i in (1, 2):
        layers += [(f"dw{i}", nn.Conv2d(channels, channels, 3, padding=1, groups=channels)),
                   (f"dw{i}_bn", nn.BatchNorm2d(channels)), (f"dw{i}_relu", nn.ReLU()),
                   (f"pw{i}", nn.Conv2d(channels, channels, 1)), (f"pw{i}_bn", nn.BatchNorm2d(channels)),
                   (f"pw{i}_relu", nn.ReLU())]
    layers += [("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(channels, 10))]
    return nn.Sequential(OrderedDict(layers))


register_builder("tests.early_exit_int8:tiny_ds_cnn", tiny_ds_cnn)


@pytest.fixture(scope="module")
def int8_net(tmp_path_factory):
    """(data, int8 early-exit net, manifest): trained, early exits after pw1_relu and dw2_relu, quantized by
    run_stage (PTQ), a threshold that sends examples to every exit, saved and exported by the CLI."""
    from edgepack.cli import main

    split = load_digits_split(0)
    x = split.x_train.reshape(-1, 1, 8, 8)
    data = StageData(train=(x[:1000], split.y_train[:1000]), val=(x[1000:], split.y_train[1000:]),
                     test=(split.x_test.reshape(-1, 1, 8, 8), split.y_test), batch_size=50)
    torch.manual_seed(0)
    backbone = fine_tune(tiny_ds_cnn(), data, epochs=10, lr=1e-2, progress=False)
    net, _ = early_exit_stage(backbone, data, exits=["pw1_relu", "dw2_relu"], epochs=5, lr=1e-2, progress=False)
    spec = net.spec()
    quantized, quantize_report = run_stage("quantize", net, data, calibration_batches=4, progress=False)
    confidence = torch.softmax(quantized.forward_exits(data.val[0])[0], 1).amax(1)
    quantized.threshold = spec["threshold"] = float(confidence.quantile(0.6))
    folder = tmp_path_factory.mktemp("early_exit_int8")
    checkpoint = save_checkpoint(quantized, folder / "int8.safetensors", "tests.early_exit_int8:tiny_ds_cnn", {},
                                 transforms=[{"name": "early_exit", "params": spec}, quantize_report.transform])
    assert main(["export", str(checkpoint), "--example-shape", "1,1,8,8", "-o", str(folder / "out"), "--early-exit",
                 "--format", "onnx,tflite"]) == 0
    return data, quantized.eval(), folder / "out" / "manifest.json"


def inputs_of(data: StageData) -> tuple[torch.Tensor, torch.Tensor]:
    """The validation and test inputs together (797) and their labels."""
    return torch.cat([data.val[0], data.test[0]]), torch.cat([data.val[1], data.test[1]])


def disagreements(manifest, torch_logits: list[np.ndarray], threshold: float, reference, other):
    """(borderline examples that disagree, other examples that disagree) between two (classes, exits) pairs, the
    first torch's: borderline = within STEPS logit steps of a threshold crossing or of a class swap (module doc)."""
    fields = json.loads(manifest.read_text())
    scales = [output_qparams(manifest.parent / entry["file"], entry["logits"])[0] for entry in fields["segments"]]
    near = np.zeros(len(torch_logits[0]), bool)
    for k, (logits, scale) in enumerate(zip(torch_logits, scales)):
        reach = 2 * STEPS * scale
        top = np.sort(logits, 1)
        near |= top[:, -1] - top[:, -2] <= reach
        if k < len(scales) - 1:
            near |= np.abs(np.log(max_softmax(logits)) - np.log(threshold)) <= reach
    differ = (reference[0] != other[0]) | (reference[1] != other[1])
    return int((differ & near).sum()), int((differ & ~near).sum())


def test_int8_segments_become_fully_int8_tflite(int8_net):
    """Each segment and full.tflite: int8 CONV / DEPTHWISE / FC / MEAN / RESHAPE, float only at the QUANTIZE of
    the input and the DEQUANTIZE of each output; no softmax (the runner computes the confidence from the logits)."""
    _, _, manifest = int8_net
    fields = json.loads(manifest.read_text())
    assert fields["confidence"] == "logits" and fields["tflite_custom_ops"] is False
    assert all("confidence" not in entry for entry in fields["segments"])
    names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    for i, entry in enumerate(fields["segments"] + [fields["full"]]):
        model = tflite.Model.GetRootAsModel((manifest.parent / entry["tflite"]).read_bytes(), 0)
        graph = model.Subgraphs(0)
        ops = []
        for n in range(graph.OperatorsLength()):
            op = graph.Operators(n)
            name = names[model.OperatorCodes(op.OpcodeIndex()).BuiltinCode()]
            ops.append(name)
            types = {graph.Tensors(t).Type() for t in [*op.InputsAsNumpy(), *op.OutputsAsNumpy()] if t >= 0}
            if name == "QUANTIZE":
                assert op.Inputs(0) in graph.InputsAsNumpy()
            elif name == "DEQUANTIZE":
                assert op.Outputs(0) in graph.OutputsAsNumpy()
            else:
                assert types <= {tflite.TensorType.INT8, tflite.TensorType.INT32}, (entry["tflite"], name)
        early = i < len(fields["segments"]) - 1
        assert ops.count("QUANTIZE") == 1 and ops.count("DEQUANTIZE") == (2 if early else 1)
        assert "SOFTMAX" not in ops and "REDUCE_MAX" not in ops
        assert ops.count("FULLY_CONNECTED") == 1
        assert ("DEPTHWISE_CONV_2D" in ops) == (i != 2) and ("CONV_2D" in ops) == (i != 1)  # 1: dw2 alone


def test_exit_logits_within_two_steps_of_torch(int8_net):
    """Segment by segment on the runtime's own activations (as the runner chains them), LiteRT's and ORT's exit
    logits are within STEPS output steps of torch's int8 model on all 797 inputs."""
    data, net, manifest = int8_net
    x, _ = inputs_of(data)
    with torch.no_grad():
        torch_logits = [logits.numpy() for logits in net.forward_exits(x)]
    fields = json.loads(manifest.read_text())
    scales = [output_qparams(manifest.parent / entry["file"], entry["logits"])[0] for entry in fields["segments"]]
    for runtime in ("tflite", "onnxruntime"):
        runner = EarlyExitRunner(manifest, runtime=runtime)
        worst = np.zeros(len(scales))
        for n in range(len(x)):
            activation = x[n:n + 1].numpy()
            for i, scale in enumerate(scales):
                activation, logits, _ = runner._run(i, activation)
                worst[i] = max(worst[i], np.abs(logits - torch_logits[i][n:n + 1]).max() / scale)
        assert (worst <= STEPS + 1e-3).all(), (runtime, worst)


def test_litert_classes_and_exits_match_ort_and_torch(int8_net):
    """On 797 inputs: LiteRT, ORT and torch's int8 EarlyExitNet.predict stop at the same exits with the same
    classes except rare borderline examples (module doc); every exit is used."""
    data, net, manifest = int8_net
    x, _ = inputs_of(data)
    with torch.no_grad():
        torch_logits = [logits.numpy() for logits in net.forward_exits(x)]
    classes, chosen = (t.numpy() for t in net.predict(x))
    assert set(chosen.tolist()) == {0, 1, 2}
    lite = EarlyExitRunner(manifest, runtime="tflite").predict(x.numpy())
    ort = EarlyExitRunner(manifest).predict(x.numpy())
    for other in (lite, ort):
        borderline, clear = disagreements(manifest, torch_logits, net.threshold, (classes, chosen), other)
        assert clear == 0 and borderline <= 0.02 * len(x)
    assert (lite[0] != ort[0]).mean() <= 0.02 and (lite[1] != ort[1]).mean() <= 0.02
    moved = (classes, np.where(chosen == 0, 1, 0))  # the rule is not vacuous: other exits everywhere fail it
    assert disagreements(manifest, torch_logits, net.threshold, (classes, chosen), moved)[1] >= len(x) // 2
    runner = EarlyExitRunner(manifest, runtime="tflite")
    full = net(x).argmax(1).numpy()
    picked = range(0, len(x), 20)
    for n in picked:  # run_one (as bench times it) is predict's per-example decision
        assert runner.run_one(x[n:n + 1].numpy()) == (int(lite[0][n]), int(lite[1][n]))
    assert sum(runner.run_full(x[n:n + 1].numpy()) != full[n] for n in picked) <= 1  # full.tflite: the final exit


def test_runner_confidence_is_max_softmax_of_the_logits(int8_net):
    """``confidence: "logits"``: the runner's confidence is torch's softmax(logits).amax of the same logits."""
    data, net, manifest = int8_net
    x = data.val[0][:64]
    with torch.no_grad():
        logits = net.forward_exits(x)[0]
    np.testing.assert_allclose(max_softmax(logits.numpy()), torch.softmax(logits, 1).amax(1).numpy(), rtol=1e-6)
    runner = EarlyExitRunner(manifest)
    _, ort_logits, confidence = runner._run(0, x.numpy())
    np.testing.assert_array_equal(confidence, max_softmax(ort_logits))


def test_bench_tflite_on_the_int8_net_writes_a_record(int8_net, tmp_path, capsys):
    from edgepack.benchmarks.results import read_results
    from edgepack.cli import main

    data, _, manifest = int8_net
    x, y = data.val[0][:80].numpy(), data.val[1][:80].numpy()
    np.savez(tmp_path / "val.npz", x=x, y=y)
    results = tmp_path / "results.jsonl"
    assert main(["bench", str(manifest), "--early-exit", "--dataset", str(tmp_path / "val.npz"), "--warmup", "1",
                 "--runtime", "tflite", "-o", str(results)]) == 0
    assert "tflite" in capsys.readouterr().out
    [record] = read_results(results)
    assert record["runtime"] == "tflite" and record["kind"] == "early_exit" and record["status"] == "ok"
    classes, chosen = EarlyExitRunner(manifest, runtime="tflite").predict(x)
    assert record["metrics"]["early_exit_accuracy"] == pytest.approx(float((classes == y).mean()))
    assert record["early_exit"]["exit_names"] == ["pw1_relu", "dw2_relu", "final"]
    assert record["early_exit"]["exit_fractions"] == pytest.approx([float((chosen == i).mean()) for i in range(3)])
    assert record["metrics"]["early_exit_latency_ms"] > 0 and record["metrics"]["full_latency_ms"] > 0


def test_manifest_confidence_field(int8_net, tmp_path):
    """A manifest without ``confidence`` is a float one (each early segment outputs it); other values are refused."""
    _, _, manifest = int8_net
    fields = json.loads(manifest.read_text())
    for path in manifest.parent.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    fields["confidence"] = "softmax"
    (tmp_path / "manifest.json").write_text(json.dumps(fields))
    with pytest.raises(EarlyExitError, match="field 'confidence' must be one of 'output', 'logits'"):
        EarlyExitRunner(tmp_path / "manifest.json")
    del fields["confidence"]
    (tmp_path / "manifest.json").write_text(json.dumps(fields))
    with pytest.raises(EarlyExitError, match=r"segments\[0\] needs the string fields .*confidence"):
        EarlyExitRunner(tmp_path / "manifest.json")



def test_float_heads_on_an_int8_backbone_are_refused_for_tflite(int8_net, tmp_path):
    """early_exit after quantize leaves float heads: refused for TFLite before anything is written."""
    from edgepack.exporter.early_exit_export import export_early_exit

    data, _, _ = int8_net
    backbone, _ = run_stage("quantize", tiny_ds_cnn(), data, calibration_batches=1, progress=False)
    net, _ = early_exit_stage(backbone, data, exits=["pw1_relu"], epochs=0, progress=False)
    with pytest.raises(EarlyExitError, match="int8 layers but float exit heads"):
        export_early_exit(net, data.val[0][:2], tmp_path / "out", tflite=True)
    assert not (tmp_path / "out").exists()


def test_an_activation_off_the_int8_grid_is_refused_for_tflite(int8_net, tmp_path, monkeypatch):
    """A segment whose activation output has no per-tensor int8 DequantizeLinear (its quantization cannot be read)
    gives a named error for TFLite; ONNX-only export still works."""
    from edgepack.exporter import early_exit_export

    data, net, _ = int8_net
    monkeypatch.setattr(early_exit_export, "output_qparams", lambda path, name: None)
    example = data.val[0][:1]
    with pytest.raises(early_exit_export.EarlyExitError, match="segment0.onnx: the activation output .* does not "
                                                               "come from a per-tensor int8 DequantizeLinear"):
        early_exit_export.export_early_exit(net, example, tmp_path / "tflite", tflite=True)
    assert early_exit_export.export_early_exit(net, example, tmp_path / "onnx").exists()
