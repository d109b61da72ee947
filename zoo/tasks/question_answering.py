"""question-answering (extractive): the span of a context that answers a question (``*ForQuestionAnswering``).

    zoo finetune ./bert-base-uncased --task question-answering --data squad.json
    zoo predict artifacts/qa --question "Where was Ada born?" --context "Ada Lovelace was born in London."

The graph gives ``start_logits`` and ``end_logits`` [batch, sequence]; everything else
runs in numpy at run time (``zoo.tasks._spans``): windows over long contexts, span
decoding, answers mapped back to the context's characters, as transformers'
question-answering pipeline does. Verification compares the best span that torch's
and onnxruntime's logits decode to, window by window. Fine-tuning reads SQuAD-format
data (the official nested JSON, or flat rows with ``question``, ``context`` and
``answers``) and reports SQuAD exact match and F1 (torchmetrics' implementation of the
official script).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from zoo.checks import Check
from zoo.errors import InputError
from zoo.spec import ModelSpec, Tolerances
from zoo.tasks import _spans
from zoo.tasks._text import TextTask
from zoo.tasks.base import Case, Task

DEFAULT_MAX_ANSWER_LEN = 15  # the pipeline's defaults
OUTPUTS = ("start_logits", "end_logits")
# (question, context) pairs for export and verification: real paragraphs, answers inside them
PAIRS = (
    ("Where was Ada Lovelace born?", "Ada Lovelace was born in London in 1815, the only legitimate child of the "
     "poet Lord Byron. She is remembered for her notes on Charles Babbage's Analytical Engine."),
    ("What does the committee publish?", "The committee will publish its final report on climate adaptation "
     "next spring, after consulting farmers, engineers and city planners across the region."),
    ("When does the train leave?", "The train to Edinburgh leaves at seven tomorrow morning from platform four."),
    ("What did Apple release?", "Apple released a new laptop with a faster chip and a brighter screen."),
)
LONG_CONTEXT = (
    "The river rises in the hills north of the town, where three streams meet in a narrow valley. For most of the "
    "year it is shallow enough to wade across, but after the spring rains it floods the meadows on either bank. "
    "The first bridge was built of timber in the twelfth century by the monks of the nearby abbey, who charged a "
    "toll of one penny for every cart. It burned down twice and was replaced in 1780 by the stone bridge that "
    "still stands, designed by the engineer Thomas Harrow. ")


class QuestionAnswering(TextTask):
    name: ClassVar[str] = "question-answering"
    summary: ClassVar[str] = "the span of a context that answers a question"
    hf_heads: ClassVar[tuple[str, ...]] = ("ForQuestionAnswering",)
    hf_auto_class: ClassVar[str | None] = "AutoModelForQuestionAnswering"
    expects: ClassVar[str] = '{"question": ..., "context": ...} records'
    input_fields: ClassVar[tuple[str, ...]] = _spans.FIELDS
    predict_options: ClassVar[dict[str, type]] = {"top_k": int, "max_answer_len": int,
                                                  "handle_impossible_answer": bool}
    trainable: ClassVar[bool] = True
    primary_metric: ClassVar[str] = "val_f1"
    metric_names: ClassVar[tuple[str, ...]] = ("val_loss", "val_exact_match", "val_f1")

    def output_names(self, spec: ModelSpec) -> tuple[str, ...]:
        return OUTPUTS

    def output_axes(self, spec: ModelSpec) -> dict[str, list[str | None]]:
        return {name: ["batch", "sequence"] for name in OUTPUTS}

    # ------------------------------------------------------------ export

    def export_example(self, spec: ModelSpec, processor: Any) -> dict[str, np.ndarray]:
        return _windows(spec, processor, list(PAIRS[:2]), 48, pad_to_max=True)

    def grid(self, spec: ModelSpec, processor: Any, seeds: tuple[int, ...]) -> list[Case]:
        """Per seed: one pair, three pairs padded together, and the windows of a context longer than one window."""
        cases = []
        length = max_seq_len(spec)
        for seed in seeds:
            order = [PAIRS[(seed + i) % len(PAIRS)] for i in range(len(PAIRS))]
            long = ("Who designed the stone bridge?", _long_context(processor, length))
            for kind, pairs in (("short", order[:1]), ("padded", order[1:4]), ("long", [long])):
                inputs = _windows(spec, processor, pairs, length)
                cases.append(Case(kind, seed, inputs, raw=list(pairs)))
        return cases

    shrink_case = Task.shrink_case  # windows are independent rows: halve the batch

    def write_preprocessor(self, spec: ModelSpec, processor: Any, stage: Path,
                           folder: Path | None) -> dict[str, Any]:
        record = super().write_preprocessor(spec, processor, stage, folder)
        length = max_seq_len(spec)
        record.update(max_seq_len=length, doc_stride=min(length // 2, _spans.DEFAULT_DOC_STRIDE),
                      cls_token_id=processor.cls_token_id)
        return record

    def export_checks(self, stage: Path, record: dict[str, Any], cases: list[Case],
                      references: list[dict[str, np.ndarray]]) -> list[Check]:
        return [_window_check(stage, record, cases)]

    def agreement(self, spec: ModelSpec, tol: Tolerances) -> SpanAgreement:
        return SpanAgreement(tol)

    # ------------------------------------------------------------ runtime

    def runtime_preprocessor(self, folder: Path, manifest: Any) -> Any:
        return _spans.PairPreprocessor(folder, manifest)

    def is_single(self, item: Any) -> bool:
        return isinstance(item, (str, dict)) or (isinstance(item, tuple) and len(item) == 2
                                                 and all(isinstance(x, str) for x in item))

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        options = super().check_options(options)
        checked = {"top_k": options.get("top_k", 1), "max_answer_len": options.get("max_answer_len",
                                                                                   DEFAULT_MAX_ANSWER_LEN)}
        for name, value in checked.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name}={value!r}; give a positive whole number")
        impossible = options.get("handle_impossible_answer", False)
        if not isinstance(impossible, bool):
            raise InputError(f"handle_impossible_answer={impossible!r}; give true or false")
        return {**checked, "handle_impossible_answer": impossible}

    def postprocess(self, outputs: dict[str, np.ndarray], batch: Any, labels: tuple[str, ...] | None,
                    manifest: Any, **options: Any) -> list[Any]:
        return _spans.answers(batch, outputs["start_logits"], outputs["end_logits"], **options)

    def bench_items(self, batch_size: int, rng: np.random.Generator) -> list[Any]:
        return [dict(zip(_spans.FIELDS, PAIRS[i % len(PAIRS)])) for i in range(batch_size)]

    def render(self, title: str, inputs: list[Any], results: list[Any]) -> Any:
        from rich.markup import escape
        from rich.table import Table

        table = Table(title=title)
        for column in ("question", "answer", "span", "score"):
            table.add_column(column, justify="right" if column == "score" else "left")
        for result in results:
            for rank, a in enumerate(result.answers or [None]):
                cells = ("-", "-", "-") if a is None else (escape(a.answer) or "(no answer)", f"{a.start}:{a.end}",
                                                           f"{a.score:.4f}")
                table.add_row(escape(result.question) if rank == 0 else "", *cells)
        return table

    # ------------------------------------------------------------ data and training

    def builtin_datasets(self) -> dict[str, Any]:
        from zoo.tasks._squad import facts

        return {"facts": facts}

    def read_data(self, data: str) -> dict[str, Any] | None:
        from zoo.tasks._squad import read_squad_json

        return read_squad_json(Path(data).expanduser())

    def data_columns(self, table: Any, input_column: str | None, label_column: str | None) -> dict[str, str]:
        from zoo.tasks._squad import squad_columns

        return squad_columns(table, input_column, label_column)

    def read_labels(self, table: Any, column: str, spec: ModelSpec, new_head: bool = False) -> Any:
        from zoo.data.labels import LabelPlan

        # a span head has no classes: its two outputs are the start and end of the answer
        return LabelPlan((), new_head=False, source="model")

    def encode(self, table: Any, columns: dict[str, str], labels: Any, spec: ModelSpec,
               processor: Any, max_length: int, what: str) -> Any:
        from zoo.tasks._squad import SquadExamples

        length = min(max_length, max_seq_len(spec))
        return SquadExamples(table, columns, processor, length, min(length // 2, _spans.DEFAULT_DOC_STRIDE), what)

    def training_loss(self, runner: Any, batch: dict[str, Any], inputs: dict[str, Any]) -> tuple[Any, int]:
        from zoo.tasks._squad import span_loss

        start, end = runner(**inputs)
        return span_loss(start, end, batch), int(batch["start_positions"].shape[0])

    def eval_batch(self, runner: Any, batch: dict[str, Any], inputs: dict[str, Any],
                   rows: list[bool]) -> tuple[float, int, list[Any]]:
        from zoo.tasks._squad import eval_records, span_loss

        start, end = runner(**inputs)
        keep = [i for i, k in enumerate(rows) if k]
        loss = span_loss(start[keep], end[keep], {k: v[keep] for k, v in batch.items() if k.endswith("_positions")})
        return float(loss), len(keep), eval_records(start[keep], end[keep], [batch["windows"][i] for i in keep])

    def metrics(self, records: list[Any], labels: tuple[str, ...]) -> dict[str, float]:
        from zoo.tasks._squad import squad_scores

        return squad_scores(records)


class SpanAgreement:
    """The best answer span decoded from torch's and onnxruntime's logits, window by window.

    Every real token may start or end a span here (the verification windows hold questions
    too); a different span is a tie, not a failure, when torch's own score of onnxruntime's
    span is within tolerance of its best.
    """

    def __init__(self, tol: Tolerances):
        self.tol = tol
        self.windows = self.wrong = self.ties = 0

    def add(self, reference: dict[str, np.ndarray], got: dict[str, np.ndarray], case: Case) -> None:
        if any(reference[n].shape != got.get(n, np.empty(0)).shape for n in OUTPUTS):
            self.wrong += 1  # counted by the output check too; a shape error can never agree
            return
        mask = case.inputs.get("attention_mask", np.ones(reference[OUTPUTS[0]].shape, dtype=np.int64)).astype(bool)
        for row, allowed in enumerate(mask):
            want = _best_span(reference, row, allowed)
            have = _best_span(got, row, allowed)
            self.windows += 1
            if want[:2] == have[:2]:
                continue
            score = _span_score(reference, row, allowed, *have[:2])
            if abs(want[2] - score) <= self.tol.atol + self.tol.rtol * abs(want[2]):
                self.ties += 1
            else:
                self.wrong += 1

    def check(self) -> Check:
        share = 100.0 * (self.windows - self.wrong) / max(self.windows, 1)
        detail = f"{self.windows} windows" + (f", {self.ties} ties within tolerance" if self.ties else "")
        return Check("answer span agreement", self.wrong == 0 and self.windows > 0, f"{share:.2f}%", "100%", detail)


def _best_span(outputs: dict[str, np.ndarray], row: int, allowed: np.ndarray) -> tuple[int, int, float]:
    start, end = (outputs[n][row].astype(np.float32) for n in OUTPUTS)
    starts, ends, scores, _ = _spans.window_spans(start, end, allowed, 1, DEFAULT_MAX_ANSWER_LEN)
    return (int(starts[0]), int(ends[0]), float(scores[0])) if len(starts) else (-1, -1, 0.0)


def _span_score(outputs: dict[str, np.ndarray], row: int, allowed: np.ndarray, first: int, last: int) -> float:
    """The probability ``outputs`` give the span first..last (0 for no span)."""
    if first < 0:
        return 0.0
    probs = []
    for name in OUTPUTS:
        values = np.where(allowed, outputs[name][row].astype(np.float32), np.float32(_spans.MASKED))
        values = np.exp(values - values.max())
        probs.append(values / values.sum())
    return float(probs[0][first] * probs[1][last])


def max_seq_len(spec: ModelSpec) -> int:
    return min(_spans.DEFAULT_MAX_SEQ_LEN, spec.preprocess.max_length or _spans.DEFAULT_MAX_SEQ_LEN)


def _windows(spec: ModelSpec, tokenizer: Any, pairs: list[tuple[str, str]], length: int,
             pad_to_max: bool = False) -> dict[str, np.ndarray]:
    """The windows of ``pairs`` as the model's tokenizer makes them (question first, context overflowing)."""
    encoded = tokenizer([q for q, _ in pairs], [c for _, c in pairs], truncation="only_second", max_length=length,
                        stride=min(length // 2, _spans.DEFAULT_DOC_STRIDE), return_overflowing_tokens=True,
                        padding="max_length" if pad_to_max else True, return_tensors="np")
    ids = encoded["input_ids"]
    return {i.name: (np.zeros_like(ids) if encoded.get(i.name) is None else encoded[i.name]).astype(np.int64)
            for i in spec.inputs}


def _long_context(tokenizer: Any, length: int) -> str:
    """The long paragraph repeated until its tokens fill more than two windows of ``length``."""
    text = LONG_CONTEXT
    while len(tokenizer(text, verbose=False)["input_ids"]) <= 2 * length:  # verbose: no "too long" warning
        text += LONG_CONTEXT
    return text.strip()


def _window_check(stage: Path, record: dict[str, Any], cases: list[Case]) -> Check:
    """The runtime's windows of the grid's pairs (from tokenizer.json and the manifest) must be the model
    tokenizer's, id for id."""
    try:
        preprocessor = _spans.PairPreprocessor.from_record(stage, record, [(n, np.int64) for n in cases[0].inputs])
    except Exception as exc:  # tokenizers raises plain Exception subclasses from Rust
        return Check("tokenizer.json reproduces the windows", False, "unreadable", "identical ids", str(exc)[:160])
    mismatched = []
    for case in cases:
        got = preprocessor([dict(zip(_spans.FIELDS, pair)) for pair in case.raw]).arrays
        for name, expected in case.inputs.items():
            if got[name].shape != expected.shape or not np.array_equal(got[name], expected):
                mismatched.append(f"{case.label} {name}")
    return Check("tokenizer.json reproduces the windows", not mismatched, f"{len(cases)} cases",
                 "identical ids and masks", "; ".join(mismatched[:3]))


TASK = QuestionAnswering()
