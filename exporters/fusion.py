"""Graph fusions for onnxruntime, from onnxscript's rewriter, and the portable offline save.

    python -c "from exporters.fusion import fuse_graph; print(fuse_graph('model.onnx', 'fused.onnx'))"

The passes are onnxscript's ``ort_fusions`` in the order its own
``optimize_for_ort`` applies them, stopping at MultiHeadAttention: the packed
``Attention`` op that comes after it carries ``qkv_hidden_sizes``, which
onnxruntime's quantiser refuses, so its Q/K/V projections would stay fp32 in an
int8 graph. Measured on all-MiniLM-L6-v2 (2-core AVX2), fp32 speed is the same
either way (benchmarks/results/optimize_findings.md); again on MiniLM and a BERT-base
on a 2-core AVX-512 EPYC, CPU time per call +2% to -5% (README, "zoo's default artifact
against optimum-onnx"). optimum's graph does not get the packed op either.

SkipLayerNormalization is the one fusion left out, and kept out: onnxruntime's CPU
kernel for it is several times slower than the Add + LayerNormalization it replaces,
so ``layer_norm_on_rows`` stops onnxruntime from making it at load time too.
``zoo export`` runs this recipe by default (``fuse_for_artifact``), and verifies the
result against torch like any exported graph.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from pathlib import Path
from typing import Any

# What the offline-optimised file is saved at. "basic" rewrites only in ways that are
# valid on every execution provider and CPU (constant folding, redundant nodes); the
# ISA-specific layout rewrites of "all" are left to each machine's session at load time.
OFFLINE_LEVEL = "basic"


def fusion_passes() -> list[tuple[str, Callable[..., int]]]:
    """(kind, pass) in application order; each pass returns how many times it fused."""
    from onnxscript.rewriter.ort_fusions import (
        bias_gelu,
        erfgelu,
        gelu,
        mha,
        mha_bias,
        mha_scale,
        rms_normalization,
        rotary_embedding,
        sdpa,
        skip_normalization,
    )

    return [
        ("Gelu (from Erf)", erfgelu.fuse_erfgelu),
        ("RMSNormalization", rms_normalization.fuse_rms_normalization),
        ("SkipSimplifiedLayerNormalization", skip_normalization.fuse_skip_rms_normalization),
        ("RotaryEmbedding", rotary_embedding.fuse_rotary_embedding),
        ("SDPA", lambda model, **kw: sdpa.fuse_sdpa(model, apply_shape_inference=True, **kw)),
        ("MultiHeadAttention (with past)", mha.fuse_mha1),
        ("MultiHeadAttention", mha.fuse_mha2),
        ("MultiHeadAttention scale", mha_scale.fuse_mha_scale),
        ("MultiHeadAttention bias", mha_bias.fuse_mha_bias),
        ("FastGelu", gelu.fuse_gelu),
        ("BiasGelu", bias_gelu.fuse_bias_gelu),
        ("LayerNormalization on rows", layer_norm_on_rows),
    ]


def layer_norm_on_rows(model: Any, **_: Any) -> int:
    """Every LayerNormalization of a 3-D sum, rewritten to normalise that sum's 2-D [rows, D] view (exact).

    Why: onnxruntime fuses Add + LayerNormalization into SkipLayerNormalization when it
    loads a graph, and its CPU kernel (1.32) is several times slower than the two ops it
    replaces (MiniLM 8x128, 12 of them: 110 ms against 16 ms on one EPYC core;
    benchmarks/results/optimize_findings.md). A LayerNormalization that reads a Reshape
    is left alone, so the artifact keeps the faster pair on every session.
    """
    return int(_layer_norm_rows_rule().apply_to_model(model))


def _layer_norm_rows_rule() -> Any:
    import onnx_ir as ir
    from onnxscript.rewriter import pattern

    class LayerNormOnRows(pattern.RewriteRuleClassBase):
        def pattern(self, op: Any, x: Any, scale: Any, bias: Any) -> Any:
            return op.LayerNormalization(x, scale, bias, axis=-1, _allow_other_attributes=True, _outputs=["normed"])

        def check(self, context: Any, x: Any, scale: Any, **_: Any) -> Any:
            result = pattern.MatchResult()
            producer = x.producer()
            if producer is None or producer.op_type != "Add" or producer.domain not in ("", "ai.onnx"):
                return result.fail("the normalised value is not a sum (onnxruntime fuses only Add + LayerNorm)")
            if x.shape is None or len(x.shape) != 3 or not isinstance(x.shape[2], int):
                return result.fail("not a 3-D value with a fixed last axis")
            if scale.shape is None or list(scale.shape) != [x.shape[2]]:
                return result.fail("scale does not cover the last axis")
            return result

        def rewrite(self, op: Any, x: Any, scale: Any, bias: Any, normed: Any, **_: Any) -> Any:
            attributes = normed.producer().attributes
            # [0, 0, D] keeps the shape: the Reshape only stands between the Add and the LayerNormalization
            same = op.Reshape(x, op.Constant(value=ir.tensor([0, 0, x.shape[2]], dtype=ir.DataType.INT64)))
            return op.LayerNormalization(same, scale, bias, axis=-1, epsilon=attributes.get_float("epsilon", 1e-5),
                                         stash_type=attributes.get_int("stash_type", 1))

    return LayerNormOnRows.rule()


# Every pattern of fusion_passes holds at least one of these ops (erf or tanh GELU, RMS norm's Pow and Sqrt,
# rotary's Neg, attention's Softmax, LayerNormalization): a graph with none of them has nothing to fuse
_ANCHOR_OPS = frozenset({"Erf", "Tanh", "Pow", "Sqrt", "Neg", "Softmax", "LayerNormalization"})


def may_fuse(model: Any) -> bool:
    """Whether any fusion of ``fusion_passes`` could match ``model`` (an onnx_ir model): a CNN's graph cannot."""
    import onnx_ir as ir

    graphs = [model.graph, *model.functions.values()]
    return any(node.op_type in _ANCHOR_OPS and node.domain in ("", "ai.onnx")
               for graph in graphs for node in ir.traversal.RecursiveGraphIterator(graph))


