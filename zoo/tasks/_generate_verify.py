"""How a text-generation export is checked beyond the grid: the graph fed its own cache, step after step.

Against transformers with its own ``DynamicCache``, on one prompt and on three
left-padded prompts:

* ``prefill + decode steps``: the prompt's logits, then ``DECODE_STEPS`` single-token
  steps where the graph gets back its own ``present`` tensors as ``past_key_values``;
  every step's logits (real tokens only) within the tolerance rule. Both sides are fed
  torch's argmax, so they stay on the same path.
* ``greedy generation``: ``GREEDY_TOKENS`` tokens of greedy decoding by the graph
  against ``model.generate(do_sample=False)``, token for token. Where they part, the
  step passes only when the graph's two best logits there are within the tolerance of
  each other (a near-tie float32 may break either way), and the detail says so.

A graph that drops the cache, or puts the tokens at the wrong positions under left
padding, fails these although a single forward may match.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from zoo.checks import Check
from zoo.spec import Tolerances
from zoo.tasks._decoding import positions
from zoo.tasks.base import Case

DECODE_STEPS = 8
GREEDY_TOKENS = 32
Compare = Callable[[np.ndarray, np.ndarray, Tolerances], bool]


def near_tie(logits: np.ndarray, tol: Tolerances) -> tuple[bool, float]:
    """Whether a row's two best logits are within the tolerance of each other (and their gap)."""
    top = np.sort(logits.astype(np.float64))[-2:]
    gap = float(top[1] - top[0])
    return gap <= tol.atol + tol.rtol * float(np.max(np.abs(logits))), gap


class NextTokenAgreement:
    """The next token (argmax of each row's last logits) of torch and onnxruntime, near-ties excused."""

    def __init__(self, tol: Tolerances):
        self.tol = tol
        self.rows, self.ties, self.wrong = 0, 0, []

    def add(self, reference: dict[str, np.ndarray], got: dict[str, np.ndarray], case: Case) -> None:
        ref, out = reference["logits"][:, -1], got.get("logits", np.empty(0))
        if out.shape[:1] + out.shape[2:] != ref.shape:
            self.wrong.append(f"{case.label}: logits shape {list(out.shape)}")
            return
        for row, (r, o) in enumerate(zip(ref, out[:, -1])):
            self.rows += 1
            if int(np.argmax(r)) != int(np.argmax(o)):
                tie, _ = near_tie(r, self.tol)
                self.ties += tie
                if not tie:
                    self.wrong.append(f"{case.label} row {row}")

    def check(self) -> Check:
        detail = f"{self.rows} rows" + (f", {self.ties} near-ties" if self.ties else "")
        return Check("next-token agreement", not self.wrong and self.rows > 0,
                     f"{self.rows - len(self.wrong)}/{self.rows} rows", "same argmax (or a near-tie)",
                     "; ".join(self.wrong[:3]) or detail)


