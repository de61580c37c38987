"""Write the seed corpora of the libFuzzer harnesses into runtime_kernels/fuzz/corpus/<target>/.

The seeds are valid calls (the cases of tflite/test_delegate.c and tests/test_kernels.c) in each
harness's input format, with FlexBuffers options written by the exporter itself, so the fuzzers
start from inputs that reach the kernels. Run: .venv/bin/python runtime_kernels/fuzz/make_seeds.py
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

from edgepack.exporter.tflite_export import flexbuffer_options

CORPUS = Path(__file__).resolve().parent / "corpus"

HASHED_MATMUL = {"in_features": 11, "out_features": 7, "num_hashes": 2, "seed": 4294967295, "signed": 1, "mode": 0}
HASHED_WEIGHT = {"shape": [5, 2, 3], "num_hashes": 1, "seed": 9, "signed": 1}
CIRCULANT = {"in_features": 13, "out_features": 10}
LDR = {"in_features": 12, "out_features": 9}


def write(target: str, name: str, data: bytes) -> None:
    """One seed file."""
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


# ---- fuzz_flexmap: the options themselves ----------------------------------------------------
def flexmap_seeds() -> None:
    """Real options of every op, and a few edge cases."""
    cases = {
        "hashed_matmul": HASHED_MATMUL, "hashed_matmul_stream": HASHED_MATMUL | {"mode": 1},
        "hashed_weight": HASHED_WEIGHT, "circulant": CIRCULANT, "ldr": LDR, "empty_map": {},
        "big_ints": {"in_features": 2**40, "seed": 2**63 - 1, "shape": [2**31 - 1, 3]},
        "negative": {"in_features": -3, "shape": [-1]},
    }
    for name, attributes in cases.items():
        write("fuzz_flexmap", name, flexbuffer_options(attributes))


# ---- fuzz_tflite -------------------------------------------------------------------------------
ARENA, CONST, PERSISTENT_RO = 0, 2, 4  # allocation indices of fuzz_tflite.c's ALLOC table
OPS = {"HashedWeight": 0, "HashedMatMul": 1, "CirculantMatMul": 2, "LDRMatMul": 3}


def tensor(alloc: int, dims: list[int], seed: int, floats: int | None = None) -> bytes:
    """A float32 tensor: allocation, rank, dims, (constants: a buffer of its shape's size or of
    `floats` values), data seed."""
    out = bytes([alloc, len(dims), *dims])
    if alloc in (CONST, 3, PERSISTENT_RO):
        out += b"\x01" if floats is None else bytes([2 * floats])
    return out + bytes([seed])


def node(op: str, inputs: list[int], output: int, options: bytes, partition_output: bool = False) -> bytes:
    """A CUSTOM node: op, inputs (-1 absent), output, options."""
    code = OPS[op] | (0x80 if partition_output else 0)
    ins = bytes(255 if i < 0 else i for i in inputs)
    return bytes([code, len(inputs)]) + ins + bytes([output]) + struct.pack("<H", len(options)) + options


def graph(flags: int, tensors: list[bytes], nodes: list[bytes]) -> bytes:
    """flags, tensors, nodes in fuzz_tflite.c's format."""
    return bytes([flags, len(tensors) - 1]) + b"".join(tensors) + bytes([len(nodes) - 1]) + b"".join(nodes)


