"""``edgepack export`` and ``edgepack inspect`` on checkpoints, and safe checkpoint loading."""

import numpy as np
import pytest
import torch

from edgepack import onnx_session
from edgepack.cli import main
from edgepack.compression import CheckpointError, compress, load_checkpoint, save_checkpoint
from edgepack.demo import digits_mlp

RECIPE = {"fc1": {"method": "hashed", "ratio": 1 / 8, "num_hashes": 2}, "fc2": {"method": "ldr", "rank": 2}}


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model, _ = compress(digits_mlp(hidden=32), RECIPE)
    return model.eval(), save_checkpoint(model, tmp_path / "m.safetensors", "edgepack.demo:digits_mlp",
                                         {"hidden": 32}, RECIPE)


def test_checkpoint_round_trip(checkpoint):
    model, path = checkpoint
    loaded = load_checkpoint(path)
    x = torch.randn(4, 64)
    torch.testing.assert_close(loaded(x), model(x))


def test_export_and_inspect_commands(checkpoint, tmp_path, capsys):
    model, path = checkpoint
    out = tmp_path / "m.onnx"
    assert main(["export", str(path), "--example-shape", "1,64", "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    session = onnx_session(out)
    y = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(y, model(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)
    assert main(["inspect", str(out)]) == 0
    report = capsys.readouterr().out
    assert "HashedMatMul fc1" in report and "LDRMatMul fc2" in report
    assert "num_hashes=2" in report and "ai.edgepack::LDRMatMul ×1" in report


def test_export_command_errors(checkpoint, tmp_path, capsys):
    _, path = checkpoint
    assert main(["export", str(tmp_path / "missing.pt"), "--example-shape", "1,64",
                 "-o", str(tmp_path / "m.onnx")]) == 2
    assert "edgepack export: error: checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", str(path), "--example-shape", "1,x", "-o", "m.onnx"])
    assert "expected positive integers" in capsys.readouterr().err
    assert main(["inspect", str(path)]) == 2
    assert "unsupported file type '.safetensors'; supported: .onnx, .tflite" in capsys.readouterr().err
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not onnx")
    assert main(["inspect", str(garbage)]) == 2
    assert "not a readable ONNX model" in capsys.readouterr().err
    garbage = garbage.with_suffix(".tflite")
    garbage.write_bytes(b"\x00not tflite")
    assert main(["inspect", str(garbage)]) == 2
    assert "not a TFLite flatbuffer" in capsys.readouterr().err


def test_export_with_the_wrong_example_width_is_refused(checkpoint, tmp_path, capsys):
    """It used to exit 0 and write a model whose graph cannot run."""
    _, path = checkpoint
    out = tmp_path / "m.onnx"
    assert main(["export", str(path), "--example-shape", "1,63", "-o", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("edgepack export: error: the model does not run on example input(s) "
                            "of shape [1, 63]")
    assert "takes in_features=64" in error and "Traceback" not in error
    assert not out.exists()


def test_export_trust_builder_flag(tmp_path, capsys):
    """A checkpoint whose builder is not registered loads only with --trust-builder for it."""
    torch.manual_seed(0)
    path = save_checkpoint(torch.nn.Linear(64, 10), tmp_path / "m.safetensors", "torch.nn:Linear",
                           {"in_features": 64, "out_features": 10})
    out = tmp_path / "m.onnx"
    args = ["export", str(path), "--example-shape", "1,64", "-o", str(out)]
    assert main(args) == 2
    assert "is not registered" in capsys.readouterr().err and not out.exists()
    assert main(args + ["--trust-builder", "torch.nn:Linear"]) == 0
    assert out.exists()


def test_checkpoint_builder_must_import(tmp_path):
    with pytest.raises(CheckpointError, match="package.module:function"):
        save_checkpoint(digits_mlp(), tmp_path / "m.pt", "digits_mlp")
    with pytest.raises(CheckpointError, match="cannot import model builder"):
        save_checkpoint(digits_mlp(), tmp_path / "m.pt", "edgepack.demo:nope")
