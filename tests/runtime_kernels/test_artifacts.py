"""runtime_kernels.artifacts: one search order for every built library and binary, errors that say
where it looked and how to build, and `make clean` removing every folder the build scripts write."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import xxhash

from edgepack.errors import EdgepackError
from edgepack.runtime_kernels import artifacts, loader
from edgepack.runtime_kernels.artifacts import ArtifactNotFoundError, find_artifact

ROOT = Path(__file__).resolve().parents[2]
LIBRARIES = ["libedgepack_kernels.so", "libedgepack_ort.so", "libedgepack_tflite_delegate.so"]


@pytest.fixture(autouse=True)
def _no_override(monkeypatch):
    for var in (artifacts.ENV_LIB_DIR, *artifacts.RETIRED_ENV):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize("name", LIBRARIES)
def test_host_libraries_come_from_the_package_lib_folder(name):
    assert find_artifact(name) == ROOT / "runtime_kernels" / "lib" / name


def test_lib_dir_override_is_the_library_actually_loaded(tmp_path):
    """A copy in $EDGEPACK_LIB_DIR is what a fresh process loads (its path in /proc/self/maps) and it works."""
    shutil.copy(find_artifact("libedgepack_kernels.so"), tmp_path)
    code = ("from edgepack import runtime_kernels as rk\nprint(rk.xxh32(b'edgepack', 7))\n"
            "print(any(str(rk.library_path()) in line for line in open('/proc/self/maps')))\n"
            "print(rk.library_path())")
    env = {"EDGEPACK_LIB_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    digest, mapped, path = out.stdout.split()
    assert int(digest) == xxhash.xxh32_intdigest(b"edgepack", 7)
    assert mapped == "True" and Path(path) == tmp_path / "libedgepack_kernels.so"


def test_tflite_runtime_finds_the_delegate_as_a_lone_file():
    """tflite_runtime.py loaded by path in a Python without edgepack (no site-packages: -S -I), as the
    tflite-runtime 2.14 venv does, finds the delegate through its sibling artifacts.py."""
    code = ("import importlib.util as u\n"
            f"spec = u.spec_from_file_location('tr', {str(ROOT / 'runtime_kernels/tflite_runtime.py')!r})\n"
            "m = u.module_from_spec(spec); spec.loader.exec_module(m)\n"
            "print(m.delegate_library_path())\n"
            "try:\n    import edgepack\nexcept ImportError:\n    print('without edgepack')")
    out = subprocess.run([sys.executable, "-S", "-I", "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(find_artifact("libedgepack_tflite_delegate.so")), "without", "edgepack"]


def test_missing_override_names_the_variable_the_file_and_the_folder(monkeypatch, tmp_path):
    monkeypatch.setenv(artifacts.ENV_LIB_DIR, str(tmp_path))
    with pytest.raises(ArtifactNotFoundError) as info:
        find_artifact("libedgepack_ort.so")
    message = str(info.value)
    assert "libedgepack_ort.so" in message and str(tmp_path) in message and "EDGEPACK_LIB_DIR" in message
    assert isinstance(info.value, EdgepackError) and isinstance(info.value, FileNotFoundError)


def test_override_applies_to_libraries_not_runners(monkeypatch, tmp_path):
    monkeypatch.setenv(artifacts.ENV_LIB_DIR, str(tmp_path))
    assert artifacts.search_paths("edgepack_ort_runner")[-1] == ROOT / "build" / "host" / "ort" / "edgepack_ort_runner"


@pytest.mark.parametrize("variable", artifacts.RETIRED_ENV)
def test_retired_variables_are_refused_not_ignored(monkeypatch, variable):
    monkeypatch.setenv(variable, "/somewhere/lib.so")
    with pytest.raises(EdgepackError, match=f"{variable} is no longer read.*EDGEPACK_LIB_DIR") as info:
        find_artifact("libedgepack_kernels.so")
    assert not isinstance(info.value, FileNotFoundError)  # callers that fall back on a missing library stop here


def test_kernel_loader_reports_a_missing_library(monkeypatch, tmp_path):
    monkeypatch.setenv(artifacts.ENV_LIB_DIR, str(tmp_path))
    monkeypatch.setattr(loader, "_lib", None)
    with pytest.raises(FileNotFoundError, match="libedgepack_kernels.so for .* not found"):
        loader.load()


def test_unknown_cross_arch_says_where_and_how():
    with pytest.raises(ArtifactNotFoundError) as info:
        find_artifact("edgepack_ort_runner", "riscv64")
    message = str(info.value)
    assert "riscv64" in message and str(ROOT / "runtime_kernels" / "build" / "riscv64") in message
    assert "cross-compile runtime_kernels for riscv64" in message


def test_aarch64_names_its_ci_script(tmp_path):
    paths = artifacts.search_paths("libedgepack_ort.so", "arm64")
    assert paths[0] == ROOT / "runtime_kernels" / "build" / "aarch64" / "ort" / "libedgepack_ort.so"
    if not any(p.is_file() for p in paths):
        with pytest.raises(ArtifactNotFoundError, match="ci_aarch64.sh"):
            find_artifact("libedgepack_ort.so", "arm64")
    else:
        assert find_artifact("libedgepack_ort.so", "arm64") in paths


def test_empty_arch_is_an_error_not_the_host():
    with pytest.raises(ArtifactNotFoundError, match="no architecture given"):
        find_artifact("libedgepack_ort.so", "")


# ---- make clean -----------------------------------------------------------------------------------
def clean_targets() -> list[Path]:
    """The folders `make clean` removes (from `make -n clean`)."""
    out = subprocess.run(["make", "-n", "clean"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    words = shlex.split(next(line for line in out.splitlines() if line.startswith("rm -rf")))[2:]
    return [(ROOT / word).resolve() for word in words]


def script_build_dirs(script: Path) -> set[Path]:
    """Every build/<name> folder a script names, resolved from the folder it cd's into."""
    text = script.read_text()
    cd = re.search(r'cd "\$\(dirname "\$0"\)/([./]*)"', text)
    base = (script.parent / cd.group(1)).resolve() if cd else script.parent
    found = re.findall(r'(?<![\w/.$])(?:\$ROOT/)?((?:\.\./)*build/[\w.-]+)', text)
    return {(base / rel).resolve() for rel in found}


SCRIPTS = sorted([*ROOT.glob("runtime_kernels/scripts/*.sh"), *ROOT.glob("runtime_kernels/fuzz/*.sh")])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_make_clean_removes_what_each_script_builds(script):
    targets = clean_targets()
    for folder in script_build_dirs(script):
        assert any(folder.is_relative_to(t) for t in targets), f"{script.name} writes {folder}; `make clean` misses it"


def test_make_clean_removes_every_build_dir_the_finder_searches():
    targets = clean_targets()
    assert all(any(d.resolve().is_relative_to(t) for t in targets) for d in artifacts.BUILD_DIRS)
    assert script_build_dirs(ROOT / "runtime_kernels/scripts/ci_native.sh") == {ROOT / "runtime_kernels/build/asan"}
    assert ROOT / "build/fuzz" in script_build_dirs(ROOT / "runtime_kernels/fuzz/build.sh")