class GraphDecoder:
    """The exported graph in onnxruntime, fed its own cache (numpy in, numpy out: the checks' reference loop)."""

    def __init__(self, session: Any):
        self.session = session
        self.outputs = [o.name for o in session.get_outputs()]
        caches = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
        self.cache_names = [i.name for i in caches]
        self.heads, self.dim = int(caches[0].shape[1]), int(caches[0].shape[3])

    def empty(self, batch: int) -> list[np.ndarray]:
        return [np.zeros((batch, self.heads, 0, self.dim), np.float32) for _ in self.cache_names]

    def step(self, ids: np.ndarray, mask: np.ndarray, past: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        feed = {"input_ids": ids, "attention_mask": mask, "position_ids": positions(mask)[:, -ids.shape[1]:],
                **dict(zip(self.cache_names, past))}
        logits, *present = self.session.run(self.outputs, feed)
        return logits, present


class TorchDecoder:
    """The transformers model with its own ``DynamicCache``, positions as ``generate`` computes them."""

    def __init__(self, model: Any):
        from transformers import DynamicCache

        self.model = model
        self.cache = DynamicCache(config=model.config)

    def step(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import torch

        from zoo.tasks._generate_torch import cache_argument, output_cache

        with torch.no_grad():
            out = self.model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                             position_ids=torch.from_numpy(positions(mask)[:, -ids.shape[1]:]),
                             use_cache=True, **{cache_argument(self.model): self.cache})
        self.cache = output_cache(out)
        return out.logits.float().numpy()


def decode_checks(module: Any, session: Any, cases: list[Case], tol: Tolerances, compare: Compare) -> list[Check]:
    """The two step-by-step checks on the prompt cases (``cases``: batch 1 and left-padded batch 3)."""
    model = module.model
    return [_decode_steps(model, session, cases, tol, compare), _greedy(model, session, cases, tol)]


def _decode_steps(model: Any, session: Any, cases: list[Case], tol: Tolerances, compare: Compare) -> Check:
    failed, compared = [], 0
    for case in cases:
        ids, mask = case.inputs["input_ids"], case.inputs["attention_mask"]
        graph, torch_side = GraphDecoder(session), TorchDecoder(model)
        past = graph.empty(len(ids))
        for step in range(DECODE_STEPS + 1):
            got, past = graph.step(ids, mask, past)
            want = torch_side.step(ids, mask)
            real = mask[:, -ids.shape[1]:].astype(bool)
            compared += 1
            if not compare(want[real], got[real], tol):
                worst = float(np.max(np.abs(want[real] - got[real])))
                failed.append(f"{case.label} {'prefill' if step == 0 else f'step {step}'}: max |d| {worst:.3g}")
                break
            ids = want[:, -1].argmax(-1).astype(np.int64)[:, None]  # both sides take torch's token
            mask = np.concatenate([mask, np.ones_like(ids)], axis=1)
    return Check("prefill + decode steps (own cache)", not failed and compared > 0,
                 f"{compared} steps on {len(cases)} batches", f"logits within the tolerance, {DECODE_STEPS} "
                 "decode steps each", "; ".join(failed[:3]))


def greedy_ids(graph: GraphDecoder, ids: np.ndarray, mask: np.ndarray, new: int, eos: set[int],
               pad: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Greedy decoding by the graph, rows stopping at EOS (then padded, as ``generate`` pads them);
    returns the new tokens and each step's last logits."""
    past, tokens, steps = graph.empty(len(ids)), [], []
    done = np.zeros(len(ids), bool)
    for _ in range(new):
        logits, past = graph.step(ids, mask, past)
        last = logits[:, -1]
        steps.append(last)
        token = np.where(done, pad, last.argmax(-1))
        tokens.append(token)
        done |= np.isin(token, list(eos))
        if done.all():
            break
        ids = token.astype(np.int64)[:, None]
        mask = np.concatenate([mask, np.ones_like(ids)], axis=1)
    return np.stack(tokens, axis=1), steps


def _greedy(model: Any, session: Any, cases: list[Case], tol: Tolerances) -> Check:
    import torch

    config = model.generation_config
    eos = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    eos_set = {int(e) for e in eos if e is not None}
    pad = int(config.pad_token_id if config.pad_token_id is not None else next(iter(eos_set), 0))
    rows = GreedyRows(tol)
    for case in [c for c in cases if len(c.inputs["input_ids"]) > 1]:
        ids, mask = case.inputs["input_ids"], case.inputs["attention_mask"]
        with torch.no_grad():
            want = model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                                  do_sample=False, max_new_tokens=GREEDY_TOKENS, min_new_tokens=0,
                                  pad_token_id=pad).numpy()[:, ids.shape[1]:]
        got, steps = greedy_ids(GraphDecoder(session), ids, mask, GREEDY_TOKENS, eos_set, pad)
        for row in range(len(ids)):
            rows.add(f"{case.label} row {row}", want[row], got[row], [step[row] for step in steps])
    return rows.check("prompts", GREEDY_TOKENS, "generate(do_sample=False)")


class GreedyRows:
    """Greedy token ids of the graphs against transformers' ``generate``, row by row.

    A row passes when its tokens are identical; where they part, the graphs' logits at that
    step say whether it is a near-tie (shown, not failed) or a real difference (failed).
    """

    def __init__(self, tol: Tolerances) -> None:
        self.tol = tol
        self.parted: list[str] = []
        self.failed: list[str] = []
        self.compared = 0

    def add(self, label: str, want: np.ndarray, got: np.ndarray, logits: list[np.ndarray]) -> None:
        """``logits``: the graphs' scores at each generated step of this row."""
        self.compared += 1
        length = min(len(want), len(got))
        apart = np.nonzero(want[:length] != got[:length])[0]
        if not len(apart) and len(want) == len(got):
            return
        step = int(apart[0]) if len(apart) else length
        if step >= len(logits):
            self.failed.append(f"{label}: lengths {len(want)} vs {len(got)}")
            return
        tie, gap = near_tie(logits[step], self.tol)
        (self.parted if tie else self.failed).append(f"{label} parts at token {step} (top-2 gap {gap:.3g}"
                                                     f"{', a near-tie' if tie else ''})")

    def check(self, what: str, tokens: int, reference: str) -> Check:
        failed, parted, compared = self.failed, self.parted, self.compared
        detail = "; ".join(failed[:3] or parted[:3]) or f"{compared} {what} token-identical"
        return Check("greedy generation vs transformers", not failed and compared > 0,
                     f"{compared - len(failed) - len(parted)}/{compared} identical"
                     + (f", {len(parted)} part at near-ties" if parted else ""),
                     f"{tokens} tokens, {reference}", detail)