def tidy_graph(model: Any) -> None:
    """Constant folding and clean-up of an exported graph, without onnxscript's generic rewrite rules (in place).

    torch.onnx's own ``optimize`` spends most of its time (about 2 s of a MiniLM
    export) in onnxscript's generic rewrite rules; onnxruntime applies the same kind
    of rewrites when it loads the graph, and the fusions below run them once
    (``fused_model``). The folding and clean-up stay, so the graph keeps its size and load time.
    """
    import onnx_ir as ir
    from onnx_ir.passes import common
    from onnxscript.optimizer import fold_constants_ir

    common.InlinePass()(model)
    fold_constants_ir(model)
    ir.passes.Sequential(common.RemoveUnusedNodesPass(), common.RemoveUnusedFunctionsPass(),
                         common.RemoveUnusedOpsetsPass(),
                         common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
                         common.DeduplicateInitializersPass(), common.CommonSubexpressionEliminationPass(),
                         common.OutputFixPass(), common.NameFixPass())(model)


def fuse_graph(src: Path | str, dst: Path | str) -> dict[str, int]:
    """Write ``dst``: ``src`` with every fusion that matches; returns the count per kind (0s dropped)."""
    import onnx_ir as ir

    model, counts = fused_model(src)
    ir.save(model, str(dst))
    return counts


