"""The data an optimised graph is judged (and calibrated) on, as graph feeds made by the artifact itself.

Text: a built-in set of varied real sentences (empty, one word, emoji, code, a
300-word text, eleven languages), the verification grid's sentences and
``--eval-data``. Images: the fine-tune run's validation split when the artifact
came from a run, else ``--eval-data``, else the verification grid's random
pixels, which are not real images: that fallback is announced in ``warning``.
Inputs go through the artifact's own torch-free preprocessing (``tokenizer.json``,
the image transform, both from the task's runtime preprocessor), so both graphs see exactly what
``zoo.load`` would feed them.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zoo.errors import ConfigError, DataError
from zoo.manifest import Manifest
from zoo.spec import Tolerances
from zoo.tasks import get_task
from zoo.tasks.base import Task

BATCH = 8
MAX_ROWS = 512  # evaluation rows; enough for a 99% agreement figure to mean something
MAX_CALIBRATION = 64
# The fewest rows a gate may judge on. A clean sample of n rows bounds the share of changed answers
# only to about 3/n (95%, the rule of three): below 64 rows "no top-1 change" could hide a 5% change.
MIN_GATE_ROWS = 64

_FLOOD = ("The river rose slowly through the night, and by morning the lower streets of the town stood under a "
          "foot of brown water that smelled of mud and diesel. ")
PROBE_SENTENCES: tuple[str, ...] = (
    "", "Hello", "ok", "🙂", "🚀🔥💯 launch day!!!", "I ❤️ New York 🗽",
    "A man is eating food.", "A man is eating a piece of bread.", "The cat sat on the mat.",
    "Stocks fell sharply after the central bank raised interest rates again.",
    "How do I reset my password if I no longer have access to my email?",
    "Le chat dort sur le canapé depuis ce matin.", "Der Zug nach Berlin hat heute zwanzig Minuten Verspätung.",
    "¿Dónde está la estación de tren más cercana?", "我今天早上喝了一杯咖啡。", "東京は日本の首都です。",
    "Москва — столица России.", "مرحبا، كيف حالك اليوم؟", "यह एक सुंदर दिन है।", "오늘 날씨가 정말 좋네요.",
    "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας.", "Bu akşam sinemaya gidiyoruz.",
    "def add(a, b): return a + b", "SELECT name FROM users WHERE age > 30;",
    "https://example.com/path?query=1&x=2", "3.14159 2.71828 1.41421 1.73205",
    "Call me at +44 20 7946 0958 before 5pm.", "THIS IS ALL CAPS AND VERY LOUD", "wat r u doin 2nite lol",
    "!!!???...,,,;;;", "a a a a a a a a a a a a", "The mitochondria is the powerhouse of the cell.",
    "Photosynthesis converts light energy into chemical energy.", "She sells sea shells by the sea shore.",
    "I can't believe it's not butter!", "The defendant pleaded not guilty to all charges.",
    "Take two tablets every six hours with food.", "Our quarterly revenue grew by 12% year over year.",
    "The movie was boring and far too long.", "Absolutely fantastic service, I will come back.",
    "The printer on the third floor is jammed again.", "Please find attached the invoice for March.",
    "Neural networks are trained with gradient descent.", "The Eiffel Tower was completed in 1889.",
    "Water boils at 100 degrees Celsius at sea level.", "He scored twice in the final ten minutes.",
    "Turn left at the second traffic light.", "My flight was cancelled and nobody told me why.",
    "The recipe needs flour, butter, sugar and two eggs.", "Quantum entanglement links the states of two particles.",
    "Can you recommend a good book about history?", "Yesterday I went hiking in the mountains with my dog.",
    "The server returned a 500 internal error.", _FLOOD * 12, "word " * 300,
)


@dataclass
class EvalSet:
    """Graph feeds in batches, with a label index per row where the data has labels."""

    batches: list[dict[str, np.ndarray]]
    source: str
    labels: np.ndarray | None = None
    warning: str | None = None

    @property
    def rows(self) -> int:
        return sum(len(next(iter(b.values()))) for b in self.batches)


@dataclass
class GateData:
    evaluation: EvalSet
    calibration: EvalSet | None = None
    notes: list[str] = field(default_factory=list)


def gate_data(folder: Path, manifest: Manifest, eval_data: str | None) -> GateData:
    """Evaluation (and, for images, calibration) data for the artifact in ``folder``."""
    task = get_task(manifest.task)
    reader = _READERS.get(task.modality)
    if reader is None:
        raise ConfigError(f"zoo optimize judges text and image models on data; {manifest.task} models take "
                          f"{task.modality} input, which it cannot judge yet")
    # labels only where the task scores one label per row (a classifier), never for embeddings or tags
    labelled = task.optimization_gate(Tolerances()).labelled
    data = reader(folder, manifest, task, eval_data, labelled)
    check_sample(data)
    return data


def check_sample(data: GateData) -> None:
    """Refuse a gate that would judge on fewer than MIN_GATE_ROWS rows, naming the data that would do."""
    rows = data.evaluation.rows
    if rows >= MIN_GATE_ROWS:
        return
    # where calibration rows come out of the same data, a small data set gives only half of itself to the gate
    needed = f"{2 * MIN_GATE_ROWS} rows (half calibrate, the rest are judged)" if data.calibration else \
        f"{MIN_GATE_ROWS} rows"
    raise DataError(f"the optimisation gate would judge on only {rows} rows ({data.evaluation.source}); it needs at "
                    f"least {MIN_GATE_ROWS}, as a clean result on fewer cannot tell 99% agreement from 95%: give "
                    f"--eval-data with at least {needed}")


# ---------------------------------------------------------------- text


def _text_data(folder: Path, manifest: Manifest, task: Task, eval_data: str | None, labelled: bool) -> GateData:
    from zoo.tasks._text import SENTENCES  # the verification grid's sentences

    texts = list(PROBE_SENTENCES) + list(SENTENCES)
    labels: list[int] | None = None
    source = f"{len(texts)} built-in and verification-grid sentences"
    extra, extra_labels, what = _labelled_rows(manifest, task, eval_data, labelled)
    if extra:
        texts = extra + texts
        source = f"{what} ({len(extra)} rows) + {source}"
        labels = extra_labels
    texts = texts[:MAX_ROWS]
    encode = task.runtime_preprocessor(folder, manifest)
    batches = [encode(texts[i:i + BATCH]).arrays for i in range(0, len(texts), BATCH)]
    # labels cover only the leading labelled rows; the gate scores accuracy on those
    label_array = np.asarray(labels[:len(texts)], dtype=np.int64) if labels else None
    return GateData(EvalSet(batches, source, label_array))


# ---------------------------------------------------------------- images


def _image_data(folder: Path, manifest: Manifest, task: Task, eval_data: str | None, labelled: bool) -> GateData:
    images, labels, what = _labelled_rows(manifest, task, eval_data, labelled)
    if not images:
        return _grid_images(manifest)
    order = list(range(len(images)))
    random.Random(0).shuffle(order)
    calibration_rows = order[:min(MAX_CALIBRATION, len(order) // 2)]
    held_out = order[len(calibration_rows):][:MAX_ROWS]
    transform = task.runtime_preprocessor(folder, manifest)

    def feeds(rows: list[int]) -> list[dict[str, np.ndarray]]:
        return [transform([images[r] for r in rows[i:i + BATCH]]).arrays for i in range(0, len(rows), BATCH)]

    held_labels = np.asarray([labels[r] for r in held_out], dtype=np.int64) if labels is not None else None
    evaluation = EvalSet(feeds(held_out), f"{what}: {len(held_out)} rows held out from calibration", held_labels)
    calibration = EvalSet(feeds(calibration_rows), f"{what}: {len(calibration_rows)} rows")
    return GateData(evaluation, calibration)


def _grid_images(manifest: Manifest) -> GateData:
    from zoo.tasks._image import pixels

    preprocess = manifest.model_spec().preprocess
    name = manifest.inputs[0].name
    warning = ("no real images to calibrate and judge on: the artifact did not come from a fine-tune run and no "
               "--eval-data was given, so the verification grid's random pixels are used. Their activation "
               "ranges are not those of photographs; give --eval-data (an imagefolder) for a meaningful result")
    calibration = EvalSet([{name: pixels(preprocess, BATCH, seed)} for seed in range(100, 104)],
                          "verification-grid random pixels", warning=warning)
    evaluation = EvalSet([{name: pixels(preprocess, BATCH, 200 + i)} for i in range(MIN_GATE_ROWS // BATCH)],
                         "verification-grid random pixels", warning=warning)
    return GateData(evaluation, calibration, notes=[warning])


_READERS: dict[str, Callable[[Path, Manifest, Task, str | None, bool], GateData]] = {
    "text": _text_data, "image": _image_data}


# ---------------------------------------------------------------- held-out text for a generative gate


def held_out_texts(manifest: Manifest, task: Task, eval_data: str | None) -> tuple[list[str], str]:
    """(texts, description) from ``--eval-data`` or the fine-tune run's validation split; ([], "") when neither."""
    texts, _, what = _labelled_rows(manifest, task, eval_data, labelled=False)
    return [str(t) for t in texts if str(t).strip()], what


