"""Speech-recognition training: the CTC loss, validation transcripts and the word error rate.

CTC heads (wav2vec2, HuBERT) learn with the CTC loss that transformers' ``...ForCTC.forward`` computes
(blank = the tokenizer's pad id, each clip's frames from the model's own
``_get_feat_extract_output_lengths``), summed over clips; the run's loss is then per transcript
token. Each clip is aligned with its own frames only: padding frames are left out of the loss, also
for models that take no attention mask. Whisper trains as an encoder-decoder
(``zoo.tasks._seq2seq_train``: teacher-forced cross entropy, greedy ``generate`` at validation).

Validation transcribes every clip (CTC: the best token per frame, decoded by the runtime's own
``CtcVocab``; Whisper: the tokenizer's decoding of ``generate``'s tokens) and scores the transcripts
with jiwer against the references: ``val_wer`` (word error rate) and ``val_cer`` (character error
rate), both corpus-level (edits over all reference words / characters), lower is better.
"""

from __future__ import annotations

from typing import Any

LENGTHS = "samples"  # the batch's per-clip sample counts (before padding)


def ctc_logits_and_frames(model: Any, inputs: dict[str, Any]) -> tuple[Any, Any]:
    """(logits [batch, frames, vocab], each clip's own frame count)."""
    forward = {k: inputs[k] for k in ("input_values", "attention_mask") if k in inputs}
    logits = model(**forward).logits
    own = getattr(model, "module", model)  # DDP and DeepSpeed wrap the transformers model
    frames = own._get_feat_extract_output_lengths(inputs[LENGTHS]).clamp(max=logits.shape[1])
    return logits, frames


def ctc_losses(model: Any, inputs: dict[str, Any], reduction: str) -> tuple[Any, Any, Any]:
    """(CTC loss, summed or one per clip; logits; frames), as transformers' ``ForCTC`` computes it."""
    import torch
    import torch.nn.functional as F

    logits, frames = ctc_logits_and_frames(model, inputs)
    labels = inputs["labels"]
    kept = labels >= 0
    config = getattr(model, "module", model).config
    log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)
    with torch.backends.cudnn.flags(enabled=False):  # cuDNN's CTC takes only some shapes: transformers turns it off
        loss = F.ctc_loss(log_probs, labels[kept], frames, kept.sum(-1), blank=config.pad_token_id,
                          reduction=reduction, zero_infinity=config.ctc_zero_infinity)
    return loss, logits, frames


def ctc_training_loss(model: Any, batch: dict[str, Any], inputs: dict[str, Any]) -> tuple[Any, int]:
    import numpy as np
    import torch

    # SpecAugment draws its masks from numpy's global generator: seeded from the per-micro-step torch seed,
    # a resumed run masks the same frames (as audio-classification does)
    np.random.seed(torch.initial_seed() % 2**32)
    loss, _, _ = ctc_losses(model, inputs, "sum")
    return loss, int((inputs["labels"] >= 0).sum())


def ctc_eval_batch(model: Any, batch: dict[str, Any], inputs: dict[str, Any],
                   rows: list[bool]) -> tuple[float, int, list[Any]]:
    """(loss sum, targets, one record per kept row: (loss, targets, transcript, reference))."""
    losses, logits, frames = ctc_losses(model, inputs, "none")
    best = logits.argmax(-1).cpu().numpy()
    counts = (inputs["labels"] >= 0).sum(-1).tolist()
    records = [(float(losses[i]), counts[i], batch["decode"](best[i, :int(frames[i])]), batch["references"][i])
               for i, keep in enumerate(rows) if keep]
    return sum(r[0] for r in records), sum(r[1] for r in records), records


def whisper_eval_batch(model: Any, batch: dict[str, Any], inputs: dict[str, Any],
                       rows: list[bool]) -> tuple[float, int, list[Any]]:
    """As ``ctc_eval_batch``; the transcript is ``generate``'s, greedy, with the labels' language and task."""
    from zoo.tasks._seq2seq_train import MARGIN, token_losses

    losses, kept = token_losses(model, inputs)
    own = getattr(model, "module", model)
    counts = kept.sum(1)
    # the prompt (start, language, task, no timestamps) and the new tokens share the decoder's positions
    room = int(own.config.max_target_positions) - (len(batch["prompt"]) + 2)
    generated = model.generate(input_features=inputs["input_features"], do_sample=False, num_beams=1,
                               max_new_tokens=min(room, int(counts.max()) + MARGIN), **batch["prompt"])
    records = [(float(losses[i].sum()), int(counts[i]), batch["decode"](generated[i].tolist()),
                batch["references"][i]) for i, keep in enumerate(rows) if keep]
    return sum(r[0] for r in records), sum(r[1] for r in records), records


def error_rates(references: list[str], hypotheses: list[str]) -> dict[str, float]:
    """Corpus word and character error rates (jiwer: edits over all reference words / characters)."""
    import jiwer

    return {"val_wer": float(jiwer.wer(references, hypotheses)), "val_cer": float(jiwer.cer(references, hypotheses))}


def metrics(records: list[Any]) -> dict[str, float]:
    return error_rates([r[3] for r in records], [r[2] for r in records])
