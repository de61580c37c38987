"""int8 storage of decoder weights in ONNX (docs/ops.md "int8 storage"): INT8 initializer -> Cast(FLOAT) ->
HashedWeight | CodebookWeight -> Cast(TensorProto.INT8) -> DequantizeLinear -> Conv | Gemm. Decode at load, in Python
(decode_onnx.py) and in C (the ORT runner, decode_model.c), folds the chain into one INT8 initializer equal
to an independent reference (xxhash / the encoded matrix); the decoded model run in plain ORT equals the
undecoded one on the kernels and on the fallback functions; bad chains get one message in both; validate
and inspect accept the pattern. The C tests need `make kernels`."""

from __future__ import annotations

import json
import platform
import subprocess

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from int8_storage_models import IDENTITY_RECON, codebook_gemm, hashed_conv, hashed_gemm
from onnx import TensorProto, helper, numpy_helper

from edgepack.exporter.inspect_model import format_summary, inspect_onnx
from edgepack.exporter.validate import InvalidNodeError, check_onnx_model
from edgepack.runtime_kernels import limits, onnx_session, ort_library_path
from edgepack.runtime_kernels.artifacts import find_artifact, onnxruntime_library_path
from edgepack.runtime_kernels.decode_onnx import decoded_onnx
from edgepack.runtime_kernels.op_spec import DOMAIN

MODELS = {"hashed_conv": hashed_conv, "codebook_dense": lambda: codebook_gemm(False),
          "codebook_sparse": lambda: codebook_gemm(True), "hashed_gemm_no_recon": hashed_gemm}
CRASHES = (-6, -11, -4, -8)


@pytest.fixture(autouse=True)
def _no_limit_env(monkeypatch):
    for env in (limits.ENV_MAX_VIRTUAL_WEIGHTS, limits.ENV_MAX_DECODED_BYTES):
        monkeypatch.delenv(env, raising=False)


def feed(session) -> dict[str, np.ndarray]:
    """The native runner's deterministic input (runner.c: fill_value), so both runners see the same."""
    meta = session.get_inputs()[0]
    i = np.arange(int(np.prod(meta.shape)), dtype=np.int64)
    return {meta.name: (((i * 7919 + 104729) % 2001 - 1000) / 1000).astype(np.float32).reshape(meta.shape)}


def run(model, **kwargs) -> np.ndarray:
    session = onnx_session(model, **kwargs)
    return session.run(None, feed(session))[0]


def plain_ort(model: bytes) -> np.ndarray:
    """A model without ai.edgepack nodes in ONNX Runtime, no custom op library."""
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(None, feed(session))[0]


def edit(data: bytes, change) -> bytes:
    model = onnx.ModelProto.FromString(data)
    change(model)
    return model.SerializeToString()


