"""token-classification: a label per word, grouped into entity spans (``*ForTokenClassification``).

    zoo finetune bert-ner --data conll.jsonl --text-column tokens --label-column ner_tags
    zoo predict artifacts/ner "Barack Obama was born in Honolulu"

Validation reports entity-level precision, recall and F1 computed by seqeval
(the CoNLL standard users compare against), plus token accuracy. At run time a
word is labelled by its first sub-word (transformers' "first" aggregation), and
adjacent words of one entity type merge into a span (B-X starts a new one).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from zoo.spec import ModelSpec, Tolerances
from zoo.tasks._classify import IGNORE_INDEX, Classifier, TopOneAgreement, TopOneGate, label_name, softmax
from zoo.tasks._text import TextTask
from zoo.tasks.base import Task, choose_column

WORD_COLUMNS = ("tokens", "words")
TAG_COLUMNS = ("ner_tags", "tags", "labels", "label")
# ignore_labels of transformers' token-classification pipeline: words outside any entity
OUTSIDE = "O"


class TokenClassification(Classifier, TextTask):
    name: ClassVar[str] = "token-classification"
    summary: ClassVar[str] = "a label per word, grouped into entities"
    hf_heads: ClassVar[tuple[str, ...]] = ("ForTokenClassification",)
    hf_auto_class: ClassVar[str | None] = "AutoModelForTokenClassification"
    primary_metric: ClassVar[str] = "val_f1"
    metric_names: ClassVar[tuple[str, ...]] = ("val_loss", "val_accuracy", "val_precision", "val_recall", "val_f1")
    predict_options: ClassVar[dict[str, type]] = {}

    def output_axes(self, spec: ModelSpec) -> dict[str, list[str | None]]:
        return {"logits": ["batch", "sequence", None]}

    def agreement(self, spec: ModelSpec, tol: Tolerances) -> TopOneAgreement:
        return TopOneAgreement("logits", tol, per_token=True)

    def optimization_gate(self, tol: Tolerances) -> TopOneGate:
        return TopOneGate(tol, per_token=True)

    # ------------------------------------------------------------ runtime

    check_options = Task.check_options  # no top_k: every word gets its best label

    def postprocess(self, outputs: dict[str, np.ndarray], batch: Any, labels: tuple[str, ...] | None,
                    manifest: Any, **options: Any) -> list[Any]:
        from zoo.tasks.results import Entity
        from zoo.tasks.results import TokenClassification as Result

        results = []
        for row, text in enumerate(batch.texts):
            words = _words(softmax(outputs["logits"][row].astype(np.float32)), batch.word_ids[row],
                           batch.special[row], batch.offsets[row])
            labelled = [(label_name(labels, idx), score, start, end) for idx, score, start, end in words]
            entities = tuple(Entity(label=label, score=score, start=start, end=end, word=text[start:end])
                             for label, score, start, end in group_entities(labelled) if label != OUTSIDE)
            results.append(Result(text=text, entities=entities))
        return results

    def render(self, title: str, inputs: list[str], results: list[Any]) -> Any:
        from rich.markup import escape
        from rich.table import Table

        table = Table(title=title)
        for column in ("input", "entity", "label", "span", "score"):
            table.add_column(column)
        for text, result in zip(inputs, results):
            rows = result.entities or [None]
            for rank, e in enumerate(rows):
                cells = ("-", "-", "-", "-") if e is None else (escape(e.word), escape(e.label),
                                                                f"{e.start}:{e.end}", f"{e.score:.4f}")
                table.add_row(escape(text) if rank == 0 else "", *cells)
        return table

    # ------------------------------------------------------------ training

    def data_columns(self, table: Any, input_column: str | None, label_column: str | None) -> dict[str, str]:
        names = list(table.column_names)
        words = choose_column(names, input_column, WORD_COLUMNS, "words", "--text-column")
        usual = [n for n in TAG_COLUMNS if n != words]
        return {"input": words, "label": choose_column(names, label_column, usual, "label", "--label-column")}

    def read_labels(self, table: Any, column: str, spec: ModelSpec, new_head: bool = False) -> Any:
        from zoo.data.labels import plan_labels

        return plan_labels(table, column, spec.labels, token_level=True, new_head=new_head)

    def encode(self, table: Any, columns: dict[str, str], labels: Any, spec: ModelSpec,
               processor: Any, max_length: int, what: str) -> Any:
        from zoo.data import encode

        return encode.tagged_texts(table, columns, labels, processor, max_length, what)

    def eval_batch(self, runner: Any, batch: dict[str, Any], inputs: dict[str, Any],
                   rows: list[bool]) -> tuple[float, int, list[Any]]:
        import torch.nn.functional as F

        logits = runner(**inputs).float().cpu()
        keep = [i for i, k in enumerate(rows) if k]
        logits, labels = logits[keep], batch["labels"][keep]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX,
                               reduction="sum")
        predicted = logits.argmax(-1)
        records = []
        for gold_row, pred_row in zip(labels.tolist(), predicted.tolist()):
            pairs = [(g, p) for g, p in zip(gold_row, pred_row) if g != IGNORE_INDEX]
            records.append(([g for g, _ in pairs], [p for _, p in pairs]))
        return float(loss), int((labels != IGNORE_INDEX).sum()), records

    def metrics(self, records: list[Any], labels: tuple[str, ...]) -> dict[str, float]:
        from seqeval.metrics import f1_score, precision_score, recall_score

        gold = [[label_name(labels, i) for i in g] for g, _ in records]
        pred = [[label_name(labels, i) for i in p] for _, p in records]
        tokens = sum(len(g) for g in gold)
        correct = sum(a == b for g, p in zip(gold, pred) for a, b in zip(g, p))
        # seqeval warns once per call when a sequence holds no entity at all; that is no error here
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scores = {"val_precision": precision_score(gold, pred, zero_division=0),
                      "val_recall": recall_score(gold, pred, zero_division=0),
                      "val_f1": f1_score(gold, pred, zero_division=0)}
        return {"val_accuracy": correct / max(tokens, 1), **{k: float(v) for k, v in scores.items()}}


def _words(probs: np.ndarray, word_ids: list[int | None], special: list[int],
           offsets: list[tuple[int, int]]) -> list[tuple[int, float, int, int]]:
    """(class, score, start, end) per word, labelled by its first token (transformers' "first" strategy)."""
    words: list[tuple[int, float, int, int]] = []
    last_word = None
    for t, word in enumerate(word_ids):
        if special[t] or word is None:
            continue
        if word == last_word:
            idx, score, start, _ = words[-1]
            words[-1] = (idx, score, start, offsets[t][1])
            continue
        idx = int(probs[t].argmax())
        words.append((idx, float(probs[t][idx]), offsets[t][0], offsets[t][1]))
        last_word = word
    return words


def _tag(label: str) -> tuple[str, str]:
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label  # a label without a B-/I- prefix continues a run of itself


def group_entities(words: list[tuple[str, float, int, int]]) -> list[tuple[str, float, int, int]]:
    """Merge adjacent words of one entity type (B-X starts a new span) into (type, mean score, start, end)."""
    groups: list[list[tuple[str, float, int, int]]] = []
    for word in words:
        bi, tag = _tag(word[0])
        if groups and bi != "B" and _tag(groups[-1][-1][0])[1] == tag:
            groups[-1].append(word)
        else:
            groups.append([word])
    return [(_tag(g[0][0])[1], float(np.mean([w[1] for w in g])), g[0][2], g[-1][3]) for g in groups]


TASK = TokenClassification()
