"""Question-answering data and training: SQuAD layouts, ``builtin:facts``, span targets, SQuAD EM/F1.

Two layouts are read: the official SQuAD JSON (``{"data": [{"title", "paragraphs":
[{"context", "qas": [{"id", "question", "answers": [{"text", "answer_start"}]}]}]}]}``,
flattened here), and flat rows (``question``, ``context``, ``answers`` as
``{"text": [...], "answer_start": [...]}``, as the hub's ``squad`` set has them), which
HF datasets reads from JSON/JSONL/Parquet. A question without answers (SQuAD 2.0's
``is_impossible``) trains the model to point at the CLS token.

Training windows follow the pipeline's windows: the question first, the context
overflowing into windows that share ``doc_stride`` tokens; a window whose context does
not hold the whole first answer is labelled with the CLS token. Validation decodes each
window's best span (``zoo.tasks._spans``), keeps each question's best over its windows,
and scores it with torchmetrics' SQuAD metric (the official v1.1 script's normalisation,
exact match and token F1), reported as fractions.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path
from typing import Any

import numpy as np

from zoo.errors import DataError
from zoo.tasks import _spans
from zoo.tasks.base import choose_column

QUESTION_COLUMNS = ("question", "questions", "query")
CONTEXT_COLUMNS = ("context", "passage", "paragraph")
ANSWER_COLUMNS = ("answers", "answer")
EVAL_MAX_ANSWER_LEN = 30  # tokens: the SQuAD fine-tuning scripts' usual limit

# ---------------------------------------------------------------- builtin:facts

_FIRST = ("Ada", "Omar", "Lena", "Kofi", "Mei", "Ivan", "Sofia", "Ravi", "Hana", "Tomas", "Nadia", "Diego", "Yuki",
          "Amara", "Felix", "Priya", "Jonas", "Leila", "Mateo", "Ingrid")
_LAST = ("Okafor", "Lindqvist", "Moreau", "Tanaka", "Haddad", "Novak", "Reyes", "Brennan", "Kowalski", "Mensah",
         "Fischer", "Costa", "Ivanova", "Sato", "Bakker", "Walsh")
_CITIES = ("London", "Paris", "Lagos", "Lima", "Osaka", "Cairo", "Oslo", "Quito", "Delhi", "Seoul", "Rome",
           "Nairobi", "Dublin", "Hanoi", "Vienna", "Austin", "Madrid", "Accra", "Berlin", "Toronto")
_JOBS = ("engineer", "painter", "doctor", "teacher", "pilot", "chemist", "farmer", "poet", "baker", "lawyer",
         "architect", "nurse")
_INSTRUMENTS = ("piano", "violin", "guitar", "cello", "flute", "drums", "trumpet", "harp")
_COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black")
_SPLITS = {"train": (400, 7001), "validation": (80, 9013)}  # (questions, seed)


def facts() -> tuple[Any, str]:
    """(DatasetDict with train and validation splits, sha256 fingerprint): short made-up biographies with
    questions on a place, a year, a job, an instrument or a colour, generated from one seed per split."""
    import datasets

    splits, digest = {}, hashlib.sha256()
    for split, (count, seed) in _SPLITS.items():
        rng = random.Random(seed)
        rows = [_fact(rng, f"{split}-{i}") for i in range(count)]
        digest.update(json.dumps(rows, sort_keys=True).encode())
        splits[split] = datasets.Dataset.from_list(rows)
    return datasets.DatasetDict(splits), digest.hexdigest()


def _fact(rng: random.Random, key: str) -> dict[str, Any]:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    city, year, job = rng.choice(_CITIES), str(rng.randint(1900, 2005)), rng.choice(_JOBS)
    instrument, colour = rng.choice(_INSTRUMENTS), rng.choice(_COLOURS)
    sentences = [f"{first} {last} was born in {city} in {year}.", f"{first} worked as a {job} for many years.",
                 f"On weekends {first} played the {instrument}.", f"{first}'s favourite colour was {colour}."]
    rng.shuffle(sentences)
    context = " ".join(sentences)
    question, answer = rng.choice([(f"Where was {first} {last} born?", city),
                                   (f"In which year was {first} {last} born?", year),
                                   (f"What did {first} {last} work as?", job),
                                   (f"Which instrument did {first} play?", instrument),
                                   (f"What was {first}'s favourite colour?", colour)])
    start = re.search(rf"\b{re.escape(answer)}\b", context).start()  # type: ignore[union-attr]  # it is there
    return {"id": key, "title": f"{first} {last}", "context": context, "question": question,
            "answers": {"text": [answer], "answer_start": [start]}}


# ---------------------------------------------------------------- files


def read_squad_json(path: Path) -> dict[str, Any] | None:
    """The official SQuAD JSON as one flat split, or None for any other data (HF datasets reads those)."""
    if not path.is_file() or path.suffix.lower() != ".json":
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None  # not one JSON document (JSON lines, say): HF datasets reads it
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        return None
    import datasets

    return {"train": datasets.Dataset.from_list(_flatten(document["data"], path))}


def _flatten(articles: list[Any], path: Path) -> list[dict[str, Any]]:
    rows = []
    for a, article in enumerate(articles):
        for p, paragraph in enumerate(article.get("paragraphs", []) if isinstance(article, dict) else []):
            context = paragraph.get("context") if isinstance(paragraph, dict) else None
            if not isinstance(context, str):
                raise DataError(f"{path}: data[{a}].paragraphs[{p}] has no 'context' text; a SQuAD file's "
                                "paragraphs each hold a context and its qas")
            for q, qa in enumerate(paragraph.get("qas", [])):
                answers = [] if qa.get("is_impossible") else qa.get("answers", [])
                rows.append({"id": str(qa.get("id", f"{a}-{p}-{q}")), "title": str(article.get("title", "")),
                             "context": context, "question": str(qa.get("question", "")),
                             "answers": {"text": [str(x["text"]) for x in answers],
                                         "answer_start": [int(x["answer_start"]) for x in answers]}})
    if not rows:
        raise DataError(f"{path} holds no questions; a SQuAD file lists data[].paragraphs[].qas[]")
    return rows


def squad_columns(table: Any, question: str | None, answers: str | None) -> dict[str, str]:
    """``--text-column`` names the question column, ``--label-column`` the answers; the context is found."""
    names = list(table.column_names)
    return {"input": choose_column(names, question, QUESTION_COLUMNS, "question", "--text-column"),
            "context": choose_column(names, None, CONTEXT_COLUMNS, "context", "--text-column"),
            "label": choose_column(names, answers, ANSWER_COLUMNS, "answers", "--label-column")}


def _answers(value: Any, row: int, context: str, what: str) -> list[tuple[str, int]]:
    """(text, character start) of a row's answers, each checked against its context."""
    if isinstance(value, dict):
        pairs = list(zip(value.get("text") or [], value.get("answer_start") or []))
    elif isinstance(value, list):
        pairs = [(a.get("text"), a.get("answer_start")) for a in value if isinstance(a, dict)]
    else:
        pairs = None
    if pairs is None or any(not isinstance(t, str) or not isinstance(s, int) for t, s in pairs):
        raise DataError(f"row {row} of {what}: answers must be {{'text': [...], 'answer_start': [...]}} "
                        "(SQuAD's layout)")
    for text, start in pairs:
        if context[start:start + len(text)] != text:
            raise DataError(f"row {row} of {what}: answer {text!r} is not at character {start} of its context")
    return pairs


