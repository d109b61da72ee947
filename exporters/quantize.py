"""Quantisation recipes on top of onnxruntime.quantization: dynamic int8, static QDQ int8, fp16.

Dynamic int8 (transformers): MatMuls with a constant weight only (never an
activation x activation product such as Q.K^T), weights int8 symmetric per output
channel, activations uint8 per tensor, quantised at run time. Some MatMuls lose
far more than others (on MiniLM the FFN down-projections, fed by GELU outputs with
a few huge channels); ``rank_by_error`` measures each one's own error on the
gate's data so that the worst can be kept in fp32 until the gate passes.

Static int8 (CNNs): QDQ, weights per channel, activation ranges calibrated on
real images; Conv, MatMul and Gemm only.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from exporters import block_recovery
from exporters.evaldata import EvalSet
from zoo.errors import VerificationError

STATIC_OPS = ("Conv", "MatMul", "Gemm")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime.quantization logs a pre-processing advice on every call; it is not ours to act on."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def weight_matmuls(path: Path) -> list[str]:
    """Names of the MatMul nodes whose second input is a constant weight, in graph order."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    constants = {i.name for i in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in constants
            and n.input[0] not in constants]


def activation_matmuls(path: Path) -> list[str]:
    """MatMuls that multiply two activations (attention scores, attention x values)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    constants = {i.name for i in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and not ({n.input[0], n.input[1]} & constants)]


def int8_dynamic(src: Path, dst: Path, *, keep_fp32: list[str], activation_products: bool = False) -> dict[str, Any]:
    """Write the dynamic-int8 graph; returns the settings recorded in the manifest.

    ``activation_products=True`` also quantises activation x activation MatMuls:
    only for the test that plants that fault.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    options = {"MatMulConstBOnly": not activation_products}
    with _quiet():
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul"], per_channel=True,
                         weight_type=QuantType.QInt8, nodes_to_exclude=list(keep_fp32), extra_options=options)
    return {"method": "dynamic", "ops": ["MatMul"], "weights": "int8, symmetric, per output channel",
            "activations": "uint8, asymmetric, per tensor, at run time",
            "activation_x_activation": activation_products, "kept_fp32": sorted(keep_fp32)}


def int8_static(src: Path, dst: Path, calibration: EvalSet, *, keep_fp32: list[str]) -> dict[str, Any]:
    """Write the static QDQ int8 graph calibrated on ``calibration`` (MinMax ranges)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration.batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    with _quiet():
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=list(STATIC_OPS),
                        nodes_to_exclude=list(keep_fp32))
    return {"method": "static QDQ", "ops": list(STATIC_OPS), "weights": "int8, symmetric, per output channel",
            "activations": "uint8, asymmetric, per tensor, calibrated (MinMax)",
            "calibration": calibration.source, "calibration_rows": calibration.rows, "kept_fp32": sorted(keep_fp32)}


def static_candidates(path: Path) -> list[str]:
    """Nodes static quantisation would touch, in graph order."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type in STATIC_OPS]


def input_nodes(path: Path, names: list[str]) -> list[str]:
    """Of ``names``, the nodes that read a graph input directly (the stem that sees raw pixels)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inputs = {i.name for i in graph.input}
    wanted = set(names)
    return [n.name for n in graph.node if n.name in wanted and inputs & set(n.input)]


def fp16(src: Path, dst: Path) -> dict[str, Any]:
    """fp16 weights and compute for the CUDA provider; graph inputs and outputs stay fp32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))
    return {"method": "fp16", "io": "float32 (cast at the graph's edges)", "provider": "CUDAExecutionProvider"}


# ---------------------------------------------------------------- which MatMuls lose the most


