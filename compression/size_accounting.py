"""Model size as Deep Compression (Han et al. 2015) counts it, the scheme Soft Weight-Sharing's Table 1 uses.

Per layer: the non-zero weights in CSR order (rows = output units; a conv's (c_in, kh, kw) flattened),
each stored as a codebook index plus its relative column index (the gap to the previous entry of the
row, stored as gap − 1 in 5 bits for FC and 8 bits for conv layers); a gap that does not fit is
bridged by filler entries (gap 2^bits, value 0). Indices and gaps are then Huffman-coded, each stream
with its own code whose table is counted (per used symbol: the symbol and a 6-bit code length, plus a
16-bit symbol count); their entropy is given beside. One row pointer per row (the width that holds
the entry count), a 32-bit codebook per layer and 32-bit biases complete it. The rate is the fp32
dense model's bits over these bits.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np
from torch import nn

GAP_BITS = {"fc": 5, "conv": 8}
LENGTH_BITS = 6  # a code length in the table (Huffman codes here are far shorter than 64 bits)
COUNT_BITS = 16  # the number of symbols in a table
FLOAT_BITS = 32


def huffman_code_lengths(counts: dict[int, int]) -> dict[int, int]:
    """Code length per symbol of a Huffman code for these (positive) counts; one symbol gets length 1."""
    symbols = [s for s, c in counts.items() if c > 0]
    if len(symbols) <= 1:
        return {s: 1 for s in symbols}
    lengths = dict.fromkeys(symbols, 0)
    heap = [(counts[s], i, [s]) for i, s in enumerate(sorted(symbols))]
    heapq.heapify(heap)
    tiebreak = len(heap)
    while len(heap) > 1:
        count_a, _, group_a = heapq.heappop(heap)
        count_b, _, group_b = heapq.heappop(heap)
        for symbol in group_a + group_b:
            lengths[symbol] += 1
        heapq.heappush(heap, (count_a + count_b, tiebreak, group_a + group_b))
        tiebreak += 1
    return lengths


def canonical_codes(lengths: dict[int, int]) -> dict[int, str]:
    """The canonical Huffman code (bit strings) for these code lengths: what a decoder rebuilds from the table."""
    codes, code, previous = {}, 0, 0
    for symbol, length in sorted(lengths.items(), key=lambda item: (item[1], item[0])):
        code <<= length - previous
        codes[symbol] = format(code, f"0{length}b")
        code += 1
        previous = length
    return codes


@dataclass
class StreamBits:
    """The coded size of one symbol stream: Huffman payload and table, its entropy, fixed width."""

    symbols: int
    distinct: int
    huffman_bits: int
    table_bits: int
    entropy_bits: float
    fixed_bits: int

    @property
    def total_bits(self) -> int:
        return self.huffman_bits + self.table_bits


def stream_bits(values: np.ndarray, symbol_bits: int) -> StreamBits:
    """Huffman-code ``values`` (symbols of ``symbol_bits`` bits each): payload, table, entropy, fixed width."""
    counts = Counter(np.asarray(values).ravel().tolist())
    total = sum(counts.values())
    lengths = huffman_code_lengths(counts)
    payload = sum(counts[s] * lengths[s] for s in counts)
    table = COUNT_BITS + len(counts) * (symbol_bits + LENGTH_BITS) if counts else 0
    entropy = -sum(c * math.log2(c / total) for c in counts.values()) if total else 0.0
    return StreamBits(total, len(counts), payload, table, entropy, total * symbol_bits)


def csr_entries(weight: np.ndarray, gap_bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, stored gaps, row pointers) of ``weight`` [rows, ...] in CSR with relative column
    indices: each entry's gap to the previous entry of its row (the first counts from column −1),
    stored as gap − 1; a gap over 2^gap_bits is split by filler entries of value 0."""
    matrix = weight.reshape(weight.shape[0], -1)
    limit = 1 << gap_bits
    values, gaps, row_ptr = [], [], [0]
    for row in matrix:
        previous = -1
        for column in np.flatnonzero(row):
            gap = int(column) - previous
            while gap > limit:
                values.append(0.0)
                gaps.append(limit - 1)
                gap -= limit
            values.append(row[column])
            gaps.append(gap - 1)
            previous = int(column)
        row_ptr.append(len(values))
    return (np.asarray(values, dtype=weight.dtype), np.asarray(gaps, dtype=np.int64),
            np.asarray(row_ptr, dtype=np.int64))


@dataclass
class LayerSize:
    """One layer's bits under the scheme, and what the dense fp32 layer takes."""

    name: str
    kind: str
    shape: tuple[int, ...]
    weights: int
    nonzero: int
    fillers: int
    codebook_size: int
    index: StreamBits
    gap: StreamBits
    row_ptr_bits: int
    codebook_bits: int
    bias_bits: int

    @property
    def total_bits(self) -> int:
        return self.index.total_bits + self.gap.total_bits + self.row_ptr_bits + self.codebook_bits + self.bias_bits

    @property
    def dense_bits(self) -> int:
        return (self.weights * FLOAT_BITS) + self.bias_bits