# ---------------------------------------------------------------- encoding


class SquadExamples:
    """Question/context windows with their answer's token span, padded per batch."""

    def __init__(self, table: Any, columns: dict[str, str], tokenizer: Any, max_length: int, stride: int,
                 what: str):
        questions, contexts = list(table[columns["input"]]), list(table[columns["context"]])
        if not all(isinstance(x, str) for x in questions + contexts):
            raise DataError(f"the question and context columns of {what} must hold text")
        golds = [_answers(value, i, contexts[i], what) for i, value in enumerate(table[columns["label"]])]
        encoded = tokenizer(questions, contexts, truncation="only_second", max_length=max_length, stride=stride,
                            return_overflowing_tokens=True, return_offsets_mapping=True)
        self.tokenizer = tokenizer
        self.rows, self.windows = [], []
        fields = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
        for i, example in enumerate(encoded["overflow_to_sample_mapping"]):
            in_context = [s == 1 for s in encoded.sequence_ids(i)]
            offsets = [tuple(o) if inside else None for o, inside in zip(encoded["offset_mapping"][i], in_context)]
            start, end = _target(offsets, golds[example])
            self.rows.append({**{k: encoded[k][i] for k in fields}, "start_positions": start, "end_positions": end})
            self.windows.append((example, offsets, contexts[example], [t for t, _ in golds[example]]))

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, indices: list[int]) -> dict[str, Any]:
        import torch

        rows = [self.rows[i] for i in indices]
        tokens = self.tokenizer.pad([{k: v for k, v in r.items() if not k.endswith("_positions")} for r in rows],
                                    return_tensors="pt")
        return {**dict(tokens), "start_positions": torch.tensor([r["start_positions"] for r in rows]),
                "end_positions": torch.tensor([r["end_positions"] for r in rows]),
                "windows": [self.windows[i] for i in indices]}

    def target_count(self, indices: list[int]) -> int:
        return len(indices)


