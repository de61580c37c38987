"""What a measurement sends to a device, and how long each of its device commands may take.

An ONNX model may keep its tensors in other files (``model.onnx`` + ``model.onnx.data``, the
default of ``torch.onnx.export`` with dynamo): those travel with it, in the same layout, and count
in its size. A location that points outside the model's folder is refused, so a model file cannot
make the harness send other local files to a device.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgepack.exporter.external_data import external_data_files, model_size_bytes  # noqa: F401
from edgepack.exporter.model_files import ModelFileError  # noqa: F401

if TYPE_CHECKING:
    from edgepack.devices import Device

DEFAULT_TIMEOUT_S = 600.0


def command_timeout(options: Any) -> float:
    """Seconds each device command of a measurement may run: ``options.timeout`` when given, else
    600 s or 20 × ``min_seconds``, whichever is longer."""
    timeout = getattr(options, "timeout", None)
    return float(timeout) if timeout else max(DEFAULT_TIMEOUT_S, 20 * float(options.min_seconds))


def push_model(device: Device, model: Path, timeout: float | None) -> str:
    """Push ``model`` (with its external data, in the same layout) to the device; its remote path."""
    data = external_data_files(model)
    if not data:
        return device.push(str(model), timeout=timeout)
    with tempfile.TemporaryDirectory(prefix="edgepack-stage-") as stage:
        folder = Path(stage) / model.stem
        for source in [model, *data]:
            target = folder / source.relative_to(model.parent)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, target)
            except OSError:  # another file system
                shutil.copy2(source, target)
        remote = device.push(str(folder), f"{model.stem}.model", timeout=timeout)
    return f"{remote}/{model.name}"
