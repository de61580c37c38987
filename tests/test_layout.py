"""The import package ``edgepack`` is real paths under ``src/``: pyright, IDEs, grep and a bare
``sys.path`` resolve ``edgepack.compression`` and friends from a clone, without the install."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
SUBPACKAGES = sorted(p.parent.name for p in ROOT.glob("*/__init__.py") if p.parent.name not in {"edgepack", "tests"})


def test_every_top_level_package_is_under_src():
    """Each top-level package folder is ``src/edgepack/<name>``, the same files by path."""
    assert "compression" in SUBPACKAGES and "runtime_kernels" in SUBPACKAGES
    assert (SRC / "edgepack" / "compression" / "hashed.py").is_file()
    assert (SRC / "edgepack" / "cli.py").resolve() == ROOT / "edgepack" / "cli.py"
    for name in SUBPACKAGES:
        linked = SRC / "edgepack" / name
        assert linked.resolve() == ROOT / name, f"src/edgepack/{name} should lead to {name}/"
    links = {p.name for p in (ROOT / "edgepack").iterdir() if p.is_symlink()}
    assert links == set(SUBPACKAGES), "edgepack/ should hold one link per top-level package folder"


def test_pyright_extra_paths_reach_the_package():
    """``[tool.pyright]`` in pyproject.toml points at ``src``, where every sub-package resolves."""
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pyright"]
    roots = [ROOT / path for path in config["extraPaths"]]
    for name in SUBPACKAGES:
        assert any((root / "edgepack" / name / "__init__.py").is_file() for root in roots), name


def test_clone_imports_from_src_without_the_install(tmp_path):
    """With only ``src`` and the third-party site-packages on ``sys.path`` (no .pth files, so no
    editable install), every sub-package imports from files under ``src/``."""
    third_party = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    modules = ["edgepack", "edgepack.cli", "edgepack.errors"] + [f"edgepack.{name}" for name in SUBPACKAGES]
    code = (
        "import importlib, sys; "
        f"sys.path[:] = [{str(SRC)!r}] + sys.path + {third_party!r}; "
        f"mods = [importlib.import_module(m) for m in {modules!r}]; "
        "from edgepack.compression import HashedLinear; "
        "import edgepack.runtime_kernels as k; k.load(); "
        "print('\\n'.join(m.__file__ for m in mods))"
    )
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    result = subprocess.run([sys.executable, "-I", "-S", "-c", code], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    files = result.stdout.split()
    assert len(files) == len(modules)
    for file in files:
        assert Path(file).is_relative_to(SRC), file
