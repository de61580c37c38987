"""aarch64 binaries under qemu user-mode emulation on this host: for correctness only.

Every RunResult is marked ``emulated``; its seconds say nothing about a real ARM core.
"""

from __future__ import annotations

import os
import shutil

from .base import ProgramNotFound, RunResult
from .local import LocalDevice

DEFAULT_SYSROOT = "/usr/aarch64-linux-gnu"


class QemuDevice(LocalDevice):
    """Runs ``qemu-aarch64 -L SYSROOT BIN ARGS``; files (and read_file) are the host's, in a temp workdir."""

    kind = "qemu-aarch64"
    emulated = True

    def __init__(self, workdir: str | None = None, *, qemu: str = "qemu-aarch64",
                 sysroot: str = DEFAULT_SYSROOT):
        super().__init__(workdir, spec="qemu-aarch64")
        program = shutil.which(qemu)
        if program is None:
            raise ProgramNotFound(f"qemu-aarch64: the emulator {qemu!r} is not installed "
                                  "(Debian: apt-get install qemu-user)")
        self.qemu = program
        self.sysroot = sysroot

    def run(self, argv: list[str], *, timeout: float | None = None, env: dict | None = None,
            cwd: str | None = None) -> RunResult:
        """Run the aarch64 program argv[0] under the emulator (dynamic ones find libs in sysroot)."""
        if not argv:
            raise ValueError("argv is empty: give the program and its arguments as a list")
        prefix = [self.qemu]
        if os.path.isdir(self.sysroot):
            prefix += ["-L", self.sysroot]
        return self._execute([*prefix, *map(str, argv)], timeout, env, cwd)

    def python(self, modules: list[str]) -> str | None:
        """There is no aarch64 python to emulate here: callers use the native runner."""
        return None

    def describe(self) -> dict:
        """arch aarch64 and emulated True; CPU fields are the host's, labelled as such."""
        host = LocalDevice().describe()
        info = dict(host)
        info.update(spec=self.spec, kind=self.kind, arch="aarch64", emulated=True, host_arch=host["arch"],
                    os=f"{host['os']} (qemu-aarch64 user mode)",
                    cpu_model=f"emulated by qemu-aarch64 on {host['cpu_model']}")
        return info