def tflite_seeds() -> None:
    """Each op through the delegate and the custom-op route, constant and fed weights, a chain."""
    for route in (0, 1):
        for weights in (CONST, ARENA):
            for mode in (0, 1):
                hm = flexbuffer_options(HASHED_MATMUL | {"mode": mode})
                tensors = [tensor(ARENA, [3, 11], 4), tensor(weights, [23], 1), tensor(weights, [13], 2),
                           tensor(weights, [7], 3), tensor(ARENA, [1], 0)]
                write("fuzz_tflite", f"hashed_matmul_m{mode}_w{weights}_r{route}",
                      graph(route | 6, tensors, [node("HashedMatMul", [0, 1, 2, 3], 4, hm)]))
            tensors = [tensor(weights, [10], 5), tensor(ARENA, [1], 0)]
            write("fuzz_tflite", f"hashed_weight_w{weights}_r{route}",
                  graph(route, tensors, [node("HashedWeight", [0], 1, flexbuffer_options(HASHED_WEIGHT))]))
            tensors = [tensor(ARENA, [2, 13], 8), tensor(weights, [2, 2, 8], 7), tensor(ARENA, [1], 0)]
            write("fuzz_tflite", f"circulant_w{weights}_r{route}",
                  graph(route, tensors, [node("CirculantMatMul", [0, 1], 2, flexbuffer_options(CIRCULANT))]))
            tensors = [tensor(ARENA, [3, 12], 11), tensor(weights, [2, 16], 9), tensor(weights, [2, 16], 10),
                       tensor(ARENA, [1], 0)]
            write("fuzz_tflite", f"ldr_w{weights}_r{route}",
                  graph(route, tensors, [node("LDRMatMul", [0, 1, 2, -1], 3, flexbuffer_options(LDR))]))
    chain_hm = flexbuffer_options({"in_features": 6, "out_features": 5, "num_hashes": 1, "seed": 0})
    chain_c = flexbuffer_options({"in_features": 5, "out_features": 4})
    tensors = [tensor(ARENA, [2, 6], 14), tensor(CONST, [9], 12), tensor(CONST, [1, 1, 8], 13),
               tensor(ARENA, [1], 0), tensor(ARENA, [1], 0)]
    for flags, mid_out in ((0, False), (2, True), (4, False)):
        write("fuzz_tflite", f"chain_{flags}", graph(flags, tensors, [
            node("HashedMatMul", [0, 1], 3, chain_hm, partition_output=mid_out),
            node("CirculantMatMul", [3, 2], 4, chain_c)]))
    # issue 9 regressions: a read-only output (written by invoke), a constant buffer longer than its
    # shape (accepted), decode bombs (16 GiB allocations)
    tensors = [tensor(ARENA, [2, 13], 8), tensor(CONST, [2, 2, 8], 7), tensor(PERSISTENT_RO, [2, 10], 0)]
    write("fuzz_tflite", "read_only_output",
          graph(0, tensors, [node("CirculantMatMul", [0, 1], 2, flexbuffer_options(CIRCULANT))]))
    tensors = [tensor(ARENA, [2, 13], 8), tensor(CONST, [2, 2, 8], 7, floats=40), tensor(ARENA, [1], 0)]
    write("fuzz_tflite", "constant_longer_than_shape",
          graph(0, tensors, [node("CirculantMatMul", [0, 1], 2, flexbuffer_options(CIRCULANT))]))
    bomb = flexbuffer_options(HASHED_WEIGHT | {"shape": [2, 2**31 - 1]})
    write("fuzz_tflite", "bomb_hashed_weight",
          graph(0, [tensor(CONST, [10], 5), tensor(ARENA, [1], 0)], [node("HashedWeight", [0], 1, bomb)]))
    bomb = flexbuffer_options(HASHED_MATMUL | {"in_features": 11, "out_features": 2**31 - 1})
    tensors = [tensor(ARENA, [3, 11], 4), tensor(CONST, [23], 1), tensor(CONST, [13], 2), tensor(ARENA, [1], 0)]
    write("fuzz_tflite", "bomb_expand", graph(1, tensors, [node("HashedMatMul", [0, 1, 2], 3, bomb)]))


# ---- fuzz_ort ----------------------------------------------------------------------------------
ATTR_NAMES = ["in_features", "out_features", "num_hashes", "seed", "signed", "mode", "shape"]


def small_int(value: int) -> bytes:
    """read_int's encoding: -8..214 in one byte, else 0xEF + 8 raw bytes."""
    return bytes([value + 8]) if -8 <= value < 0xEF - 8 else b"\xef" + struct.pack("<q", value)


def ort_attrs(attributes: dict) -> bytes:
    """The attributes in fuzz_ort.c's format (ints for lists, int otherwise)."""
    out = bytes([len(attributes)])
    for key, value in attributes.items():
        if isinstance(value, list):
            out += bytes([ATTR_NAMES.index(key), 3, len(value)]) + b"".join(small_int(v) for v in value)
        else:
            out += bytes([ATTR_NAMES.index(key), 0]) + small_int(value)
    return out


def ort_value(dims: list[int], seed: int, const: bool = False) -> bytes:
    """A present float32 input (constant initializer or fed at run time)."""
    return bytes([1 | (2 if const else 0), len(dims) << 4, *dims, seed])


