"""torch == TFLite with the edgepack delegate, for every compressed layer and small mixed models,
in LiteRT (this venv) and in tflite-runtime 2.14 (its own venv, numpy < 2)."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from export_helpers import LAYERS, MixedNet, assert_close_relative, randomize_batchnorm
from test_tflite_export import ds_cnn
from torch import nn

from edgepack import tflite_interpreter
from edgepack.compression import compress
from edgepack.exporter import export
from edgepack.runtime_kernels import delegate_library_path

pytest.importorskip("ai_edge_litert")
ROOT = Path(__file__).resolve().parents[2]
TFLITE214_PYTHON = Path(os.environ.get("EDGEPACK_TFLITE214_PYTHON", ROOT / ".venv-tflite214" / "bin" / "python"))


def compressed_ds_cnn() -> nn.Module:
    torch.manual_seed(5)
    model, _ = compress(ds_cnn(), {"conv": {"method": "hashed", "ratio": 1 / 2},
                                   "pw*": {"method": "hashed", "ratio": 1 / 4, "num_hashes": 2},
                                   "fc": {"method": "circulant", "block_size": 4}})
    return model.eval()


def mixed_net() -> nn.Module:
    torch.manual_seed(6)
    return randomize_batchnorm(MixedNet())


CASES = {name: (make, lambda m: (2, m.in_features)) for name, make in LAYERS.items()}
CASES["mixed_cnn_mlp"] = (mixed_net, lambda m: (1, 1, 9, 9))
CASES["ds_cnn_compressed"] = (compressed_ds_cnn, lambda m: (1, 1, 49, 10))


def run_litert(path, x: np.ndarray) -> np.ndarray:
    interpreter = tflite_interpreter(path, decode_at_load=False)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def export_case(name: str, folder: Path, mode: str = "kernels") -> tuple[Path, np.ndarray, np.ndarray]:
    make, shape = CASES[name]
    torch.manual_seed(7)
    model = make().eval()
    x = torch.randn(*shape(model))
    path = export(model, x, folder / f"{name}_{mode}.tflite", mode=mode)
    return path, x.numpy(), model(x).detach().numpy()


@pytest.mark.parametrize("mode", ["kernels", "portable"])
@pytest.mark.parametrize("name", list(CASES))
def test_torch_equals_tflite_with_delegate(name, mode, tmp_path):
    path, x, expected = export_case(name, tmp_path, mode)
    assert_close_relative(run_litert(path, x), expected)


def test_same_files_in_tflite_runtime_214(tmp_path):
    if not TFLITE214_PYTHON.exists():
        pytest.fail(f"{TFLITE214_PYTHON} is missing: `make test` creates it (make .venv-tflite214)")
    for name in CASES:
        path, x, expected = export_case(name, tmp_path)
        np.savez(path.with_suffix(".npz"), x=x, y=expected)
    env = {**os.environ, "EDGEPACK_LIB_DIR": str(delegate_library_path().parent)}
    result = subprocess.run([str(TFLITE214_PYTHON), str(Path(__file__).with_name("tflite214_check.py")),
                             str(tmp_path)], capture_output=True, text=True, env=env)
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(rows) == 2 * len(CASES) and all(row["ok"] for row in rows)
    assert rows[0]["tflite_runtime"] == "2.14.0"


def test_hashed_pointwise_convolutions_become_hashed_matmuls(tmp_path):
    """1×1 convolutions of hashed weights run as HashedMatMul over NHWC channels (no decoded filter);
    the 10×4 convolution keeps HashedWeight + CONV_2D."""
    from edgepack.exporter import inspect_tflite

    path, _, _ = export_case("ds_cnn_compressed", tmp_path)
    ops = inspect_tflite(path).op_counts
    assert ops["CUSTOM ai.edgepack.HashedMatMul"] == 2 and ops["CUSTOM ai.edgepack.HashedWeight"] == 1
    assert ops["CONV_2D"] == 1 and "TRANSPOSE" in ops
