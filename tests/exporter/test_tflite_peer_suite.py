"""Peer suite: the ONNX backend test data shipped in the ``onnx`` wheel, converted to TFLite.

Every case whose ops are all in the writer's supported list is converted and run in LiteRT; it
must match the expected outputs, or be refused with a ConversionError for one of the documented
limits (3-D ops, float64 inputs, edge padding, dilated pooling). Never a crash or a wrong answer.
"""

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgepack.exporter.tflite_export import HANDLERS, ConversionError, convert_onnx_to_tflite

interpreter = pytest.importorskip("ai_edge_litert.interpreter")
DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
SUITES = ("pytorch-converted", "pytorch-operator", "simple")
DOCUMENTED_LIMITS = re.compile(
    r"only 1-D and 2-D inputs are supported|only float32 inputs are supported|"
    r"Pad mode 'edge' is not supported|pooling with dilation is not supported")


def eligible_cases() -> list[Path]:
    cases = []
    for suite in SUITES:
        for case in sorted((DATA / suite).iterdir()):
            model = onnx.load(case / "model.onnx", load_external_data=False)
            if all(n.domain in ("", "ai.onnx") and n.op_type in HANDLERS for n in model.graph.node):
                cases.append(case)
    return cases


def load_tensors(folder: Path, prefix: str) -> list[np.ndarray]:
    return [numpy_helper.to_array(onnx.load_tensor(str(f))) for f in sorted(folder.glob(f"{prefix}_*.pb"))]


def run_case(case: Path, tmp_path: Path) -> str:
    path = convert_onnx_to_tflite(str(case / "model.onnx"), tmp_path / f"{case.name}.tflite")
    runner = interpreter.Interpreter(model_path=str(path))
    runner.allocate_tensors()
    for data_set in sorted(case.glob("test_data_set_*")):
        for detail, value in zip(runner.get_input_details(), load_tensors(data_set, "input")):
            runner.set_tensor(detail["index"], value)
        runner.invoke()
        for detail, expected in zip(runner.get_output_details(), load_tensors(data_set, "output")):
            np.testing.assert_allclose(runner.get_tensor(detail["index"]), expected, rtol=1e-3, atol=1e-5,
                                       err_msg=case.name)
    return "passed"


def test_onnx_backend_cases_in_tflite(tmp_path, capsys):
    outcomes = {}
    for case in eligible_cases():
        try:
            outcomes[case.name] = run_case(case, tmp_path)
        except ConversionError as error:
            assert DOCUMENTED_LIMITS.search(str(error)), f"{case.name}: undocumented refusal: {error}"
            outcomes[case.name] = "refused"
    passed = sum(result == "passed" for result in outcomes.values())
    with capsys.disabled():
        print(f"\nONNX backend data in TFLite: {len(outcomes)} eligible, {passed} passed, "
              f"{len(outcomes) - passed} refused (documented limits)")
    assert passed >= 45, outcomes
