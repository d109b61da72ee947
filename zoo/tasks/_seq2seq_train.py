"""text2text-generation's training data, loss and validation records (the torch parts imported when training).

Data: a ``source`` and a ``target`` column (or the usual other names, or ``--text-column`` /
``--label-column``), each row one example. The loss is the mean cross entropy of the target tokens,
teacher-forced. Validation also decodes each source greedily (``generate``, as long as its target
plus a margin) and scores the outputs with sacreBLEU against the targets, over the model's token ids
(``tokenize="none"``: the ids are the words, so no detokenisation or tokenizer is needed at scoring).
"""

from __future__ import annotations

from typing import Any

from zoo.errors import DataError
from zoo.tasks.base import choose_column

SOURCE_COLUMNS = ("source", "src", "input", "document", "text")
TARGET_COLUMNS = ("target", "tgt", "output", "summary", "translation")
MARGIN = 8  # tokens generated beyond the target's length at validation


def seq2seq_columns(table: Any, input_column: str | None, label_column: str | None) -> dict[str, str]:
    names = list(table.column_names)
    return {"source": choose_column(names, input_column, SOURCE_COLUMNS, "source", "--text-column"),
            "target": choose_column(names, label_column, TARGET_COLUMNS, "target", "--label-column")}


def encode(table: Any, columns: dict[str, str], tokenizer: Any, max_length: int, what: str) -> Any:
    from zoo.data.seq2seq import Seq2SeqExamples

    sources, targets = (_strings(table, columns[k], what) for k in ("source", "target"))
    ids = tokenizer(sources, truncation=True, max_length=max_length)["input_ids"]
    labels = tokenizer(text_target=targets, truncation=True, max_length=max_length)["input_ids"]
    empty = next((i for i, t in enumerate(labels) if not t), None)
    if empty is not None:
        raise DataError(f"row {empty} of the {what} data has an empty target; every row needs text to learn")
    return Seq2SeqExamples([(list(s), list(t)) for s, t in zip(ids, labels)], int(tokenizer.pad_token_id or 0))


def _strings(table: Any, column: str, what: str) -> list[str]:
    values = list(table[column])
    bad = next((i for i, v in enumerate(values) if not isinstance(v, str)), None)
    if bad is not None:
        raise DataError(f"row {bad} of the {what} data holds {type(values[bad]).__name__} in column '{column}'; "
                        "text2text-generation columns hold text")
    return values


def training_loss(model: Any, batch: dict[str, Any], inputs: dict[str, Any]) -> tuple[Any, int]:
    import torch.nn.functional as F

    from zoo.data.labels import IGNORE_INDEX

    logits = model(**inputs).logits
    labels = inputs["labels"]
    total = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                            ignore_index=IGNORE_INDEX, reduction="sum")
    return total, int((labels != IGNORE_INDEX).sum())


def eval_batch(model: Any, batch: dict[str, Any], inputs: dict[str, Any],
               rows: list[bool]) -> tuple[float, int, list[Any]]:
    """(loss sum, targets, one record per kept row: (loss, targets, greedy output ids, target ids))."""
    labels = inputs["labels"]
    losses, kept = token_losses(model, inputs)
    generated = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                               do_sample=False, num_beams=1, max_new_tokens=int(kept.sum(1).max()) + MARGIN)
    records = []
    for i, keep in enumerate(rows):
        if keep:
            target = labels[i][kept[i]].tolist()
            records.append((float(losses[i].sum()), int(kept[i].sum()), _until(generated[i, 1:].tolist(), target),
                            target))
    return sum(r[0] for r in records), sum(r[1] for r in records), records


def token_losses(model: Any, inputs: dict[str, Any]) -> tuple[Any, Any]:
    """(teacher-forced cross entropy of every label [batch, length], the mask of real labels)."""
    import torch.nn.functional as F

    from zoo.data.labels import IGNORE_INDEX

    logits = model(**inputs).logits
    labels = inputs["labels"]
    losses = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                             ignore_index=IGNORE_INDEX, reduction="none").view(labels.shape)
    return losses, labels != IGNORE_INDEX


def _until(ids: list[int], target: list[int]) -> list[int]:
    """The output up to its end token (the target's last id, as the tokenizer ends every target)."""
    end = target[-1]
    return ids[:ids.index(end) + 1] if end in ids else ids


def metrics(records: list[Any]) -> dict[str, float]:
    import sacrebleu

    hypotheses = [" ".join(map(str, r[2])) for r in records]
    references = [" ".join(map(str, r[3])) for r in records]
    return {"val_bleu": float(sacrebleu.corpus_bleu(hypotheses, [references], tokenize="none").score)}
