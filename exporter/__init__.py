"""The lowering compiler: torch → ONNX with ai.edgepack custom ops and standard-op fallbacks.

Names are imported on first use, so loading a model (``validate``, ``model_files``) does not
import torch.
"""

import importlib
from pathlib import Path

# eager (no torch): the submodule inspect_model would otherwise shadow the function of that name
from .inspect_model import format_summary, inspect_model, inspect_onnx, inspect_tflite

_EXPORTS = {
    "MODES": ".onnx_export", "ExportError": ".onnx_export", "export_onnx": ".onnx_export", "lower": ".onnx_export",
    "ConversionError": ".tflite_export", "convert_onnx_to_tflite": ".tflite_export",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module 'edgepack.exporter' has no attribute {name!r}")


def export(model, example_inputs, path: str | Path, mode: str = "kernels", **options) -> Path:
    """Export ``model`` to ``path``; the suffix picks the format (.onnx or .tflite).

    A .tflite file goes through ONNX (DESIGN §2): the model is exported with a static batch
    (the example's) and lowered by our TFLite writer; ai.edgepack ops become CUSTOM ops.
    """
    import tempfile

    from .onnx_export import ExportError, export_onnx
    from .tflite_export import convert_onnx_to_tflite

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


__all__ = ["export", "format_summary", "inspect_model", "inspect_onnx", "inspect_tflite", *_EXPORTS]
