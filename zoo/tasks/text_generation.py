"""text-generation: causal language models (``*ForCausalLM``, GPT-2's ``LMHeadModel``) with a KV cache.

    zoo export ./my-llama --onnx --out artifacts/llama
    zoo predict artifacts/llama "The capital of France is"
    python -c "import zoo; print(zoo.load('artifacts/llama').generate(['Hello'], max_new_tokens=16)[0].text)"

One decoder graph serves prefill and decode. Inputs: ``input_ids`` [batch, sequence],
``attention_mask`` [batch, past + sequence], ``position_ids`` [batch, sequence] and per
layer ``past_key_values.N.key`` / ``.value`` [batch, kv heads, past_sequence, head dim]
(an empty cache, past 0, for the prompt); outputs ``logits`` [batch, sequence, vocab] and
``present.N.key`` / ``.value``, the cache grown by the new tokens. Prompts are padded on
the left and positions count real tokens only (``cumsum(mask) - 1``), as transformers'
``generate`` does.

The verification grid (per seed: one prompt, three left-padded prompts, and a decode
step of three rows on a non-empty cache) is compared output by output with torch; the
decode case is what the golden data replays. The step-by-step checks
(``_generate_verify``) then feed the graph its own cache. The manifest's
``preprocess.generation`` records what generation needs: EOS ids, the defaults of
``generation_config.json``, the chat template, the context length and the KV layout.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from zoo.checks import Check
from zoo.errors import ConfigError
from zoo.folders import read_json
from zoo.spec import InputSpec, ModelSpec, Preprocess, Tolerances
from zoo.tasks._decoding import positions
from zoo.tasks._text import SENTENCES, TextTask, tokenizer_file_check
from zoo.tasks.base import Case

TOKENS = ("input_ids", "attention_mask")
EXPORT_PAST, EXPORT_NEW = 3, 4  # the traced example: a non-empty cache and several new tokens
GENERATION_DEFAULTS = ("do_sample", "temperature", "top_k", "top_p", "repetition_penalty", "max_new_tokens",
                       "max_length")
PROMPTS = (
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):",
    "The three primary colours are",
    "Water boils at a temperature of",
    "My favourite book is",
)


def kv_layout(config: dict[str, Any]) -> dict[str, Any]:
    """Layers, KV heads, head dim of a transformers decoder config (Llama, Qwen2, Mistral, GPT-2 vocabularies)."""
    layers = config.get("num_hidden_layers", config.get("n_layer"))
    heads = config.get("num_attention_heads", config.get("n_head"))
    hidden = config.get("hidden_size", config.get("n_embd"))
    if not all(isinstance(v, int) and v > 0 for v in (layers, heads, hidden)):
        raise ConfigError(f"config.json declares no decoder size (num_hidden_layers/n_layer {layers}, "
                            f"num_attention_heads/n_head {heads}, hidden_size/n_embd {hidden}); "
                            "save the model with save_pretrained")
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    return {"layers": int(layers), "kv_heads": int(kv_heads), "head_dim": int(head_dim)}


def context_length(config: dict[str, Any]) -> int:
    return int(config.get("max_position_embeddings") or config.get("n_positions") or 2048)


def layers_of(spec: ModelSpec) -> int:
    return sum(1 for i in spec.inputs if i.name.endswith(".key"))


def _cache_shape(spec: ModelSpec) -> tuple[int, int]:
    """(kv heads, head dim) from the spec's first cache input."""
    first = next(i for i in spec.inputs if i.name.endswith(".key"))
    return int(first.shape[1]), int(first.shape[3])


