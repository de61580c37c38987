"""int8 hashed / codebook layers exported to ONNX (exporter/onnx_quant.py, passes.store_int8_decoder_inputs):
the spec's pattern INT8 initializer → Cast(FLOAT) → HashedWeight | CodebookWeight → Cast(INT8) →
DequantizeLinear(axis 0) → Conv | Gemm, the decoded int8 weight in ORT (our kernels and the fallback functions)
equal to torch's, the model's outputs within one output quantization step of torch's int8 model, and the
pass on hand-built graphs."""

from collections import OrderedDict

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from edgepack import onnx_session
from edgepack.compression import CodebookConv2d, CodebookLinear, HashedConv2d, HashedLinear
from edgepack.compression.quantize_compressed import (
    INT8_STORED,
)
from edgepack.compression.stages import StageData, run_stage
from edgepack.exporter import export
from edgepack.exporter.fallbacks import STANDARD_OPSET, fallback_function
from edgepack.exporter.onnx_export import IDENTITY_RECON
from edgepack.exporter.passes import store_int8_decoder_inputs
from edgepack.runtime_kernels.op_spec import DOMAIN, OPSET_VERSION


def codebook_from(dense: nn.Module, levels: int, density: float, sparse: bool) -> nn.Module:
    """A codebook layer of ``dense`` with its weight rounded to ``levels`` per unit, a random share pruned."""
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        keep = torch.rand(dense.weight.shape, generator=generator) < density
        dense.weight.copy_(torch.round(dense.weight * levels) / levels * keep)
    make = CodebookConv2d if isinstance(dense, nn.Conv2d) else CodebookLinear
    return make.from_dense(dense, sparse=sparse)


def int8_net(sparse_fc: bool) -> nn.Sequential:
    """Hashed conv + BN + ReLU, codebook depthwise conv (dense form) + BN + ReLU, pool, flatten, hashed FC +
    ReLU (unsigned hash), dense FC + ReLU, codebook FC (sparse form when ``sparse_fc``: the export then stores every
    CodebookWeight sparse)."""
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict([
        ("conv", HashedConv2d(1, 8, 3, ratio=0.5, padding=1, seed=11)), ("bn", nn.BatchNorm2d(8)),
        ("relu", nn.ReLU()),
        ("dw", codebook_from(nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), 8, 0.9, sparse=False)),
        ("dw_bn", nn.BatchNorm2d(8)), ("dw_relu", nn.ReLU()), ("pool", nn.MaxPool2d(2)), ("flatten", nn.Flatten()),
        ("fc1", HashedLinear(32, 24, ratio=0.25, seed=7, signed=False)), ("fc1_relu", nn.ReLU()),
        ("fc2", nn.Linear(24, 16)), ("fc2_relu", nn.ReLU()),
        ("fc3", codebook_from(nn.Linear(16, 5), 16, 0.4 if sparse_fc else 1.0, sparse=sparse_fc)),
    ]))
    for bn in (model.bn, model.dw_bn):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module", params=[True, False], ids=["sparse_fc", "dense_forms"])
