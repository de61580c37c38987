"""The lowering compiler: torch → ONNX with ai.edgepack custom ops and standard-op fallbacks."""

from pathlib import Path

from .inspect_model import format_summary, inspect_onnx
from .onnx_export import MODES, export_onnx, lower


def export(model, example_inputs, path: str | Path, mode: str = "kernels", **options) -> Path:
    """Export ``model`` to ``path``; the suffix picks the format (.onnx)."""
    suffix = Path(path).suffix
    if suffix == ".onnx":
        return export_onnx(model, example_inputs, path, mode=mode, **options)
    raise ValueError(f"cannot export to {str(path)!r}: unsupported suffix {suffix!r}; "
                     "supported: .onnx")


__all__ = ["MODES", "export", "export_onnx", "format_summary", "inspect_onnx", "lower"]