def fused_model(src: Path | str | Any) -> tuple[Any, dict[str, int]]:
    """``src`` (a file, or an onnx_ir model, changed in place) with every fusion that matches applied, as an
    onnx_ir model, and the count per kind (0s dropped)."""
    import onnx_ir as ir
    import onnx_ir.passes.common as common_passes
    from onnxscript.optimizer import optimize
    from onnxscript.rewriter import rewrite
    from onnxscript.rewriter.ort_fusions import ORT_PATTERN_REWRITE_RULES, shape_optimization

    model = src if isinstance(src, ir.Model) else ir.load(str(src))
    if not may_fuse(model):
        return model, {}
    # the fusion patterns match shapes and constants, so shapes are inferred and folded first, with onnxscript's
    # generic rewrites once: running them again after the shape rules and after the fusions left the same ops and
    # fusion counts on MiniLM, BERT-base and ViT-base, and cost 0.65 of BERT-base's 1.5 s here
    common_passes.ShapeInferencePass()(model)
    optimize(model)
    shape_optimization.rules.apply_to_model(model)
    tidy_graph(model)
    counts: dict[str, int] = {}
    for kind, fuse in fusion_passes():
        counts[kind] = int(fuse(model))
    tidy_graph(model)  # fold what a later fusion did not consume, drop dead nodes
    rewrite(model, ORT_PATTERN_REWRITE_RULES)
    ir.passes.Sequential(common_passes.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=1),
                         common_passes.RemoveInitializersFromInputsPass(),
                         common_passes.ShapeInferencePass())(model)
    return model, {kind: n for kind, n in counts.items() if n}


def fuse_for_artifact(src: Path | str | Any, dst: Path | str) -> dict[str, int]:
    """``src`` (a file, or an onnx_ir model, changed in place) fused and saved offline at the portable level
    into ``dst``: the graph ``zoo export`` ships by default and ``zoo optimize --level fused`` makes. Returns
    the fusion counts ({} when nothing matched, and then ``dst`` is not written)."""
    import onnx_ir as ir

    model, counts = fused_model(src)
    if not counts:
        return counts
    # onnxruntime reads the fused graph from memory: only the graph it optimised is written. A file in
    # between cost a write and a read of the whole graph (writing MiniLM's 90 MB took ~0.9 s CPU here)
    serialized = ir.serde.serialize_model(model).SerializeToString()
    del model  # the serialized copy is all onnxruntime needs: one copy of the weights fewer while it loads
    save_offline(serialized, dst)
    return counts


# What Task.graph_fusion may name: the recipe that writes a task's fused graph (src, dst) -> counts, where src is
# a file or an onnx_ir model (``zoo export`` hands over the graph it has not written yet)
RECIPES: dict[str, Callable[[Any, Path | str], dict[str, int]]] = {"encoder": fuse_for_artifact}


def save_offline(src: Path | str | bytes, dst: Path | str) -> None:
    """onnxruntime's own graph optimisation at the portable OFFLINE_LEVEL, written to ``dst``.

    ``src``: a file, or a serialized model without external data."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(dst)
    options.log_severity_level = 3
    # the session only writes the file: packing the MatMul weights for its own kernels would be thrown away
    # (BERT-base: 1.3 -> 0.85 s, the file byte for byte the same)
    options.add_session_config_entry("session.disable_prepacking", "1")
    ort.InferenceSession(src if isinstance(src, bytes) else str(src), options, providers=["CPUExecutionProvider"])


def op_counts(path: Path | str) -> dict[str, int]:
    """Node count per op type: what a recipe turned the graph into."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return dict(sorted(collections.Counter(node.op_type for node in graph.node).items()))


def constant_names(path: Path | str) -> set[str]:
    import onnx

    return {i.name for i in onnx.load(str(path), load_external_data=False).graph.initializer}


def describe_passes() -> list[str]:
    """The recipe's pass list as recorded in the manifest."""
    return ["onnxscript: shape inference + constant folding",
            *[f"onnxscript: {kind}" for kind, _ in fusion_passes()],
            "onnxscript: ORT pattern rules (FusedMatMul, Softmax)",
            f"onnxruntime: offline graph optimisation at level '{OFFLINE_LEVEL}'"]


__all__: list[Any] = ["OFFLINE_LEVEL", "RECIPES", "fuse_for_artifact", "fuse_graph", "fused_model", "fusion_passes",
                      "may_fuse", "op_counts", "save_offline", "tidy_graph"]
