"""What classifiers share: a ``logits`` output, top-1 agreement, softmax top-k, cross-entropy.

Row-level classifiers (image, text) use ``Classifier`` as it is; token
classification overrides the per-token parts.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from zoo.checks import Check
from zoo.data.labels import IGNORE_INDEX
from zoo.errors import InputError
from zoo.spec import ModelSpec, Tolerances
from zoo.tasks.base import Case, Task

LABEL_COLUMNS = ("label", "labels", "class", "target", "category")
MIN_AGREEMENT = 99.0  # percent: zoo optimize's top-1 gate for a lossy graph


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def label_name(labels: tuple[str, ...] | None, index: int) -> str:
    # transformers names unlabelled classes LABEL_i; do the same so the two paths agree
    return labels[index] if labels and index < len(labels) else f"LABEL_{index}"


def labels_from_config(config: dict[str, Any]) -> tuple[str, ...] | None:
    id2label = config.get("id2label")
    if not id2label:
        return None
    return tuple(str(id2label[k]) for k in sorted(id2label, key=lambda k: int(k)))


class CountedAgreement:
    """Agreement of one output of torch and onnxruntime, counted over the grid's rows or tokens.

    A subclass's ``compare`` counts one case: (compared, disagreements, ties excused).
    """

    def __init__(self, output: str, tol: Tolerances):
        self.output, self.tol = output, tol
        self.compared = self.wrong = self.ties = 0

    def add(self, reference: dict[str, np.ndarray], got: dict[str, np.ndarray], case: Case) -> None:
        ref, out = reference[self.output], got.get(self.output, np.empty(0))
        if ref.shape != out.shape:
            self.wrong += 1  # counted by the output check too; a shape error can never agree
            return
        compared, wrong, ties = self.compare(ref, out, case)
        self.compared, self.wrong, self.ties = self.compared + compared, self.wrong + wrong, self.ties + ties

    def compare(self, reference: np.ndarray, got: np.ndarray, case: Case) -> tuple[int, int, int]:
        raise NotImplementedError

    def counted(self, name: str, unit: str) -> Check:
        """The check named ``name``: every one of the compared ``unit`` agrees."""
        share = 100.0 * (self.compared - self.wrong) / max(self.compared, 1)
        detail = f"{self.compared} {unit}" + (f", {self.ties} ties within tolerance" if self.ties else "")
        return Check(name, self.wrong == 0 and self.compared > 0, f"{share:.2f}%", "100%", detail)


class TopOneAgreement(CountedAgreement):
    """Top-1 agreement of torch and onnxruntime over the grid (per row, or per real token).

    A disagreement where torch's own top-2 margin is within tolerance is a tie
    (both answers are equally right within the stated precision), not a failure.
    """

    def __init__(self, output: str, tol: Tolerances, per_token: bool = False):
        super().__init__(output, tol)
        self.per_token = per_token

    def compare(self, reference: np.ndarray, got: np.ndarray, case: Case) -> tuple[int, int, int]:
        mask = case.inputs.get("attention_mask") if self.per_token else None
        return top1_agreement(reference, got, self.tol, mask)

    def check(self) -> Check:
        return self.counted("top-1 agreement", "tokens" if self.per_token else "rows")


class TopOneGate:
    """zoo optimize's gate for classifiers: top-1 agreement >= MIN_AGREEMENT percent with the reference.

    Per row, or per real token (``per_token``). A change within ``tol`` of the
    reference's own top-2 margin is a tie (the measured noise of the recipe), not a change.
    """

    limits: ClassVar[dict[str, float]] = {"min_agreement_percent": MIN_AGREEMENT}

    def __init__(self, tol: Tolerances, per_token: bool = False):
        self.tol, self.per_token = tol, per_token
        self.labelled = not per_token  # one label per row: labelled data scores the accuracy drop
        self.rows = self.wrong = 0

    def add(self, reference: np.ndarray, got: np.ndarray, mask: np.ndarray | None) -> None:
        if reference.shape != got.shape:
            rows = int(np.prod(reference.shape[:-1]))
            self.rows, self.wrong = self.rows + rows, self.wrong + rows  # a wrong shape never agrees
            return
        rows, wrong, _ = top1_agreement(reference, got, self.tol, mask if self.per_token else None)
        self.rows, self.wrong = self.rows + rows, self.wrong + wrong

    def checks(self, against: str, data: str) -> list[Check]:
        share = 100.0 * (self.rows - self.wrong) / self.rows if self.rows else 0.0
        unit = "tokens" if self.per_token else "rows"
        ties = f" beyond a tie within {self.tol.atol:.3g}" if self.tol.atol or self.tol.rtol else ""
        return [Check(f"{against}: top-1 agreement", self.rows > 0 and share >= MIN_AGREEMENT, f"{share:.2f}%",
                      f">= {MIN_AGREEMENT:g}%", f"{self.wrong} of {self.rows} {unit} differ{ties}; data: {data}")]


def top1_agreement(reference: np.ndarray, got: np.ndarray, tol: Tolerances,
                   mask: np.ndarray | None = None) -> tuple[int, int, int]:
    """(rows compared, disagreements, ties excused) of the top-1 class."""
    ref_top = reference.argmax(-1)
    got_top = got.argmax(-1)
    keep = np.ones(ref_top.shape, dtype=bool) if mask is None else mask.astype(bool)
    differ = (ref_top != got_top) & keep
    ref_best = np.take_along_axis(reference, ref_top[..., None], -1)[..., 0].astype(np.float64)
    ref_other = np.take_along_axis(reference, got_top[..., None], -1)[..., 0].astype(np.float64)
    tie = (ref_best - ref_other) <= tol.atol + tol.rtol * np.abs(ref_best)
    return int(keep.sum()), int((differ & ~tie).sum()), int((differ & tie).sum())


class Classifier(Task):
    """One label per input: ``logits`` [batch, classes]."""

    has_labels: ClassVar[bool] = True
    trainable: ClassVar[bool] = True
    primary_metric: ClassVar[str] = "val_accuracy"
    metric_names: ClassVar[tuple[str, ...]] = ("val_loss", "val_accuracy", "val_macro_f1")
    predict_options: ClassVar[dict[str, type]] = {"top_k": int}

    def labels_from_config(self, config: dict[str, Any]) -> tuple[str, ...] | None:
        return labels_from_config(config)

    def output_names(self, spec: ModelSpec) -> tuple[str, ...]:
        return ("logits",)

    def agreement(self, spec: ModelSpec, tol: Tolerances) -> TopOneAgreement:
        return TopOneAgreement("logits", tol)

    def optimization_gate(self, tol: Tolerances) -> TopOneGate:
        return TopOneGate(tol)

    # ------------------------------------------------------------ runtime

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        options = super().check_options(options)
        top_k = options.get("top_k", 1)
        if not isinstance(top_k, int) or top_k < 1:
            raise InputError(f"top_k={top_k!r}; give a positive number of labels to return")
        return {"top_k": top_k}

    def postprocess(self, outputs: dict[str, np.ndarray], batch: Any, labels: tuple[str, ...] | None,
                    manifest: Any, **options: Any) -> list[Any]:
        from zoo.tasks.results import Classification

        probs = softmax(outputs["logits"].astype(np.float32))
        k = min(options.get("top_k", 1), probs.shape[-1])
        order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
        return [Classification(labels=tuple(label_name(labels, int(j)) for j in row),
                               scores=tuple(float(p[j]) for j in row)) for p, row in zip(probs, order)]

    def render(self, title: str, inputs: list[str], results: list[Any]) -> Any:
        from rich.markup import escape
        from rich.table import Table

        table = Table(title=title)
        for column in ("input", "label", "score"):
            table.add_column(column, justify="right" if column == "score" else "left")
        for item, result in zip(inputs, results):
            for rank, (label, score) in enumerate(zip(result.labels, result.scores)):
                table.add_row(escape(item) if rank == 0 else "", escape(label), f"{score:.4f}")
        return table

    # ------------------------------------------------------------ training

    def read_labels(self, table: Any, column: str, spec: ModelSpec, new_head: bool = False) -> Any:
        from zoo.data.labels import plan_labels

        return plan_labels(table, column, spec.labels, token_level=False, new_head=new_head)

    def training_loss(self, runner: Any, batch: dict[str, Any], inputs: dict[str, Any]) -> tuple[Any, int]:
        import torch.nn.functional as F

        logits = runner(**inputs)
        labels = batch["labels"].to(logits.device)
        total = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                ignore_index=IGNORE_INDEX, reduction="sum")
        return total, int((labels != IGNORE_INDEX).sum())

    def eval_batch(self, runner: Any, batch: dict[str, Any], inputs: dict[str, Any],
                   rows: list[bool]) -> tuple[float, int, list[Any]]:
        import torch.nn.functional as F

        logits = runner(**inputs).float().cpu()
        keep = [i for i, k in enumerate(rows) if k]
        logits, labels = logits[keep], batch["labels"][keep]
        loss = F.cross_entropy(logits, labels, reduction="sum") if keep else logits.sum()
        return float(loss), len(keep), list(zip(labels.tolist(), logits.argmax(-1).tolist()))

    def metrics(self, records: list[Any], labels: tuple[str, ...]) -> dict[str, float]:
        from sklearn.metrics import accuracy_score, f1_score

        gold = [g for g, _ in records]
        pred = [p for _, p in records]
        return {"val_accuracy": float(accuracy_score(gold, pred)),
                "val_macro_f1": float(f1_score(gold, pred, labels=list(range(len(labels))), average="macro",
                                               zero_division=0))}
