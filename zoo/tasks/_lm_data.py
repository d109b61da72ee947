"""Training data of text-generation: which columns a table offers, and its rows as token ids with targets.

Three layouts, tried in this order:

- ``messages``: chat turns (lists of ``{"role", "content"}``), rendered with the model's chat
  template (``apply_chat_template``) and tokenised without the tokenizer's own special tokens,
  as ``zoo.runtime``'s ``chat`` does; the loss counts on the assistant turns only;
- ``prompt`` + ``completion``: the prompt tokenised as ``generate`` tokenises a plain prompt
  (with the tokenizer's special tokens), the completion without them and ended by EOS; the
  loss counts on the completion only;
- ``text``: plain language modelling, the loss on every token.

``builtin:next-letter`` is a set a tiny model learns within ~100 steps: three letters of
a..j, answered by the letter after each (``next c a j =`` -> `` d b k``); all 1,000 prompts,
in a seeded order, 900 for training and 100 held out.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

from zoo.errors import DataError
from zoo.folders import read_json
from zoo.spec import ModelSpec
from zoo.tasks.base import choose_column

TEXT_COLUMNS = ("text", "content", "document")
PROMPT_COLUMNS = ("prompt", "instruction", "question", "input")
COMPLETION_COLUMNS = ("completion", "response", "answer", "output")
LAYOUTS = ("a 'messages' column of chat turns, 'prompt' and 'completion' columns, or a 'text' column")
LETTERS = "abcdefghij"
HELD_OUT = 100


def lm_columns(table: Any, input_column: str | None, label_column: str | None) -> dict[str, str]:
    """The layout's columns: {"messages"}, {"prompt", "completion"} or {"text"} (see the module docstring)."""
    names = list(table.column_names)
    if input_column is None and "messages" in names:
        return {"messages": "messages"}
    if label_column is not None or any(c in names for c in COMPLETION_COLUMNS):
        completion = choose_column(names, label_column, COMPLETION_COLUMNS, "completion", "--label-column")
        prompt = choose_column(names, input_column, PROMPT_COLUMNS, "prompt", "--text-column")
        return {"prompt": prompt, "completion": completion}
    if input_column is not None and input_column in names and _holds_turns(table, input_column):
        return {"messages": input_column}
    if input_column is None and not any(c in names for c in TEXT_COLUMNS):
        raise DataError(f"no text-generation columns among: {', '.join(names)}; give {LAYOUTS} (or name a text "
                        "column with --text-column)")
    return {"text": choose_column(names, input_column, TEXT_COLUMNS, "text", "--text-column")}


def _holds_turns(table: Any, column: str) -> bool:
    first = table[0][column]
    return isinstance(first, list) and bool(first) and isinstance(first[0], dict)


def eos_id(spec: ModelSpec, tokenizer: Any) -> int:
    """The id generation stops at: the model folder's generation_config.json / config.json, else the tokenizer's."""
    folder = Path(spec.local_path) if spec.local_path else None
    for name in ("generation_config.json", "config.json"):
        if folder is not None and (folder / name).is_file():
            eos = read_json(folder / name).get("eos_token_id")
            if isinstance(eos, list) and eos:
                eos = eos[0]
            if isinstance(eos, int):
                return eos
    if tokenizer.eos_token_id is None:
        raise DataError(f"{spec.name} names no EOS token (config.json, generation_config.json and the tokenizer "
                        "lack one); a model trained on answers must learn where they end: set eos_token_id")
    return int(tokenizer.eos_token_id)


def encode_rows(table: Any, columns: dict[str, str], tokenizer: Any, eos: int, max_length: int,
                what: str) -> list[tuple[list[int], list[int], bool]]:
    """(ids, targets, answered) per row, cut to ``max_length`` tokens; targets are IGNORE_INDEX off the loss."""
    if "messages" in columns:
        rows = [_chat(m, tokenizer, eos, what, i) for i, m in enumerate(table[columns["messages"]])]
    elif "prompt" in columns:
        prompts = _strings(table, columns["prompt"], what)
        completions = _strings(table, columns["completion"], what)
        rows = [_answer(p, c, tokenizer, eos) for p, c in zip(prompts, completions)]
    else:
        rows = [_text(t, tokenizer, eos) for t in _strings(table, columns["text"], what)]
    from zoo.data.labels import IGNORE_INDEX

    rows = [(ids[:max_length], targets[:max_length], answered) for ids, targets, answered in rows]
    if not any(t != IGNORE_INDEX for _, targets, _ in rows for t in targets[1:]):
        raise DataError(f"the {what} data leaves no token to learn within --max-length {max_length} (prompts fill "
                        "it, or the completions are empty); raise --max-length or shorten the prompts")
    return rows


def _strings(table: Any, column: str, what: str) -> list[str]:
    values = list(table[column])
    bad = next((i for i, v in enumerate(values) if not isinstance(v, str)), None)
    if bad is not None:
        raise DataError(f"row {bad} of the {what} data holds {type(values[bad]).__name__} in column '{column}'; "
                        "text-generation columns hold text")
    return values


def _text(text: str, tokenizer: Any, eos: int) -> tuple[list[int], list[int], bool]:
    ids = list(tokenizer(text)["input_ids"])
    if not ids or ids[-1] != eos:
        ids.append(eos)
    return ids, ids, False


def _answer(prompt: str, completion: str, tokenizer: Any, eos: int) -> tuple[list[int], list[int], bool]:
    from zoo.data.labels import IGNORE_INDEX

    asked = list(tokenizer(prompt)["input_ids"])
    answer = list(tokenizer(completion, add_special_tokens=False)["input_ids"]) + [eos]
    return asked + answer, [IGNORE_INDEX] * len(asked) + answer, True


def _chat(messages: Any, tokenizer: Any, eos: int, what: str, row: int) -> tuple[list[int], list[int], bool]:
    """The rendered conversation; the targets are the tokens inside an assistant turn's span of the text.

    A turn's span runs from the end of the conversation before it, rendered with the generation
    prompt (what ``chat`` feeds the model), to the end of the conversation rendered up to it.
    """
    from zoo.data.labels import IGNORE_INDEX

    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"the {what} data has chat 'messages' but the model's tokenizer has no chat template; "
                        "train a chat (instruct) model, or give 'prompt' and 'completion' columns")
    if not (isinstance(messages, list) and messages and
            all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages)):
        raise DataError(f"row {row} of the {what} data: 'messages' must be a list of {{'role', 'content'}} turns")
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)) \
            if i else 0
        end = len(tokenizer.apply_chat_template(messages[:i + 1], tokenize=False))
        spans.append((start, end))
    if not spans:
        raise DataError(f"row {row} of the {what} data has no assistant turn: nothing to learn")
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    targets = [t if any(s <= a < e for s, e in spans) else IGNORE_INDEX
               for t, (a, _) in zip(ids, encoded["offset_mapping"])]
    return ids, targets, True


def next_letter() -> tuple[Any, str]:
    import datasets

    rows = [(a, b, c) for a in LETTERS for b in LETTERS for c in LETTERS]
    random.Random(0).shuffle(rows)
    table = {"prompt": [f"next {' '.join(r)} =" for r in rows],
             "completion": [" " + " ".join(chr(ord(x) + 1) for x in r) for r in rows]}
    digest = hashlib.sha256(json.dumps(table, sort_keys=True).encode()).hexdigest()
    split = len(rows) - HELD_OUT
    return datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({k: v[:split] for k, v in table.items()}),
        "validation": datasets.Dataset.from_dict({k: v[split:] for k, v in table.items()})}), digest
