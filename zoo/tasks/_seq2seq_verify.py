"""How an encoder-decoder export is checked with both graphs together, against transformers on real texts.

The graphs run through the runtime's own decoding code (``zoo.tasks._seq2seq_decode``), transformers
through the model itself (its encoder, its ``EncoderDecoderCache``, its ``generate``):

* ``decoder steps (own cache)``: the encoder graph's cross-attention tensors and the decoder graph fed its
  own cache, ``DECODE_STEPS`` + 1 steps from the start token, every step's last logits within the tolerance;
  both sides take torch's argmax, so they stay on one path. Cross-attention keys/values made from the wrong
  encoder output, or a decoder that drops its cache, fail here though each graph alone may pass its grid.
* ``greedy generation``: ``GREEDY_TOKENS`` tokens against ``generate(num_beams=1, do_sample=False)``, token for
  token; where they part, the step passes only at a near-tie of the graph's two best scores (shown).
* ``beam search``: ``num_beams=BEAMS`` against ``generate(num_beams=BEAMS, do_sample=False)``, the best
  hypothesis token-identical (the model's own length penalty and early stopping).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from zoo.checks import Check
from zoo.spec import Tolerances
from zoo.tasks._generate_verify import GreedyRows
from zoo.tasks._seq2seq_decode import EncoderDecoder, record_decoding
from zoo.tasks.base import Case

DECODE_STEPS = 8
GREEDY_TOKENS = 24
BEAMS, BEAM_TOKENS = 4, 16
Compare = Callable[[np.ndarray, np.ndarray, Tolerances], bool]


def seq2seq_checks(model: Any, record: dict[str, Any], encoder: Any, decoder: Any, cases: list[Case],
                   tol: Tolerances, compare: Compare) -> list[Check]:
    """The three checks on ``cases`` (encoder inputs of real texts), ``encoder``/``decoder``: onnxruntime sessions."""
    core = EncoderDecoder(encoder, decoder, record)
    return [decode_steps(model, core, cases, tol, compare), greedy(model, core, cases, tol),
            beam_search(model, core, cases)]


def decode_steps(model: Any, core: EncoderDecoder, cases: list[Case], tol: Tolerances, compare: Compare) -> Check:
    from zoo.tasks._seq2seq_torch import TorchSeq2Seq

    failed, compared = [], 0
    for case in cases:
        reference = TorchSeq2Seq(model, case.inputs)
        encoded = core.encode(case.inputs)
        binding = core.decoder.io_binding()
        held = core.bind(binding, encoded)
        ids = np.full((len(case.texts), 1), core.start, np.int64)
        past: list[Any] = core.empty(len(ids))
        for step in range(DECODE_STEPS + 1):
            got, past = core.step(binding, ids, past)
            want = reference.step(ids)[:, -1]
            compared += 1
            if not compare(want, got, tol):
                failed.append(f"{case.label} step {step}: max |d| {float(np.max(np.abs(want - got))):.3g}")
                break
            ids = want.argmax(-1).astype(np.int64)[:, None]
        del held
    return Check("decoder steps (own cache)", not failed and compared > 0,
                 f"{compared} steps on {len(cases)} batches", f"logits within the tolerance, {DECODE_STEPS} steps "
                 "after the start token", "; ".join(failed[:3]))


def _generate(model: Any, case: Case, **options: Any) -> np.ndarray:
    """transformers' output tokens after the decoder start token."""
    import torch

    with torch.no_grad():
        out = model.generate(**{k: torch.from_numpy(v) for k, v in case.inputs.items()}, do_sample=False,
                             **options)
    return out.numpy()[:, 1:]


def _trimmed(row: np.ndarray, eos: np.ndarray) -> np.ndarray:
    """A transformers output row up to its first EOS (the padding after it dropped)."""
    ends = np.nonzero(np.isin(row, eos))[0]
    return row[:ends[0] + 1] if len(ends) else row


def greedy(model: Any, core: EncoderDecoder, cases: list[Case], tol: Tolerances) -> Check:
    rows = GreedyRows(tol)
    for case in cases:
        want = _generate(model, case, num_beams=1, max_new_tokens=GREEDY_TOKENS, min_new_tokens=0)
        trace: list[np.ndarray] = []
        got = core.generate(core.encode(case.inputs), record_decoding(core.record, max_new_tokens=GREEDY_TOKENS),
                            trace=trace)
        for row, tokens in enumerate(got):
            rows.add(f"{case.label} row {row}", _trimmed(want[row], core.eos), np.asarray(tokens),
                     [step[row] for step in trace])
    return rows.check("texts", GREEDY_TOKENS, "generate(num_beams=1, do_sample=False)")


def beam_search(model: Any, core: EncoderDecoder, cases: list[Case]) -> Check:
    differ, compared = [], 0
    for case in cases:
        want = _generate(model, case, num_beams=BEAMS, max_new_tokens=BEAM_TOKENS)
        got = core.generate(core.encode(case.inputs), record_decoding(core.record, max_new_tokens=BEAM_TOKENS,
                                                                      num_beams=BEAMS))
        for row, tokens in enumerate(got):
            compared += 1
            expected = _trimmed(want[row], core.eos)
            if not np.array_equal(expected, tokens):
                differ.append(f"{case.label} row {row}: {expected.tolist()[:8]}... vs {tokens.tolist()[:8]}...")
    return Check("beam search vs transformers", not differ and compared > 0, f"{compared - len(differ)}/{compared} "
                 "identical", f"num_beams={BEAMS}, {BEAM_TOKENS} tokens, generate(do_sample=False)",
                 "; ".join(differ[:2]))

