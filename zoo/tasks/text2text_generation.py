"""text2text-generation: encoder-decoder language models (T5, BART, Marian, mBART, Pegasus): translate, summarise.

    zoo export ./opus-mt-en-de --onnx --out artifacts/marian
    zoo predict artifacts/marian "The weather is nice today."
    python -c "import zoo; print(zoo.load('artifacts/marian').generate(['Hello'], num_beams=4)[0].text)"

Two graphs in one artifact (``zoo.tasks._seq2seq_torch`` has the modules and why):

* ``encoder.onnx``: ``input_ids``, ``attention_mask`` [batch, encoder_sequence] -> ``last_hidden_state`` and
  every decoder layer's cross-attention keys and values ``cross.N.key`` / ``.value``, computed once per text;
* ``model.onnx``, the decoder, one graph for every step: ``decoder_input_ids`` [batch, decoder_sequence],
  ``encoder_attention_mask``, the self-attention cache ``past_key_values.N.*`` (empty at the first step) and
  ``cross.N.*`` -> ``logits`` and the grown cache ``present.N.*``.

``model.onnx`` goes through the export pipeline like any graph (exporters, fusion fallback, the
grid on random caches, golden data); ``encoder.onnx`` is this task's companion graph
(``companion_graphs``): exported, verified on the text grid and given golden data of its own
(``encoder/test_data_set_N``), listed in the manifest's ``preprocess.graphs``. The checks of both
graphs together (``zoo.tasks._seq2seq_verify``) then compare the decoder step by step with
transformers' own cache, greedy generation with ``generate(num_beams=1, do_sample=False)`` and beam
search with ``generate(num_beams=4)``, all through the runtime's own decoding code.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from zoo.checks import Check
from zoo.errors import ConfigError
from zoo.spec import InputSpec, ModelSpec, Preprocess, Tolerances
from zoo.tasks._text import SENTENCES, TextTask, _max_length
from zoo.tasks.base import Case, Companion

TOKENS = ("input_ids", "attention_mask")
ENCODER_FILE = "encoder.onnx"
EXPORT_PAST, EXPORT_NEW = 3, 2  # the traced decoder example: a non-empty cache and more than one new token
# generation_config.json fields the runtime follows (transformers' names)
GENERATION_DEFAULTS = ("do_sample", "temperature", "top_k", "top_p", "repetition_penalty", "max_new_tokens",
                       "max_length", "min_length", "num_beams", "length_penalty", "early_stopping",
                       "no_repeat_ngram_size", "forced_bos_token_id", "forced_eos_token_id")


def seq2seq_layout(config: dict[str, Any]) -> dict[str, int]:
    """Decoder layers, attention heads and head dim of a transformers encoder-decoder config (BART or T5 names)."""
    layers = config.get("decoder_layers") or config.get("num_decoder_layers") or config.get("num_layers")
    heads = config.get("decoder_attention_heads") or config.get("num_heads")
    hidden = config.get("d_model")
    if not all(isinstance(v, int) and v > 0 for v in (layers, heads, hidden)):
        raise ConfigError(f"config.json declares no decoder size (decoder_layers/num_decoder_layers {layers}, "
                          f"decoder_attention_heads/num_heads {heads}, d_model {hidden}); save the model with "
                          "save_pretrained")
    return {"layers": int(layers), "heads": int(heads), "head_dim": int(config.get("d_kv") or hidden // heads)}


def _layers(spec: ModelSpec) -> int:
    return sum(1 for i in spec.inputs if i.name.startswith("cross.") and i.name.endswith(".key"))


def _cache_shape(spec: ModelSpec) -> tuple[int, int]:
    first = next(i for i in spec.inputs if i.name.startswith("cross."))
    return int(first.shape[1]), int(first.shape[3])


def is_encoder(spec: ModelSpec) -> bool:
    """The companion spec (encoder.onnx) rather than the decoder's (model.onnx)."""
    return spec.inputs[0].name != "decoder_input_ids"


