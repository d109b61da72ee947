"""Weights that already sit on a 4- or 8-bit block grid (a GGUF source's Q4_0/Q4_1/Q8_0), written back to
MatMulNBits without a second rounding.

A GGUF file's Q4_1 tensor holds, for every 32 weights along the input dimension, a scale ``d`` and a minimum
``m`` (both float16) and codes ``q`` in 0..15: ``w = d * q + m``; Q8_0 holds ``w = d * q`` with q in
-127..127. zoo dequantises the file once into float32 (zoo.sources.gguf), so those grids are still in the
fp32 weights: per block, ``m`` is the smallest weight, ``d`` is (max - min) / 15 rounded to float16, and the
codes come back by rounding. Each block is checked exactly (``d * q + m`` must give every weight back bit
for bit); a block that is not on its grid is rounded to the same kind of grid instead (an approximation,
counted in the manifest).

MatMulNBits has no place for ``m`` that keeps its fast kernel: float zero points are accepted by
onnxruntime but take a slow path (15x the time of uint8 ones in a microbenchmark), and uint8 zero
points are integers, which ``-m / d`` is not. So the codes go into MatMulNBits with its default zero point 8
(``d * (q - 8)``) and the rest is added by a small fp32 product: ``y = x W = MatMulNBits(x) + (x P) M``,
where ``x P`` sums ``x`` over each block of 32 (P is 0/1, shared by the MatMuls that read the same tensor)
and ``M`` [blocks, N] holds ``m + 8 d``.

Two one-node alternatives were measured on SmolLM2-135M's Q4_1 weights and refused by the generative gate:
rounding to an int4 grid with uint8 zero points (onnxruntime-genai's recipe; the block moves by up to d / 2)
rose perplexity 20% with no prompt agreeing for 16 tokens, and an 8-bit grid with uint8 zero points at scale
d / k (k <= 17 chosen per block, within 0.03 d of the minimum) agreed on 75% of prompts where this form agrees
on 94%: there the minimum meets the int8-rounded activations too, here only the centred codes do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

BLOCK = 32
# a weight matrix takes this path when at least this share of its blocks is exactly on a 4-bit grid: a
# matrix from a 4-bit GGUF tensor has all of them, a trained fp32 matrix practically none
EXACT_SHARE = 0.5


@dataclass
class Blocks:
    """A [K, N] weight as MatMulNBits blocks along K: ``w[k, n] = scale[n, b] * (codes[n, b, i] - zero) +
    offset[n, b]`` with ``k = 32 b + i``; ``exact[n, b]``: the block gives its weights back bit for bit."""

    codes: np.ndarray  # [N, blocks, 32] uint8
    scale: np.ndarray  # [N, blocks] float32
    offset: np.ndarray  # [N, blocks] float32 (zeros for a symmetric grid)
    exact: np.ndarray  # [N, blocks] bool
    bits: int
    zero: int  # the code of 0: 0 for the 4-bit grid (its minimum is the offset), 128 for the symmetric 8-bit one

    @property
    def exact_share(self) -> float:
        return float(self.exact.mean())

    def dense(self) -> np.ndarray:
        """The [K, N] weight these blocks stand for, computed as the grid's own formula (d * q + m)."""
        w = self.scale[..., None] * (self.codes.astype(np.float32) - self.zero) + self.offset[..., None]
        return np.ascontiguousarray(w.reshape(w.shape[0], -1).T)


def _by_block(w: np.ndarray) -> np.ndarray:
    """[K, N] -> [N, K / 32, 32]: each output column's weights in blocks along K."""
    return np.ascontiguousarray(w.astype(np.float32).T).reshape(w.shape[1], -1, BLOCK)


def _fp16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


def asymmetric4(w: np.ndarray) -> Blocks:
    """``w`` [K, N] (K a multiple of 32) on Q4_1's grid: w = d * q + m, q in 0..15, d and m float16."""
    blocks = _by_block(w)
    low, high = blocks.min(-1), blocks.max(-1)
    exact_scale = _fp16((high - low) / 15)
    codes, exact = _codes(blocks, exact_scale, low, 0, 15)
    # off the grid: the same kind of grid from the block's own range, float32 scale, rounded codes
    rounded_scale = (high - low) / 15
    approx, _ = _codes(blocks, rounded_scale, low, 0, 15)
    scale = np.where(exact, exact_scale, rounded_scale)
    return Blocks(np.where(exact[..., None], codes, approx), scale, low, exact, bits=4, zero=0)


def symmetric8(w: np.ndarray) -> Blocks:
    """``w`` [K, N] on Q8_0's grid: w = d * q, q in -127..127, d float16; codes are q + 128 (MatMulNBits'
    default 8-bit zero point)."""
    blocks = _by_block(w)
    absmax = np.abs(blocks).max(-1)
    zeros = np.zeros_like(absmax)
    exact_scale = _fp16(absmax / 127)
    codes, exact = _codes(blocks, exact_scale, zeros, -127, 127)
    approx, _ = _codes(blocks, absmax / 127, zeros, -127, 127)
    scale = np.where(exact, exact_scale, absmax / 127)
    shifted = (np.where(exact[..., None], codes, approx) + 128).astype(np.uint8)
    return Blocks(shifted, scale, zeros, exact, bits=8, zero=128)


