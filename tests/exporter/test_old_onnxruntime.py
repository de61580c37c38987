"""The exported files and libedgepack_ort also work in an older ONNX Runtime (1.20, own venv)."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from export_helpers import LAYERS

from edgepack.exporter import export
from edgepack.runtime_kernels import ort_library_path

ROOT = Path(__file__).resolve().parents[2]
OLD_ORT_PYTHON = Path(os.environ.get("EDGEPACK_OLD_ORT_PYTHON", ROOT / ".venv-ort-old" / "bin" / "python"))


def test_files_run_in_old_onnxruntime(mixed_net, tmp_path):
    if not OLD_ORT_PYTHON.exists():
        pytest.fail(f"{OLD_ORT_PYTHON} is missing: `make test` creates it (make .venv-ort-old)")
    cases = {name: make().eval() for name, make in LAYERS.items()}
    for name, model in cases.items():
        for mode in ("kernels", "portable"):
            x = torch.randn(3, model.in_features)
            export(model, x[:1], tmp_path / f"{name}_{mode}.onnx", mode=mode)
            np.savez(tmp_path / f"{name}_{mode}.npz", x=x.numpy(), y=model(x).detach().numpy())
    x = torch.randn(2, 1, 9, 9)
    export(mixed_net, x, tmp_path / "mixed.onnx")
    np.savez(tmp_path / "mixed.npz", x=x.numpy(), y=mixed_net(x).detach().numpy())
    result = subprocess.run([str(OLD_ORT_PYTHON), str(Path(__file__).with_name("old_ort_check.py")),
                             ort_library_path(), str(tmp_path)], capture_output=True, text=True)
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(rows) == 2 * (2 * len(cases) + 1) and all(row["ok"] for row in rows)
    assert rows[0]["ort"].startswith("1.20.")