def encoder_spec(spec: ModelSpec) -> ModelSpec:
    """The decoder spec with the encoder's inputs: what the exporter and the grid of encoder.onnx see. Its
    ``labels`` name the cross-attention tensors encoder.onnx gives (the decoder's ``cross.N.*`` inputs): a spec
    has no other field for outputs, and an encoder-decoder has no class labels to keep there."""
    cross = tuple(i.name for i in spec.inputs if i.name.startswith("cross."))
    return dataclasses.replace(spec, inputs=tuple(InputSpec(n, "int64", ("batch", "encoder_sequence"))
                                                  for n in TOKENS), labels=cross)


class Text2TextGeneration(TextTask):
    name: ClassVar[str] = "text2text-generation"
    summary: ClassVar[str] = "encoder-decoder models (translation, summarisation): encoder + decoder graphs"
    hf_heads: ClassVar[tuple[str, ...]] = ("ForConditionalGeneration", "MTModel")
    hf_auto_class: ClassVar[str | None] = "AutoModelForSeq2SeqLM"
    expects: ClassVar[str] = "texts (strings)"
    # each has a zoo predict flag; generate() also takes early_stopping and forced_bos_token_id
    predict_options: ClassVar[dict[str, type]] = {
        "max_new_tokens": int, "num_beams": int, "length_penalty": float, "no_repeat_ngram_size": int,
        "temperature": float, "top_k": int, "top_p": float, "repetition_penalty": float, "tgt_lang": str, "seed": int}

    # ------------------------------------------------------------ sources

    def describe_hf(self, folder: Path, config: dict[str, Any],
                    st: dict[str, Any] | None) -> tuple[tuple[Any, ...], Preprocess, tuple[str, ...] | None]:
        layout = seq2seq_layout(config)
        self_cache = ("batch", layout["heads"], "past_sequence", layout["head_dim"])
        cross = ("batch", layout["heads"], "encoder_sequence", layout["head_dim"])
        inputs = (InputSpec("decoder_input_ids", "int64", ("batch", "decoder_sequence")),
                  InputSpec("encoder_attention_mask", "int64", ("batch", "encoder_sequence")))
        inputs += tuple(InputSpec(f"past_key_values.{i}.{kind}", "float32", self_cache)
                        for i in range(layout["layers"]) for kind in ("key", "value"))
        inputs += tuple(InputSpec(f"cross.{i}.{kind}", "float32", cross)
                        for i in range(layout["layers"]) for kind in ("key", "value"))
        return inputs, Preprocess(max_length=_max_length(folder, config, st)), None

    # ------------------------------------------------------------ export

    def export_module(self, model: Any, spec: ModelSpec) -> Any:
        from zoo.tasks._seq2seq_torch import decoder_module

        return decoder_module(model, _layers(spec), masked=True)

    def output_names(self, spec: ModelSpec) -> tuple[str, ...]:
        if is_encoder(spec):
            return ("last_hidden_state",) + tuple(spec.labels or ())
        return ("logits",) + tuple(f"present.{i}.{kind}" for i in range(_layers(spec)) for kind in ("key", "value"))

    def output_axes(self, spec: ModelSpec) -> dict[str, list[str | None]]:
        names = self.output_names(spec)
        if is_encoder(spec):
            axes: dict[str, list[str | None]] = {names[0]: ["batch", "encoder_sequence", None]}
            axes.update({n: ["batch", None, "encoder_sequence", None] for n in names[1:]})
            return axes
        axes = {"logits": ["batch", "decoder_sequence", None]}
        axes.update({n: ["batch", None, "total_sequence", None] for n in names[1:]})
        return axes

    def axis_bounds(self, spec: ModelSpec) -> dict[str, int]:
        length = spec.preprocess.max_length or 512
        return {"encoder_sequence": length, "decoder_sequence": length, "past_sequence": length}

    def select_outputs(self, output: Any, spec: ModelSpec) -> Any:
        return output  # both modules return the flat tuple already

    def export_example(self, spec: ModelSpec, processor: Any) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(0)
        encoded = processor(list(SENTENCES[:2]), padding=True, return_tensors="np")
        ids = rng.integers(0, len(processor), size=(2, EXPORT_NEW))
        return self._step(spec, ids, EXPORT_PAST, encoded["attention_mask"], rng)

    def _step(self, spec: ModelSpec, ids: np.ndarray, past: int, mask: np.ndarray,
              rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Decoder inputs for new tokens ``ids`` after a random cache of ``past`` tokens, on random cross-attention
        keys/values as long as the encoder ``mask``."""
        heads, dim = _cache_shape(spec)
        batch, length = mask.shape
        inputs = {"decoder_input_ids": ids.astype(np.int64), "encoder_attention_mask": mask.astype(np.int64)}
        for i in range(_layers(spec)):
            for kind in ("key", "value"):
                inputs[f"past_key_values.{i}.{kind}"] = rng.standard_normal((batch, heads, past, dim), np.float32)
        for i in range(_layers(spec)):
            for kind in ("key", "value"):
                inputs[f"cross.{i}.{kind}"] = rng.standard_normal((batch, heads, length, dim), np.float32)
        return inputs

    def grid(self, spec: ModelSpec, processor: Any, seeds: tuple[int, ...]) -> list[Case]:
        if is_encoder(spec):
            return super().grid(spec, processor, seeds)
        return [case for seed in seeds for case in self._cases(spec, processor, seed)]

    def _cases(self, spec: ModelSpec, tokenizer: Any, seed: int) -> list[Case]:
        pool = list(SENTENCES)
        random.Random(seed).shuffle(pool)
        rng = np.random.default_rng(seed)
        cases = []
        # first a decode step (one token on a cache, three padded texts): what every step after the first runs;
        # golden data takes the first case of each seed, so zoo verify always replays one
        for kind, texts, past, new in (("decode", pool[:3], 3, 1), ("first step", pool[3:4], 0, 1),
                                       ("several tokens", pool[4:6], 2, 3)):
            mask = tokenizer(texts, padding=True, return_tensors="np")["attention_mask"]
            ids = rng.integers(0, len(tokenizer), size=(len(texts), new))
            cases.append(Case(kind, seed, self._step(spec, ids, past, mask, rng), texts=texts))
        return cases

    def companion_graphs(self, module: Any, spec: ModelSpec, processor: Any,
                         seeds: tuple[int, ...]) -> list[Companion]:
        from zoo.tasks._seq2seq_torch import encoder_module

        sub = encoder_spec(spec)
        return [Companion("encoder", ENCODER_FILE, sub, encoder_module(module.model, list(TOKENS)).eval(),
                          super().grid(sub, processor, seeds), super().export_example(sub, processor))]

    def model_record(self, module: Any) -> dict[str, Any]:
        return {"generation": generation_record(module.model)}

    def export_checks(self, stage: Path, record: dict[str, Any], cases: list[Case],
                      references: list[dict[str, np.ndarray]]) -> list[Check]:
        if "decoder_input_ids" in cases[0].inputs:
            return []  # the decoder's grid has no token ids of a text; the encoder's grid checks the tokenizer
        return super().export_checks(stage, record, cases, references)

    # ------------------------------------------------------------ verify

    def agreement(self, spec: ModelSpec, tol: Tolerances) -> Any:
        if is_encoder(spec):
            from zoo.tasks.feature_extraction import CosineAgreement

            return CosineAgreement("last_hidden_state", tol)
        from zoo.tasks._generate_verify import NextTokenAgreement

        return NextTokenAgreement(tol)

    def pipeline_checks(self, module: Any, spec: ModelSpec, sessions: dict[str, Any], companions: list[Companion],
                        tol: Tolerances, compare: Any) -> list[Check]:
        from zoo.tasks._seq2seq_verify import seq2seq_checks

        [encoder] = companions
        first = encoder.cases[0].seed  # the short text and the padded batch of one seed; more adds only time
        cases = [c for c in encoder.cases if c.seed == first and c.kind in ("short", "padded")]
        return seq2seq_checks(module.model, generation_record(module.model), sessions["encoder"], sessions["model"],
                              cases, tol, compare)

    def preprocessor_problems(self, folder: Path, manifest: Any) -> list[str]:
        problems = []
        if "tokenizer.json" not in manifest.preprocess.get("files", []):
            problems.append("tokenizer.json (not listed)")
        elif (Path(folder) / "tokenizer.json").is_file():  # a missing one is reported with the other listed files
            try:
                self.runtime_preprocessor(folder, manifest)(["zoo checks the tokenizer"])
            except Exception as exc:  # tokenizers raises plain Exception subclasses from Rust
                problems.append(f"tokenizer.json unreadable: {exc}")
        record = manifest.preprocess.get("generation")
        if not isinstance(record, dict) or "decoder_start_token_id" not in record:
            problems.append("preprocess.generation (decoder start and EOS ids, cache layout) is missing")
        graphs = manifest.preprocess.get("graphs")
        if not isinstance(graphs, dict) or "encoder" not in graphs:
            problems.append(f"preprocess.graphs.encoder ({ENCODER_FILE}) is missing")
        return problems

    # ------------------------------------------------------------ runtime

    def runtime_preprocessor(self, folder: Path, manifest: Any) -> Any:
        from zoo.tasks.preprocess import TextPreprocessor

        # the tokenizer makes the encoder's inputs; model.onnx (the decoder) takes none of them
        return TextPreprocessor.from_record(folder, manifest.preprocess, [(n, np.int64) for n in TOKENS])

    def generator(self, sessions: dict[str, Any], manifest: Any, preprocessor: Any) -> Any:
        from zoo.tasks._seq2seq_text import Seq2SeqGenerator

        return Seq2SeqGenerator(sessions["encoder"], sessions["model"], manifest, preprocessor)

    def render(self, title: str, inputs: list[str], results: list[Any]) -> Any:
        from rich.markup import escape
        from rich.table import Table

        if len(results) == 1:
            return escape(results[0].text)  # one text: its output alone, as a translator prints it
        table = Table(title=title)
        for column in ("input", "output", "tokens", "finish"):
            table.add_column(column)
        for text, result in zip(inputs, results):
            table.add_row(escape(text), escape(result.text), str(result.completion_tokens), result.finish_reason)
        return table


def generation_record(model: Any) -> dict[str, Any]:
    """What the torch-free generation needs beyond the graphs: the ids and defaults transformers' ``generate``
    uses for this model (its ``generation_config``, from generation_config.json or the model config)."""
    config = model.generation_config
    eos = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    start = config.decoder_start_token_id
    if start is None:
        start = model.config.decoder_start_token_id
    if start is None:
        raise ConfigError("the model names no decoder_start_token_id (generation_config.json or config.json); "
                          "set it in config.json: the token the decoder starts every output with")
    values = config.to_dict()
    bad = [int(w[0]) for w in (config.bad_words_ids or []) if len(w) == 1]
    layout = seq2seq_layout({k: getattr(model.config, k, None) for k in (
        "decoder_layers", "num_decoder_layers", "num_layers", "decoder_attention_heads", "num_heads", "d_model",
        "d_kv")})
    return {"decoder_start_token_id": int(start), "eos_token_ids": sorted({int(e) for e in eos if e is not None}),
            "pad_token_id": int(config.pad_token_id if config.pad_token_id is not None else 0),
            "defaults": {k: values[k] for k in GENERATION_DEFAULTS if values.get(k) is not None},
            "bad_words_ids": bad,
            "kv_cache": {"layers": layout["layers"], "heads": layout["heads"], "head_dim": layout["head_dim"],
                         "dtype": "float32", "layout": "batch, heads, sequence, head_dim"}}


TASK = Text2TextGeneration()
