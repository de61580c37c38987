"""Codebook layers and the CodebookWeight format against loops written from the op contract."""

import numpy as np
import pytest
import torch
from torch import nn

from edgepack.compression import (
    CodebookConv2d,
    CodebookError,
    CodebookLinear,
    codebook_layer,
    compress,
    compressed_size_bytes,
    decode_codebook,
    encode_codebook,
    load_checkpoint,
    save_checkpoint,
    to_codebook,
)
from edgepack.demo import digits_mlp


def few_values(rng, shape, count, density=1.0):
    """A float32 array of ``count`` distinct non-zero values, zero outside a random ``density``."""
    values = rng.standard_normal(count).astype(np.float32)
    weight = values[rng.integers(0, count, size=shape)]
    return np.where(rng.random(shape) < density, weight, np.float32(0.0)).astype(np.float32)


def loop_decode(enc, shape):
    """The contract read literally: one packed index at a time, gaps summed per row."""
    bits, packed, codebook = enc["bits"], enc["indices"], enc["codebook"]

    def index(k):
        return (int(packed[(k * bits) // 8]) >> ((k * bits) % 8)) & ((1 << bits) - 1)

    rows, cols = shape[0], int(np.prod(shape[1:]))
    if "row_ptr" not in enc:
        return np.array([codebook[index(k)] for k in range(rows * cols)], np.float32).reshape(shape)
    weight = np.zeros((rows, cols), np.float32)
    row_ptr, gaps = enc["row_ptr"], enc["col_gaps"]
    for r in range(rows):
        column = -1
        for k in range(row_ptr[r], row_ptr[r + 1]):
            column += int(gaps[k])
            weight[r, column] = codebook[index(k)]
    return weight.reshape(shape)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("sparse", [False, True])
def test_encode_decode_is_exact_for_every_width_and_form(bits, sparse):
    rng = np.random.default_rng(bits)
    count = (1 << bits) - 1  # room for 0.0
    for shape in [(7, 13), (3,), (5, 3, 3, 2), (1, 1)]:
        weight = few_values(rng, shape, count, density=0.3 if sparse else 0.9)
        enc = encode_codebook(weight, sparse=sparse, bits=bits)
        assert enc["indices"].dtype == np.uint8 and enc["indices"].size == -(-(
            enc["row_ptr"][-1] if sparse else weight.size) * bits // 8)
        decoded = decode_codebook(enc["codebook"], enc["indices"], shape, bits, enc.get("row_ptr"),
                                  enc.get("col_gaps"))
        assert decoded.tobytes() == weight.tobytes()
        assert loop_decode(enc, shape).tobytes() == weight.tobytes()


def test_defaults_choose_form_and_width_and_keep_signed_zero_and_nan():
    rng = np.random.default_rng(1)
    sparse = few_values(rng, (20, 30), 5, density=0.2)
    enc = encode_codebook(sparse)
    assert "row_ptr" in enc and enc["bits"] == 4 and enc["codebook"][0] == 0.0  # 6 values with 0.0
    dense = few_values(rng, (20, 30), 3)
    enc = encode_codebook(dense)
    assert "row_ptr" not in enc and enc["bits"] == 2
    odd = np.array([[0.0, -0.0, np.nan, 1.0]], np.float32)
    enc = encode_codebook(odd, sparse=False)
    assert decode_codebook(enc["codebook"], enc["indices"], (1, 4), enc["bits"]).tobytes() == odd.tobytes()


def test_long_gaps_use_fillers_and_empty_rows_stay_zero():
    weight = np.zeros((4, 1000), np.float32)
    weight[0, 999] = 2.5
    weight[0, 0] = -1.0
    weight[2, 255] = 3.0  # a first gap of 256 needs one filler
    weight[2, 510] = 3.0
    enc = encode_codebook(weight, sparse=True)
    assert enc["row_ptr"].tolist() == [0, 5, 5, 8, 8]  # rows 1 and 3 are empty
    assert enc["col_gaps"].tolist() == [1, 255, 255, 255, 234, 255, 1, 255]
    decoded = decode_codebook(enc["codebook"], enc["indices"], weight.shape, enc["bits"],
                              enc["row_ptr"], enc["col_gaps"])
    assert decoded.tobytes() == weight.tobytes() == loop_decode(enc, weight.shape).tobytes()


def test_too_many_values_and_bad_widths_are_named():
    rng = np.random.default_rng(2)
    with pytest.raises(CodebookError, match="300 distinct values; a codebook holds at most 256"):
        encode_codebook(np.arange(300, dtype=np.float32), sparse=False)
    with pytest.raises(CodebookError, match=r"bits=2 cannot index 5 codebook entries; valid: \[4, 8\]"):
        encode_codebook(few_values(rng, (4, 4), 5), sparse=False, bits=2)


def bad_cases():
    weight = np.zeros((3, 10), np.float32)
    weight[0, 2], weight[2, 9] = 1.0, 2.0
    enc = encode_codebook(weight, sparse=True, bits=2)
    cb, idx, rp, cg = enc["codebook"], enc["indices"], enc["row_ptr"], enc["col_gaps"]
    return [
        (dict(codebook=cb.astype(np.float64)), "codebook must be float32"),
        (dict(codebook=np.zeros(0, np.float32)), "1..256 values"),
        (dict(codebook=np.zeros(257, np.float32)), "1..256 values"),
        (dict(indices=np.zeros(2, np.uint8)), "an nnz that disagrees with the indices"),
        (dict(codebook=cb[:2]), "index 2 >= codebook size 2"),
        (dict(row_ptr=np.array([1, 1, 1, 2], np.int32)), r"row_ptr\[0\] = 1; must be 0"),
        (dict(row_ptr=np.array([0, 2, 1, 2], np.int32)), "row_ptr decreases at row 1"),
        (dict(row_ptr=np.array([0, 1, 1, 3], np.int32)), "col_gaps has 2 entries; row_ptr"),
        (dict(col_gaps=np.array([3, 0], np.uint8)), "a col_gaps entry is 0"),
        (dict(col_gaps=np.array([3, 11], np.uint8)), "columns must be < 10"),
        (dict(col_gaps=None), "only row_ptr"),
        (dict(indices=np.array([idx[0] | 0x80], np.uint8)), "unused high bits"),
    ], (cb, idx, rp, cg)


@pytest.mark.parametrize("case", range(12))
def test_decode_names_every_contract_violation(case):
    cases, (cb, idx, rp, cg) = bad_cases()
    change, message = cases[case]
    args = dict(codebook=cb, indices=idx, row_ptr=rp, col_gaps=cg) | change
    with pytest.raises(CodebookError, match=message):
        decode_codebook(args["codebook"], args["indices"], (3, 10), 2, args["row_ptr"], args["col_gaps"])


@pytest.mark.parametrize("sparse", [False, True, None])
def test_layers_reproduce_the_dense_layers_bit_for_bit(sparse):
    rng = np.random.default_rng(3)
    linear = nn.Linear(37, 11)
    conv = nn.Conv2d(6, 8, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2)
    for layer, x in ((linear, torch.randn(5, 37)), (conv, torch.randn(2, 6, 9, 9))):
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(few_values(rng, tuple(layer.weight.shape), 9, 0.25)))
        new = codebook_layer(layer, sparse=sparse)
        assert isinstance(new, CodebookLinear if layer is linear else CodebookConv2d)
        assert new.sparse == (sparse is not False)
        assert new.dense_weight().numpy().tobytes() == layer.weight.detach().numpy().tobytes()
        assert torch.equal(new(x), layer(x))


def test_layer_bytes_are_the_stored_arrays():
    weight = np.zeros((100, 200), np.float32)
    weight[::10, ::7] = 0.5
    layer = nn.Linear(200, 100)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weight))
    new = codebook_layer(layer)
    enc = encode_codebook(weight)
    nnz = int(enc["row_ptr"][-1])
    expected = 4 * 2 + -(-nnz // 8) + 1 + 4 * 101 + nnz + 4 * 100  # codebook, indices, bits, CSR, bias
    assert new.bits.item() == 1 and compressed_size_bytes(new) == expected


def quantized_mlp(hidden=32):
    """digits_mlp with its Linear weights rounded to few values and 80 % pruned."""
    torch.manual_seed(0)
    model = digits_mlp(hidden=hidden)
    with torch.no_grad():
        for layer in (m for m in model.modules() if isinstance(m, nn.Linear)):
            w = torch.round(layer.weight * 20) / 20
            layer.weight.copy_(torch.where(torch.rand_like(w) < 0.2, w, torch.zeros_like(w)))
    return model


def test_to_codebook_and_checkpoint_round_trip(tmp_path):
    model = quantized_mlp()
    x = torch.randn(4, 64)
    expected = model(x)
    to_codebook(model, "*", sparse=None)
    layers = [m for m in model.modules() if isinstance(m, CodebookLinear)]
    assert len(layers) == 3 and all(m.sparse for m in layers)
    assert torch.equal(model(x), expected)
    path = save_checkpoint(model, tmp_path / "cb.safetensors", "edgepack.demo:digits_mlp",
                           {"hidden": 32}, {"*": {"method": "codebook"}})
    loaded = load_checkpoint(path)
    assert torch.equal(loaded(x), expected)
    assert loaded.state_dict()["fc1.indices"].dtype == torch.uint8
    assert loaded.state_dict()["fc1.row_ptr"].dtype == torch.int32
    with pytest.raises(CodebookError, match=r"match no Linear/Conv2d layer"):
        to_codebook(model, "nothing*")


def test_recipe_method_and_plain_load_state_dict():
    model = quantized_mlp(16)
    compressed, report = compress(model, {"*": {"method": "codebook", "sparse": True, "bits": 8}})
    assert all(row.bytes_after < row.bytes_before for row in report)
    fresh, _ = compress(digits_mlp(hidden=16), {"*": {"method": "codebook"}}, initialize=False)
    fresh.load_state_dict(compressed.state_dict())
    x = torch.randn(3, 64)
    assert torch.equal(fresh(x), model(x))


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    """A digits_mlp checkpoint with a sparse 4-bit fc1 (64 columns) and a dense 2-bit fc2."""
    torch.manual_seed(0)
    model = digits_mlp(16)
    with torch.no_grad():
        w = model.fc1.weight
        w.copy_(torch.round(w * 32) / 32)
        w[w.abs() < 0.07] = 0
        model.fc2.weight.copy_(torch.round(model.fc2.weight * 4) / 4)
    recipe = {"fc1": {"method": "codebook"}, "fc2": {"method": "codebook"}}
    compressed, _ = compress(model, recipe)
    assert compressed.fc1.sparse and not compressed.fc2.sparse and int(compressed.fc2.bits) == 2
    return save_checkpoint(compressed, tmp_path_factory.mktemp("ckpt") / "good.safetensors",
                           "edgepack.demo:digits_mlp", {"hidden": 16}, recipe)


def _swap_rows(st):
    st["fc1.row_ptr"][1], st["fc1.row_ptr"][2] = st["fc1.row_ptr"][2].clone(), st["fc1.row_ptr"][1].clone()


BROKEN_STATES = {
    "index >= J": (lambda st: st["fc1.indices"].fill_(255), r"fc1: index 15 >= codebook size 5"),
    "J > 256": (lambda st: st.update({"fc2.codebook": torch.zeros(1000)}), r"fc2: codebook must be 1-D with 1\.\.256"),
    "bits 3": (lambda st: st.update({"fc2.bits": torch.tensor(3, dtype=torch.uint8)}), r"'bits' = 3; valid"),
    "bits two elements": (lambda st: st.update({"fc2.bits": torch.tensor([8, 8], dtype=torch.uint8)}),
                          r"'fc2.bits' has shape \[2\]; it must be one uint8 value"),
    "codebook 2-D": (lambda st: st.update({"fc2.codebook": st["fc2.codebook"].reshape(1, -1).clone()}),
                     r"got shape \[1, 4\]"),
    "row_ptr decreasing": (_swap_rows, r"fc1: row_ptr decreases at row 1"),
    "row_ptr short": (lambda st: st.update({"fc1.row_ptr": st["fc1.row_ptr"][:5].clone()}),
                      r"row_ptr must be int32 \[17\] \(rows \+ 1\), got int32 \[5\]"),
    "row_ptr end huge": (lambda st: st["fc1.row_ptr"].__setitem__(-1, 2**31 - 1), r"says nnz = 2147483647"),
    "col_gaps without row_ptr": (lambda st: st.pop("fc1.row_ptr"), r"got only col_gaps"),
    "gap 0": (lambda st: st["fc1.col_gaps"].__setitem__(0, 0), r"every gap must be >= 1"),
    "column >= cols": (lambda st: st["fc1.col_gaps"].fill_(255), r"columns must be < 64"),
    "indices too short": (lambda st: st.update({"fc2.indices": st["fc2.indices"][:3].clone()}),
                          r"fc2: indices has 3 bytes; nnz = 256 entries of 2 bits need 64"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_STATES))
def test_checkpoint_breaking_the_contract_is_refused_on_load(good_checkpoint, tmp_path, case):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from edgepack.compression import CheckpointError

    mutate, message = BROKEN_STATES[case]
    state = load_file(str(good_checkpoint))
    mutate(state)
    with safe_open(str(good_checkpoint), "pt") as file:
        metadata = file.metadata()
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad), metadata=metadata)
    assert isinstance(load_checkpoint(good_checkpoint), nn.Module)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(bad)
    fresh, _ = compress(digits_mlp(16), {"fc1": {"method": "codebook"}, "fc2": {"method": "codebook"}},
                        initialize=False)
    with pytest.raises(CodebookError, match=message):
        fresh.load_state_dict(state)


@pytest.mark.parametrize("bits", [8.0, True, "8", np.uint8(8)])
def test_encode_refuses_bits_that_are_not_ints_by_name(bits):
    with pytest.raises(CodebookError, match=r"bits must be an int in \[1, 2, 4, 8\] or None"):
        encode_codebook(np.ones((2, 2), np.float32), bits=bits)
