"""Hyper-Compression: the bit stream, the HyperWeight reference decoder against a per-element loop,
the torch decoder bit for bit, the encoder's error bound and every named error of the contract."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgepack.compression import (
    CheckpointError,
    CodebookConv2d,
    HyperConv2d,
    HyperError,
    HyperLinear,
    check_hyper,
    compress,
    compressed_size_bytes,
    decode_hyper,
    decode_hyper_torch,
    encode_hyper,
    hyper_compress,
    load_checkpoint,
    pack_bits,
    register_builder,
    save_checkpoint,
    unpack_bits,
)
from edgepack.compression.codebook import CodebookError
from edgepack.compression.hyper import (
    MAX_AUTO_RINGS,
    SIDE_QUANTILES,
    choose_encoding,
    decode_encoded,
    relative_error,
    trajectory_base,
)
from edgepack.demo import digits_mlp


def loop_pack(values, bits):
    """The contract's bit stream written bit by bit."""
    out = bytearray(-(-len(values) * bits // 8))
    for m, value in enumerate(values):
        for i in range(bits):
            b = m * bits + i
            out[b // 8] |= ((int(value) >> i) & 1) << (b % 8)
    return np.frombuffer(bytes(out), dtype=np.uint8)


def loop_decode(e):
    """The contract's decode, one weight at a time with float32 scalars."""
    f32 = np.float32
    n, k, bits = e["points"], e["group"], e["bits"]
    t = 1
    while t ** k < n:
        t += 1
    stream = np.unpackbits(e["indices"], bitorder="little")
    length, c = f32(e["side"][0]), [f32(v) for v in e["center"]]
    count = math.prod(e["shape"])
    out = np.zeros(count, dtype=np.float32)
    for pos in range(count):
        m, j = divmod(pos, k)
        v = sum(int(stream[m * bits + i]) << i for i in range(bits))
        r, q = divmod(v, n + 1)
        if q == 0:
            p = c[j]
        else:
            step = f32(length / f32(t ** (k - j)))
            p = f32(f32(np.fmod(f32(f32(q - 1) * step), length)) + f32(c[j] - f32(length * f32(0.5))))
        out[pos] = p if r == 0 else f32(f32(f32(p - c[j]) * f32(e["scales"][r - 1])) + c[j])
    return out.reshape(e["shape"])


def torch_decode(e):
    arrays = [torch.from_numpy(np.asarray(e[name])) for name in ("indices", "center", "side", "scales")]
    return decode_hyper_torch(*arrays, shape=e["shape"], points=e["points"], group=e["group"],
                              rings=e["rings"], bits=e["bits"]).numpy()


def same_bits(a, b):
    return a.dtype == b.dtype == np.float32 and a.shape == b.shape and bool(
        (a.view(np.uint32) == b.view(np.uint32)).all())


@pytest.mark.parametrize("bits", range(1, 25))
def test_pack_unpack_round_trip_every_width(bits):
    rng = np.random.default_rng(bits)
    for count in (1, 3, 8, 13):
        values = rng.integers(0, 1 << bits, count)
        values[0] = (1 << bits) - 1
        packed = pack_bits(values, bits)
        np.testing.assert_array_equal(packed, loop_pack(values, bits))
        assert packed.size == -(-count * bits // 8)
        np.testing.assert_array_equal(unpack_bits(packed, count, bits), values)


def test_pack_refuses_values_that_do_not_fit():
    with pytest.raises(HyperError, match=r"\[0, 7\]"):
        pack_bits([8], 3)
    with pytest.raises(HyperError, match="bits"):
        pack_bits([1], 25)


WEIGHTS = {
    "uniform": lambda rng: rng.uniform(-0.3, 0.3, (24, 37)),
    "gaussian": lambda rng: rng.normal(0.02, 0.1, (16, 8, 3, 3)),
    "heavy": lambda rng: rng.standard_t(2.0, (50, 19)) * 0.05,
}


def bound_violations(weight, e):
    """Groups whose decode error exceeds the stated bound: ‖ŵ − w‖₂ ≤ √k·L/t·s for n = t^k, s = 1
    in the square, else the scale of the ring the public code picks (the first whose radius
    (L/2)·s_r holds the group); float32 rounding allowed."""
    k, n, length = e["group"], e["points"], float(e["side"][0])
    t = trajectory_base(n, k)
    assert t ** k == n
    decoded = decode_encoded(e).astype(np.float64).ravel()
    flat = weight.astype(np.float64).ravel()
    g = -(-flat.size // k)
    x = np.concatenate([flat, np.full(g * k - flat.size, flat.mean())]).reshape(g, k)
    w = np.concatenate([decoded, x.ravel()[flat.size:]]).reshape(g, k)  # the dropped padding: exact
    c = e["center"].astype(np.float64)
    distance = np.linalg.norm(x - c, axis=1)
    inside = (np.abs(x - c) <= length / 2).all(axis=1)
    radii = np.concatenate([[length / 2], length / 2 * e["scales"].astype(np.float64)])
    ring = np.where(inside, 0, np.argmax(distance[:, None] <= radii[None, :] * (1 + 1e-12), axis=1))
    covered = inside | (distance <= radii[-1])
    scale = np.concatenate([[1.0], e["scales"].astype(np.float64)])[ring]
    tolerance = 1e-5 * (length + np.abs(c).max()) * scale
    bound = math.sqrt(k) * length / t * scale + tolerance
    error = np.linalg.norm(w - x, axis=1)
    return int(((error > bound) & covered).sum()), int(covered.sum())


@pytest.mark.parametrize("kind", sorted(WEIGHTS))
@pytest.mark.parametrize("group", [1, 2, 3, 4])
def test_round_trip_within_the_bound(kind, group):
    rng = np.random.default_rng(group)
    weight = WEIGHTS[kind](rng).astype(np.float32)
    spread = float(np.quantile(np.abs(weight - weight.mean()), 0.8)) * 2
    for t, rings in ((6, 0), (4, 1), (3, 3)):
        e = encode_hyper(weight, side=spread, points=t ** group, rings=rings, group=group)
        assert e["bits"] == max(1, ((rings + 1) * (t ** group + 1) - 1).bit_length())
        assert e["scales"].shape == (rings,) and e["indices"].dtype == np.uint8
        bad, covered = bound_violations(weight, e)
        assert bad == 0
        assert covered == -(-weight.size // group) or rings == 0


@pytest.mark.parametrize("group,points,rings", [(1, 7, 0), (2, 20, 2), (3, 27, 1), (4, 81, 4), (2, 1, 0)])
def test_decode_equals_the_loop_and_torch(group, points, rings):
    rng = np.random.default_rng(points)
    weight = rng.normal(0.1, 0.2, (11, 5)).astype(np.float32)
    e = encode_hyper(weight, side=0.25, points=points, rings=rings, group=group)
    decoded = decode_encoded(e)
    assert same_bits(decoded, loop_decode(e))
    assert same_bits(torch_decode(e), decoded)


def test_trajectory_base_is_the_smallest_root_for_every_n():
    """t from the float root, corrected, equals counting up from 1 for every n and k of the contract."""
    for k in range(1, 5):
        t, expected = 1, []
        for n in range(1, 65537):
            while t ** k < n:
                t += 1
            expected.append(t)
        assert [trajectory_base(n, k) for n in range(1, 65537)] == expected


def test_torch_decode_bit_exact_on_every_index():
    """Every (ring, point) of a large table, through torch and numpy."""
    n, k, rings = 999, 2, 3
    limit = (rings + 1) * (n + 1)
    bits = max(1, (limit - 1).bit_length())
    idx = np.arange(limit)
    e = {"indices": pack_bits(idx, bits), "center": np.float32([0.013, -0.27]), "side": np.float32([0.731]),
         "scales": np.float32([1.5, 2.25, 7.0]), "shape": (limit * k,), "points": n, "group": k,
         "rings": rings, "bits": bits}
    decoded = decode_encoded(e)
    assert same_bits(torch_decode(e), decoded)
    assert same_bits(loop_decode(e)[:4000], decoded[:4000])


def public_ring_errors(weight, e):
    """Each group's error under the public code's ring pick (compress_decom_v3): groups in the
    square take ring 0's nearest point; the others the first ring whose radius s_r·L/2 holds their
    distance to the centroid, the group scaled by 1/s_r to its nearest ring-0 point, decoded."""
    from scipy.spatial import cKDTree

    from edgepack.runtime_kernels.hyper_format import hyper_table

    groups = weight.astype(np.float64).reshape(-1, 2)
    c, half = e["center"].astype(np.float64), float(e["side"][0]) / 2
    table = hyper_table(e["center"], e["side"], e["scales"], points=e["points"], group=2).astype(np.float64)
    tree = cKDTree(table[:e["points"] + 1])
    radius = e["scales"].astype(np.float64) * half
    distance = np.linalg.norm(groups - c, axis=1)
    ring = np.where(np.abs(groups - c).max(axis=1) <= half, 0, np.argmax(distance[:, None] <= radius, axis=1) + 1)
    scale = np.r_[1.0, e["scales"].astype(np.float64)][ring]
    _, q = tree.query((groups - c) / scale[:, None] + c)
    return np.linalg.norm(table[ring * (e["points"] + 1) + q] - groups, axis=1)


def test_rings_beat_or_match_the_public_assignment():
    """A group outside the square takes the ring that decodes it closest: never worse than the
    public code's pick (the first distance ring that holds it), group by group."""
    rng = np.random.default_rng(5)
    weight = np.concatenate([rng.normal(0, 0.05, 2000), [0.9, -1.3, 2.0, 0.7, 0.33, -0.41]]).astype(np.float32)
    for rings in (1, 2, 4):
        e = encode_hyper(weight, side=0.2, points=144, rings=rings, group=2)
        assert bound_violations(weight, e)[0] == 0
        ours = np.linalg.norm(decode_encoded(e).astype(np.float64).reshape(-1, 2) - weight.reshape(-1, 2), axis=1)
        public = public_ring_errors(weight, e)
        assert (ours <= public + 1e-7).all()
        assert ours.sum() < public.sum()  # somewhere the best ring is not the public code's


def good():
    e = encode_hyper(np.linspace(-1, 1, 21, dtype=np.float32).reshape(3, 7), side=1.0, points=16,
                     rings=2, group=2)
    return {name: e[name] for name in ("indices", "center", "side", "scales")}, \
        {name: e[name] for name in ("shape", "points", "group", "rings", "bits")}


def mutate(**changes):
    arrays, attributes = good()
    for name, value in changes.items():
        (arrays if name in arrays else attributes)[name] = value
    return arrays, attributes


@pytest.mark.parametrize("changes,message", [
    ({"points": 0}, r"attribute 'points' = 0; must be in \[1, 65536\]"),
    ({"points": 65537}, r"attribute 'points' = 65537; must be in \[1, 65536\]"),
    ({"group": 5}, r"attribute 'group' = 5; must be in \[1, 4\]"),
    ({"rings": 16}, r"attribute 'rings' = 16; must be in \[0, 15\]"),
    ({"bits": 25}, r"attribute 'bits' = 25; must be in \[1, 24\]"),
    ({"bits": True}, r"attribute 'bits' = True"),
    ({"shape": (3, 0)}, r"attribute 'shape'"),
    ({"indices": np.zeros(9, np.int32)}, r"indices must be 1-D uint8, got int32"),
    ({"indices": np.zeros(2, np.uint8)}, r"truncated packed indices: indices has 2 bytes; 11 groups "
                                         r"of 6 bits need 9"),
    ({"indices": np.zeros(10, np.uint8)}, r"indices has 10 bytes; 11 groups of 6 bits need exactly 9"),
    ({"indices": np.r_[np.zeros(8, np.uint8), np.uint8(0x40)]}, r"non-zero trailing bits"),
    ({"indices": pack_bits([0] * 5 + [51] + [0] * 5, 6)}, r"index 51 of group 5 is out of range: "
                                                          r"indices must be < \(rings\+1\)·\(points\+1\) = 51"),
    ({"center": np.zeros(3, np.float32)}, r"center must be float32 \[2\] \(group\), got float32 \[3\]"),
    ({"center": np.zeros(2, np.float64)}, r"center must be float32 \[2\]"),
    ({"center": np.float32([0, np.nan])}, r"center must be finite"),
    ({"side": np.float32([1, 1])}, r"side must be float32 \[1\]"),
    ({"side": np.float32([0])}, r"side must be finite and > 0, got 0.0"),
    ({"side": np.float32([np.inf])}, r"side must be finite and > 0"),
    ({"scales": None}, r"scales missing; rings = 2"),
    ({"scales": np.float32([1.5])}, r"scales must be float32 \[2\] \(rings\), got float32 \[1\]"),
    ({"scales": np.float32([1.5, -1])}, r"scales must be finite and > 0"),
    ({"scales": np.float32([1.5, np.nan])}, r"scales must be finite and > 0"),
    ({"rings": 0, "indices": np.zeros(9, np.uint8), "scales": np.float32([1.5, 2])},
     r"scales present with rings = 0"),
])
def test_named_errors(changes, message):
    arrays, attributes = mutate(**changes)
    with pytest.raises(HyperError, match=message):
        decode_hyper(arrays["indices"], arrays["center"], arrays["side"], arrays["scales"], **attributes)
    with pytest.raises(HyperError, match="^HyperWeight: "):
        check_hyper(arrays["indices"], arrays["center"], arrays["side"], arrays["scales"], **attributes)


def test_decode_limits_checked_before_allocating(monkeypatch):
    arrays, attributes = good()
    monkeypatch.setenv("EDGEPACK_MAX_VIRTUAL_WEIGHTS", "20")
    with pytest.raises(HyperError, match="would decode 21 weights, above the limit of 20"):
        decode_hyper(**arrays, **attributes)
    monkeypatch.setenv("EDGEPACK_MAX_VIRTUAL_WEIGHTS", "1000")
    monkeypatch.setenv("EDGEPACK_MAX_DECODED_BYTES", "80")
    with pytest.raises(HyperError, match="would decode 84 bytes, above the limit of 80"):
        decode_hyper(**arrays, **attributes)


@pytest.mark.parametrize("kwargs,message", [
    ({"side": 0.0}, r"side = 0.0; must be a finite number > 0"),
    ({"side": float("nan")}, r"side = nan"),
    ({"points": 0}, r"attribute 'points' = 0"),
    ({"group": 0}, r"attribute 'group' = 0"),
    ({"rings": -1}, r"attribute 'rings' = -1"),
])
def test_encode_refuses_bad_parameters(kwargs, message):
    with pytest.raises(HyperError, match=message):
        encode_hyper(np.ones((4, 4), np.float32), **{"side": 1.0, "points": 16, **kwargs})
    with pytest.raises(HyperError, match="non-finite"):
        encode_hyper(np.float32([1, np.inf]), side=1.0, points=4)


# ---- layers, recipe method, checkpoints, the per-layer search -----------------------------------

def trained_like(*shape, seed=0):
    """Weights shaped like trained ones: Gaussian with a few large values."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.1, shape)
    w.flat[rng.choice(w.size, max(1, w.size // 100), replace=False)] *= 6
    return torch.from_numpy(w.astype(np.float32))


def stored_weight(layer):
    """The layer's weight decoded by the numpy reference from its buffers."""
    return torch.from_numpy(decode_encoded(layer.encoding()))


def test_linear_encodes_the_trained_weight_and_counts_real_bytes():
    dense = nn.Linear(40, 24)
    with torch.no_grad():
        dense.weight.copy_(trained_like(24, 40))
    layer = HyperLinear.from_dense(dense, points=1024, side=0.4, rings=2, group=2)
    assert isinstance(layer, HyperLinear)
    assert {name: b.dtype for name, b in layer.named_buffers()} == {
        "indices": torch.uint8, "center": torch.float32, "side": torch.float32, "scales": torch.float32,
        "points": torch.int32, "group": torch.uint8, "rings": torch.uint8, "bits": torch.uint8,
        "bias": torch.float32}
    assert layer.encoding()["bits"] == 12 and layer.indices.numel() == 480 * 12 // 8
    assert compressed_size_bytes(layer) == 720 + 4 * 2 + 4 + 4 * 2 + 4 + 3 + 4 * 24
    weight = stored_weight(layer)
    assert relative_error(dense.weight.detach().numpy(), weight.numpy()) < 0.05
    x = torch.randn(5, 40)
    torch.testing.assert_close(layer(x), F.linear(x, weight, dense.bias), rtol=0, atol=0)


@pytest.mark.parametrize("options", [dict(stride=2, padding=1), dict(stride=(1, 2), padding=(2, 0), dilation=2),
                                     dict(groups=4, padding=1, bias=False)])
def test_conv_keeps_its_geometry(options):
    bias = options.pop("bias", True)
    dense = nn.Conv2d(8, 12, (3, 3), bias=bias, **options)
    layer = HyperConv2d.from_dense(dense, points=81, side=0.3, rings=1, group=4)
    x = torch.randn(2, 8, 9, 7)
    expected = F.conv2d(x, stored_weight(layer), dense.bias, dense.stride, dense.padding, dense.dilation,
                        dense.groups)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
    assert layer(x).shape == dense(x).shape


def test_recipe_method_encodes_trained_layers_and_keeps_small_ones_dense():
    model = nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 3), nn.Linear(3, 3))
    with torch.no_grad():
        model[0].weight.copy_(trained_like(20, 30, seed=1))
    spec = {"method": "hyper", "points": 961, "side": 0.5, "rings": 1}
    compressed, table = compress(model, {"0": spec, "2": {"method": "hyper", "budget": 0.02}, "3": spec})
    assert isinstance(compressed[0], HyperLinear) and isinstance(compressed[2], HyperLinear)
    assert type(compressed[3]) is nn.Linear  # 9 weights: dense
    assert compressed[0].attributes()["points"] == 961 and float(compressed[0].side) == 0.5
    assert relative_error(model[0].weight.detach().numpy(), stored_weight(compressed[0]).numpy()) < 0.05
    assert relative_error(model[2].weight.detach().numpy(), stored_weight(compressed[2]).numpy()) <= 0.02
    assert [row.method for row in table] == ["hyper"] * 3
    with pytest.raises(ValueError, match=r"unknown parameters \['ratio'\].*valid: \['budget', 'group', "
                                         r"'points', 'rings', 'side'\]"):
        compress(model, {"0": {"method": "hyper", "ratio": 2}})
    with pytest.raises(HyperError, match=r"^layer '0': .*budget"):  # the named error keeps its type
        compress(model, {"0": {"method": "hyper", "budget": 1e-9}})


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    model = digits_mlp(hidden=48)
    with torch.no_grad():
        for layer in (model.fc1, model.fc2, model.head):
            layer.weight.copy_(trained_like(*layer.weight.shape, seed=layer.in_features))
    return model


def test_hyper_compress_checkpoint_round_trip(mlp, tmp_path):
    compressed, report = hyper_compress(mlp, budget=0.04, progress=False)
    assert [row.name for row in report] == ["fc1", "fc2", "head"]
    assert all(row.method == "hyper" and row.error <= 0.04 for row in report)
    assert type(mlp.fc1) is nn.Linear  # the input model is left alone
    path = save_checkpoint(compressed, tmp_path / "h.safetensors", "edgepack.demo:digits_mlp",
                           {"hidden": 48}, recipe=report.recipe)
    loaded = load_checkpoint(path)
    assert isinstance(loaded.fc2, HyperLinear)
    x = torch.randn(7, 64)
    torch.testing.assert_close(loaded(x), compressed(x), rtol=0, atol=0)
    assert compressed_size_bytes(loaded) == report.model_bytes[1] < report.model_bytes[0] / 4
    text = str(report)
    assert "fc2" in text and "layers:" in text and "model:" in text


def test_corrupt_checkpoint_is_refused_at_load(mlp, tmp_path):
    compressed, report = hyper_compress(mlp, budget=0.04, progress=False, names="fc*")
    assert [row.name for row in report] == ["fc1", "fc2"]
    state = compressed.state_dict()
    state["fc1.indices"][-1] = 255
    state["fc1.points"] = torch.tensor(3, dtype=torch.int32)
    from safetensors.torch import save_file
    path = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={
        "format": "edgepack.checkpoint", "version": "2", "builder": "edgepack.demo:digits_mlp",
        "builder_kwargs": '{"hidden": 48}', "recipe": json.dumps(report.recipe)})
    with pytest.raises(CheckpointError, match=r"HyperLinear fc1: index \d+ of group \d+ is out of range"):
        load_checkpoint(path)


def test_search_keeps_the_fewest_bytes_within_the_budget():
    """No grid encoding with fewer index bits meets the budget; the chosen one does."""
    weight = trained_like(32, 48, seed=3).numpy()
    budget = 0.03
    encoded, error = choose_encoding(weight, budget=budget, group=2)
    assert error <= budget and relative_error(weight, decode_encoded(encoded)) == error
    cheb = np.abs(weight.reshape(-1, 2) - encoded["center"]).max(axis=1)
    for q in SIDE_QUANTILES:
        for rings in range(MAX_AUTO_RINGS + 1):
            t = 2
            while (rings + 1) * ((t + 1) ** 2 + 1) <= 1 << (encoded["bits"] - 1):
                t += 1
            if (rings + 1) * (t ** 2 + 1) > 1 << (encoded["bits"] - 1):
                continue
            smaller = encode_hyper(weight, side=float(np.float32(2 * np.quantile(cheb, q))), points=t ** 2,
                                   rings=rings)
            assert smaller["bits"] < encoded["bits"]
            assert relative_error(weight, decode_encoded(smaller)) > budget


def test_calibration_bounds_the_output_error():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 36, 5))
    x = torch.randn(32, 3, 6, 6)
    compressed, report = hyper_compress(model, budget=0.02, calibration=x.numpy(), progress=False)
    assert all(row.measured == "output" and row.error <= 0.02 for row in report)
    hidden = torch.relu(model[0](x)).flatten(1)
    with torch.no_grad():
        conv_out = F.conv2d(x, stored_weight(compressed[0]), model[0].bias, padding=1)
        fc_out = F.linear(hidden, stored_weight(compressed[3]), model[3].bias)
    assert relative_error(model[0](x).detach().numpy(), conv_out.numpy()) == pytest.approx(report[0].error, rel=1e-3)
    assert relative_error(model[3](hidden).detach().numpy(), fc_out.numpy()) == pytest.approx(report[1].error, rel=1e-3)
    with pytest.raises(HyperError, match=r"calibration: the model does not run on inputs of shape \[\[2, 5\]\]"):
        hyper_compress(model, calibration=np.zeros((2, 5), np.float32), progress=False)


def test_hyper_compress_errors():
    with pytest.raises(HyperError, match="budget = 0; must be a finite number > 0"):
        hyper_compress(nn.Sequential(nn.Linear(8, 8)), budget=0, progress=False)
    with pytest.raises(HyperError, match=r"\['conv\*'\] match no Linear/Conv2d layer"):
        hyper_compress(nn.Sequential(nn.Linear(8, 8)), names="conv*", progress=False)
    with pytest.raises(HyperError, match="the model has no Linear/Conv2d layer"):
        hyper_compress(nn.Sequential(nn.ReLU()), progress=False)


# ---- edgepack compress ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mlp_checkpoint(mlp, tmp_path_factory):
    return save_checkpoint(mlp, tmp_path_factory.mktemp("ckpt") / "mlp.safetensors", "edgepack.demo:digits_mlp",
                           {"hidden": 48})


def test_cli_compress_writes_a_checkpoint_equal_to_the_api(mlp, mlp_checkpoint, tmp_path, capsys):
    from edgepack.cli import main

    out = tmp_path / "hyper.safetensors"
    calibration = tmp_path / "x.npy"
    np.save(calibration, np.random.default_rng(0).normal(size=(16, 64)).astype(np.float32))
    assert main(["compress", str(mlp_checkpoint), "--budget", "0.05", "--calibration", str(calibration),
                 "--layers", "fc*", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "fc1" in text and "fc2" in text and "head " not in text and f"wrote {out}" in text
    loaded = load_checkpoint(out)
    expected, _ = hyper_compress(mlp, budget=0.05, calibration=np.load(calibration), names="fc*", progress=False)
    assert isinstance(loaded.fc1, HyperLinear) and type(loaded.head) is nn.Linear
    x = torch.randn(3, 64)
    torch.testing.assert_close(loaded(x), expected(x), rtol=0, atol=0)
    assert main(["compress", str(mlp_checkpoint), "--points", "100", "--side", "0.3", "--rings", "2",
                 "--group", "1", "-o", str(out)]) == 0
    layer = load_checkpoint(out).fc2
    assert layer.attributes() | {"side": float(layer.side)} == {
        "shape": (48, 48), "points": 100, "group": 1, "rings": 2, "bits": 9, "side": pytest.approx(0.3)}


def test_cli_compress_errors(mlp_checkpoint, tmp_path, capsys):
    from edgepack.cli import main

    out = str(tmp_path / "out.safetensors")
    assert main(["compress", str(tmp_path / "missing.safetensors"), "-o", out]) == 2
    assert capsys.readouterr().err.startswith("edgepack compress: error: checkpoint")
    register_builder("test_hyper_tiny", lambda: nn.Sequential(nn.Linear(3, 3), nn.ReLU()))
    tiny = save_checkpoint(nn.Sequential(nn.Linear(3, 3), nn.ReLU()), tmp_path / "tiny.safetensors", "test_hyper_tiny")
    assert main(["compress", str(tiny), "-o", out]) == 2
    assert "nothing to compress" in capsys.readouterr().err
    assert main(["compress", str(mlp_checkpoint), "--calibration", str(tiny), "-o", out]) == 2
    assert "--calibration" in capsys.readouterr().err
    assert main(["compress", str(mlp_checkpoint), "--points", "0", "-o", out]) == 2
    assert "attribute 'points' = 0; must be in [1, 65536]" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_code:
        main(["compress", str(mlp_checkpoint), "--budget", "-1", "-o", out])
    assert exit_code.value.code == 2
    assert "edgepack compress: error: argument --budget: must be a finite number > 0" in capsys.readouterr().err
    assert not (tmp_path / "out.safetensors").exists()


def test_a_budget_no_encoding_meets_keeps_the_layer_dense():
    model = nn.Sequential(nn.Linear(8, 8))
    compressed, report = hyper_compress(model, budget=1e-12, progress=False)
    assert compressed[0] is not model[0] and type(compressed[0]) is nn.Linear
    assert report[0].method == "dense" and report[0].note.startswith("budget; best ") and report.recipe == {}
    with pytest.raises(HyperError, match=r"layer '0': no \(side, points, rings\) keeps the relative error within "
                                         r"budget 1e-12 in fewer bytes than float32"):
        compress(model, {"0": {"method": "hyper", "budget": 1e-12}})


def test_side_must_fit_float32_with_the_points(mlp_checkpoint, tmp_path, capsys):
    """A side that is infinite in float32, or whose side·points overflows it, is refused by name
    (never a crash in the nearest-point search)."""
    from edgepack.cli import main

    weight = np.linspace(-1, 1, 40, dtype=np.float32)
    with pytest.raises(HyperError, match=r"side = 1e\+39; must be a finite number > 0 that float32 holds"):
        encode_hyper(weight, side=1e39, points=16)
    with pytest.raises(HyperError, match=r"side·points overflows float32; side must be at most 2\.12676e\+37"):
        encode_hyper(weight, side=3e38, points=16, rings=2)
    with pytest.raises(HyperError, match="side·points"):
        choose_encoding(weight, side=3e38, points=16, rings=0)
    e = encode_hyper(weight, side=1.0, points=16)
    with pytest.raises(HyperError, match=r"side·points = 3e\+38·16 overflows float32"):
        decode_hyper(e["indices"], e["center"], np.float32([3e38]), None, shape=e["shape"], points=16, group=2,
                     rings=0, bits=e["bits"])
    out = tmp_path / "out.safetensors"
    assert main(["compress", str(mlp_checkpoint), "--side", "1e39", "--points", "16", "-o", str(out)]) == 2
    assert "side = 1e+39; must be a finite number > 0 that float32 holds" in capsys.readouterr().err
    assert not out.exists()


def test_non_finite_calibration_is_refused_by_name(mlp, mlp_checkpoint, tmp_path, capsys):
    from edgepack.cli import main

    x = np.random.default_rng(0).normal(size=(4, 64)).astype(np.float32)
    x[1, 3] = np.nan
    with pytest.raises(HyperError, match=r"calibration: input 0 \(shape \[4, 64\]\) has 1 non-finite values"):
        hyper_compress(mlp, calibration=x, progress=False)
    path = tmp_path / "nan.npy"
    np.save(path, np.where(np.isnan(x), np.inf, x))
    out = str(tmp_path / "o.safetensors")
    assert main(["compress", str(mlp_checkpoint), "--calibration", str(path), "-o", out]) == 2
    assert "non-finite values (NaN or Inf)" in capsys.readouterr().err


def test_conv_same_padding_becomes_numeric_or_stays_dense():
    """'same' with an odd effective kernel is symmetric: compressed with numeric padding, equal to
    F.conv2d on the decoded weight; an even one stays dense with a note."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding="same", dilation=2), nn.Conv2d(8, 4, (2, 3), padding="same"))
    x = torch.randn(2, 3, 7, 7)
    compressed, report = hyper_compress(model, budget=0.05, progress=False)
    assert isinstance(compressed[0], HyperConv2d) and compressed[0].padding == (2, 2)
    with torch.no_grad():
        expected = F.conv2d(x, stored_weight(compressed[0]), model[0].bias, padding=2, dilation=2)
        torch.testing.assert_close(compressed[0](x), expected, rtol=0, atol=0)
        assert compressed[0](x).shape == model[0](x).shape
    assert type(compressed[1]) is nn.Conv2d and report[1].method == "dense"
    assert report[1].note == "asymmetric 'same' padding"


def test_a_bare_layer_is_not_a_model():
    with pytest.raises(HyperError, match=r"the model is itself a Linear; the root module is not replaced"):
        hyper_compress(nn.Linear(8, 8), progress=False)


def test_cli_new_hyper_entries_override_the_old_recipe(mlp, tmp_path):
    """A checkpoint whose recipe already names a layer (dense): the new hyper entry wins, so the
    output loads and equals the API's result."""
    from edgepack.cli import main

    dense, _ = compress(mlp, {"fc1": {"method": "dense"}})
    source = save_checkpoint(dense, tmp_path / "dense.safetensors", "edgepack.demo:digits_mlp", {"hidden": 48},
                             recipe={"fc1": {"method": "dense"}})
    out = tmp_path / "hyper.safetensors"
    assert main(["compress", str(source), "--layers", "fc1", "--budget", "0.05", "-o", str(out)]) == 0
    loaded = load_checkpoint(out)
    expected, _ = hyper_compress(mlp, budget=0.05, names="fc1", progress=False)
    assert isinstance(loaded.fc1, HyperLinear)
    x = torch.randn(2, 64)
    torch.testing.assert_close(loaded(x), expected(x), rtol=0, atol=0)


@pytest.mark.parametrize("layer_class, error", [(HyperConv2d, HyperError), (CodebookConv2d, CodebookError)])
def test_conv_layers_refuse_groups_that_do_not_divide_the_channels(layer_class, error):
    with pytest.raises(error, match=rf"^{layer_class.__name__}: groups=4 must divide in_channels=4 and "
                                    r"out_channels=6"):
        layer_class(4, 6, 3, groups=4)
    assert layer_class(4, 8, 3, groups=4, padding=1).weight_shape == (8, 1, 3, 3)