# ---------------------------------------------------------------- labelled rows from a run or --eval-data


def _labelled_rows(manifest: Manifest, task: Task, eval_data: str | None,
                   labelled: bool) -> tuple[list[Any], list[int] | None, str]:
    """(inputs, label indices in the model's label order or None, description)."""
    if eval_data is not None and Path(eval_data).suffix == ".txt":
        lines = [line for line in Path(eval_data).read_text(encoding="utf-8").splitlines() if line.strip()]
        if not lines:
            raise DataError(f"--eval-data {eval_data} has no non-empty lines; give one sentence per line")
        return lines, None, f"--eval-data {eval_data}"
    if eval_data is not None:
        table, columns, what = _eval_table(eval_data, task)
    elif (manifest.run or {}).get("config"):
        table, columns, what = _run_validation(manifest.run["config"], task)
    else:
        return [], None, ""
    inputs = list(table[columns["input"]])
    column = columns.get("label") if labelled else None
    return inputs, _label_indices(table, column, manifest.labels, what), what


def _run_validation(config: dict[str, Any], task: Task) -> tuple[Any, dict[str, str], str]:
    """The validation split the fine-tune run held out, rebuilt exactly as the run built it."""
    from zoo.train.data import validation_split

    val, val_source = validation_split(config["data"], task, split=config.get("split"),
                                       val_data=config.get("val_data"),
                                       val_fraction=float(config.get("val_fraction", 0.1)),
                                       seed=int(config.get("seed", 0)))
    columns = task.data_columns(val, config.get("text_column"), config.get("label_column"))
    return val, columns, f"the fine-tune run's validation data ({config['data']}, {val_source})"


