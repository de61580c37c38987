"""torch == ORT with our kernels == ORT with the fallback functions == ReferenceEvaluator."""

import json

import numpy as np
import onnx
import pytest
import torch
from export_helpers import LAYERS, assert_close_relative, run_all
from torch import nn

from edgepack import onnx_session
from edgepack.errors import EdgepackError
from edgepack.exporter import export, inspect_onnx
from edgepack.exporter.fallbacks import DOMAIN


@pytest.mark.parametrize("mode", ["kernels", "portable"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_every_layer_in_every_runtime(name, mode, tmp_path):
    torch.manual_seed(1)
    layer = LAYERS[name]().eval()
    path = export(layer, torch.randn(1, layer.in_features), tmp_path / f"{name}.onnx", mode=mode)
    onnx.checker.check_model(str(path), full_check=True)
    for batch in (1, 4):  # the batch axis is dynamic
        x = torch.randn(batch, layer.in_features)
        expected = layer(x).detach().numpy()
        for runtime, y in run_all(path, x.numpy()).items():
            assert_close_relative(y, expected), runtime


@pytest.mark.parametrize("mode", ["kernels", "portable"])
def test_mixed_cnn_mlp(mixed_net, mode, tmp_path):
    x = torch.randn(3, 1, 9, 9)
    path = export(mixed_net, x, tmp_path / "mixed.onnx", mode=mode)
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(path)
    custom = sorted({n.op_type for n in model.graph.node if n.domain == DOMAIN})
    expected_ops = (["CirculantMatMul", "HashedMatMul", "HashedWeight", "LDRMatMul"]
                    if mode == "kernels" else ["HashedWeight"])
    assert custom == expected_ops
    assert {f.name for f in model.functions} == set(custom)
    expected = mixed_net(x).detach().numpy()
    for runtime, y in run_all(path, x.numpy()).items():
        assert_close_relative(y, expected), runtime


def executed_op_types(path, use_kernels: bool, tmp_path) -> set[str]:
    """The node op types ORT's profiler saw run."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / f"profile_{use_kernels}")
    session = onnx_session(path, use_kernels=use_kernels, decode_at_load=False, sess_options=options)
    session.run(None, {session.get_inputs()[0].name: np.ones((1, 16), np.float32)})
    events = json.loads(open(session.end_profiling()).read())
    return {e["args"]["op_name"] for e in events if e.get("cat") == "Node" and "op_name" in e["args"]}


def test_profiler_shows_which_path_ran(tmp_path):
    torch.manual_seed(2)
    model = nn.Sequential(LAYERS["hashed_bias_unsigned"](), nn.ReLU()).eval()
    path = export(model, torch.randn(1, 16), tmp_path / "m.onnx")
    with_kernels = executed_op_types(path, True, tmp_path)
    fallback = executed_op_types(path, False, tmp_path)
    assert "HashedMatMul" in with_kernels and "MatMul" not in with_kernels
    # ORT inlines the function, folds the decoded weight and fuses MatMul + Add + Relu.
    assert "HashedMatMul" not in fallback and fallback & {"MatMul", "Gemm", "FusedGemm"}


def test_hashed_at_one_sixty_fourth_is_small_on_disk(tmp_path):
    torch.manual_seed(3)
    dense = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512)).eval()
    from edgepack.compression import compress

    hashed, _ = compress(dense, {"*": {"method": "hashed", "ratio": 1 / 64}})
    x = torch.randn(1, 512)
    dense_size = export(dense, x, tmp_path / "dense.onnx").stat().st_size
    hashed_size = export(hashed.eval(), x, tmp_path / "hashed.onnx").stat().st_size
    assert hashed_size * 40 <= dense_size, (hashed_size, dense_size)
    summary = inspect_onnx(tmp_path / "hashed.onnx")
    assert [n.op_type for n in summary.nodes] == ["HashedMatMul", "HashedMatMul"]
    assert summary.nodes[0].name == "0" and summary.nodes[0].dense_bytes == 512 * 512 * 4
    assert summary.nodes[0].stored_bytes == 4 * (512 * 512 // 64) + 4 * 7  # + identity recon


def test_exported_nodes_carry_no_exporter_debug_trail(tmp_path):
    """The torch exporter's stack traces and FX nodes are stripped: they were half the file of a
    hashed DS-CNN (95 KB with them, 44 KB without)."""
    from edgepack.compression import compress
    from edgepack.kws.models import ds_cnn

    torch.manual_seed(0)
    hashed, _ = compress(ds_cnn().eval(), {"pw*": {"method": "hashed", "ratio": 1 / 8}})
    proto = onnx.load(export(hashed.eval(), torch.randn(1, 1, 49, 10), tmp_path / "m.onnx"))
    keys = {p.key for node in proto.graph.node for p in node.metadata_props}
    assert not [k for k in keys if k.startswith(("pkg.torch.", "pkg.onnxscript.", "namespace"))], keys
    assert sum(len(n.SerializeToString()) for n in proto.graph.node) < 200 * len(proto.graph.node)


def test_stream_mode_attribute(tmp_path):
    torch.manual_seed(4)
    layer = LAYERS["hashednets"]().eval()
    path = export(layer, torch.randn(2, 37), tmp_path / "s.onnx", stream=True)
    node = next(n for n in onnx.load(path).graph.node if n.op_type == "HashedMatMul")
    assert {a.name: a.i for a in node.attribute}["mode"] == 1
    x = torch.randn(5, 37)
    for runtime, y in run_all(path, x.numpy()).items():
        assert_close_relative(y, layer(x).detach().numpy()), runtime


def test_unsupported_suffix_and_mode(tmp_path):
    layer = LAYERS["ldr"]()
    with pytest.raises(EdgepackError, match=r"unsupported suffix '.pb'; valid suffixes: .onnx, .tflite"):
        export(layer, torch.randn(1, 30), tmp_path / "m.pb")
    with pytest.raises(EdgepackError, match="mode must be one of"):
        export(layer, torch.randn(1, 30), tmp_path / "m.onnx", mode="fast")


def test_example_of_the_wrong_shape_is_refused_before_writing(tmp_path):
    """It used to write a file whose graph cannot run on its own declared input."""
    from edgepack.exporter.onnx_export import ExportError
    from edgepack.exporter.validate import InvalidNodeError

    with pytest.raises(ExportError, match=r"does not run on example input\(s\) of shape \[1, 36\].*"
                                          r"takes in_features=37"):
        export(LAYERS["hashednets"](), torch.randn(1, 36), tmp_path / "m.onnx")
    # the LDR layer zero-pads a short input in torch; the node check still catches the file
    with pytest.raises(InvalidNodeError, match=r"LDRMatMul node .*: input 'X' has shape \[-1, 29\]; "
                                               r"its last axis must equal in_features=30"):
        export(LAYERS["ldr"](), torch.randn(1, 29), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_export_refuses_nodes_above_the_decode_limits(tmp_path, monkeypatch):
    """The exporter checks its own output with the kernels' rules, limits included."""
    from edgepack.compression import HashedLinear
    from edgepack.exporter.validate import InvalidNodeError

    layer = HashedLinear(40, 30, ratio=0.25).eval()
    monkeypatch.setenv("EDGEPACK_MAX_VIRTUAL_WEIGHTS", "1199")
    with pytest.raises(InvalidNodeError, match=r"in_features=40 x out_features=30 would decode 1200 "
                                               r"virtual weights, above the limit of 1199 per node"):
        export(layer, torch.randn(1, 40), tmp_path / "m.onnx")
    monkeypatch.setenv("EDGEPACK_MAX_VIRTUAL_WEIGHTS", "1200")
    monkeypatch.setenv("EDGEPACK_MAX_DECODED_BYTES", "4799")
    with pytest.raises(InvalidNodeError, match=r"the expanded weight \(mode 0\) .* needs 4800 bytes"):
        export(layer, torch.randn(1, 40), tmp_path / "m.onnx")
    assert export(layer, torch.randn(1, 40), tmp_path / "m.onnx", stream=True).exists()  # mode 1


def test_every_recipe_layer_registers_a_lowering():
    """A compressed layer a recipe can create but the exporter cannot lower would export as its
    eager torch ops (thousands of nodes) instead of one ai.edgepack node."""
    from edgepack.compression import METHODS
    from edgepack.exporter.onnx_export import LOWERINGS

    layers = {layer for classes in METHODS.values() for layer in classes.values()}
    assert layers and layers <= set(LOWERINGS), sorted(c.__name__ for c in layers - set(LOWERINGS))


def test_a_layer_registered_with_lowers_is_exported_as_one_node(tmp_path):
    """``@lowers`` outside onnx_export.py is all a new layer class needs to export."""
    from edgepack.compression import HashedLinear
    from edgepack.exporter.onnx_export import LOWERINGS, LoweredHashedLinear, lowers

    class RenamedHashedLinear(HashedLinear):
        """The same layer under another class, which lower() matches by exact type."""

    torch.manual_seed(2)
    layer = RenamedHashedLinear(12, 7, ratio=1 / 4, num_hashes=2, seed=5).eval()
    try:
        lowers(RenamedHashedLinear)(LoweredHashedLinear)
        with pytest.raises(ValueError, match="RenamedHashedLinear is already lowered by LoweredHashedLinear"):
            lowers(RenamedHashedLinear)(nn.Identity)
        path = export(layer, torch.randn(1, 12), tmp_path / "renamed.onnx")
    finally:
        LOWERINGS.pop(RenamedHashedLinear, None)
    graph = onnx.load(str(path)).graph
    assert [(n.domain, n.op_type) for n in graph.node] == [(DOMAIN, "HashedMatMul")]
    x = torch.randn(3, 12)
    for runtime, y in run_all(path, x.numpy()).items():
        assert_close_relative(y, layer(x).detach().numpy()), runtime
