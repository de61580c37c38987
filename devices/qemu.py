"""aarch64 binaries under qemu user-mode emulation on this host: for correctness only.

Every RunResult is marked ``emulated``; its seconds say nothing about a real ARM core. On a non-ARM
host qemu-user shows the program the host's /proc/cpuinfo, on which ONNX Runtime's CPU detection
crashes; so, where this process may (root, ``unshare -m`` allowed), every command runs in a private
mount namespace where /proc/cpuinfo is an ARM one, as ``runtime_kernels/scripts/arm_exec.sh`` does.
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
import tempfile

from .base import ProgramNotFound, RunResult
from .local import LocalDevice

DEFAULT_SYSROOT = "/usr/aarch64-linux-gnu"
ARM_CPUINFO = ("processor\t: {n}\nBogoMIPS\t: 100.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics "
               "fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\n"
               "CPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n")
BIND_CPUINFO = 'mount --bind "$0" /proc/cpuinfo && exec "$@"'


@functools.cache
def can_bind_cpuinfo() -> bool:
    """Whether commands can see an ARM /proc/cpuinfo: a non-ARM host where this process may bind-mount
    in a private mount namespace (root with CAP_SYS_ADMIN, and unshare installed)."""
    if platform.machine() in ("aarch64", "arm64") or os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    try:
        probe = subprocess.run(["unshare", "-m", "sh", "-c", BIND_CPUINFO, "/proc/cpuinfo", "true"],
                               capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


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
        """Run the aarch64 program argv[0] under the emulator (dynamic ones find libs in sysroot),
        seeing an ARM /proc/cpuinfo where can_bind_cpuinfo()."""
        if not argv:
            raise ValueError("argv is empty: give the program and its arguments as a list")
        command = [self.qemu]
        if os.path.isdir(self.sysroot):
            command += ["-L", self.sysroot]
        command += map(str, argv)
        if not can_bind_cpuinfo():
            return self._execute(command, timeout, env, cwd)
        with tempfile.NamedTemporaryFile("w", prefix="edgepack-cpuinfo-") as cpuinfo:
            cpuinfo.write("".join(ARM_CPUINFO.format(n=n) for n in range(os.cpu_count() or 1)))
            cpuinfo.flush()
            return self._execute(["unshare", "-m", "sh", "-c", BIND_CPUINFO, cpuinfo.name, *command],
                                 timeout, env, cwd)

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