def layer_size(name: str, weight: np.ndarray, bias: np.ndarray | None = None, kind: str = "fc") -> LayerSize:
    """Deep Compression's bits for one layer whose ``weight`` holds few distinct values (0 = pruned)."""
    if kind not in GAP_BITS:
        raise ValueError(f"layer {name}: kind must be one of {sorted(GAP_BITS)}, got {kind!r}")
    weight = np.asarray(weight, dtype=np.float32)
    values, gaps, row_ptr = csr_entries(weight, GAP_BITS[kind])
    nonzero = int(np.count_nonzero(weight))
    codebook, indices = np.unique(values, return_inverse=True)
    index_bits = max(1, math.ceil(math.log2(max(len(codebook), 1))))
    pointer_bits = max(1, math.ceil(math.log2(len(values) + 1)))
    return LayerSize(
        name=name, kind=kind, shape=tuple(weight.shape), weights=int(weight.size), nonzero=nonzero,
        fillers=len(values) - nonzero, codebook_size=len(codebook),
        index=stream_bits(indices, index_bits), gap=stream_bits(gaps, GAP_BITS[kind]),
        row_ptr_bits=len(row_ptr) * pointer_bits, codebook_bits=len(codebook) * FLOAT_BITS,
        bias_bits=0 if bias is None else int(np.size(bias)) * FLOAT_BITS)


@dataclass
class ModelSize:
    """Every layer's bits, the totals and the compression rate against the fp32 dense model."""

    layers: list[LayerSize]
    other_bits: int  # parameters outside Linear/Conv2d layers, kept at 32 bits

    @property
    def total_bits(self) -> int:
        return sum(layer.total_bits for layer in self.layers) + self.other_bits

    @property
    def dense_bits(self) -> int:
        return sum(layer.dense_bits for layer in self.layers) + self.other_bits

    @property
    def rate(self) -> float:
        return self.dense_bits / max(self.total_bits, 1)

    @property
    def nonzero_percent(self) -> float:
        """Non-zero weights of the counted layers in percent of all their weights (biases excluded)."""
        return 100.0 * sum(layer.nonzero for layer in self.layers) / max(sum(layer.weights for layer in self.layers), 1)

    def to_dict(self) -> dict:
        """Plain data for a JSON report."""
        layers = []
        for layer in self.layers:
            row = asdict(layer)
            row.update(total_bits=layer.total_bits, dense_bits=layer.dense_bits)
            layers.append(row)
        return {"layers": layers, "other_bits": self.other_bits, "total_bits": self.total_bits,
                "dense_bits": self.dense_bits, "rate": self.rate, "nonzero_percent": self.nonzero_percent}

    def table(self) -> str:
        """A fixed-width text table: per layer non-zero %, codebook, bits of each part, rate."""
        lines = [f"{'layer':<10}{'shape':>16}{'nonzero':>9}{'fill':>6}{'J':>4}{'index b':>10}{'(H)':>9}"
                 f"{'gap b':>9}{'(H)':>9}{'other b':>9}{'rate':>8}"]
        for layer in self.layers:
            other = layer.row_ptr_bits + layer.codebook_bits + layer.bias_bits
            lines.append(f"{layer.name:<10}{'x'.join(map(str, layer.shape)):>16}"
                         f"{100 * layer.nonzero / max(layer.weights, 1):>8.2f}%{layer.fillers:>6}"
                         f"{layer.codebook_size:>4}{layer.index.total_bits:>10}{layer.index.entropy_bits:>9.0f}"
                         f"{layer.gap.total_bits:>9}{layer.gap.entropy_bits:>9.0f}{other:>9}"
                         f"{layer.dense_bits / max(layer.total_bits, 1):>7.1f}x")
        lines.append(f"{'total':<10}{'':>16}{self.nonzero_percent:>8.2f}%{'':>6}{'':>4}{'':>10}{'':>9}{'':>9}"
                     f"{'':>9}{self.other_bits:>9}{self.rate:>7.1f}x  ({self.total_bits / 8:.0f} of "
                     f"{self.dense_bits / 8:.0f} bytes; (H) = entropy)")
        return "\n".join(lines)


def model_size(model: nn.Module) -> ModelSize:
    """Deep Compression's accounting of every Linear and Conv2d layer of ``model`` (other parameters,
    e.g. BatchNorm, at 32 bits)."""
    layers, counted = [], set()
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            kind = "conv" if isinstance(module, nn.Conv2d) else "fc"
            bias = None if module.bias is None else module.bias.detach().cpu().numpy()
            layers.append(layer_size(name, module.weight.detach().cpu().numpy(), bias, kind))
            counted.update(id(p) for p in module.parameters(recurse=False))
    other = sum(p.numel() for p in model.parameters() if id(p) not in counted) * FLOAT_BITS
    return ModelSize(layers, other)
