"""The lowering compiler: torch → ONNX with ai.edgepack custom ops and standard-op fallbacks."""

import tempfile
from pathlib import Path

from .inspect_model import format_summary, inspect_model, inspect_onnx, inspect_tflite
from .onnx_export import MODES, ExportError, export_onnx, lower
from .tflite_export import ConversionError, convert_onnx_to_tflite


def export(model, example_inputs, path: str | Path, mode: str = "kernels", **options) -> Path:
    """Export ``model`` to ``path``; the suffix picks the format (.onnx or .tflite).

    A .tflite file goes through ONNX (DESIGN §2): the model is exported with a static batch
    (the example's) and lowered by our TFLite writer; ai.edgepack ops become CUSTOM ops.
    """
    suffix = Path(path).suffix
    if suffix == ".onnx":
        return export_onnx(model, example_inputs, path, mode=mode, **options)
    if suffix == ".tflite":
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = export_onnx(model, example_inputs, Path(tmp) / "model.onnx", mode=mode,
                                    **{"dynamic_batch": False, **options})
            return convert_onnx_to_tflite(onnx_path, path)
    raise ExportError(f"cannot export to {str(path)!r}: unsupported suffix {suffix!r}; "
                      "valid suffixes: .onnx, .tflite")


__all__ = ["MODES", "ConversionError", "ExportError", "convert_onnx_to_tflite", "export", "export_onnx",
           "format_summary", "inspect_model", "inspect_onnx", "inspect_tflite", "lower"]