def rank_by_error(path: Path, nodes: list[str], data: EvalSet) -> list[tuple[str, float]]:
    """(node, relative output error) for each weight MatMul quantised alone, worst first.

    One fp32 pass records every MatMul's input on the gate's data; each product is
    then recomputed with int8 weights (per channel) and uint8 activations (per
    tensor, per batch, as onnxruntime does at run time) and compared with fp32.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    by_name = {n.name: n for n in model.graph.node}
    weights = {i.name: i for i in model.graph.initializer}
    wanted = [by_name[name] for name in nodes]
    probes = sorted({n.input[0] for n in wanted})
    known = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_tensor_value_info(p, onnx.TensorProto.FLOAT, None)
                              for p in probes if p not in known)
    session = _session_from_proto(model)
    names = [o.name for o in session.get_outputs()]
    matrices = {n.name: numpy_helper.to_array(weights[n.input[1]]).astype(np.float32) for n in wanted}
    worst = dict.fromkeys(nodes, 0.0)
    for feed in data.batches:
        outputs = dict(zip(names, session.run(names, {i.name: feed[i.name] for i in session.get_inputs()})))
        for node in wanted:
            x = outputs[node.input[0]].reshape(-1, matrices[node.name].shape[0])
            worst[node.name] = max(worst[node.name], _product_error(x, matrices[node.name]))
    return sorted(worst.items(), key=lambda item: -item[1])


def _session_from_proto(model: Any) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # no graph rewrites: the probed tensors must keep their names
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _product_error(x: np.ndarray, w: np.ndarray) -> float:
    # every row counts: the worst errors sit in a few tokens ([CLS], [SEP]) with outlier activations
    exact = x @ w
    low, high = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (high - low) / 255 or 1.0
    zero = np.round(-low / scale)
    x_q = (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale
    w_scale = np.abs(w).max(axis=0, keepdims=True) / 127
    w_scale[w_scale == 0] = 1.0
    w_q = np.round(w / w_scale) * w_scale
    norm = float(np.linalg.norm(exact))
    return float(np.linalg.norm(exact - x_q @ w_q)) / norm if norm else 0.0


# ---------------------------------------------------------------- weight-only (causal language models)

# Weight-only recipes for text generation: onnxruntime's MatMulNBits quantiser, blockwise along K.
# bits of the body's MatMuls, bits of the LM head, and whether zero points are stored.
WEIGHT_ONLY: dict[str, dict[str, Any]] = {
    "int8-weights": {"bits": 8, "head_bits": 8, "symmetric": True, "keep_bits": None},
    "int4": {"bits": 4, "head_bits": 8, "symmetric": False, "keep_bits": 8},
}
BLOCK_SIZE = 32  # weights per scale along K; 32 is onnxruntime-genai's int4 default and MLAS's fastest path
# MatMulNBits' accuracy_level 4: activations are quantised to int8 per block at run time, so the CPU's int8
# dot products (AVX512-VNNI, AVX-VNNI, ARM dot) do the work; the weights alone carry the quantisation error
ACCURACY_LEVEL = 4


def lm_head(model: Any) -> Any:
    """The MatMul that makes the first graph output (the logits), found by walking back from it."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    pending, seen = [graph.output[0].name], set()
    while pending:
        node = producer.get(pending.pop(0))
        if node is None or node.name in seen:
            continue
        if node.op_type == "MatMul" or _plain_fused_matmul(node):
            return node
        seen.add(node.name)
        pending.extend(node.input)  # through the padding mask (Mul / Where) and any reshape
    raise ValueError("no MatMul produces the graph's first output; this graph has no LM head to quantise")


def _plain_fused_matmul(node: Any) -> bool:
    """A com.microsoft FusedMatMul that is a MatMul with its second input transposed (onnxscript's fusion of the
    LM head's ``x @ W^T`` at export), nothing else: no scaling, no transposed first input or batches."""
    if node.op_type != "FusedMatMul":
        return False
    attrs = {a.name: (a.f if a.name == "alpha" else a.i) for a in node.attribute}
    return attrs.get("alpha", 1.0) == 1.0 and not any(attrs.get(k, 0) for k in ("transA", "transBatchA",
                                                                                "transBatchB"))


