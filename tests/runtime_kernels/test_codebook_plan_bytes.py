"""SparseCodebookMatMul's plan bytes: the op spec's energy figure (weight bytes per inference) equals
what the C library reserves and allocates for the plan (ep_codebook_plan_bytes), on both column
widths (uint16 up to 65536 columns, int32 beyond) and for partial slices of rows."""
from __future__ import annotations

import ctypes as C

import pytest

from edgepack.runtime_kernels.loader import Codebook, load
from edgepack.runtime_kernels.op_spec import OPS


def c_plan_bytes(rows: int, cols: int, n: int) -> int:
    """ep_codebook_plan_bytes of a 4-bit, 16-value sparse codebook weight with n entries."""
    lib = load()
    lib.ep_codebook_plan_bytes.restype = C.c_int64
    lib.ep_codebook_plan_bytes.argtypes = [C.POINTER(Codebook)]
    return lib.ep_codebook_plan_bytes(C.byref(Codebook(rows, cols, 4, None, 16, None, (4 * n + 7) // 8, None,
                                                       rows + 1, None, n)))


@pytest.mark.parametrize("rows, cols, n", [(300, 784, 9489), (1, 1, 0), (17, 65536, 40), (33, 65537, 5),
                                           (1024, 1024, 42122)])
def test_op_spec_plan_bytes_equal_the_c_plan(rows, cols, n):
    shape = {"X": (1, cols), "codebook": (16,), "indices": ((4 * n + 7) // 8,), "row_ptr": (rows + 1,),
             "col_gaps": (n,)}.__getitem__
    attributes = {"in_features": cols, "out_features": rows, "bits": 4}
    slices, width = -(-rows // 16), 2 if cols <= 65536 else 4
    want = 8 * rows + 64 * slices + 4 * (slices + 1) + 4 * n + width * (n + 16)
    assert c_plan_bytes(rows, cols, n) == want
    assert OPS["SparseCodebookMatMul"].work(attributes, shape).weight_bytes == want


def test_validator_counts_the_plan_as_the_c_library_does():
    """The validator's decoded-bytes figure for the model limit is the C plan's size (was an older formula)."""
    from edgepack.exporter.validate import Tensor, check_node

    rows, cols, n = 300, 784, 9489
    dims = {"X": (1, cols), "codebook": (16,), "indices": ((4 * n + 7) // 8,), "row_ptr": (rows + 1,),
            "col_gaps": (n,)}
    dtypes = {"indices": "uint8", "row_ptr": "int32", "col_gaps": "uint8"}
    inputs = [Tensor(True, dims[name], dtypes.get(name, "float32") == "float32", dtypes.get(name, "float32"))
              for name in dims] + [Tensor(False), Tensor(False)]
    values = {"in_features": ("int", cols), "out_features": ("int", rows), "bits": ("int", 4)}
    assert check_node("SparseCodebookMatMul", "n", values, inputs)["decoded_bytes"] == c_plan_bytes(rows, cols, n)