def _codes(blocks: np.ndarray, scale: np.ndarray, offset: np.ndarray, lowest: int,
           highest: int) -> tuple[np.ndarray, np.ndarray]:
    """Rounded codes of ``blocks`` on the grid (scale, offset), clipped to [lowest, highest], and whether each
    block is given back exactly (a constant block has scale 0 and is exact at code 0)."""
    safe = np.where(scale == 0, 1.0, scale)[..., None]
    raw = np.round((blocks - offset[..., None]) / safe)
    codes = np.clip(raw, lowest, highest)
    exact = ((scale[..., None] * codes + offset[..., None]) == blocks).all(-1) & (raw == codes).all(-1)
    return codes.astype(np.int16), exact


# ---------------------------------------------------------------- the graph


def round_trip_errors(model: Any, name: str, blocks: Blocks) -> int:
    """How many of ``blocks`` the graph's node ``name`` (as written by ``rewrite``) does not give back within
    float rounding (an exact block is its source weights bit for bit): read from the graph's own tensors, so
    a wrong code, scale or minimum shows."""
    from onnx import numpy_helper

    init = {i.name: i for i in model.graph.initializer}
    node = next(n for n in model.graph.node if n.name == name)
    attrs = {a.name: a.i for a in node.attribute}
    packed = numpy_helper.to_array(init[node.input[1]])
    n_out, k = attrs["N"], attrs["K"]
    codes = _unpack(packed, attrs["bits"]).reshape(n_out, k // BLOCK, BLOCK)
    scale = numpy_helper.to_array(init[node.input[2]]).reshape(n_out, -1)
    offset = np.zeros_like(scale)
    offset_name = node.output[0].removesuffix(".codes") + ".minima"
    if offset_name in init:
        offset = numpy_helper.to_array(init[offset_name]).T
    dense = scale[..., None] * (codes.astype(np.float32) - 2 ** (attrs["bits"] - 1)) + offset[..., None]
    # float rounding of d * (q - 8) + (m + 8 d) against d * q + m: a few ulps of the block's magnitude
    tolerance = 1e-6 * (np.abs(offset) + np.abs(scale) * 2 ** attrs["bits"])[..., None]
    close = (np.abs(dense - _by_block(blocks.dense())) <= tolerance).all(-1)
    return int((~close).sum())


def _pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """[N, blocks, 32] codes -> MatMulNBits' B [N, blocks, 32 * bits / 8]: 4-bit codes two to a byte, the
    first of each pair in the low nibble."""
    codes = codes.astype(np.uint8)
    if bits == 8:
        return codes
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


def _unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return packed
    return np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(*packed.shape[:-1], -1)


def offsets(blocks: Blocks) -> np.ndarray:
    """[N, blocks] what ``rewrite`` adds in fp32 to MatMulNBits' product with its default zero point (8 for
    4 bits, 128 for 8): d * q + m = d * (q - 8) + (m + 8 d). Centred codes halve the error that int8-rounded
    activations (accuracy_level 4) make: it is multiplied by q - 8, not by q in 0..15."""
    return blocks.offset + blocks.scale * (2 ** (blocks.bits - 1) - blocks.zero)


def rewrite(model: Any, weights: dict[str, Blocks], accuracy_level: int, fp32_activations: Any = ()) -> None:
    """Replace each MatMul named in ``weights`` by MatMulNBits over its blocks, plus the product that adds the
    blocks' minima where the grid has them; the node keeps its name and its output. ``fp32_activations``:
    nodes computed with fp32 activations (accuracy_level 0) whatever ``accuracy_level`` says."""
    from onnx import helper, numpy_helper

    graph = model.graph
    block_sums: dict[str, str] = {}
    nodes = []
    for node in graph.node:
        blocks = weights.get(node.name)
        if blocks is None:
            nodes.append(node)
            continue
        x, weight, out = node.input[0], node.input[1], node.output[0]
        n_out, n_blocks = blocks.scale.shape
        inputs = [x, f"{weight}.q{blocks.bits}", f"{weight}.scales"]
        graph.initializer.extend([numpy_helper.from_array(_pack(blocks.codes, blocks.bits), inputs[1]),
                                  numpy_helper.from_array(blocks.scale.reshape(-1), inputs[2])])
        offset = offsets(blocks)
        with_offsets = bool(offset.any())
        nbits_out = f"{out}.codes" if with_offsets else out
        nodes.append(helper.make_node("MatMulNBits", inputs, [nbits_out], name=node.name, domain="com.microsoft",
                                      K=n_blocks * BLOCK, N=n_out, bits=blocks.bits, block_size=BLOCK,
                                      accuracy_level=0 if node.name in fp32_activations else accuracy_level))
        if with_offsets:
            if x not in block_sums:  # one per tensor: q, k and v (gate and up) read the same one
                block_sums[x] = f"{x}.block_sums"
                ones = np.kron(np.eye(n_blocks, dtype=np.float32), np.ones((BLOCK, 1), np.float32))
                graph.initializer.append(numpy_helper.from_array(ones, f"{x}.block_ones"))
                nodes.append(helper.make_node("MatMul", [x, f"{x}.block_ones"], [block_sums[x]],
                                              name=f"{x}.block_sums"))
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(offset.T), f"{out}.minima"))
            nodes.append(helper.make_node("MatMul", [block_sums[x], f"{out}.minima"], [f"{out}.offsets"],
                                          name=f"{node.name}.minima"))
            nodes.append(helper.make_node("Add", [nbits_out, f"{out}.offsets"], [out], name=f"{node.name}.add"))
    graph.ClearField("node")
    graph.node.extend(nodes)
    used = {name for n in graph.node for name in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    graph.ClearField("initializer")
    graph.initializer.extend(kept)