def _constant_weight(model: Any, node: Any) -> bool:
    """Make ``node``'s second input an initializer if it is a Transpose of one (a tied embedding), and say
    whether it now is: the quantiser only takes constant weights. A FusedMatMul head becomes a MatMul over
    its own [K, N] copy of the weight (the quantiser takes MatMuls only)."""
    from onnx import numpy_helper

    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    if node.op_type == "FusedMatMul":
        if node.input[1] not in initializers:
            return False
        table = numpy_helper.to_array(initializers[node.input[1]])
        transposed = any(a.name == "transB" and a.i for a in node.attribute)
        source, name = node.input[1], f"{node.name}.weight_kn"
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(table.T if transposed else table),
                                                         name))
        node.input[1], node.op_type, node.domain = name, "MatMul", ""
        del node.attribute[:]
        if not any(source in n.input for n in graph.node):
            graph.initializer.remove(initializers[source])  # an untied head: only the copy is left
        return True
    if node.input[1] in initializers:
        return True
    producer = next((n for n in graph.node if node.input[1] in n.output), None)
    if producer is None or producer.op_type != "Transpose" or producer.input[0] not in initializers:
        return False
    # tied weights: the head reads the embedding transposed at run time; give it its own [K, N] copy to quantise
    table = numpy_helper.to_array(initializers[producer.input[0]])
    perm = next((list(a.ints) for a in producer.attribute if a.name == "perm"), None)
    name = f"{node.name}.weight_untied"
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(np.transpose(table, perm)), name))
    node.input[1] = name
    if not any(producer.output[0] in n.input for n in graph.node):
        graph.node.remove(producer)  # the transpose fed only the head
    return True


def weight_only(src: Path, dst: Path, level: str, *, keep: list[str] | tuple[str, ...] = (),
                block_size: int = BLOCK_SIZE, head_bits: int | None = None,
                head_block_size: int | None = None) -> dict[str, Any]:
    """Write ``level``'s MatMulNBits graph (int8-weights or int4); returns the settings recorded in the manifest.

    Every MatMul with a constant weight becomes MatMulNBits: the body at the level's bits,
    the LM head (the MatMul behind the logits; a tied embedding is untied for it) at
    ``head_bits`` with ``head_block_size`` (default: 8 bits, the level's block). The
    embedding lookup (Gather) stays fp32: it reads one row per token, so quantising it
    would save memory, never time. ``keep``: body MatMuls kept at the level's
    ``keep_bits`` (int4: 8 bits; int8-weights: fp32), the search's most error-prone first.
    ``head_bits``/``head_block_size``: only for the test that plants a coarse LM head.

    A weight already on a block grid (a GGUF source's Q4_0/Q4_1; the head's Q8_0) is written on that grid
    exactly (``block_recovery``); of ``keep``, such a MatMul keeps fp32 activations (accuracy_level 0)
    instead of more bits. int8-weights does so too: a Q4_1 weight is lossless on its own 4-bit grid, and
    rounding it to an 8-bit one moves it (on SmolLM2-135M's Q4_1 file that moved greedy text on 3 of the
    gate's 16 prompts, where the source's grid moved it on none).
    """
    import onnx

    recipe = WEIGHT_ONLY[level]
    head_bits = head_bits or recipe["head_bits"]
    head_block = head_block_size or block_size
    model = onnx.load(str(src))
    head = lm_head(model)
    head_quantised = _constant_weight(model, head)
    body = [name for name in _weight_matmul_names(model) if name != head.name]
    on_grid = _on_grid(model, level, body, head.name if head_quantised and head_block == block_size == BLOCK_SIZE
                       and head_bits == recipe["head_bits"] else None)
    # a weight given back exactly gains nothing at 8 bits; what it can lose is its activations' int8 rounding
    exact_activations = [name for name in keep if name in on_grid]
    keep = [name for name in keep if name not in on_grid]
    with _quiet():
        # imported here: the module calls logging.basicConfig(level=INFO) when first imported
        import onnxruntime.quantization.matmul_nbits_quantizer  # noqa: F401

        logging.getLogger().setLevel(logging.ERROR)
        model = _nbits(model, recipe["bits"], block_size, recipe["symmetric"],
                       include=[n for n in body if n not in set(keep) and n not in on_grid])
        if keep and recipe["keep_bits"]:
            model = _nbits(model, recipe["keep_bits"], block_size, recipe["symmetric"], include=list(keep))
        if head_quantised and head.name not in on_grid:
            model = _nbits(model, head_bits, head_block, recipe["symmetric"], include=[head.name])
    block_recovery.rewrite(model, on_grid, ACCURACY_LEVEL, fp32_activations=exact_activations)
    _check_round_trip(model, on_grid)
    onnx.save(model, str(dst))
    kind = "symmetric (no zero points)" if recipe["symmetric"] else "asymmetric (a zero point per block)"
    return {"method": "weight-only, onnxruntime MatMulNBits", "bits": recipe["bits"], "block_size": block_size,
            "weights": f"int{recipe['bits']}, {kind}, one scale per {block_size} weights along K" + (
                f"; {len(on_grid)} MatMuls on their source's own grid instead (source_grid)" if on_grid else ""),
            "lm_head": {"node": head.name, "bits": head_bits if head_quantised else None,
                        "block_size": head_block if head_quantised else None,
                        "kept_fp32": not head_quantised},
            "embedding": "fp32 (a Gather reads one row per token)",
            "activations": f"fp32 in and out; int8 per block inside MatMulNBits (accuracy_level {ACCURACY_LEVEL})",
            "matmuls_quantised": len(body) + int(head_quantised) - (0 if recipe["keep_bits"] else len(keep)),
            "kept": {"nodes": sorted(keep), "bits": recipe["keep_bits"] if keep else None,
                     **({"fp32_activations": sorted(exact_activations)} if exact_activations else {})},
            "source_grid": _grid_record(on_grid)}