def ort_seeds() -> None:
    """Each op with constant and fed weights, with and without the optional inputs."""
    absent = b"\x00"
    for const in (True, False):
        for mode in (0, 1):
            inputs = [ort_value([3, 11], 4), ort_value([23], 1, const), ort_value([13], 2, const),
                      ort_value([7], 3, const)]
            write("fuzz_ort", f"hashed_matmul_m{mode}_c{int(const)}",
                  bytes([1, 1]) + ort_attrs(HASHED_MATMUL | {"mode": mode}) + bytes([4]) + b"".join(inputs))
        write("fuzz_ort", f"hashed_weight_c{int(const)}",
              bytes([0, 4]) + ort_attrs(HASHED_WEIGHT) + bytes([2]) + ort_value([10], 5, const) + absent)
        write("fuzz_ort", f"circulant_c{int(const)}",
              bytes([2, 8]) + ort_attrs(CIRCULANT) + bytes([3]) + ort_value([2, 13], 8)
              + ort_value([2, 2, 8], 7, const) + ort_value([10], 6))
        write("fuzz_ort", f"ldr_c{int(const)}",
              bytes([3, 0]) + ort_attrs(LDR) + bytes([4]) + ort_value([3, 12], 11)
              + ort_value([2, 16], 9, const) + ort_value([2, 16], 10, const) + absent)
    # issue 9 regressions: decode bombs (the 227-byte HashedWeight of shape [2, 2^29]; an 11.8 GB plan)
    write("fuzz_ort", "bomb_hashed_weight",
          bytes([0, 4]) + ort_attrs(HASHED_WEIGHT | {"shape": [2, 2**29]}) + bytes([2]) + ort_value([10], 5, True)
          + absent)
    inputs = [ort_value([3, 11], 4), ort_value([23], 1, True), ort_value([13], 2, True)]
    write("fuzz_ort", "bomb_expand",
          bytes([1, 1]) + ort_attrs(HASHED_MATMUL | {"out_features": 1 << 28}) + bytes([3]) + b"".join(inputs))


# ---- fuzz_kernels ------------------------------------------------------------------------------
def kernel_seeds() -> None:
    """Valid calls of every entry point (first byte: the entry point), data from a fixed RNG."""
    rng = random.Random(1)

    def data(n: int) -> bytes:
        return bytes(rng.randrange(256) for _ in range(n))

    def hashed(rows: int, cols: int, buckets: int, k: int, recon: int, n: int) -> bytes:
        return bytes([rows + 1, cols + 1, buckets + 1, k]) + struct.pack("<I", rng.getrandbits(32)) \
            + bytes([1, recon, 0, 0, n + 1])
    write("fuzz_kernels", "hash_indices", bytes([0]) + hashed(9, 17, 23, 3, 0, 0)[:-3] + b"\x00")
    write("fuzz_kernels", "decode_k1", bytes([1]) + hashed(7, 19, 31, 1, 0, 0) + data(400))
    write("fuzz_kernels", "decode_k3_recon", bytes([1]) + hashed(5, 33, 40, 3, 2, 0) + data(400))
    for n in (1, 3, 5):
        write("fuzz_kernels", f"stream_n{n}", bytes([2]) + hashed(9, 24, 17, 2, 1, n) + data(900))
        write("fuzz_kernels", f"expand_n{n}", bytes([3]) + hashed(9, 24, 17, 1, 0, n) + b"\x00" + data(900))
    write("fuzz_kernels", "dense", bytes([4, 4, 18, 34, 0, 0]) + data(1500))
    for b in (0, 2, 4, 6):  # n = 4 << b
        write("fuzz_kernels", f"rfft_{4 << b}", bytes([5, b, 2, 0]) + data(300))
    write("fuzz_kernels", "circulant", bytes([6, 3, 4, 1, 14, 11, 3, 6, 0]) + data(1200))
    write("fuzz_kernels", "ldr", bytes([7, 3, 2, 13, 10, 3, 6, 0]) + data(1200))
    write("fuzz_kernels", "misc_variant", bytes([8]) + b"\x01\x02\x03\x04" + b"avx2")
    limits = struct.pack("<QBQBqqq", 1 << 28, 0, 1 << 30, 0, 1 << 20, 1 << 29, 1 << 29)
    write("fuzz_kernels", "limits", bytes([9]) + limits + b" 268435456 ")


def main() -> None:
    """Write every corpus."""
    flexmap_seeds()
    tflite_seeds()
    ort_seeds()
    kernel_seeds()
    for folder in sorted(CORPUS.iterdir()):
        print(f"{folder.name}: {len(list(folder.iterdir()))} seeds")


if __name__ == "__main__":
    main()