def node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def initializer(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


# ---- Python decode at load ---------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_python_folds_the_chain_into_one_int8_initializer(name):
    data, want = MODELS[name]()
    decoded = onnx.ModelProto.FromString(decoded_onnx(data)[0])
    (weight, wq), = want.items()
    got = numpy_helper.to_array(initializer(decoded, weight))
    assert got.dtype == np.int8 and np.array_equal(got.astype(np.int64), wq)
    assert not [n.op_type for n in decoded.graph.node if n.op_type == "Cast" or n.domain == DOMAIN]
    stored = weight.replace("_wq", "")
    assert {t.name for t in decoded.graph.initializer} & {f"{stored}_q", f"{stored}_w", f"{stored}_qf"} == set()
    assert not decoded.functions and DOMAIN not in [o.domain for o in decoded.opset_import]
    kernels = run(data, decode_at_load=False)
    np.testing.assert_array_equal(run(data), kernels)  # decoded at load, weights handed over in place
    np.testing.assert_array_equal(plain_ort(decoded.SerializeToString()), kernels)
    if onnx.ModelProto.FromString(data).functions:
        np.testing.assert_array_equal(run(data, use_kernels=False), kernels)  # ORT on the fallback functions
    _, arrays = decoded_onnx(data, inline=False)
    assert arrays[weight].dtype == np.int8 and np.array_equal(arrays[weight].astype(np.int64), wq)


def test_decoded_model_runs_on_ort_int8_kernels(tmp_path):
    """ORT's QDQ transformer fuses the decoded graph into QLinearConv / QGemm (int8 kernels)."""
    fused = set()
    for name in ("hashed_conv", "codebook_sparse"):
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / f"{name}.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(decoded_onnx(MODELS[name]()[0])[0], options, providers=["CPUExecutionProvider"])
        fused |= {n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node}
    assert {"QLinearConv", "QGemm"} <= fused, fused


def test_values_read_elsewhere_stay():
    """The decoder's float output and the Cast to float, also graph outputs, stay next to the int8 weight."""
    data, want = hashed_conv()

    def outputs(model):
        model.graph.output.extend([helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                                   for n in ("conv_w", "conv_qf")])
    data = edit(data, outputs)
    decoded = onnx.ModelProto.FromString(decoded_onnx(data)[0])
    assert [n.op_type for n in decoded.graph.node].count("Cast") == 1
    names = {t.name for t in decoded.graph.initializer}
    assert {"conv_wq", "conv_w", "conv_q"} <= names
    np.testing.assert_array_equal(numpy_helper.to_array(initializer(decoded, "conv_w")), want["conv_wq"])
    for got, kept in zip(plain_ort_all(decoded.SerializeToString()), onnx_all(data)):
        np.testing.assert_array_equal(got, kept)


def plain_ort_all(model: bytes) -> list[np.ndarray]:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(None, feed(session))


def onnx_all(model: bytes) -> list[np.ndarray]:
    session = onnx_session(model, decode_at_load=False)
    return session.run(None, feed(session))


# ---- bad chains: one message in validate, Python decode and the C runner ------------------------


def _cast(name: str, **attributes):
    def change(model):
        cast = node(model, name)
        for key, value in attributes.items():
            if key == "to":
                cast.attribute[0].i = value
            else:
                cast.input[0] = value
    return change


def _to_recon(model):
    """The recon input read from a Cast to float of an int8 copy of the identity."""
    model.graph.initializer.append(numpy_helper.from_array(IDENTITY_RECON.astype(np.int8), "recon_q"))
    model.graph.node.insert(0, helper.make_node("Cast", ["recon_q"], ["recon_f"], name="recon_to_float", to=1))
    node(model, "conv_decode").input[1] = "recon_f"


def _short(model):
    t = initializer(model, "conv_q")
    t.raw_data = t.raw_data[:-1]


def _minus_128(model):
    t = initializer(model, "conv_q")
    t.raw_data = t.raw_data[:4] + b"\x80" + t.raw_data[5:]


def _graph_input(model):
    model.graph.input.append(helper.make_tensor_value_info("conv_q", TensorProto.INT8, [20]))


def _float_buckets(values, num_hashes: int = 1):
    """HashedWeight reading float buckets (no Cast to float) whose decoded weight the Cast to INT8 reads."""
    def change(model):
        decode = node(model, "conv_decode")
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(values, np.float32), "conv_fb"))
        decode.input[0] = "conv_fb"
        if num_hashes > 1:
            decode.attribute[[a.name for a in decode.attribute].index("num_hashes")].i = num_hashes
            recon = numpy_helper.from_array(np.array([1, 0.5, 0.25, 0.5, 0.125], np.float32), "conv_r2")
            model.graph.initializer.append(recon)
            decode.input[1] = "conv_r2"
    return change


def _recon_graph_input(model):
    """recon a graph input: HashedWeight is not decoded (it stays on the kernels), its Cast still checked."""
    model.graph.input.append(helper.make_tensor_value_info("conv_recon", TensorProto.FLOAT, [7]))


def _both(*changes):
    def change(model):
        for c in changes:
            c(model)
    return change


def _cast_attribute(name: str, to: int):
    """A second 'to' attribute on Cast node ``name``."""
    def change(model):
        node(model, name).attribute.append(helper.make_attribute("to", to))
    return change


def _cast_second_input(model):
    node(model, "conv_to_float").input.append("conv_q")


def _cast_into(op: str, **attributes):
    """An ai.edgepack ``op`` (other than the int8-storable decoders) whose first weight input is the Cast to float
    of the int8 buckets, after the HashedWeight that reads it too."""
    def change(model):
        inputs = {"HashedMatMul": ["input_dq", "conv_qf"], "CirculantMatMul": ["input_dq", "conv_qf"],
                  "HyperWeight": ["conv_idx", "conv_qf", "conv_qf"]}[op]
        if op == "HyperWeight":
            model.graph.initializer.append(numpy_helper.from_array(np.zeros(4, np.uint8), "conv_idx"))
        model.graph.node.append(helper.make_node(op, inputs, [f"{op}_y"], domain=DOMAIN, name="other", **attributes))
    return change


def _second_cast_to_int8(model):
    """Two Casts to INT8 of the one decoded weight (each would be its own int8 copy at load)."""
    model.graph.node.append(helper.make_node("Cast", ["conv_w"], ["conv_wq2"], name="conv_to_int8_again",
                                             to=TensorProto.INT8))
    model.graph.output.append(helper.make_tensor_value_info("conv_wq2", TensorProto.INT8, None))


