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
attention gets the graph's own additive mask, so onnxruntime's GroupQueryAttention (whose
kernel assumes every row's tokens start at column 0) is not used.
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
FUSED_OPS = ("SkipSimplifiedLayerNormalization", "RotaryEmbedding", "MultiHeadAttention")


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


def _untransposed(value: Any) -> Any:
    """x where ``value`` is Reshape(Transpose(x, perm=[0, 2, 1, 3]), [0, 0, -1]) of a 4-D x, else None."""
    reshape = value.producer() if value is not None else None
    if reshape is None or reshape.op_type != "Reshape" or reshape.domain not in ("", "ai.onnx"):
        return None
    shape = reshape.inputs[1].const_value if len(reshape.inputs) > 1 else None
    transpose = reshape.inputs[0].producer()
    if shape is None or list(shape.numpy()) != [0, 0, -1] or transpose is None or transpose.op_type != "Transpose":
        return None
    perm = transpose.attributes.get("perm")
    source = transpose.inputs[0]
    if perm is None or list(perm.value) != [0, 2, 1, 3] or source.shape is None or source.shape.rank() != 4:
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
    for _, fuse in fusion_passes(max_positions):
        fuse(model)
    optimize(model)  # inlines what a later pass did not consume (onnxscript's intermediate ops), drops dead nodes
    plain_rms_norms(model)
    rewrite(model, ORT_PATTERN_REWRITE_RULES)
    ir.passes.Sequential(common_passes.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=1),
                         common_passes.RemoveInitializersFromInputsPass(), common_passes.NameFixPass(),
                         common_passes.ShapeInferencePass())(model)
    big = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    ir.save(model, str(dst), external_data=Path(dst).name + ".data" if big > PROTOBUF_LIMIT * 0.9 else None)
    ops = collections.Counter(node.op_type for node in model.graph if node.domain == "com.microsoft")
    return {op: ops[op] for op in FUSED_OPS if ops[op]}


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