class TextGeneration(TextTask):
    name: ClassVar[str] = "text-generation"
    summary: ClassVar[str] = "causal language models: one decoder graph with a KV cache, torch-free generate"
    hf_heads: ClassVar[tuple[str, ...]] = ("ForCausalLM", "LMHeadModel")
    hf_auto_class: ClassVar[str | None] = "AutoModelForCausalLM"
    derived_axes: ClassVar[tuple[str, ...]] = ("total_sequence",)
    generates: ClassVar[bool] = True
    trainable: ClassVar[bool] = True
    metric_names: ClassVar[tuple[str, ...]] = ("val_loss", "val_perplexity", "val_exact_match")
    expects: ClassVar[str] = "prompts (strings)"
    predict_options: ClassVar[dict[str, type]] = {
        "max_new_tokens": int, "temperature": float, "top_k": int, "top_p": float, "repetition_penalty": float,
        "stop": list, "seed": int}

    # ------------------------------------------------------------ sources

    def describe_hf(self, folder: Path, config: dict[str, Any],
                    st: dict[str, Any] | None) -> tuple[tuple[Any, ...], Preprocess, tuple[str, ...] | None]:
        layout = kv_layout(config)
        cache = ("batch", layout["kv_heads"], "past_sequence", layout["head_dim"])
        inputs = (InputSpec("input_ids", "int64", ("batch", "sequence")),
                  InputSpec("attention_mask", "int64", ("batch", "total_sequence")),
                  InputSpec("position_ids", "int64", ("batch", "sequence")))
        inputs += tuple(InputSpec(f"past_key_values.{i}.{kind}", "float32", cache)
                        for i in range(layout["layers"]) for kind in ("key", "value"))
        return inputs, Preprocess(max_length=context_length(config)), None

    def load_processor(self, spec: ModelSpec, folder: Path | None) -> Any:
        tokenizer = super().load_processor(spec, folder)
        tokenizer.padding_side = "left"  # generation appends on the right: prompts end at the same column
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    # ------------------------------------------------------------ export

    def export_module(self, model: Any, spec: ModelSpec) -> Any:
        from zoo.tasks._generate_torch import decoder_module

        return decoder_module(model, layers_of(spec))

    def output_names(self, spec: ModelSpec) -> tuple[str, ...]:
        return ("logits",) + tuple(f"present.{i}.{kind}" for i in range(layers_of(spec)) for kind in ("key", "value"))

    def output_axes(self, spec: ModelSpec) -> dict[str, list[str | None]]:
        axes: dict[str, list[str | None]] = {"logits": ["batch", "sequence", None]}
        axes.update({name: ["batch", None, "total_sequence", None] for name in self.output_names(spec)[1:]})
        return axes

    def axis_bounds(self, spec: ModelSpec) -> dict[str, int]:
        length = spec.preprocess.max_length or 2048
        return {"sequence": length, "past_sequence": length}

    def select_outputs(self, output: Any, spec: ModelSpec) -> Any:
        return output  # the decoder module returns the flat tuple already

    def export_example(self, spec: ModelSpec, processor: Any) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(0)
        ids = rng.integers(0, len(processor), size=(2, EXPORT_NEW))
        return self._step(spec, ids, np.ones((2, EXPORT_PAST + EXPORT_NEW), np.int64), rng)

    def _step(self, spec: ModelSpec, ids: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
        """Graph inputs for new tokens ``ids`` after a random cache as long as ``mask`` has columns before them.

        The cache is zero at padding, as the graph writes its own: a fused graph appends to the past as it
        is (GroupQueryAttention) where the plain one multiplies all of it by the mask again."""
        batch, new = ids.shape
        past = mask.shape[1] - new
        heads, dim = _cache_shape(spec)
        inputs = {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64),
                  "position_ids": positions(mask)[:, past:]}
        keep = mask[:, None, :past, None].astype(np.float32)
        for i in range(layers_of(spec)):
            for kind in ("key", "value"):
                cache = rng.standard_normal((batch, heads, past, dim), np.float32)
                inputs[f"past_key_values.{i}.{kind}"] = cache * keep
        return inputs

    def grid(self, spec: ModelSpec, processor: Any, seeds: tuple[int, ...]) -> list[Case]:
        return [case for seed in seeds for case in self._cases(spec, processor, seed)]

    def _cases(self, spec: ModelSpec, tokenizer: Any, seed: int) -> list[Case]:
        pool = list(PROMPTS + SENTENCES)
        random.Random(seed).shuffle(pool)
        rng = np.random.default_rng(seed)
        # first, one new token after a left-padded cache of 3 rows: what every decode step runs. Golden data
        # takes the first case of the first seed, so the decode step is always among what zoo verify replays.
        encoded = tokenizer(pool[4:7], padding=True, return_tensors="np")
        mask = np.concatenate([encoded["attention_mask"], np.ones((3, 1), np.int64)], axis=1).astype(np.int64)
        ids = rng.integers(0, len(tokenizer), size=(3, 1))
        cases = [Case("decode", seed, self._step(spec, ids, mask, rng), texts=pool[4:7])]
        for kind, texts in (("prompt", pool[:1]), ("left-padded", pool[1:4])):
            encoded = tokenizer(texts, padding=True, return_tensors="np")
            mask = encoded["attention_mask"].astype(np.int64)
            cases.append(Case(kind, seed, self._step(spec, encoded["input_ids"], mask, rng), texts=texts))
        return cases

    def write_preprocessor(self, spec: ModelSpec, processor: Any, stage: Path,
                           folder: Path | None) -> dict[str, Any]:
        record = super().write_preprocessor(spec, processor, stage, folder)
        record["generation"] = generation_record(spec, processor, folder)
        return record

    def export_checks(self, stage: Path, record: dict[str, Any], cases: list[Case],
                      references: list[dict[str, np.ndarray]]) -> list[Check]:
        prompts = [Case(c.kind, c.seed, {n: c.inputs[n] for n in TOKENS}, texts=c.texts)
                   for c in cases if c.kind != "decode"]
        return [tokenizer_file_check(stage, record, prompts)]

    # ------------------------------------------------------------ verify

    def agreement(self, spec: ModelSpec, tol: Tolerances) -> Any:
        from zoo.tasks._generate_verify import NextTokenAgreement

        return NextTokenAgreement(tol)

    def sequence_checks(self, module: Any, spec: ModelSpec, session: Any, cases: list[Case], tol: Tolerances,
                        compare: Any) -> list[Check]:
        from zoo.tasks._generate_verify import decode_checks

        first = cases[0].seed  # one prompt and three left-padded ones; the other seeds add only time
        return decode_checks(module, session, [c for c in cases if c.seed == first and c.kind != "decode"], tol,
                             compare)

    def preprocessor_problems(self, folder: Path, manifest: Any) -> list[str]:
        if "tokenizer.json" not in manifest.preprocess.get("files", []):
            return ["tokenizer.json (not listed)"]
        if not isinstance(manifest.preprocess.get("generation"), dict):
            return ["preprocess.generation (the EOS ids and KV layout generation needs) is missing"]
        if not (Path(folder) / "tokenizer.json").is_file():
            return []  # reported as missing with the other listed files
        try:
            self.runtime_preprocessor(folder, manifest)(["zoo checks the tokenizer"])
        except Exception as exc:  # tokenizers raises plain Exception subclasses from Rust
            return [f"tokenizer.json unreadable: {exc}"]
        return []

    # ------------------------------------------------------------ runtime

    def runtime_preprocessor(self, folder: Path, manifest: Any) -> Any:
        from zoo.tasks.preprocess import TextPreprocessor

        return TextPreprocessor.from_record(folder, manifest.preprocess, [(n, np.int64) for n in TOKENS])

    def render(self, title: str, inputs: list[str], results: list[Any]) -> Any:
        from rich.markup import escape
        from rich.table import Table

        table = Table(title=title)
        for column in ("prompt", "generated", "tokens", "finish"):
            table.add_column(column)
        for prompt, result in zip(inputs, results):
            table.add_row(escape(prompt), escape(result.text), str(result.completion_tokens), result.finish_reason)
        return table

    def bench_items(self, batch_size: int, rng: np.random.Generator) -> list[Any]:
        return [PROMPTS[i % len(PROMPTS)] for i in range(batch_size)]

    # ------------------------------------------------------------ training (zoo.tasks._lm_data, _lm_train)

    def builtin_datasets(self) -> dict[str, Any]:
        from zoo.tasks._lm_data import next_letter

        return {"next-letter": next_letter}

    def data_columns(self, table: Any, input_column: str | None, label_column: str | None) -> dict[str, str]:
        from zoo.tasks._lm_data import lm_columns

        return lm_columns(table, input_column, label_column)

    def read_labels(self, table: Any, column: str, spec: ModelSpec, new_head: bool = False) -> Any:
        from zoo.data.labels import LabelPlan

        return LabelPlan((), new_head=False, source="model")  # the vocabulary is the head: nothing to plan

    def encode(self, table: Any, columns: dict[str, str], labels: Any, spec: ModelSpec,
               processor: Any, max_length: int, what: str) -> Any:
        from zoo.data.lm import LMExamples, example
        from zoo.tasks._lm_data import encode_rows, eos_id

        rows = encode_rows(table, columns, processor, eos_id(spec, processor), max_length, what)
        return LMExamples([example(*row) for row in rows], int(processor.pad_token_id), packed=False)

    def training_module(self, model: Any, spec: ModelSpec) -> Any:
        return model  # trained through its own forward (packed rows, no cache), not the exported decoder

    def training_inputs(self, spec: ModelSpec, batch: dict[str, Any]) -> dict[str, Any]:
        return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}

    def training_loss(self, runner: Any, batch: dict[str, Any], inputs: dict[str, Any]) -> tuple[Any, int]:
        from zoo.tasks._lm_train import training_loss

        return training_loss(runner, batch, inputs)

    def eval_batch(self, runner: Any, batch: dict[str, Any], inputs: dict[str, Any],
                   rows: list[bool]) -> tuple[float, int, list[Any]]:
        from zoo.tasks._lm_train import eval_batch

        return eval_batch(runner, batch, inputs, rows)

    def metrics(self, records: list[Any], labels: tuple[str, ...]) -> dict[str, float]:
        from zoo.tasks._lm_train import metrics

        return metrics(records)

    def metric_problem(self, metric: str, data: Any) -> str | None:
        # exact-match scores answers: plain `text` rows have none, and the metric would never be reported
        if metric == "val_exact_match" and not any(row.answered for row in data.val.rows):
            return ("scores answers to prompts, but the validation rows hold plain text; give prompt/completion "
                    "or chat messages data, or use --metric loss or perplexity")
        return None


