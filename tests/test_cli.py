"""The ``edgepack`` command: help lists the sub-commands, the demo runs in quick mode."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from edgepack.cli import main
from edgepack.demo import RECIPES, run_demo

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "demo" in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "usage: edgepack" in capsys.readouterr().out


def test_demo_quick_prints_every_method():
    console = Console(record=True, width=200)
    rows = run_demo(quick=True, console=console)
    text = console.export_text()
    assert [row["method"] for row in rows] == list(RECIPES)
    for name in RECIPES:
        assert name in text
    dense = rows[0]
    for row in rows[1:]:
        assert row["bytes"] < dense["bytes"] and row["ratio"] > 1


def test_console_script_runs():
    result = subprocess.run([Path(sys.executable).parent / "edgepack", "--version"],
                            capture_output=True, text=True, check=True)
    assert result.stdout.startswith("edgepack ")


def test_regular_install_ships_one_package(tmp_path):
    """``pip install .`` puts only ``edgepack`` (with every folder mapped in) into site-packages."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(ROOT)],
                   check=True, capture_output=True)
    top_level = {p.name for p in target.iterdir() if not p.name.endswith(".dist-info")}
    assert top_level - {"bin"} == {"edgepack"}
    shipped = {p.name for p in (target / "edgepack" / "runtime_kernels" / "lib").iterdir()}
    assert {"libedgepack_kernels.so", "libedgepack_ort.so", "libedgepack_tflite_delegate.so"} <= shipped
    code = ("import edgepack.compression as c, edgepack.devices, edgepack.runtime_kernels as k; "
            "k.load(); print(c.__file__)")
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith(str(target))
