"""``edgepack demo --quick``: the keyword-spotting pipeline runs end to end from the command line."""

import json
from pathlib import Path

import onnx
import pytest
from browser_helpers import find_chromium, rendered_images

from edgepack.cli import main
from edgepack.kws.demo import RECIPES


def test_quick_demo_runs_every_step(tmp_path, capsys):
    work = tmp_path / "demo"
    assert main(["demo", "--quick", "--work", str(work)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((work / "summary.json").read_text())
    assert [r["recipe"] for r in summary["rows"]] == list(RECIPES)
    for row in summary["rows"]:
        assert row["recipe"] in printed
        assert 0.0 <= row["accuracy_onnx"] <= 1.0 and row["ort_latency_s"] > 0 and row["litert_ratio"] > 0
        model = onnx.load(row["onnx"])  # what ships: with ai.edgepack ops for the compressed ones
        uses_edgepack = any(node.domain == "ai.edgepack" for node in model.graph.node)
        assert uses_edgepack == (row["recipe"] != "dense"), row["recipe"]
        assert Path(row["tflite"]).stat().st_size == row["tflite_file_bytes"]
    dense = summary["rows"][0]
    assert all(r["weight_bytes"] < dense["weight_bytes"] / 2 for r in summary["rows"][2:])
    stream = summary["stream"]["dense"]
    truth = json.loads((work / "stream" / "dense" / "truth.json").read_text())
    assert stream["keywords"] == len(truth["keywords"]) > 0
    assert summary["aarch64"]["ok"], summary["aarch64"]["summary"]  # the same detections under qemu
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("chromium is not installed (scripts/setup-system.sh installs it)")
    images = rendered_images(chromium, Path(summary["report"]))
    assert images[0] == images[1] >= 4, images


def test_demo_refuses_a_file_as_work_folder(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["demo", "--quick", "--work", str(target)]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
