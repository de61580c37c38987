"""The one place that finds what the C build produces: libraries, runners and the bench binary,
for this host or a cross architecture, so every caller looks in the same folders, in one order.

Host (``arch="host"`` or this machine's): ``$EDGEPACK_LIB_DIR`` only when set (libraries only), else
the package's ``lib/`` (an installed wheel ships the libraries there; in a checkout ``make
kernels`` copies them there), then ``build/host`` (``make kernels``' CMake build). Other
architectures: ``runtime_kernels/build/<arch>`` (``runtime_kernels/scripts/ci_<arch>.sh``), then
``runtime_kernels/build/ort-<arch>`` / ``tflite-<arch>`` (``ci_ort_<arch>.sh``, ``ci_tflite.sh``).
Self-contained (standard library only) so ``tflite_runtime.py`` can load it as a lone file.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from pathlib import Path

try:
    from edgepack.errors import EdgepackError
except ImportError:  # loaded as a lone file by tflite_runtime.py in a venv without edgepack
    class EdgepackError(Exception):
        """Stands in for edgepack.errors.EdgepackError where edgepack is not installed."""

__all__ = ["ENV_LIB_DIR", "ArtifactNotFoundError", "BUILD_DIRS", "find_artifact", "host_arch", "how_to_build",
           "normalize_arch", "onnxruntime_library_path", "search_paths"]

ENV_LIB_DIR = "EDGEPACK_LIB_DIR"
RETIRED_ENV = ("EDGEPACK_KERNELS_LIB", "EDGEPACK_ORT_LIB", "EDGEPACK_TFLITE_DELEGATE")
PACKAGE = Path(__file__).resolve().parent
ROOT = PACKAGE.parent
# Every folder a build writes into (the Makefile's `clean` removes them; a test checks the scripts).
BUILD_DIRS = (ROOT / "build", PACKAGE / "build")
# artifact -> (its folder inside a CMake build of runtime_kernels, its CMake target)
ARTIFACTS = {
    "libedgepack_kernels.so": ("", "edgepack_kernels"),
    "libedgepack_ort.so": ("ort", "edgepack_ort"),
    "libedgepack_tflite_delegate.so": ("tflite", "edgepack_tflite_delegate"),
    "edgepack_ort_runner": ("ort", "edgepack_ort_runner"),
    "edgepack_kws_stream": ("ort", "edgepack_kws_stream"),
    "edgepack-bench": ("", "edgepack-bench"),
}
ARCH_ALIASES = {"arm64": "aarch64", "armv8": "aarch64", "amd64": "x86_64", "x64": "x86_64"}


class ArtifactNotFoundError(EdgepackError, FileNotFoundError):
    """A built library or binary is missing; the message says where it was looked for and how to build it."""


def normalize_arch(arch: str | None) -> str:
    """``arch`` as the build folders name it (arm64 -> aarch64, amd64 -> x86_64; "host" -> this machine)."""
    arch = ("host" if arch is None else arch).strip().lower()
    if not arch:
        raise ArtifactNotFoundError("no architecture given (the device did not report one); "
                                    "pass its name, e.g. aarch64, or 'host'")
    if arch == "host":
        arch = platform.machine().lower()
    return ARCH_ALIASES.get(arch, arch)


def host_arch() -> str:
    """This machine's architecture, normalized."""
    return normalize_arch("host")


def _file_name(name: str, host: bool) -> str:
    """The platform's file name of a host library (``.dylib`` on macOS)."""
    return name[:-3] + ".dylib" if host and sys.platform == "darwin" and name.endswith(".so") else name


def search_paths(name: str, arch: str = "host") -> list[Path]:
    """Where ``find_artifact`` looks for ``name`` built for ``arch``, in order."""
    if name not in ARTIFACTS:
        raise ValueError(f"unknown artifact {name!r}; known: {', '.join(ARTIFACTS)}")
    folder, _ = ARTIFACTS[name]
    arch = normalize_arch(arch)
    if arch == host_arch():
        file = _file_name(name, True)
        override = os.environ.get(ENV_LIB_DIR)
        if override and name.startswith("lib"):
            return [Path(override) / file]
        return [PACKAGE / "lib" / file, ROOT / "build" / "host" / folder / file]
    builds = [PACKAGE / "build" / arch] + ([PACKAGE / "build" / f"{folder}-{arch}"] if folder else [])
    return [build / folder / name for build in builds]


def how_to_build(name: str, arch: str = "host") -> str:
    """How to build (or rebuild) ``name`` for ``arch``: the make target or the cross build script."""
    folder, target = ARTIFACTS[name]
    arch = normalize_arch(arch)
    if arch == host_arch():
        if os.environ.get(ENV_LIB_DIR) and name.startswith("lib"):
            return f"{ENV_LIB_DIR} is set: put {name} there, or unset it to use the package's lib/"
        return f"build it with `make kernels` at the repository root (CMake target {target})"
    scripts = [s for s in (f"ci_{arch}.sh", f"ci_{folder}_{arch}.sh") if (PACKAGE / "scripts" / s).is_file()]
    if scripts:
        return "cross-build it with " + " or ".join(f"`bash runtime_kernels/scripts/{s}`" for s in scripts)
    return (f"cross-compile runtime_kernels for {arch} into runtime_kernels/build/{arch} "
            f"(CMake target {target}; runtime_kernels/README.md)")


def find_artifact(name: str, arch: str = "host") -> Path:
    """The first existing ``name`` (a key of ARTIFACTS) built for ``arch``; ArtifactNotFoundError if none."""
    retired = [var for var in RETIRED_ENV if os.environ.get(var)]
    if retired:
        raise EdgepackError(f"{', '.join(retired)} is no longer read: set {ENV_LIB_DIR} to the folder "
                            "holding the edgepack libraries instead")  # not "missing": nobody falls back
    arch = normalize_arch(arch)
    paths = search_paths(name, arch)
    for path in paths:
        if path.is_file():
            return path
    raise ArtifactNotFoundError(f"{name} for {arch} not found (looked at {', '.join(map(str, paths))}); "
                                f"{how_to_build(name, arch)}")


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path.as_posix()))


def onnxruntime_library_path(arch: str = "host") -> Path:
    """``libonnxruntime.so*`` for ``arch``: the onnxruntime wheel's on the host, else the arm64 one of
    the npm package onnxruntime-node that ``ci_ort_aarch64.sh`` caches in runtime_kernels/build/ort-npm."""
    import importlib.util

    arch = normalize_arch(arch)
    if arch == host_arch():
        spec = importlib.util.find_spec("onnxruntime")
        locations = list(spec.submodule_search_locations or []) if spec else []
        found = sorted((lib for loc in locations for lib in (Path(loc) / "capi").glob("libonnxruntime.so*")),
                       key=_version_key)
        if not found:
            raise ArtifactNotFoundError("no libonnxruntime.so* in an installed onnxruntime wheel "
                                        "(onnxruntime/capi/); pip install onnxruntime")
        return found[-1]
    npm_arch = {"aarch64": "arm64", "x86_64": "x64"}.get(arch, arch)
    npm = PACKAGE / "build" / "ort-npm"
    found = sorted(npm.glob(f"*/package/bin/napi-v*/linux/{npm_arch}/libonnxruntime.so*"), key=_version_key)
    if not found:
        raise ArtifactNotFoundError(f"no {arch} libonnxruntime.so* under {npm}/<version>/package/bin/napi-v*/linux/"
                                    f"{npm_arch}/; run `bash runtime_kernels/scripts/ci_ort_aarch64.sh` (it fetches "
                                    "the npm package onnxruntime-node)")
    return found[-1]
