"""Whisper greedy transcription: zoo's two-graph runtime against transformers eager ``generate``, and real time.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_asr.py [--repeats 5] [--tokens 64]

A random Whisper the size of openai/whisper-tiny (d_model 384, 4 + 4 layers, 6 heads, FFN 1536,
80 mel bins, vocabulary 51,865; the tokenizer is the test suite's tiny one, so ids are compared,
not text) is saved once into ``--work`` (default ``$ZOO_CACHE/benchmarks/asr``) and exported there
with ``zoo export``; reruns reuse both. Both engines transcribe the same 30 s clip (English,
``transcribe``, no timestamps) greedily for ``--tokens`` new tokens, and the run asserts they chose
the same ids. Decode rate: new tokens per second of a whole transcription (features given, the
encoder once, then the decoder per token), at 1 and 2 threads (torch's and onnxruntime's intra-op
threads). Real-time factor: zoo's whole ``predict`` on the clip (reading, log-mel in numpy, both
graphs) over the clip's 30 s, at 1 and 2 threads.
The engines take turns within each repeat (the machine may be shared: load moves both alike) and
the median repeat is reported. Writes benchmarks/results/asr.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from machine import machine_info

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WHISPER_TINY_SIZE = dict(d_model=384, encoder_layers=4, decoder_layers=4, encoder_attention_heads=6,
                         decoder_attention_heads=6, encoder_ffn_dim=1536, decoder_ffn_dim=1536, vocab_size=51865,
                         max_target_positions=448)
SECONDS = 30.0
THREADS = (1, 2)


def build(work: Path) -> tuple[Path, Path]:
    """The random Whisper-tiny-sized folder and its zoo artifact, made once."""
    from tests.tiny import tiny_whisper_folder

    folder, artifact = work / "whisper", work / "artifact"
    if not (folder / "config.json").is_file():
        tiny_whisper_folder(folder, spread=False, **WHISPER_TINY_SIZE)
    if not (artifact / "manifest.json").is_file():
        from exporters.onnx import export_onnx

        export_onnx(str(folder), out=artifact, progress=lambda stage: print(f"  export: {stage}", flush=True))
    return folder, artifact


def clip_file(work: Path) -> Path:
    import numpy as np
    import soundfile

    from zoo.tasks._audio import synthetic_clip

    path = work / "clip-30s.wav"
    if not path.is_file():
        rng = np.random.default_rng(0)
        soundfile.write(path, np.concatenate([synthetic_clip(2.0, 16000, rng) for _ in range(15)]), 16000)
    return path


def decode_rate(folder: Path, artifact: Path, clip: Path, tokens: int, repeats: int) -> dict[str, Any]:
    import torch
    import transformers

    import zoo

    hf = transformers.WhisperForConditionalGeneration.from_pretrained(folder).eval()
    loops = {threads: zoo.load(artifact, threads=threads)._loop for threads in THREADS}  # the Whisper generators
    features = loops[1].preprocessor([str(clip)]).arrays["input_features"]

    def transformers_generate(threads: int) -> list[int]:
        torch.set_num_threads(threads)
        with torch.no_grad():
            out = hf.generate(torch.from_numpy(features), language="en", task="transcribe", max_new_tokens=tokens)
        return out[0].tolist()

    def zoo_generate(threads: int) -> list[int]:
        return [int(t) for t in loops[threads].tokens(features, "en", "transcribe", tokens)[0]]

    turns = [(engine, threads) for threads in THREADS for engine in ("transformers", "zoo")]
    times: dict[tuple[str, int], list[float]] = {turn: [] for turn in turns}
    outputs: dict[tuple[str, int], list[int]] = {}
    for _ in range(repeats + 1):  # the first round warms both up and is not counted
        for engine, threads in turns:
            function = transformers_generate if engine == "transformers" else zoo_generate
            start = time.perf_counter()
            outputs[engine, threads] = function(threads)
            times[engine, threads].append(time.perf_counter() - start)
    assert len({tuple(o) for o in outputs.values()}) == 1, "zoo and transformers chose different greedy tokens"
    new = len(outputs["zoo", 1])
    result: dict[str, Any] = {"new_tokens": new}
    for threads in THREADS:
        rate = {engine: new / statistics.median(times[engine, threads][1:]) for engine in ("transformers", "zoo")}
        result[f"{threads} threads"] = {"tokens_per_s": rate, "speedup": rate["zoo"] / rate["transformers"]}
        print(f"decode, {threads} threads: {new} new tokens; transformers {rate['transformers']:.1f} tok/s, zoo "
              f"{rate['zoo']:.1f} tok/s: {rate['zoo'] / rate['transformers']:.2f}x", flush=True)
    return result


def real_time(artifact: Path, clip: Path, tokens: int, repeats: int) -> dict[str, Any]:
    import zoo

    models = {threads: zoo.load(artifact, threads=threads) for threads in THREADS}
    times: dict[int, list[float]] = {threads: [] for threads in THREADS}
    for _ in range(repeats + 1):
        for threads, model in models.items():
            start = time.perf_counter()
            model.predict(str(clip), language="en", task="transcribe", max_new_tokens=tokens)
            times[threads].append(time.perf_counter() - start)
    factor = {f"{threads} threads": statistics.median(values[1:]) / SECONDS for threads, values in times.items()}
    print("real-time factor (30 s clip): " + ", ".join(f"{k} {v:.3f}" for k, v in factor.items()), flush=True)
    return factor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    cache = Path(os.environ.get("ZOO_CACHE", Path.home() / ".cache" / "zoo"))
    parser.add_argument("--work", type=Path, default=cache / "benchmarks" / "asr")
    args = parser.parse_args()
    folder, artifact = build(args.work)
    clip = clip_file(args.work)
    decode = decode_rate(folder, artifact, clip, args.tokens, args.repeats)
    factor = real_time(artifact, clip, args.tokens, args.repeats)
    result = {"benchmark": "whisper greedy transcription", "model": "random Whisper, whisper-tiny sized",
              "max_new_tokens": args.tokens, "repeats": args.repeats, "decode": decode,
              "real_time_factor": factor, "machine": machine_info(),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    out = Path(__file__).parent / "results" / "asr.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