# the grids a weight is tried on, by level: a body MatMul on a grid of the level's bits or fewer; the LM head
# at 8 bits (Q8_0, a GGUF's usual embedding type) or, from a file whose head is 4-bit, at 4
_GRIDS = {"int4": (block_recovery.asymmetric4,),
          # a Q8_0 weight is exact at 8 bits; a Q4_1 one at 4 bits is as exact, and an 8-bit grid would round it
          "int8-weights": (block_recovery.symmetric8, block_recovery.asymmetric4),
          "head": (block_recovery.symmetric8, block_recovery.asymmetric4)}


def _on_grid(model: Any, level: str, body: list[str], head: str | None) -> dict[str, block_recovery.Blocks]:
    """The weight MatMuls whose weights already sit on a block grid MatMulNBits can hold (a GGUF source's),
    with their blocks; ``head``: the LM head's node when it is quantised with the recipe's own settings."""
    from onnx import numpy_helper

    if level not in _GRIDS:
        return {}
    weights = {i.name: i for i in model.graph.initializer}
    by_name = {n.name: n for n in model.graph.node}
    found = {}
    for name in body + ([head] if head else []):
        w = numpy_helper.to_array(weights[by_name[name].input[1]])
        if w.ndim != 2 or w.shape[0] % block_recovery.BLOCK:
            continue
        for grid in _GRIDS["head" if name == head else level]:
            blocks = grid(w)
            if blocks.exact_share >= block_recovery.EXACT_SHARE:
                found[name] = blocks
                break
    return found


def _check_round_trip(model: Any, on_grid: dict[str, block_recovery.Blocks]) -> None:
    """Every recovered block must come back from the written graph (codes, scales, zero points, minima)."""
    for name, blocks in on_grid.items():
        wrong = block_recovery.round_trip_errors(model, name, blocks)
        if wrong:
            raise VerificationError(f"block recovery: {wrong} blocks of {name} do not give their weights back "
                                    "from the written graph; this is a bug in zoo, please report it")


def _grid_record(on_grid: dict[str, block_recovery.Blocks]) -> dict[str, Any] | None:
    """The manifest's account of the weights written on their source's own grid (None: no such weights)."""
    if not on_grid:
        return None
    exact = sum(int(b.exact.sum()) for b in on_grid.values())
    total = sum(b.exact.size for b in on_grid.values())
    return {"matmuls": len(on_grid), "blocks": total, "exact_blocks": exact,
            "grids": sorted({f"int{b.bits}" + (" with minima (Q4_1-like)" if b.zero == 0 else " symmetric (Q8_0-like)")
                             for b in on_grid.values()}),
            "meaning": "weights already on a 32-weight block grid (a GGUF source's) written on that grid: exact "
                       "blocks give the parent's weights back within float rounding; the rest are rounded to it"}


def _weight_matmul_names(model: Any) -> list[str]:
    constants = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in constants]


