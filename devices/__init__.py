"""Where a benchmark runs (local, ssh, adb, qemu) and how power is read (see power.py)."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from .adb import AdbDevice
from .base import CommandTimeout, Device, DeviceError, ProgramNotFound, RunResult
from .local import LocalDevice
from .qemu import QemuDevice
from .ssh import SSHDevice

VALID_SPECS = ("local", "ssh://[user@]host[:port]", "adb://SERIAL", "adb", "qemu-aarch64")


def _ssh(spec: str, options: dict) -> Device:
    parts = urlsplit(spec)
    try:
        port = parts.port
    except ValueError as error:
        raise ValueError(f"invalid port in device spec {spec!r}: {error}") from error
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.password:
        raise ValueError(f"invalid ssh device spec {spec!r}: expected ssh://[user@]host[:port]")
    return SSHDevice(parts.hostname, parts.username, port, **options)


def _adb(spec: str, options: dict) -> Device:
    serial = spec[len("adb://"):] if spec.startswith("adb://") else None
    if serial is not None and not serial:
        raise ValueError("invalid adb device spec 'adb://': give a serial (adb://SERIAL) or just 'adb'")
    return AdbDevice(serial, **options)


# spec prefix → factory; a registry rather than an if-chain.
FACTORIES: dict[str, Callable[[str, dict], Device]] = {
    "local": lambda spec, options: LocalDevice(**options),
    "ssh://": _ssh,
    "adb://": _adb,
    "adb": _adb,
    "qemu-aarch64": lambda spec, options: QemuDevice(**options),
}
EXACT = {"local", "adb", "qemu-aarch64"}


def get_device(spec: str, **options) -> Device:
    """The device named by ``spec`` (see VALID_SPECS); options go to the device's constructor."""
    for prefix, factory in FACTORIES.items():
        if spec == prefix or (prefix not in EXACT and spec.startswith(prefix)):
            return factory(spec, options)
    raise ValueError(f"unknown device {spec!r}; valid forms: {', '.join(VALID_SPECS)}")


__all__ = [
    "AdbDevice", "CommandTimeout", "Device", "DeviceError", "LocalDevice", "ProgramNotFound",
    "QemuDevice", "RunResult", "SSHDevice", "VALID_SPECS", "get_device",
]
