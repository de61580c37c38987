"""The op spec is the one place an ai.edgepack op's contract is written: the generated C header and
docs tables are current, the header compiles and reads back the spec, the derived torch / ONNX /
TFLite / inspect / estimate views agree with it, and no package source writes the contract again."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from edgepack.runtime_kernels import op_spec
from edgepack.runtime_kernels.op_spec import DOMAIN, LIMITS, OPS, OPSET_VERSION

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["compression", "exporter", "runtime_kernels", "devices", "benchmarks", "kws", "edgepack"]
# Test data, not the contract: the fuzzers' seed models spell out whole option maps.
DATA = {Path("runtime_kernels/op_spec.py"), Path("runtime_kernels/fuzz/make_seeds.py")}


def test_generated_files_are_current():
    for path, text in op_spec.generated_files().items():
        assert path.read_text() == text, f"{path.relative_to(ROOT)} is stale: run make generate"
    assert op_spec.main([]) == 0


def test_a_stale_file_is_reported(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "ops.inc"
    stale.write_text(op_spec.c_header().replace("64LL", "65LL"))
    monkeypatch.setattr(op_spec, "HEADER", stale)
    monkeypatch.setattr(op_spec, "ROOT", tmp_path.parent)
    assert op_spec.main([]) == 1
    assert "ops.inc is stale: run make generate" in capsys.readouterr().err
    assert op_spec.main(["--write"]) == 0 and stale.read_text() == op_spec.c_header()


def test_docs_without_a_generated_block_are_refused():
    with pytest.raises(ValueError, match="no generated block for HashedWeight"):
        op_spec.docs_text("# ops\n")


def _expected_rows() -> list[str]:
    rows = [f"domain {DOMAIN} {OPSET_VERSION}"] + [f"limit {n} {v}" for n, (v, _) in LIMITS.items()]
    rows += [f"op {op.name} {len(op.inputs)} {op.required_inputs} {len(op.attributes)}" for op in OPS.values()]
    rows += [f"input {op.name} {i} {x.name} {int(x.required)} {x.kind} {x.dtype}"
             for op in OPS.values() for i, x in enumerate(op.inputs)]
    rows += [f"attr {op.name} {a.name} {int(a.type == 'ints')} {int(a.required)} {a.default or 0} "
             f"{a.ort[0]} {a.ort[1]} {a.tflite[0]} {a.tflite[1]}" for op in OPS.values() for a in op.attributes]
    return rows


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
def test_ops_inc_compiles_and_reads_back_the_spec(tmp_path):
    """A tiny C program expands every X-macro (and checks MAX_HASHES against EP_MAX_HASHES)."""
    binary, source = tmp_path / "test_ops_inc", ROOT / "runtime_kernels" / "tests" / "test_ops_inc.c"
    subprocess.run(["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic",
                    f"-I{ROOT / 'runtime_kernels' / 'include'}", str(source), "-o", str(binary)], check=True)
    printed = subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout
    assert printed.splitlines() == _expected_rows()


def test_derived_views_follow_the_spec():
    """The torch schemas, ONNX schemas, fallback functions and TFLite defaults come from the spec."""
    import torch
    from onnx import helper

    from edgepack.exporter import fallbacks, torch_ops, validate

    for name, op in OPS.items():
        function = fallbacks.FUNCTIONS[name]()
        assert (function.domain, list(function.input)) == (DOMAIN, [i.name for i in op.inputs if not i.folded])
        if any(i.folded for i in op.inputs):  # the variant that reads scale (exporter/passes.py)
            assert list(fallbacks.fallback_function(name, scaled=True).input) == op.input_names
        assert list(function.attribute) == [a.name for a in op.attributes if a.required]
        assert {a.name: helper.get_attribute_value(a) for a in function.attribute_proto} == op.defaults
        schema = getattr(torch.ops.edgepack, op.torch_name).default._schema
        assert [a.name for a in schema.arguments] == [n.replace("X", "x") for n in op.input_names] + \
            list(op.attribute_names)
        onnx_schema = next(s for s in torch_ops.SCHEMAS if s.name == name)
        assert [i.name for i in onnx_schema.inputs] == op.input_names
        assert (onnx_schema.domain, onnx_schema.since_version) == (DOMAIN, OPSET_VERSION)
        assert validate.OPTION_KEYS[name] == op.attribute_names
        assert validate.REQUIRED_INPUTS[name] == op.required_inputs


def test_output_shapes_bytes_and_macs():
    """Each rule by hand for one small case."""
    shape = {"X": (2, 3, 8), "blocks": (1, 2, 4), "G": (2, 8)}.__getitem__
    matmul = {"in_features": 8, "out_features": 5}
    assert OPS["HashedWeight"].output_shape({"shape": [4, 3, 1, 1]}, shape) == (4, 3, 1, 1)
    assert OPS["HashedWeight"].dense_bytes({"shape": [4, 3, 1, 1]}) == 4 * 12
    for name in ("HashedMatMul", "CirculantMatMul", "LDRMatMul"):
        assert OPS[name].output_shape(matmul, shape) == (2, 3, 5)
        assert OPS[name].dense_bytes(matmul) == 4 * 40
    assert OPS["HashedMatMul"].macs(matmul, shape) == 6 * 40
    assert OPS["CirculantMatMul"].macs(matmul, shape) == 6 * (3 * 1.25 * 4 * 2 + 4 * 2 * 3)
    assert OPS["LDRMatMul"].macs(matmul, shape) == 6 * 2 * 2 * (2 * 1.25 * 8 * 3 + 4 * 5)
    assert OPS["HashedWeight"].macs is None
    assert [a.valid("ort")[1] for a in OPS["HashedMatMul"].attributes[:2]] == [2**32 - 1] * 2
    assert [a.valid("tflite")[1] for a in OPS["HashedMatMul"].attributes[:2]] == [2**31 - 1] * 2


# ---- nothing else writes the contract ---------------------------------------------------------

def _sources():
    """Each package source once (edgepack/ may link to the other folders), build folders left out."""
    paths = {path.resolve() for folder in PACKAGES for path in (ROOT / folder).rglob("*.py")
             if "build" not in path.relative_to(ROOT).parts}
    for path in sorted(paths):
        relative = path.relative_to(ROOT)
        if relative not in DATA:
            yield relative, ast.parse(path.read_text())


def _docstrings(tree: ast.AST) -> set[int]:
    kinds = (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return {id(n.body[0].value) for n in ast.walk(tree) if isinstance(n, kinds) and ast.get_docstring(n, clean=False)}


def contract_written_outside_the_spec(relative: Path, tree: ast.AST) -> list[str]:
    """Where ``tree`` spells out part of an op's contract: the domain or a custom code as a string,
    an op's input list, an optional attribute bound to its default, or a limit's name assigned."""
    inputs = [set(op.input_names) for op in OPS.values()]
    weights = {n for op in OPS.values() for n in op.weight_inputs}
    defaults = {k: v for op in OPS.values() for k, v in op.defaults.items()}
    attributes = {a for op in OPS.values() for a in op.attribute_names}
    names = set(LIMITS) | {"DOMAIN", "OPSET_VERSION"}
    docstrings, found = _docstrings(tree), []
    for node in ast.walk(tree):
        where = f"{relative}:{getattr(node, 'lineno', '?')}"
        if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                and re.fullmatch(re.escape(DOMAIN) + r"(\.\w*)?", node.value)):
            found.append(f"{where}: the domain string {node.value!r}")
        elif isinstance(node, (ast.List, ast.Tuple, ast.Set)) and len(node.elts) >= 2:
            values = {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
            if len(values) == len(node.elts) and values & weights and any(values <= s for s in inputs):
                found.append(f"{where}: an input list {sorted(values)}")
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if (isinstance(key, ast.Constant) and key.value in defaults and isinstance(value, ast.Constant)
                        and value.value == defaults[key.value]):
                    found.append(f"{where}: the default {key.value}={value.value}")
        elif isinstance(node, ast.Call) and len(node.args) >= 3:
            first, *rest = node.args
            if (isinstance(first, ast.Constant) and first.value in attributes
                    and sum(isinstance(a, ast.Constant) and isinstance(a.value, int) for a in rest) >= 2):
                found.append(f"{where}: attribute {first.value!r} with its default or range")
        elif isinstance(node, ast.Assign):
            found += [f"{where}: {t.id} assigned" for t in node.targets if isinstance(t, ast.Name) and t.id in names]
    return found


def test_no_package_source_writes_an_op_contract():
    found = [line for relative, tree in _sources() for line in contract_written_outside_the_spec(relative, tree)]
    assert not found, "write these in runtime_kernels/op_spec.py instead:\n" + "\n".join(found)


@pytest.mark.parametrize("source", [
    'DOMAIN = "ai.edgepack"',
    'code = f"ai.edgepack.{op}"',
    'OP_INPUTS = {"HashedMatMul": ["X", "buckets", "recon", "bias"]}',
    'WEIGHTS = ("G", "H")',
    'DEFAULTS = {"HashedMatMul": {"signed": 1, "mode": 0}}',
    'node.integer("num_hashes", True, 1, 1, 64)',
    "MAX_HASHES = 64",
])
def test_the_scan_finds_each_kind(source):
    """Each way the contract was written before the spec (HEAD~ of issue 10) is caught."""
    assert contract_written_outside_the_spec(Path("x.py"), ast.parse(source))


def test_the_scan_leaves_prose_and_choices_alone():
    source = '''"""Lowers ai.edgepack ops."""
message = "graph has ai.edgepack ops without a fallback"
attributes = dict(mode=0)
seen = {"signed": 0}
'''
    assert contract_written_outside_the_spec(Path("x.py"), ast.parse(source)) == []