def _nbits(model: Any, bits: int, block_size: int, symmetric: bool, include: list[str]) -> Any:
    """One pass of onnxruntime's quantiser over the MatMuls named in ``include`` (and no others)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    others = [name for name in _weight_matmul_names(model) if name not in set(include)]
    quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=symmetric,
                                     accuracy_level=ACCURACY_LEVEL, nodes_to_include=include,
                                     nodes_to_exclude=others, op_types_to_quantize=("MatMul",))
    quantizer.process()
    return quantizer.model.model


def rank_weight_error(path: Path, feeds: list[dict[str, np.ndarray]], level: str) -> list[tuple[str, float]]:
    """(node, relative output error) of each body MatMul with only its weight quantised as ``level`` does,
    worst first: one fp32 pass records every MatMul's input on ``feeds``, then each product is recomputed with
    blockwise-quantised weights (a weight on its source's grid comes back exactly: its product is recomputed
    with int8-rounded activations instead). A MatMul fed outlier activations (a "massive" channel) loses the
    most."""
    import onnx
    from onnx import numpy_helper

    recipe = WEIGHT_ONLY[level]
    model = onnx.load(str(path))
    head = lm_head(model).name
    weights = {i.name: i for i in model.graph.initializer}
    wanted = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights and n.name != head]
    known = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_tensor_value_info(p, onnx.TensorProto.FLOAT, None)
                              for p in sorted({n.input[0] for n in wanted}) if p not in known)
    session = _session_from_proto(model)
    names = [o.name for o in session.get_outputs()]
    worst = {n.name: 0.0 for n in wanted}
    grid = _on_grid(model, level, [n.name for n in wanted], None)
    for feed in feeds:
        outputs = dict(zip(names, session.run(names, feed)))
        for node in wanted:
            w = numpy_helper.to_array(weights[node.input[1]]).astype(np.float32)
            x = outputs[node.input[0]].reshape(-1, w.shape[0])
            exact = x @ w
            norm = float(np.linalg.norm(exact)) or 1.0
            if node.name in grid:
                # the weight comes back exactly: the error is the activations' int8 rounding, multiplied by the
                # weights less their blocks' offsets (those are added in fp32, as block_recovery writes them)
                offsets = np.repeat(block_recovery.offsets(grid[node.name]).T, BLOCK_SIZE, axis=0)[:w.shape[0]]
                error = float(np.linalg.norm(exact - _int8_blocks(x) @ (w - offsets) - x @ offsets)) / norm
            else:
                error = float(np.linalg.norm(exact - x @ _blockwise(w, recipe["bits"], recipe["symmetric"]))) / norm
            worst[node.name] = max(worst[node.name], error)
    return sorted(worst.items(), key=lambda item: -item[1])


def _int8_blocks(x: np.ndarray) -> np.ndarray:
    """``x`` [M, K] rounded as MatMulNBits' accuracy_level 4 rounds its input: int8, one scale per 32 along K."""
    k = x.shape[1]
    blocks = np.pad(x, ((0, 0), (0, -k % BLOCK_SIZE))).reshape(x.shape[0], -1, BLOCK_SIZE)
    scale = np.abs(blocks).max(-1, keepdims=True) / 127
    scale[scale == 0] = 1.0
    return (np.round(blocks / scale) * scale).reshape(x.shape[0], -1)[:, :k]


def _blockwise(w: np.ndarray, bits: int, symmetric: bool) -> np.ndarray:
    """``w`` [K, N] round-tripped through MatMulNBits' grid: blocks of BLOCK_SIZE along K, round to nearest."""
    k = w.shape[0]
    padded = np.pad(w, ((0, -k % BLOCK_SIZE), (0, 0))).reshape(-1, BLOCK_SIZE, w.shape[1])
    levels = 2 ** bits - 1
    if symmetric:
        scale = np.abs(padded).max(1, keepdims=True) / (levels // 2 + 0.5)
        scale[scale == 0] = 1.0
        q = np.clip(np.round(padded / scale), -(levels // 2 + 1), levels // 2) * scale
    else:
        low, high = np.minimum(padded.min(1, keepdims=True), 0), np.maximum(padded.max(1, keepdims=True), 0)
        scale = (high - low) / levels
        scale[scale == 0] = 1.0
        zero = np.round(-low / scale)
        q = (np.clip(np.round(padded / scale) + zero, 0, levels) - zero) * scale
    return q.reshape(-1, w.shape[1])[:k]
