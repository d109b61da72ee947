"""Fused onnxruntime operators for a text-generation decoder graph, kept only when the step checks pass.

    python -c "from exporters.fusion_decoder import fuse_decoder; print(fuse_decoder('model.onnx', 'f.onnx', 8192))"

torch's export holds a Llama-style decoder's RMS norms, rotary embeddings and attention as
plain operators (SmolLM2-135M: 2,323 nodes); onnxruntime has one kernel for each. The
passes are onnxscript's ``ort_fusions`` (RMS norm, RMS norm after a residual add, rotary
embedding, scaled dot-product attention as MultiHeadAttention) plus one rule of zoo's own,
``PositionsRotaryCache``: transformers computes the rotary angles as ``position_ids * inv_freq``
(a ``Mul``; onnxscript's cos/sin rule knows only the ``MatMul`` + ``Transpose`` spelling), and
onnxruntime's ``RotaryEmbedding`` wants them as cos/sin tables indexed by position, built
here once for the whole context.

``fuse_verified`` runs from the text-generation export: the fused graph goes through the
same verification as the plain one (the grid, then prefill + decode steps on its own cache
and greedy generation against transformers) and replaces it only if it passes; otherwise
the plain graph stays and the manifest says why. Left padding stays as it is: the fused
attention, onnxruntime's GroupQueryAttention (zoo's ``group_query_attention`` pass, from the
MultiHeadAttention onnxscript writes), gets the graph's own additive mask as its
``attention_bias`` and every row's length as the mask's width, because its kernel's own lengths
assume every row's tokens start at column 0.

Then the weights are packed, as onnxruntime-genai builds its decoders: where the CPU kernel can turn
the heads itself (a head size that is a multiple of 16), each attention's q, k and v projections become
one MatMul into GroupQueryAttention's packed-QKV form with the rotary embedding inside it, at the
graph's position_ids (``packed_attention``: no RotaryEmbedding, Reshape or Transpose around the
attention); other MatMuls of one input (the MLP's gate and up; q, k and v where the rotary stays
outside) become one MatMul and a Split (``packed_projections``). Last, the attention's output goes to its
output projection as it is (``attention_output_reshapes``: no split into heads and merge back).
"""

from __future__ import annotations

import collections
import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

FUSED_DIR = ".fused"  # inside the stage: the fused graph keeps the plain one's file names (external data too)
PROTOBUF_LIMIT = 2 * 1024**3
NOTHING_MATCHED = "no fusion pattern matched"  # GPT-2's LayerNorm/GELU decoder: the plain graph, nothing to note
# the fused operator each pass writes, as named in the manifest
FUSED_OPS = ("SkipSimplifiedLayerNormalization", "RotaryEmbedding", "MultiHeadAttention", "GroupQueryAttention")
# the passes that pack weights, and what the manifest calls what they wrote
PACKED_QKV = "packed QKV, rotary in GroupQueryAttention"
PACKED_MATMUL = "packed MatMul + Split"
PACKINGS = {"q/k/v as one MatMul, rotary inside GroupQueryAttention (zoo)": PACKED_QKV,
            "MatMuls of one input as one MatMul + Split (zoo)": PACKED_MATMUL}