def exported(request, tmp_path_factory):
    """(int8 model, inputs, .onnx path) of int8_net after PTQ."""
    x = torch.randn(120, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    data = StageData((x, torch.arange(120) % 5), (x[:40], torch.arange(40) % 5), batch_size=40)
    model, _ = run_stage("quantize", int8_net(request.param), data, progress=False)
    assert sum(isinstance(m, INT8_STORED) for m in model.modules()) == 4
    path = export(model, x[:1], tmp_path_factory.mktemp("int8_storage") / "model.onnx")
    return model, x, path, request.param


def producers_and_readers(graph: onnx.GraphProto):
    producers = {out: node for node in graph.node for out in node.output}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return producers, readers


def attribute(node: onnx.NodeProto, name: str, default=None):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def test_graph_has_the_int8_storage_pattern(exported):
    model, _, path, sparse_fc = exported
    graph = onnx.load(path).graph
    initializers = {t.name: t for t in graph.initializer}
    producers, readers = producers_and_readers(graph)
    decoders = {n.name: n for n in graph.node if n.domain == DOMAIN}
    assert sorted(decoders) == ["conv", "dw", "fc1", "fc3"]  # named after their layers
    for name, decoder in decoders.items():
        layer = model.get_submodule(name)
        cast_in = producers[decoder.input[0]]
        assert cast_in.op_type == "Cast" and attribute(cast_in, "to") == TensorProto.FLOAT
        q = initializers[cast_in.input[0]]
        role = "buckets" if decoder.op_type == "HashedWeight" else "codebook"
        assert q.data_type == TensorProto.INT8 and q.name == f"{name}.{role}"
        values = numpy_helper.to_array(q)
        if decoder.op_type == "HashedWeight":
            assert values.shape == (layer.buckets.numel(),) and np.array_equal(values, layer.buckets.numpy())
            assert list(attribute(decoder, "shape")) == list(layer.weight_shape)
            assert numpy_helper.to_array(initializers[decoder.input[1]]).tolist() == list(IDENTITY_RECON)
        else:  # the codebook (re-encoded when the export stores every CodebookWeight sparse)
            assert len(decoder.input) == (4 if sparse_fc else 2 + 2 * layer.sparse)
            assert values.size <= 256 and np.abs(values.astype(int)).max() <= 127
            if not sparse_fc:
                assert np.array_equal(values, layer.codebook.numpy())
        (cast_out,) = readers[decoder.output[0]]
        assert cast_out.op_type == "Cast" and attribute(cast_out, "to") == TensorProto.INT8
        (dq,) = readers[cast_out.output[0]]
        assert dq.op_type == "DequantizeLinear" and attribute(dq, "axis", 1) == 0
        scale, zero = (numpy_helper.to_array(initializers[n]) for n in dq.input[1:3])
        assert scale.dtype == np.float32 and np.array_equal(scale, layer.weight_scale.numpy())
        assert zero.dtype == np.int8 and zero.shape == scale.shape and not zero.any()
        (compute,) = readers[dq.output[0]]
        assert compute.op_type == ("Conv" if "Conv" in type(layer).__name__ else "Gemm")
        assert compute.input[1] == dq.output[0]
        if compute.op_type == "Gemm":
            assert attribute(compute, "transB") == 1
        # activations: a DequantizeLinear before, a QuantizeLinear after (past the fused Relu)
        assert producers[compute.input[0]].op_type == "DequantizeLinear"
        after = readers[compute.output[0]][0]
        after = readers[after.output[0]][0] if after.op_type == "Relu" else after
        assert after.op_type == "QuantizeLinear"
    stored = {t.name: t.data_type for t in graph.initializer if t.name.endswith((".buckets", ".codebook"))}
    assert stored == dict.fromkeys(["conv.buckets", "dw.codebook", "fc1.buckets", "fc3.codebook"], TensorProto.INT8)


def sessions(path) -> dict:
    return {"kernels": onnx_session(path, use_kernels=True, decode_at_load=False),
            "fallback": onnx_session(path, use_kernels=False)}


def test_onnx_runtime_equals_torch_int8(exported):
    model, x, path, _ = exported
    with torch.no_grad():
        want = model(x).numpy()
    step = model.fc3.qparams("output")[0]
    for label, session in sessions(path).items():
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        difference = np.abs(got - want)
        assert difference.max() <= step * 1.001, label
        assert (difference > 0).mean() < 0.01, label  # a step off only where a rounding tie falls differently


def test_decoded_int8_weight_in_onnx_runtime_is_torchs(exported, tmp_path):
    """The Cast(INT8) outputs, made graph outputs, in ORT with our kernels and with the fallback functions."""
    model, x, path, _ = exported
    proto = onnx.load(path)
    _, readers = producers_and_readers(proto.graph)
    outputs = {}
    for node in proto.graph.node:
        if node.domain == DOMAIN:
            (cast,) = readers[node.output[0]]
            outputs[node.name] = cast.output[0]
            proto.graph.output.append(helper.make_tensor_value_info(cast.output[0], TensorProto.INT8, None))
    probe = tmp_path / "probe.onnx"
    onnx.save(proto, probe)
    for label, session in sessions(probe).items():
        got = dict(zip([o.name for o in session.get_outputs()],
                       session.run(None, {session.get_inputs()[0].name: x[:2].numpy()})))
        for name, output in outputs.items():
            weight = model.get_submodule(name).weight
            assert got[output].dtype == np.int8 and np.array_equal(got[output], weight.numpy()), (label, name)


def decoder_graph(values: np.ndarray, readers: str = "cast") -> onnx.ModelProto:
    """W = HashedWeight(buckets, recon) [4, 3] → Cast(INT8) (or also an Abs reader) → DequantizeLinear → output."""
    shape = [4, 3]
    nodes = [helper.make_node("HashedWeight", ["fc.buckets", "recon"], ["w"], domain=DOMAIN, name="hw",
                              shape=shape, num_hashes=1, seed=3, signed=1),
             helper.make_node("Cast", ["w"], ["wq"], to=TensorProto.INT8),
             helper.make_node("DequantizeLinear", ["wq", "scale", "zero"], ["y"], axis=0)]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)]
    if readers == "abs":
        nodes.append(helper.make_node("Abs", ["w"], ["w_abs"]))
        outputs.append(helper.make_tensor_value_info("w_abs", TensorProto.FLOAT, shape))
    if readers == "initializer":
        nodes.append(helper.make_node("Abs", ["fc.buckets"], ["b_abs"]))
        outputs.append(helper.make_tensor_value_info("b_abs", TensorProto.FLOAT, None))
    initializers = [numpy_helper.from_array(values.astype(np.float32), "fc.buckets"),
                    numpy_helper.from_array(np.array(IDENTITY_RECON, np.float32), "recon"),
                    numpy_helper.from_array(np.full(4, 0.5, np.float32), "scale"),
                    numpy_helper.from_array(np.zeros(4, np.int8), "zero")]
    graph = helper.make_graph(nodes, "g", [], outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", STANDARD_OPSET),
                                                    helper.make_opsetid(DOMAIN, OPSET_VERSION)])
    model.functions.append(fallback_function("HashedWeight"))
    return model