def generation_record(spec: ModelSpec, tokenizer: Any, folder: Path | None) -> dict[str, Any]:
    """What a torch-free ``generate`` needs beyond the graph, from the model folder's JSON files."""
    config = read_json(folder / "config.json") if folder is not None else {}
    defaults = read_json(folder / "generation_config.json") if folder is not None and \
        (folder / "generation_config.json").is_file() else {}
    eos = defaults.get("eos_token_id", config.get("eos_token_id"))
    eos_ids = sorted({int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None})
    if not eos_ids and tokenizer.eos_token_id is not None:
        eos_ids = [int(tokenizer.eos_token_id)]
    template = getattr(tokenizer, "chat_template", None)
    heads, dim = _cache_shape(spec)
    return {"eos_token_ids": eos_ids, "pad_token_id": int(tokenizer.pad_token_id),
            "bos_token_id": defaults.get("bos_token_id", config.get("bos_token_id")),
            "defaults": {k: defaults[k] for k in GENERATION_DEFAULTS if k in defaults},
            "chat_template": template if isinstance(template, str) else None,
            # the strings a chat template writes as bos_token / eos_token (the tokenizer's, as transformers passes)
            "bos_token": tokenizer.bos_token or "", "eos_token": tokenizer.eos_token or "",
            "context_length": spec.preprocess.max_length,
            "kv_cache": {"layers": layers_of(spec), "kv_heads": heads, "head_dim": dim, "dtype": "float32",
                         "layout": "batch, kv_heads, sequence, head_dim"}}


TASK = TextGeneration()