def rotary_tables(inv_freq: np.ndarray, max_positions: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of every position's angles, [max_positions, len(inv_freq)]: onnxruntime's rotary caches."""
    angles = np.arange(max_positions, dtype=np.float32)[:, None] * inv_freq.astype(np.float32)[None]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def _positions_rotary_rule(max_positions: int) -> Any:
    """The rule rewriting onnxscript's intermediate rotary op, fed ``Mul``-made angles, into onnxruntime's."""
    import onnx_ir as ir
    from onnxscript.rewriter import _ir_utils, pattern

    class PositionsRotaryCache(pattern.RewriteRuleClassBase):
        """cos/sin of ``concat(p * inv_freq, p * inv_freq)`` at ``position_ids`` p -> a table lookup in the op."""

        def __init__(self) -> None:
            # cos and sin are shared by every layer's query and key: the matched nodes go in a later clean-up
            super().__init__("PositionsRotaryCache", remove_nodes=False)
            self.tables: dict[int, tuple[ir.Value, ir.Value]] = {}

        def pattern(self, op: Any, x: Any, position_ids: Any, axes: Any, inv_freq: Any, interleaved: Any,
                    num_heads: Any) -> Any:
            angles = op.Mul(op.Cast(op.Unsqueeze(position_ids, axes), to=ir.DataType.FLOAT), inv_freq)
            both = op.Concat(angles, angles, axis=-1)
            return op.RotaryEmbedding(x, op.Unsqueeze(op.Cos(both), [1]), op.Unsqueeze(op.Sin(both), [1]),
                                      interleaved=interleaved, num_heads=num_heads,
                                      _domain="ai.onnxruntime._fusion")

        def check(self, context: Any, x: Any, position_ids: Any, axes: Any, inv_freq: Any, **_: Any) -> Any:
            result = pattern.MatchResult()
            if position_ids not in context.model.graph.inputs or not _ir_utils.has_rank(position_ids, 2):
                return result.fail("position_ids is not the graph's [batch, sequence] input", position_ids)
            if not (_ir_utils.is_singleton_value(axes, -1) or _ir_utils.is_singleton_value(axes, 2)):
                return result.fail("positions are not unsqueezed on the last axis", axes)
            if inv_freq.const_value is None or inv_freq.shape is None or inv_freq.shape.rank() != 1:
                return result.fail("inv_freq is not a 1-D constant", inv_freq)
            if x.shape is None or x.shape.rank() != 4 or x.shape[3] != 2 * inv_freq.shape[0]:
                return result.fail("the rotated tensor is not [batch, heads, sequence, 2 * len(inv_freq)]", x)
            return result

        def rewrite(self, op: Any, x: Any, position_ids: Any, inv_freq: Any, interleaved: Any,
                    num_heads: Any, **_: Any) -> Any:
            key = id(inv_freq)
            if key not in self.tables:
                cos, sin = rotary_tables(inv_freq.const_value.numpy(), max_positions)
                self.tables[key] = (op.Constant(value=ir.tensor(cos)), op.Constant(value=ir.tensor(sin)))
            cos, sin = self.tables[key]
            return op.RotaryEmbedding(x, position_ids, cos, sin, interleaved=interleaved, num_heads=num_heads,
                                      _domain="com.microsoft")

    return PositionsRotaryCache.rule()


def fusion_passes(max_positions: int) -> list[tuple[str, Callable[..., int]]]:
    """(name, pass) in application order; each pass returns how many times it matched."""
    from onnxscript.rewriter import _fusion_utils, pattern
    from onnxscript.rewriter.ort_fusions import (
        cos_sin_cache,
        rms_normalization,
        rotary_embedding,
        sdpa,
        sdpa_via_mha,
        skip_normalization,
    )

    positions_rotary = _fusion_utils.apply_fusion_rules(pattern.RewriteRuleSet([_positions_rotary_rule(max_positions)]))

    return [
        ("RMS norm", rms_normalization.fuse_rms_normalization),
        ("residual add + RMS norm", skip_normalization.fuse_skip_rms_normalization),
        ("rotary embedding (pattern)", rotary_embedding.fuse_rotary_embedding),
        ("rotary cos/sin from position_ids * inv_freq (zoo)", positions_rotary),
        ("rotary cos/sin from MatMul + Transpose (onnxscript)", cos_sin_cache.fuse_cos_sin_cache),
        ("scaled dot-product attention", lambda model, **kw: sdpa.fuse_sdpa(model, apply_shape_inference=True, **kw)),
        ("attention as MultiHeadAttention", sdpa_via_mha.replace_sdpa_by_mha),
        ("MultiHeadAttention reads the cache as it is (zoo)", cache_layout_keys),
        ("MultiHeadAttention on a concatenated cache as GroupQueryAttention (zoo)", group_query_attention),
        ("q/k/v as one MatMul, rotary inside GroupQueryAttention (zoo)", packed_attention),
        ("MatMuls of one input as one MatMul + Split (zoo)", packed_projections),
    ]


def plain_rms_norms(model: Any) -> int:
    """Each SimplifiedLayerNormalization left alone (no residual add before it: the first layer's) as plain ops.

    onnxruntime registers that operator in the ONNX domain, where onnx.checker, which every
    exported graph passes, does not know it; one norm of a whole decoder is not worth the
    exception. Returns the nodes replaced.
    """
    import onnx_ir as ir

    replaced = 0
    for node in list(model.graph):
        if node.op_type != "SimplifiedLayerNormalization" or node.domain not in ("", "ai.onnx"):
            continue
        x, scale = node.inputs[0], node.inputs[1]
        axis, epsilon = node.attributes.get("axis"), node.attributes.get("epsilon")
        eps = ir.node("Constant", [], {"value": ir.tensor(np.array(epsilon.value if epsilon else 1e-5, np.float32))})
        axes = ir.node("Constant", [], {"value": ir.tensor(np.array([axis.value if axis else -1], np.int64))})
        square = ir.node("Mul", [x, x])
        mean = ir.node("ReduceMean", [square.outputs[0], axes.outputs[0]], {"keepdims": 1})
        shifted = ir.node("Add", [mean.outputs[0], eps.outputs[0]])
        root = ir.node("Sqrt", [shifted.outputs[0]])
        normed = ir.node("Div", [x, root.outputs[0]])
        nodes = [eps, axes, square, mean, shifted, root, normed, ir.node("Mul", [normed.outputs[0], scale])]
        model.graph.insert_before(node, nodes)
        ir.convenience.replace_all_uses_with(node.outputs[0], nodes[-1].outputs[0])
        model.graph.remove(node, safe=True)
        replaced += 1
    return replaced


def cache_layout_keys(model: Any, **_: Any) -> int:
    """MultiHeadAttention fed key and value [batch, heads, total, head dim] as they are, not transposed to 3-D.

    onnxscript's SDPA -> MultiHeadAttention rewrite transposes key and value to [batch, total, hidden];
    after the cache concat that copies every past position at every step, while onnxruntime's kernel
    also takes them in the cache's own [batch, heads, total, head dim] layout. Returns the nodes changed.
    """
    changed = 0
    for node in model.graph:
        if node.op_type != "MultiHeadAttention" or node.domain != "com.microsoft" or len(node.inputs) < 3:
            continue
        sources = [_untransposed(node.inputs[i]) for i in (1, 2)]
        if all(source is not None for source in sources):
            for i, source in zip((1, 2), sources):
                node.replace_input_with(i, source)
            changed += 1
    return changed


def group_query_attention(model: Any, **_: Any) -> int:
    """Each MultiHeadAttention over ``concat(past, new)`` (its KV heads repeated to the query heads or not) as one
    GroupQueryAttention, which appends to the cache and shares its KV heads inside the kernel.

    The graph's additive mask goes in as the operator's ``attention_bias``, and every row's length is the
    mask's full width: left padding stays masked by the bias, as it was for MultiHeadAttention (the kernel's
    own lengths assume right padding). Its present outputs replace the Concat's, so the graph's inputs and
    outputs are unchanged; a caller may bind a past and its present to one preallocated buffer
    (``past_present_share_buffer``), which the kernel then appends to in place. Returns the nodes replaced.
    """
    import onnx_ir as ir

    mask = next((v for v in model.graph.inputs if v.name == "attention_mask"), None)
    lengths: tuple[Any, Any] | None = None
    replaced = 0
    for node in list(model.graph):
        if node.op_type != "MultiHeadAttention" or node.domain != "com.microsoft" or mask is None:
            continue
        cache = [_cache_concat(node.inputs[i]) if len(node.inputs) > i else None for i in (1, 2)]
        bias = node.inputs[5] if len(node.inputs) > 5 else None
        if any(c is None for c in cache) or bias is None or any(v is not None for v in node.inputs[3:5]):
            continue
        (key_concat, past_key, new_key), (value_concat, past_value, new_value) = cache
        if not isinstance(past_key.shape[1], int):  # the KV head count is a fixed dimension of the cache input
            continue
        if lengths is None:
            lengths = _row_lengths(model, node, mask)
        query = node.inputs[0]
        kept = [_masked_output(model, concat) for concat in (key_concat, value_concat)]
        new = [_heads_last(model, node, _mask_new(model, node, x, factor)) for x, (_, factor) in
               zip((new_key, new_value), kept)]
        attributes = {"num_heads": node.attributes["num_heads"].value, "kv_num_heads": past_key.shape[1]}
        if "scale" in node.attributes:
            attributes["scale"] = node.attributes["scale"].value
        gqa = ir.node("GroupQueryAttention", [query, *new, past_key, past_value, *lengths, None, None, None, bias],
                      attributes, domain="com.microsoft", num_outputs=3)
        model.graph.insert_before(node, gqa)
        for shape in (u.node for c in (key_concat, value_concat) for u in c.outputs[0].uses()):
            if shape.op_type == "Shape" and _shape_span(shape) == (2, 3):  # the total length, read off the cache
                ir.convenience.replace_all_uses_with(shape.outputs[0], _mask_width(model, mask))
        for old, fresh in zip((node.outputs[0], *(output for output, _ in kept)), gqa.outputs):
            _take_place(model, old, fresh)
        replaced += 1
    if replaced:
        _past_length_from_mask(model, mask)
        model.graph.sort()  # the cache's mask factor was made after the attention it now feeds
    return replaced


def packed_attention(model: Any, **_: Any) -> int:
    """Each GroupQueryAttention whose query, key and value are projections of one input (the key and query
    turned by RotaryEmbedding at the graph's position_ids) as one MatMul of the concatenated weights (and
    biases) feeding the operator's packed-QKV form, which turns query and key itself (``do_rotary``, the same
    cos/sin tables): one matrix product and no reshapes, transposes or rotary nodes around the attention.

    The kernel takes the rotary positions from ``position_ids`` only when it is also given ``query_seqlens``
    (every row's new tokens: the whole chunk); without it, a first prompt counts every row's positions from
    the first row's first entry, which left padding moves. Padding columns of the packed projection are zeroed,
    so the cache stays zero there, as the plain graph writes it. Attentions whose heads the CPU kernel cannot
    turn (a size that is not a multiple of 16) or whose inputs are not this pattern stay as they are.
    Returns the attentions rewritten."""
    import onnx_ir as ir

    inputs = {v.name: v for v in model.graph.inputs}
    mask, positions, ids = (inputs.get(n) for n in ("attention_mask", "position_ids", "input_ids"))
    if mask is None or positions is None or ids is None:
        return 0
    shared: list[Any] = []  # the new columns' mask [batch, sequence, 1] and query_seqlens, made once
    replaced = 0
    for node in list(model.graph):
        if node.op_type != "GroupQueryAttention" or node.domain != "com.microsoft":
            continue
        plan = _packing_plan(node, positions)
        if plan is None:
            continue
        x, weights, biases, (cos, sin, interleaved), heads_first = plan
        if not shared:
            shared.extend(_new_columns(model, mask, ids))
        keep, query_lengths = shared
        name = node.outputs[0].name or f"attention{replaced}"
        nodes = [ir.node("MatMul", [x, _initializer(model, f"{name}.qkv_weight", np.concatenate(weights, 1))])]
        if any(b is not None for b in biases):
            full = [b if b is not None else np.zeros(w.shape[1], np.float32) for w, b in zip(weights, biases)]
            nodes.append(ir.node("Add", [nodes[-1].outputs[0], _initializer(model, f"{name}.qkv_bias",
                                                                           np.concatenate(full))]))
        nodes.append(ir.node("Mul", [nodes[-1].outputs[0], keep]))
        attributes = {a.name: a.value for a in node.attributes.values()}
        attributes.update(do_rotary=1, rotary_interleaved=interleaved)
        gqa = ir.node("GroupQueryAttention", [nodes[-1].outputs[0], None, None, *node.inputs[3:7], cos, sin,
                                              positions, node.inputs[10], None, None, None, None, None,
                                              query_lengths], attributes, domain="com.microsoft", num_outputs=3)
        model.graph.insert_before(node, [*nodes, gqa])
        for old, fresh in zip(node.outputs, gqa.outputs):
            _take_place(model, old, fresh)
        model.graph.remove(node, safe=True)
        _sizes_from_ids(model, heads_first, ids)
        replaced += 1
    return replaced


def packed_projections(model: Any, **_: Any) -> int:
    """MatMuls of one input by constant weights (a layer's gate and up projections; its q, k and v where the
    attention kept them apart) as one MatMul of the weights side by side and a Split of its columns: one matrix
    product, fewer and wider, reads the input once. Returns the MatMuls written."""
    import onnx_ir as ir
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    RemoveUnusedNodesPass()(model)  # what the passes before replaced (q, k and v alone) is not packed again
    groups: dict[int, list[Any]] = collections.defaultdict(list)
    for node in model.graph:
        if node.op_type == "MatMul" and node.domain in ("", "ai.onnx") and _weight(node.inputs[1]) is not None:
            groups[id(node.inputs[0])].append(node)
    packed = 0
    for nodes in groups.values():
        weights = [_weight(n.inputs[1]) for n in nodes]
        if len(nodes) < 2 or len({w.shape[0] for w in weights}) != 1:
            continue
        name = nodes[0].outputs[0].name or f"projection{packed}"
        matmul = ir.node("MatMul", [nodes[0].inputs[0], _initializer(model, f"{name}.packed_weight",
                                                                     np.concatenate(weights, 1))])
        sizes = ir.node("Constant", [], {"value": ir.tensor(np.array([w.shape[1] for w in weights], np.int64))})
        split = ir.node("Split", [matmul.outputs[0], sizes.outputs[0]], {"axis": -1}, num_outputs=len(nodes))
        model.graph.insert_before(nodes[0], [matmul, sizes, split])
        for old, fresh in zip(nodes, split.outputs):
            _take_place(model, old.outputs[0], fresh)
            model.graph.remove(old, safe=True)
        packed += 1
    return packed


def attention_output_reshapes(model: Any) -> int:
    """Each chain of Reshapes after a GroupQueryAttention that ends in the shape it began with, dropped.

    The attention's output is [batch, sequence, heads * head dim] at input_ids' batch and sequence (the
    hidden states of the chunk's tokens); onnxscript's MultiHeadAttention rewrite splits it into heads
    ([0, 0, heads, -1], the layout the SDPA it replaced had after its transpose) and the export's own view
    merges them back for the output projection: two Reshapes per layer that change nothing but cost two
    kernel calls a token. A chain whose end is [batch, sequence, n] of those same dimensions holds the
    output's elements in its order and count, so it is the output itself. Returns the chains dropped."""
    import onnx_ir as ir

    ids = next((v for v in model.graph.inputs if v.name == "input_ids"), None)
    if ids is None or ids.shape is None or ids.shape.rank() != 2:
        return 0
    dropped = 0
    for node in list(model.graph):
        if node.op_type != "GroupQueryAttention" or node.domain != "com.microsoft":
            continue
        output = node.outputs[0]
        chain, end = _reshape_chain(output)
        if not chain or end.is_graph_output() or end.shape is None or end.shape.rank() != 3 \
                or not all(_same_dim(end.shape[i], ids.shape[i]) for i in (0, 1)):
            continue
        output.type, output.shape = end.type, end.shape
        ir.convenience.replace_all_uses_with(end, output)
        for reshape in reversed(chain):
            model.graph.remove(reshape, safe=True)
        dropped += 1
    return dropped


def _reshape_chain(value: Any) -> tuple[list[Any], Any]:
    """(the Reshapes that alone read ``value``, one after the other, the last one's output)."""
    chain = []
    while not value.is_graph_output() and len(value.uses()) == 1:
        node, index = next(iter(value.uses()))
        if node.op_type != "Reshape" or node.domain not in ("", "ai.onnx") or index != 0:
            break
        chain.append(node)
        value = node.outputs[0]
    return chain, value


def _same_dim(a: Any, b: Any) -> bool:
    """Whether two dimensions are known to be equal: the same number, or the same named symbol."""
    if isinstance(a, int) or isinstance(b, int):
        return a == b
    return a.value is not None and a == b


def _weight(value: Any) -> np.ndarray | None:
    """The constant 2-D matrix ``value`` holds, or None."""
    if value is None or value.const_value is None or value.is_graph_input():
        return None
    array = value.const_value.numpy()
    return array if array.ndim == 2 else None


def _initializer(model: Any, name: str, array: np.ndarray) -> Any:
    import onnx_ir as ir

    value = ir.Value(name=name, const_value=ir.tensor(np.ascontiguousarray(array)))
    model.graph.register_initializer(value)
    return value


def _new_columns(model: Any, mask: Any, ids: Any) -> tuple[Any, Any]:
    """(the mask's last ``sequence`` columns as float [batch, sequence, 1], every row's new-token count as int32
    [batch]: GroupQueryAttention's query_seqlens), made before every node of the graph."""
    import onnx_ir as ir

    def constant(array: np.ndarray) -> Any:
        return ir.node("Constant", [], {"value": ir.tensor(array)})

    width = ir.node("Shape", [ids], {"start": 1, "end": 2})
    start = ir.node("Neg", [width.outputs[0]])
    end, axis, last = constant(np.array([np.iinfo(np.int64).max])), constant(np.array([1])), constant(np.array([-1]))
    cast = ir.node("Cast", [mask], {"to": ir.DataType.FLOAT})
    columns = ir.node("Slice", [cast.outputs[0], start.outputs[0], end.outputs[0], axis.outputs[0]])
    keep = ir.node("Unsqueeze", [columns.outputs[0], last.outputs[0]])
    batch = ir.node("Shape", [mask], {"start": 0, "end": 1})
    count = ir.node("Cast", [width.outputs[0]], {"to": ir.DataType.INT32})
    lengths = ir.node("Expand", [count.outputs[0], batch.outputs[0]])
    nodes = [width, start, end, axis, last, cast, columns, keep, batch, count, lengths]
    model.graph.insert_before(next(iter(model.graph)), nodes)
    return keep.outputs[0], lengths.outputs[0]


def _packing_plan(node: Any, positions: Any) -> tuple[Any, list[np.ndarray], list[Any], tuple[Any, Any, int],
                                                      list[Any]] | None:
    """(the projections' input, q/k/v weights, their biases (None: none), the rotary (cos, sin, interleaved), the
    values between projections and attention in [batch, heads, sequence, head dim]) of a GroupQueryAttention
    ``packed_attention`` can rewrite, else None."""
    if len(node.inputs) != 11 or any(node.inputs[i] is not None for i in (7, 8, 9)) or None in node.inputs[:3]:
        return None
    chains = [_head_chain(node.inputs[i]) for i in range(3)]
    if None in chains:
        return None
    projections = [_projection(source) for source, _, _ in chains]
    if None in projections or len({id(p[0]) for p in projections}) != 1:
        return None
    heads, kv_heads = node.attributes["num_heads"].value, node.attributes["kv_num_heads"].value
    widths = [w.shape[1] for _, w, _ in projections]
    head_dim = widths[0] // heads
    if widths != [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim]:
        return None
    (_, query_rotary, _), (_, key_rotary, _), (_, value_rotary, _) = chains
    rotary = _shared_rotary(query_rotary, key_rotary, positions, head_dim) if value_rotary is None else None
    if rotary is None:
        return None
    return (projections[0][0], [w for _, w, _ in projections], [b for _, _, b in projections], rotary,
            [v for _, _, values in chains for v in values])


def _head_chain(value: Any) -> tuple[Any, Any, list[Any]] | None:
    """(the [batch, sequence, heads * head dim] projection, its RotaryEmbedding or None, the values between in
    [batch, heads, sequence, head dim]) where ``value`` is that
    projection split into heads, transposed to [batch, heads, sequence, head dim], perhaps turned and masked,
    and transposed and merged back: how an attention input reads after the passes above."""
    source = _untransposed(value, rank_known=False)  # a Mul group_query_attention added has no shape
    if source is None:
        return None
    heads_first = [source]  # the chain's [batch, heads, sequence, head dim] values
    rotary, node = None, source.producer()
    while node is not None and node.op_type in ("Mul", "RotaryEmbedding"):
        if node.op_type == "RotaryEmbedding":
            if node.domain != "com.microsoft" or rotary is not None:
                return None
            rotary, source = node, node.inputs[0]
        else:
            rest = [v for v in node.inputs if not _from_mask(v)]
            if len(rest) != 1:  # a Mul by anything but the mask (a scale) is not a layout step
                return None
            source = rest[0]
        heads_first.append(source)
        node = source.producer()
    if node is None or node.op_type != "Transpose" or list(node.attributes["perm"].value) != [0, 2, 1, 3]:
        return None
    view = node.inputs[0].producer()
    if view is None or view.op_type != "Reshape" or view.outputs[0].shape is None or view.outputs[0].shape.rank() != 4:
        return None
    return view.inputs[0], rotary, heads_first


def _sizes_from_ids(model: Any, values: list[Any], ids: Any) -> None:
    """Every ``Shape`` of one axis of ``values`` ([batch, heads, sequence, head dim]) that reads the batch or
    sequence size (the attention bias's expand does) as the same size of ``input_ids``: the values are gone
    once the attention is packed, and such a read would keep their nodes alive."""
    import onnx_ir as ir

    for value in values:
        for use in list(value.uses()):
            start, end = _shape_span(use.node) if use.node.op_type == "Shape" else (None, None)
            if start is None or end != start + 1 or start not in (0, 2):
                continue
            size = ir.node("Shape", [ids], {"start": start // 2, "end": start // 2 + 1})
            model.graph.insert_before(use.node, size)
            ir.convenience.replace_all_uses_with(use.node.outputs[0], size.outputs[0])


def _from_mask(value: Any) -> bool:
    """Whether ``value`` is the graph's attention_mask through casts, slices and reshapes only."""
    while value is not None and not value.is_graph_input():
        node = value.producer()
        if node is None or node.op_type not in ("Cast", "Slice", "Unsqueeze", "Reshape"):
            return False
        value = node.inputs[0]
    return value is not None and value.name == "attention_mask"


def _projection(value: Any) -> tuple[Any, np.ndarray, np.ndarray | None] | None:
    """(x, W, b) where ``value`` is ``x @ W`` (+ b), or columns of one (Phi-3's packed q/k/v), W constant."""
    node = value.producer()
    columns = slice(None)
    if node is not None and node.op_type == "Slice":
        columns = _last_axis_slice(node)
        if columns is None:
            return None
        node = node.inputs[0].producer()
    bias = None
    if node is not None and node.op_type == "Add":
        constant = [v for v in node.inputs if v.const_value is not None]
        if len(constant) != 1 or constant[0].const_value.numpy().ndim != 1:
            return None
        bias = constant[0].const_value.numpy()[columns]
        node = next(v for v in node.inputs if v is not constant[0]).producer()
    weight = _weight(node.inputs[1]) if node is not None and node.op_type == "MatMul" else None
    if weight is None:
        return None
    return node.inputs[0], weight[:, columns], bias


def _last_axis_slice(node: Any) -> slice | None:
    """The columns a ``Slice`` of a 3-D tensor's last axis takes with step 1, else None."""
    parts = [v.const_value.numpy().tolist() if v is not None and v.const_value is not None else None
             for v in node.inputs[1:5]] + [None] * (5 - len(node.inputs))
    (start,), (end,) = parts[0] or [None], parts[1] or [None]
    axes, steps = parts[2], parts[3]
    if start is None or end is None or axes not in ([-1], [2]) or steps not in (None, [1]):
        return None
    return slice(start, end)


def _shared_rotary(query: Any, key: Any, positions: Any, head_dim: int) -> tuple[Any, Any, int] | None:
    """(cos, sin, interleaved) where query and key are turned alike, over whole heads, at the graph's
    position_ids, and the CPU kernel can turn heads of ``head_dim`` itself."""
    if query is None or key is None or head_dim % 16:
        return None
    attributes = [{name: a.value for name, a in n.attributes.items()} for n in (query, key)]
    interleaved = {a.get("interleaved", 0) for a in attributes}
    if len(interleaved) != 1 or any(a.get("rotary_embedding_dim", 0) not in (0, head_dim) or
                                    a.get("scale", 1.0) != 1.0 for a in attributes):
        return None
    if query.inputs[1] is not positions or key.inputs[1] is not positions:
        return None
    tables = [query.inputs[2], query.inputs[3]]
    if key.inputs[2] is not tables[0] or key.inputs[3] is not tables[1]:
        return None
    arrays = [_constant(t) for t in tables]
    if any(a is None or a.ndim != 2 or a.shape[1] * 2 != head_dim for a in arrays):
        return None
    return tables[0], tables[1], interleaved.pop()


def _constant(value: Any) -> np.ndarray | None:
    """``value``'s array where it is an initializer or a Constant node's output, else None."""
    if value.const_value is not None:
        return value.const_value.numpy()
    node = value.producer()
    if node is not None and node.op_type == "Constant" and "value" in node.attributes:
        return node.attributes["value"].value.numpy()
    return None


def _past_length_from_mask(model: Any, mask: Any) -> None:
    """Every ``Shape(past, start=2, end=3)`` (the past length, which torch's export reads off the cache) as the
    mask's width minus the new tokens': a shared cache buffer is longer than its filled part."""
    import onnx_ir as ir

    ids = next(v for v in model.graph.inputs if v.name == "input_ids")
    reads = [n for n in model.graph if n.op_type == "Shape" and n.inputs[0].is_graph_input()
             and n.inputs[0].name.startswith("past_key_values.") and _shape_span(n) == (2, 3)]
    if not reads:
        return
    total = ir.node("Shape", [mask], {"start": 1, "end": 2})
    new = ir.node("Shape", [ids], {"start": 1, "end": 2})
    past = ir.node("Sub", [total.outputs[0], new.outputs[0]])
    model.graph.insert_before(reads[0], [total, new, past])
    for node in reads:
        ir.convenience.replace_all_uses_with(node.outputs[0], past.outputs[0])


def _mask_width(model: Any, mask: Any) -> Any:
    """Shape(attention_mask)[1:2], made once, before every node of the graph."""
    import onnx_ir as ir

    width = next((n for n in model.graph if n.op_type == "Shape" and n.inputs[0] is mask and _shape_span(n) == (1, 2)),
                 None)
    if width is None:
        width = ir.node("Shape", [mask], {"start": 1, "end": 2})
        model.graph.insert_before(next(iter(model.graph)), width)
    return width.outputs[0]


def _shape_span(node: Any) -> tuple[int | None, int | None]:
    start, end = node.attributes.get("start"), node.attributes.get("end")
    return (start.value if start else None, end.value if end else None)


def _cache_concat(value: Any) -> tuple[Any, Any, Any] | None:
    """(the Concat node, past, new) where ``value`` is ``concat(past input, new, axis=-2)``, optionally with its
    heads repeated (Reshape(Expand(Unsqueeze(concat)))): a cache as torch's export writes it."""
    node = value.producer() if value is not None else None
    if node is not None and node.op_type == "Reshape":
        expand = node.inputs[0].producer()
        unsqueeze = expand.inputs[0].producer() if expand is not None and expand.op_type == "Expand" else None
        node = unsqueeze.inputs[0].producer() if unsqueeze is not None and unsqueeze.op_type == "Unsqueeze" else None
    if node is None or node.op_type != "Concat" or len(node.inputs) != 2:
        return None
    axis = node.attributes.get("axis")
    past = node.inputs[0]
    if axis is None or axis.value not in (-2, 2) or not past.is_graph_input() or past.shape is None \
            or past.shape.rank() != 4:
        return None
    return node, past, node.inputs[1]


def _masked_output(model: Any, concat: Any) -> tuple[Any, Any]:
    """(the present output, the factor it is masked by): zoo's decoder writes the cache as ``concat * mask`` (zero
    at padding, see zoo.tasks._generate_torch), (concat, None) for a graph that outputs the concat as it is."""
    for use in concat.outputs[0].uses():
        node = use.node
        if node.op_type == "Mul" and node.outputs[0] in model.graph.outputs:
            return node.outputs[0], node.inputs[1 - use.idx]
    return concat.outputs[0], None


def _mask_new(model: Any, before: Any, new: Any, factor: Any) -> Any:
    """``new`` [batch, heads, sequence, head dim] times the last ``sequence`` columns of ``factor`` [batch, 1,
    total, 1] (the mask): the past is zero at padding already, so masking the new entries masks the whole cache."""
    import onnx_ir as ir

    if factor is None:
        return new
    ids = next(v for v in model.graph.inputs if v.name == "input_ids")
    width = ir.node("Shape", [ids], {"start": 1, "end": 2})
    start = ir.node("Neg", [width.outputs[0]])
    end = ir.node("Constant", [], {"value": ir.tensor(np.array([np.iinfo(np.int64).max], np.int64))})
    axis = ir.node("Constant", [], {"value": ir.tensor(np.array([2], np.int64))})
    last = ir.node("Slice", [factor, start.outputs[0], end.outputs[0], axis.outputs[0]])
    masked = ir.node("Mul", [new, last.outputs[0]])
    model.graph.insert_before(before, [width, start, end, axis, last, masked])
    return masked.outputs[0]


def _row_lengths(model: Any, before: Any, mask: Any) -> tuple[Any, Any]:
    """(seqlens_k, total_sequence_length) for GroupQueryAttention: the mask's width - 1 for every row, and its
    width, int32."""
    import onnx_ir as ir

    batch = ir.node("Shape", [mask], {"start": 0, "end": 1})
    width = ir.node("Shape", [mask], {"start": 1, "end": 2})
    total = ir.node("Cast", [width.outputs[0]], {"to": ir.DataType.INT32})
    scalar = ir.node("Squeeze", [total.outputs[0]])
    one = ir.node("Constant", [], {"value": ir.tensor(np.array(1, np.int32))})
    last = ir.node("Sub", [scalar.outputs[0], one.outputs[0]])
    rows = ir.node("Expand", [last.outputs[0], batch.outputs[0]])
    model.graph.insert_before(before, [batch, width, total, scalar, one, last, rows])
    return rows.outputs[0], scalar.outputs[0]


def _heads_last(model: Any, before: Any, value: Any) -> Any:
    """[batch, sequence, heads * head dim] from a [batch, heads, sequence, head dim] ``value``."""
    import onnx_ir as ir

    transpose = ir.node("Transpose", [value], {"perm": [0, 2, 1, 3]})
    shape = ir.node("Constant", [], {"value": ir.tensor(np.array([0, 0, -1], np.int64))})
    reshape = ir.node("Reshape", [transpose.outputs[0], shape.outputs[0]])
    model.graph.insert_before(before, [transpose, shape, reshape])
    return reshape.outputs[0]


def _take_place(model: Any, old: Any, fresh: Any) -> None:
    """``fresh`` in every use of ``old``, and as the graph output ``old`` was, by its name."""
    import onnx_ir as ir

    fresh.type, fresh.shape = old.type, old.shape  # onnx's shape inference does not know onnxruntime's operators
    if old in model.graph.outputs:
        name, old.name = old.name, None
        fresh.name = name
    ir.convenience.replace_all_uses_with(old, fresh, replace_graph_outputs=True)


def _untransposed(value: Any, rank_known: bool = True) -> Any:
    """x where ``value`` is Reshape(Transpose(x, perm=[0, 2, 1, 3]), [0, 0, -1]) of a 4-D x (or of an x of unknown
    rank: ``rank_known=False``), else None."""
    reshape = value.producer() if value is not None else None
    if reshape is None or reshape.op_type != "Reshape" or reshape.domain not in ("", "ai.onnx"):
        return None
    shape = _constant(reshape.inputs[1]) if len(reshape.inputs) > 1 else None
    transpose = reshape.inputs[0].producer()
    if shape is None or list(shape) != [0, 0, -1] or transpose is None or transpose.op_type != "Transpose":
        return None
    perm = transpose.attributes.get("perm")
    source = transpose.inputs[0]
    if perm is None or list(perm.value) != [0, 2, 1, 3]:
        return None
    if (source.shape is None and rank_known) or (source.shape is not None and source.shape.rank() != 4):
        return None
    return source


def fuse_decoder(src: Path | str, dst: Path | str, max_positions: int) -> dict[str, int]:
    """Write ``dst``: the decoder ``src`` with every fusion that matches; returns onnxruntime's fused
    operators in it, by count (none: nothing fused). ``max_positions`` sizes the rotary tables."""
    import onnx_ir as ir
    import onnx_ir.passes.common as common_passes
    from onnxscript.optimizer import optimize
    from onnxscript.rewriter import rewrite
    from onnxscript.rewriter.ort_fusions import ORT_PATTERN_REWRITE_RULES, shape_optimization

    model = ir.load(str(src))
    # the patterns match shapes and constants: shapes are inferred and folded first
    common_passes.ShapeInferencePass()(model)
    optimize(model)
    shape_optimization.rules.apply_to_model(model)
    optimize(model)
    packed = {}
    for name, fuse in fusion_passes(max_positions):
        matched = fuse(model)
        if name in PACKINGS:
            packed[PACKINGS[name]] = matched
    optimize(model)  # inlines what a later pass did not consume (onnxscript's intermediate ops), drops dead nodes
    attention_output_reshapes(model)  # after the optimiser: it folds the transposes between those Reshapes
    plain_rms_norms(model)
    rewrite(model, ORT_PATTERN_REWRITE_RULES)
    ir.passes.Sequential(common_passes.RemoveUnusedNodesPass(),  # what computed the dropped Reshapes' shapes
                         common_passes.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=1),
                         common_passes.RemoveInitializersFromInputsPass(), common_passes.NameFixPass(),
                         common_passes.ShapeInferencePass())(model)
    big = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    ir.save(model, str(dst), external_data=Path(dst).name + ".data" if big > PROTOBUF_LIMIT * 0.9 else None)
    ops = collections.Counter(node.op_type for node in model.graph if node.domain == "com.microsoft")
    return {op: ops[op] for op in FUSED_OPS if ops[op]} | {name: n for name, n in packed.items() if n}


def fuse_verified(source: Any, model_path: Path, kept: Any, references: list[dict[str, np.ndarray]],
                  preprocess: dict[str, Any], step: Callable[[str], None], *, noise_floor: bool = True) -> Any:
    """The decoder at ``model_path`` fused, verified like the plain graph, and moved into its place if it passes.

    Returns the ``GraphChoice`` kept (the fused one, or ``kept`` unchanged). What happened is recorded
    in ``preprocess['generation']['fusion']`` (fused operators, which graph was kept, why) and, when
    the fused graph was refused, in the export notes. Nothing of a refused graph is left in the stage.
    """
    record: dict[str, Any] = {"fused": {}, "kept": "plain"}
    preprocess["generation"]["fusion"] = record
    fused_path = model_path.parent / FUSED_DIR / model_path.name
    fused_path.parent.mkdir()
    try:
        report, reason = _fuse_and_verify(source, model_path, fused_path, kept, references, record, step,
                                          noise_floor)
        if report is None:
            record["reason"] = reason
            if reason != NOTHING_MATCHED:
                kept.notes.append(f"decoder fusion refused, the plain graph kept: {reason}")
            return dataclasses.replace(kept, graph={"form": "plain", "reason": reason})
        for part in model_path.parent.glob(model_path.name + "*"):
            part.unlink()
        for part in fused_path.parent.iterdir():
            part.replace(model_path.parent / part.name)
        record["kept"] = "fused"
        return dataclasses.replace(kept, report=report,
                                   graph={"form": "fused", "recipe": "decoder", "fusions": dict(record["fused"])})
    finally:
        shutil.rmtree(fused_path.parent, ignore_errors=True)


def _fuse_and_verify(source: Any, model_path: Path, fused_path: Path, kept: Any,
                     references: list[dict[str, np.ndarray]], record: dict[str, Any], step: Callable[[str], None],
                     noise_floor: bool) -> tuple[Any, str]:
    """(the fused graph's passing report, '') or (None, why it is not kept)."""
    from exporters.verify import NoiseFloor, verify_model
    from zoo.errors import first_line

    step("fuse the decoder graph (RMS norm, rotary embedding, attention)")
    try:
        record["fused"] = fuse_decoder(model_path, fused_path, int(source.spec.preprocess.max_length or 2048))
    except Exception as exc:  # onnxscript's rewriter fails in many ways on graphs it does not expect
        return None, f"fusion failed: {type(exc).__name__}: {first_line(exc, 160)}"
    if not record["fused"]:
        return None, NOTHING_MATCHED
    step(f"verify the fused graph ({', '.join(f'{n} {op}' for op, n in record['fused'].items())})")
    noise = NoiseFloor(source.module, source.spec, source.cases, references, step) if noise_floor else None
    report, _ = verify_model(source.module, source.spec, fused_path, source.cases, references=references,
                             optimization=kept.optimization, noise=noise)
    if not report.passed:
        return None, "the fused graph failed verification: " + "; ".join(
            f"{c.name} {c.value}" + (f" ({c.detail[:120]})" if c.detail else "") for c in report.failures)
    return report, ""