def test_pass_stores_integer_buckets_as_int8_and_keeps_the_values():
    values = np.array([-127, 3, 0, 127, -1], np.float32)
    model = decoder_graph(values)
    stored = store_int8_decoder_inputs(model)
    initializers = {t.name: t for t in stored.graph.initializer}
    assert initializers["fc.buckets"].data_type == TensorProto.INT8
    assert np.array_equal(numpy_helper.to_array(initializers["fc.buckets"]), values.astype(np.int8))
    cast = stored.graph.node[0]
    assert (cast.op_type, list(cast.input), list(cast.output)) == ("Cast", ["fc.buckets"], ["fc.buckets_float"])
    assert attribute(cast, "to") == TensorProto.FLOAT
    assert stored.graph.node[1].input[0] == "fc.buckets_float" and stored.graph.node[1].name == "hw"
    onnx.checker.check_model(stored, full_check=True)
    assert store_int8_decoder_inputs(stored) == stored  # nothing left to store
    assert model.graph.initializer[0].data_type == TensorProto.FLOAT  # the input is untouched
    got = [onnx_session(m.SerializeToString(), use_kernels=False).run(None, {})[0] for m in (model, stored)]
    assert np.array_equal(got[0], got[1])


@pytest.mark.parametrize("values, readers", [
    (np.array([1.5, 2, 3], np.float32), "cast"),  # not integers
    (np.array([128, 2, 3], np.float32), "cast"),  # out of the int8 weight range
    (np.array([np.nan, 2, 3], np.float32), "cast"),
    (np.array([1, 2, 3], np.float32), "abs"),  # the decoded float weight is read too
    (np.array([1, 2, 3], np.float32), "initializer"),  # the buckets are read as floats elsewhere
])
def test_pass_leaves_other_decoder_inputs_float(values, readers):
    model = decoder_graph(values, readers)
    stored = store_int8_decoder_inputs(model)
    assert stored == model


def test_convert_and_run_in_litert_as_a_user_would(exported, tmp_path):
    """`edgepack convert` of the exported file into a fully int8 .tflite that stores the int8 buckets /
    codebooks (smaller than the int8 dense model's file), `edgepack inspect` of it, and LiteRT (decoded at load)
    within the converter's tolerance of torch's int8 model."""
    import subprocess
    import sys

    from edgepack.exporter.tflite_verify import INT8_STEPS
    from edgepack.runtime_kernels import tflite_interpreter

    model, x, path, _ = exported
    out = tmp_path / "model.tflite"
    command = [sys.executable, "-m", "edgepack.cli"]
    converted = subprocess.run([*command, "convert", str(path), "-o", str(out)], capture_output=True, text=True)
    assert converted.returncode == 0, converted.stdout + converted.stderr
    inspected = subprocess.run([*command, "inspect", str(out)], capture_output=True, text=True)
    assert inspected.returncode == 0 and "HashedWeight" in inspected.stdout, inspected.stdout + inspected.stderr
    interpreter = tflite_interpreter(out)
    given, output = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    with torch.no_grad():
        want = model(x).numpy()
    got = []
    for sample in x.numpy():
        interpreter.set_tensor(given["index"], sample[None])
        interpreter.invoke()
        got.append(interpreter.get_tensor(output["index"])[0])
    step = model.fc3.qparams("output")[0]
    assert np.abs(np.array(got) - want).max() <= INT8_STEPS * step * 1.001
    assert (np.array(got).argmax(1) == want.argmax(1)).mean() >= 0.95