def _target(offsets: list[tuple[int, int] | None], golds: list[tuple[str, int]]) -> tuple[int, int]:
    """Token span of the first answer in this window; (0, 0), the CLS token, when it is not wholly inside."""
    if not golds:
        return 0, 0
    text, begin = golds[0]
    stop = begin + len(text)
    tokens = [t for t, o in enumerate(offsets) if o is not None]
    if not tokens or offsets[tokens[0]][0] > begin or offsets[tokens[-1]][1] < stop:
        return 0, 0
    first = next(t for t in tokens if offsets[t][1] > begin)
    last = next(t for t in reversed(tokens) if offsets[t][0] < stop)
    return first, last


# ---------------------------------------------------------------- loss and metrics


def span_loss(start: Any, end: Any, batch: dict[str, Any]) -> Any:
    """Summed over windows: the mean of the start and end positions' cross-entropy."""
    import torch.nn.functional as F

    starts, ends = batch["start_positions"].to(start.device), batch["end_positions"].to(end.device)
    return (F.cross_entropy(start.float(), starts, reduction="sum")
            + F.cross_entropy(end.float(), ends, reduction="sum")) / 2


def eval_records(start: Any, end: Any, windows: list[Any]) -> list[Any]:
    """(example, score, predicted text, gold texts) per window: its best span among context tokens."""
    records = []
    for row, (example, offsets, context, golds) in enumerate(windows):
        allowed = np.zeros(start.shape[-1], dtype=bool)
        allowed[:len(offsets)] = [o is not None for o in offsets]
        starts, ends, scores, _ = _spans.window_spans(start[row].float().cpu().numpy(),
                                                      end[row].float().cpu().numpy(), allowed, 1,
                                                      EVAL_MAX_ANSWER_LEN)
        text, score = ("", 0.0) if not len(starts) else (
            context[offsets[int(starts[0])][0]:offsets[int(ends[0])][1]], float(scores[0]))
        records.append((example, score, text, golds))
    return records


def squad_scores(records: list[Any]) -> dict[str, float]:
    """SQuAD exact match and F1 (torchmetrics, the official script's logic) of each question's best window."""
    from torchmetrics.functional.text import squad

    best: dict[int, Any] = {}
    for record in records:
        if record[0] not in best or record[1] > best[record[0]][1]:
            best[record[0]] = record
    preds = [{"id": str(k), "prediction_text": r[2]} for k, r in best.items()]
    target = [{"id": str(k), "answers": {"text": r[3] or [""], "answer_start": [0] * max(len(r[3]), 1)}}
              for k, r in best.items()]
    scores = squad(preds, target)
    return {"val_exact_match": float(scores["exact_match"]) / 100, "val_f1": float(scores["f1"]) / 100}