WHERE = "edgepack HashedWeight node 'conv_decode': input 'buckets' is the output of Cast node 'conv_to_float'"
TAIL = "a decoder's weight input may be a Cast only to FLOAT (1) of a constant INT8 (3) initializer"
CAST_BAD = {  # refused by the validator too
    "cast_to_double": (_cast("conv_to_float", to=TensorProto.DOUBLE), f"{WHERE} to data_type 11; {TAIL}"),
    "cast_of_float": (_cast("conv_to_float", source="conv_bias"),
                      f"{WHERE} of 'conv_bias', which is an initializer of data_type 1; {TAIL}"),
    "cast_of_graph_input": (_graph_input, f"{WHERE} of 'conv_q', which is a graph input; {TAIL}"),
    "cast_of_computed": (_cast("conv_to_float", source="input_q"),
                         f"{WHERE} of 'input_q', which is not an initializer"),
    "cast_into_recon": (_to_recon, "edgepack HashedWeight node 'conv_decode': input 'recon' is the output of Cast "
                                   "node 'recon_to_float'; only HashedWeight 'buckets' and CodebookWeight 'codebook' "
                                   "may be stored as int8"),
    "short_int8": (_short, "edgepack HashedWeight node 'conv_decode': initializer 'conv_q': raw_data has 19 bytes; "
                           "its shape needs 20"),
    "minus_128": (_minus_128, "edgepack HashedWeight node 'conv_decode': input 'buckets' (Cast of INT8 initializer "
                              "'conv_q'): value 4 is -128; int8-stored weights must be in [-127, 127]"),
    "minus_128_not_decoded": (_both(_recon_graph_input, _minus_128),
                              "edgepack HashedWeight node 'conv_decode': input 'buckets' (Cast of INT8 initializer "
                              "'conv_q'): value 4 is -128; int8-stored weights must be in [-127, 127]"),
    "short_int8_not_decoded": (_both(_recon_graph_input, _short),
                               "edgepack HashedWeight node 'conv_decode': initializer 'conv_q': raw_data has 19 bytes; "
                               "its shape needs 20"),
    "cast_two_to": (_cast_attribute("conv_to_float", TensorProto.FLOAT),
                    f"{WHERE}, which has 1 inputs, 1 outputs and 2 'to' attributes; a Cast has exactly one of each"),
    "cast_two_outputs": (lambda model: node(model, "conv_to_float").output.append("conv_qf2"),
                         f"{WHERE}, which has 1 inputs, 2 outputs and 1 'to' attributes; a Cast has exactly one of "
                         "each"),
    "cast_two_inputs": (_cast_second_input,
                        f"{WHERE}, which has 2 inputs, 1 outputs and 1 'to' attributes; a Cast has exactly one of "
                        "each"),
    **{f"cast_into_{op.lower()}{suffix}": (
        _cast_into(op, **attributes),
        f"edgepack {op} node 'other': input '{slot}' is the output of Cast node 'conv_to_float'; only HashedWeight "
        "'buckets' and CodebookWeight 'codebook' may be stored as int8")
       for op, slot, suffix, attributes in [
           ("HashedMatMul", "buckets", "", {"in_features": 108, "out_features": 4, "num_hashes": 1}),
           ("HashedMatMul", "buckets", "_stream", {"in_features": 108, "out_features": 4, "num_hashes": 1, "mode": 1}),
           ("CirculantMatMul", "blocks", "", {"in_features": 4, "out_features": 4, "block_size": 4}),
           ("HyperWeight", "center", "", {"shape": [4], "bits": 2})]},
}
FOLD = "edgepack HashedWeight node 'conv_decode': Cast node 'conv_to_int8' to INT8 of its output: decoded value"
FOLD_BAD = {  # valid for the validator: the decoded values, or the Casts reading them, are refused at load
    "fold_out_of_range": (_float_buckets(np.full(20, 200.0)),
                          f"{FOLD} 200 at index 0 is not an integer in [-128, 127]"),
    "fold_not_integer": (_float_buckets(np.arange(20) * 0.25, num_hashes=2), f"{FOLD} "),
    "fold_twice": (_second_cast_to_int8,
                   "edgepack HashedWeight node 'conv_decode': Cast nodes 'conv_to_int8' and 'conv_to_int8_again' both "
                   "cast its output to INT8; decode at load folds one Cast to INT8 per decoded weight"),
    "fold_cast_two_to": (_cast_attribute("conv_to_int8", TensorProto.INT8),
                         "edgepack HashedWeight node 'conv_decode': Cast node 'conv_to_int8' reading its output has 1 "
                         "inputs, 1 outputs and 2 'to' attributes; a Cast has exactly one of each"),
}


@pytest.mark.parametrize("case", CAST_BAD)
def test_bad_cast_chains_are_refused_by_validate_and_python_decode(case):
    change, message = CAST_BAD[case]
    data = edit(hashed_conv()[0], change)
    with pytest.raises(InvalidNodeError, match="^" + _escape(message)):
        check_onnx_model(onnx.ModelProto.FromString(data), "m", "ort")
    with pytest.raises(InvalidNodeError, match="^" + _escape(message)):
        onnx_session(data)


