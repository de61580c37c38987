"""Peer suite: the ONNX backend tests shipped in the ``onnx`` wheel, converted to TFLite.

Walks the model suites under ``onnx/backend/test/data`` (pytorch-converted, pytorch-operator,
simple) and the node tests (``onnx.backend.test.case.node``: the wheel ships their generators,
not ``data/node``). Every case whose ops are all in the writer's supported list is converted and
run in LiteRT; it must match the expected outputs, or be refused with a ConversionError for one
of the documented limits below. Never a crash or a wrong answer.
"""

import re
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgepack.exporter.tflite_export import HANDLERS, ConversionError, convert_onnx_to_tflite

interpreter = pytest.importorskip("ai_edge_litert.interpreter")
DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
SUITES = ("pytorch-converted", "pytorch-operator", "simple")
# The documented limits of the TFLite writer (README, "Exporting to TFLite").
DOCUMENTED_LIMITS = re.compile("|".join([
    r"only float32, int32 and int64 inputs are supported",  # bool / float16 / float64 / int8 ... model inputs
    r"computes in float32 and takes \S+ tensors only as",  # integers read by a float op, or as a shape
    r"has an empty axis",  # zero-size tensors
    r"only 1-D and 2-D inputs are supported",  # 3-D convolution and pooling
    r"must be a constant",  # computed weights, scales, bounds, shapes, axes
    r"is a constant; TFLite needs a computed output",  # e.g. Dropout's all-true mask
    r"MaxPool's Indices output is not supported",
    r"Pad mode 'edge' is not supported",
    r"Cast to \S+ is not supported",  # types TFLite cannot hold
    r"Conv.*auto_pad is not supported",
]))
# Passed cases at the last count (61, 23, 1, 217; 302 overall) minus a small margin.
FLOORS = {"pytorch-converted": 59, "pytorch-operator": 21, "simple": 1, "node": 211, "overall": 293}


def supported(model: onnx.ModelProto) -> bool:
    return all(n.domain in ("", "ai.onnx") and n.op_type in HANDLERS for n in model.graph.node)


def load_tensors(folder: Path, prefix: str) -> list[np.ndarray]:
    return [numpy_helper.to_array(onnx.load_tensor(str(f))) for f in sorted(folder.glob(f"{prefix}_*.pb"))]


def file_cases(suite: str):
    """(name, model path, [(inputs, outputs)]) for each eligible case of a data/<suite> folder."""
    for case in sorted((DATA / suite).iterdir()):
        if supported(onnx.load(case / "model.onnx", load_external_data=False)):
            data_sets = [(load_tensors(d, "input"), load_tensors(d, "output"))
                         for d in sorted(case.glob("test_data_set_*"))]
            yield case.name, str(case / "model.onnx"), data_sets


def node_cases():
    """(name, model, [(inputs, outputs)]) for each eligible ONNX backend node test."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        cases = collect_testcases(None)
    for case in cases:
        if supported(case.model):
            yield case.name, case.model, case.data_sets


def run_case(name: str, model, data_sets, tmp_path: Path) -> None:
    """Convert (the expected outputs are the reference, so no second check against ORT) and
    compare LiteRT's outputs with the expected ones."""
    path = convert_onnx_to_tflite(model, tmp_path / f"{name}.tflite", verify=False)
    runner = interpreter.Interpreter(model_path=str(path))
    runner.allocate_tensors()
    graph = model.graph if isinstance(model, onnx.ModelProto) else onnx.load(model, load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    names = [i.name for i in graph.input if i.name not in initializers]
    for inputs, outputs in data_sets:
        feeds = dict(zip(names, inputs))
        for detail in runner.get_input_details():
            runner.set_tensor(detail["index"], feeds[detail["name"]])
        runner.invoke()
        details = runner.get_output_details()
        assert len(details) == len(outputs), name
        for detail, expected in zip(details, outputs):
            actual = runner.get_tensor(detail["index"])
            assert actual.shape == np.shape(expected), (name, actual.shape, np.shape(expected))
            np.testing.assert_allclose(actual, expected, rtol=1e-3, atol=1e-5, err_msg=name)


def test_onnx_backend_cases_in_tflite(tmp_path, capsys):
    counts: dict[str, Counter] = {}
    refusals, failures = {}, {}
    for suite in (*SUITES, "node"):
        cases = node_cases() if suite == "node" else file_cases(suite)
        counts[suite] = Counter()
        for name, model, data_sets in cases:
            counts[suite]["eligible"] += 1
            try:
                run_case(name, model, data_sets, tmp_path)
            except ConversionError as error:
                if not DOCUMENTED_LIMITS.search(str(error)):
                    failures[f"{suite}/{name}"] = f"undocumented refusal: {error}"
                counts[suite]["refused"] += 1
                refusals[name] = str(error)
            except Exception as error:  # noqa: BLE001 - a crash or a wrong answer: report them all
                failures[f"{suite}/{name}"] = f"{type(error).__name__}: {error}"
            else:
                counts[suite]["passed"] += 1
    total = sum(counts.values(), Counter())
    with capsys.disabled():
        for suite, count in [*counts.items(), ("overall", total)]:
            print(f"\nONNX backend data in TFLite ({suite}): {count['eligible']} eligible, {count['passed']} "
                  f"passed, {count['refused']} refused (documented limits)", end="")
        print()
    assert not failures, "\n".join(f"{name}: {why}" for name, why in failures.items())
    counts["overall"] = total
    for suite, floor in FLOORS.items():
        assert counts[suite]["passed"] >= floor, (suite, counts[suite], refusals)