def _eval_table(eval_data: str, task: Task) -> tuple[Any, dict[str, str], str]:
    import datasets

    from zoo.data.files import VAL_SPLITS, load_raw
    from zoo.tasks._classify import LABEL_COLUMNS

    raw = load_raw(eval_data, task)
    name = next((s for s in VAL_SPLITS if s in raw.splits), next(iter(raw.splits)))
    table = raw.splits[name]
    names = list(table.column_names)
    # a data file's image paths arrive as Image columns (zoo.data.images), whatever the column's name
    typed = [n for n, f in table.features.items() if isinstance(f, datasets.Image)]
    wanted = _input_columns(task.modality)
    inputs = next((c for c in (*typed, *wanted, "tokens") if c in names), None)
    if inputs is None:
        raise DataError(f"--eval-data {eval_data} has columns {', '.join(names)}; none holds {task.modality} "
                        f"input (expected one of {', '.join(wanted)})")
    columns = {"input": inputs}
    label = next((c for c in LABEL_COLUMNS if c in names and c != inputs), None)
    if label is not None:
        columns["label"] = label
    return table, columns, f"--eval-data {eval_data} (split {name})"


def _input_columns(modality: str) -> tuple[str, ...]:
    """The column names fine-tuning looks for first, per kind of input."""
    from zoo.tasks._image import IMAGE_COLUMNS
    from zoo.tasks._text import TEXT_COLUMNS

    return {"text": TEXT_COLUMNS, "image": IMAGE_COLUMNS}[modality]


def _label_indices(table: Any, column: str | None, model_labels: tuple[str, ...] | None,
                   what: str) -> list[int] | None:
    """Each row's label as an index into the model's labels; None when the data has no label column."""
    if column is None:
        return None
    import datasets

    feature = table.features[column]
    values = list(table[column])
    if isinstance(feature, datasets.ClassLabel):
        values = [feature.int2str(int(v)) for v in values]
    if not model_labels:
        return [int(v) for v in values]
    index = {str(name): i for i, name in enumerate(model_labels)}
    unknown = sorted({str(v) for v in values} - set(index))
    if unknown:
        raise DataError(f"{what} has labels the model does not know: {', '.join(unknown[:5])}; the model's "
                        f"labels are {', '.join(model_labels[:10])}. Give data labelled like the model")
    return [index[str(v)] for v in values]
