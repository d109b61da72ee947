"""Text-to-text generation from a text2text-generation artifact: onnxruntime and numpy, no torch.

The runtime's ``generate`` of this task (``ExportedModel`` asks the task for it: ``Task.generator``); it sits
with the tasks, as the decoding core does, because a task may not import the runtime layer.

    model = zoo.load("artifacts/marian")
    [result] = model.generate(["The cat sat on the mat."], num_beams=4)
    result.text, result.token_ids, result.finish_reason

The texts are tokenised by the artifact's ``tokenizer.json``, the encoder graph runs once
and the decoder graph once per new token (``zoo.tasks._seq2seq_decode``: greedy, sampling,
beam search); options left out take the model's ``generation_config.json`` defaults.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from zoo.errors import ArtifactError, InputError
from zoo.tasks._decoding import sampling_settings
from zoo.tasks._seq2seq_decode import Decoding, EncoderDecoder, record_decoding
from zoo.tasks.results import Generation

OPTIONS = ("max_new_tokens", "num_beams", "length_penalty", "early_stopping", "no_repeat_ngram_size", "temperature",
           "top_k", "top_p", "repetition_penalty", "forced_bos_token_id", "tgt_lang")


class Seq2SeqGenerator:
    """Text in, text out: the artifact's tokenizer around ``EncoderDecoder``."""

    def __init__(self, encoder: Any, decoder: Any, manifest: Any, preprocessor: Any):
        record = manifest.preprocess.get("generation")
        if not isinstance(record, dict) or "decoder_start_token_id" not in record:
            raise ArtifactError(f"{manifest.name}: manifest.json has no encoder-decoder generation record "
                                "(preprocess.generation); re-export the artifact with this zoo")
        self.core = EncoderDecoder(encoder, decoder, record)
        self.record, self.preprocessor = record, preprocessor
        self.tokenizer = preprocessor.tokenizer

    def decoding(self, *, max_new_tokens: int | None = None, num_beams: int | None = None,
                 length_penalty: float | None = None, early_stopping: bool | str | None = None,
                 no_repeat_ngram_size: int | None = None, temperature: float | None = None,
                 top_k: int | None = None, top_p: float | None = None, repetition_penalty: float | None = None,
                 forced_bos_token_id: int | None = None, tgt_lang: str | None = None) -> Decoding:
        """The options, each defaulting to the model's generation_config.json; bad values are one InputError."""
        defaults = self.record.get("defaults", {})
        if max_new_tokens is None and "max_new_tokens" not in defaults and defaults.get("max_length"):
            max_new_tokens = max(1, int(defaults["max_length"]) - 1)  # the start token counts in max_length
        new, sampling = sampling_settings(defaults, max_new_tokens, temperature, top_k, top_p, repetition_penalty)
        beams = num_beams if num_beams is not None else int(defaults.get("num_beams") or 1)
        ngram = no_repeat_ngram_size if no_repeat_ngram_size is not None else \
            int(defaults.get("no_repeat_ngram_size") or 0)
        penalty = length_penalty if length_penalty is not None else float(defaults.get("length_penalty", 1.0))
        stopping = early_stopping if early_stopping is not None else defaults.get("early_stopping", False)
        problems = []
        if not isinstance(beams, int) or isinstance(beams, bool) or beams < 1:
            problems.append(f"num_beams={beams!r} must be a whole number >= 1 (1: no beam search)")
        elif beams > 1 and sampling.temperature > 0:
            problems.append(f"num_beams={beams} with temperature={sampling.temperature:g}: beam search here is "
                            "deterministic; use temperature=0 with beams, or num_beams=1 to sample")
        if not isinstance(ngram, int) or isinstance(ngram, bool) or ngram < 0:
            problems.append(f"no_repeat_ngram_size={ngram!r} must be a whole number >= 0 (0: off)")
        if stopping not in (True, False, "never"):
            problems.append(f"early_stopping={stopping!r} must be true, false or 'never'")
        if problems:
            raise InputError("; ".join(problems) + "; fix the option (leave it out for the model's default)")
        bos = self._forced_bos(forced_bos_token_id, tgt_lang, defaults)
        return record_decoding(self.record, max_new_tokens=new, num_beams=beams, length_penalty=float(penalty),
                               early_stopping=stopping, no_repeat_ngram_size=ngram, forced_bos_token_id=bos,
                               sampling=sampling)

    def _forced_bos(self, given: int | None, tgt_lang: str | None, defaults: dict[str, Any]) -> int | None:
        """The first generated token: mBART's target language code, by token id or by name (``tgt_lang``)."""
        if given is not None and tgt_lang is not None:
            raise InputError("give tgt_lang or forced_bos_token_id, not both (tgt_lang names the token)")
        if tgt_lang is not None:
            token = self.tokenizer.token_to_id(tgt_lang)
            if token is None:
                codes = self.record.get("language_codes") or []
                valid = ", ".join(codes[:12]) + (" ..." if len(codes) > 12 else "") if codes else \
                    "none: this model has no language-code tokens (it translates one way only)"
                raise InputError(f"tgt_lang {tgt_lang!r} is not a token of this model's tokenizer; valid: {valid}")
            return int(token)
        if given is not None:
            vocab = self.tokenizer.get_vocab_size()
            if isinstance(given, bool) or not isinstance(given, int) or not 0 <= given < vocab:
                raise InputError(f"forced_bos_token_id={given!r} must be a token id in 0..{vocab - 1}")
            return given
        value = defaults.get("forced_bos_token_id")
        return None if value is None else int(value)

    def generate(self, texts: Sequence[str], *, seed: int | None = None, **options: Any) -> list[Generation]:
        """Each text's output (options: see ``decoding``; ``seed`` seeds sampling)."""
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise InputError(f"option(s) {', '.join(unknown)} do not apply to text2text-generation; valid: seed, "
                             f"{', '.join(OPTIONS)}")
        if not texts:
            raise InputError("generate got no texts; give one string or a list of them")
        decoding = self.decoding(**options)
        batch = self.preprocessor(list(texts))
        arrays = batch.arrays
        lengths = arrays["attention_mask"].sum(1)
        tokens = self.core.generate(self.core.encode(arrays), decoding, rng=np.random.default_rng(seed))
        return [self._result(row, int(n), decoding) for row, n in zip(tokens, lengths)]

    def _result(self, row: np.ndarray, prompt_tokens: int, decoding: Decoding) -> Generation:
        stopped = bool(len(row)) and int(row[-1]) in set(self.core.eos.tolist())
        ids = tuple(int(t) for t in (row[:-1] if stopped else row))
        finish = "stop" if stopped or len(row) < decoding.max_new_tokens else "length"
        return Generation(self.tokenizer.decode(list(ids), skip_special_tokens=True), ids, prompt_tokens, len(ids),
                          finish)