@pytest.mark.parametrize("case", FOLD_BAD)
def test_a_cast_to_int8_of_inexact_values_is_refused_at_load(case):
    change, message = FOLD_BAD[case]
    data = edit(hashed_conv()[0], change)
    assert check_onnx_model(onnx.ModelProto.FromString(data), "m", "ort") == 1
    with pytest.raises(InvalidNodeError, match="^" + _escape(message)):
        onnx_session(data)


def _escape(text: str) -> str:
    import re

    return re.escape(text)


# ---- validate and inspect ----------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_pattern_passes_the_validator_for_both_runtimes(name):
    model = onnx.ModelProto.FromString(MODELS[name]()[0])
    assert check_onnx_model(model, "m", "ort") == check_onnx_model(model, "m", "tflite") == 1


def test_an_int8_stored_codebook_of_too_many_values_gets_todays_shape_message():
    def big(model):
        t = initializer(model, "fc_q")
        t.CopyFrom(numpy_helper.from_array(np.ones(300, np.int8), "fc_q"))
    with pytest.raises(InvalidNodeError, match="input 'codebook' has 300 values; must have 1..256"):
        check_onnx_model(onnx.ModelProto.FromString(edit(codebook_gemm(False)[0], big)))


def test_inspect_counts_the_int8_bytes_and_decode_at_load(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(hashed_conv()[0])
    summary = inspect_onnx(path)
    (hashed,) = summary.nodes
    stored = 20 + 4 * 7  # the int8 buckets and the float identity recon
    assert (hashed.stored_bytes, hashed.dense_bytes, hashed.decoded_at_load, hashed.int8) == (stored, 4 * 108, True,
                                                                                              True)
    assert summary.memory_decoded == summary.other_bytes + 108  # the decoded int8 weight
    assert summary.memory_kernels == summary.other_bytes + stored + 4 * 108
    assert "weights 48 B stored (int8, decoded to an int8 weight) vs 432 B dense" in format_summary(summary)


# ---- the C decode at load (edgepack_ort_runner) ------------------------------------------------


@pytest.fixture(scope="module")
def libs():
    arch = platform.machine()
    try:
        return find_artifact("edgepack_ort_runner", arch), onnxruntime_library_path(arch), ort_library_path()
    except (FileNotFoundError, OSError) as exc:  # pragma: no cover - depends on the build
        pytest.skip(f"{exc} (run `make kernels`)")


def runner(libs, path, *flags, bench: bool = False) -> tuple[int, dict]:
    """The runner's exit code and its JSON: the outputs (--model), or the status (--bench)."""
    binary, ort_lib, edgepack_lib = libs
    argv = ["--bench", "--runs", "1", "--warmup", "0", str(path)] if bench else ["--model", str(path)]
    done = subprocess.run([str(binary), "--ort", str(ort_lib), "--lib", str(edgepack_lib), *flags, *argv],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode not in CRASHES, done.stderr
    return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])


def runner_output(result: dict) -> np.ndarray:
    (out,) = result["outputs"].values()
    return np.array(out["data"], np.float32).reshape(out["shape"])


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("external", [False, True])
def test_runner_folds_the_chain_and_equals_python(libs, tmp_path, name, external):
    data, _ = MODELS[name]()
    path = tmp_path / f"{name}.onnx"
    if external:  # the int8 buckets / codebook and the other tensors in an external data file
        onnx.save(onnx.ModelProto.FromString(data), path, save_as_external_data=True, location="m.data",
                  size_threshold=0)
        stored = "conv_q" if name == "hashed_conv" else "fc_q"
        assert initializer(onnx.load(path, load_external_data=False), stored).data_location == TensorProto.EXTERNAL
    else:
        path.write_bytes(data)
    rc, decoded = runner(libs, path)
    assert rc == 0 and (decoded["decode_at_load"], decoded["decoded_nodes"]) == (True, 1), decoded
    rc, fused = runner(libs, path, "--keep-fused")
    assert rc == 0 and fused["decoded_nodes"] == 0
    want = run(data)
    np.testing.assert_array_equal(runner_output(decoded), want)
    np.testing.assert_array_equal(runner_output(fused), want)


@pytest.mark.parametrize("case", {**CAST_BAD, **FOLD_BAD})
def test_runner_refuses_bad_chains_with_pythons_message(libs, tmp_path, case):
    change, message = {**CAST_BAD, **FOLD_BAD}[case]
    path = tmp_path / f"{case}.onnx"
    path.write_bytes(edit(hashed_conv()[0], change))
    with pytest.raises(InvalidNodeError) as python:
        onnx_session(path.read_bytes())
    rc, result = runner(libs, path, bench=True)
    assert rc != 0 and result["status"] == "error", result
    assert str(python.value) in result["error"] and message in result["error"]
