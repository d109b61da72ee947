"""Encoder-decoder greedy decoding: zoo's two-graph runtime against transformers eager ``generate``.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_seq2seq.py [--repeats 5] [--threads 1] [--tokens 64]

A random Marian the size of opus-mt-en-de (d_model 512, 6 + 6 layers, 8 heads, FFN 2048,
vocabulary 58,101; the MiniLM tokenizer makes the ids) is saved once into ``--work``
(default ``$ZOO_CACHE/benchmarks/seq2seq``) and exported there with ``zoo export``; reruns
reuse both. Both engines get the same texts (a batch of one and a batch of four), decode
greedily (``num_beams=1``, ``do_sample=False``) for ``--tokens`` new tokens at most, and the
run asserts they chose the same ids. Times cover a whole generation (the encoder once, then
the decoder per token); tokens/s counts the new tokens of all rows. The engines take turns
within each repeat (the machine may be shared: load moves both alike), the median repeat is
reported, and both run on ``--threads`` intra-op threads. Writes benchmarks/results/seq2seq.json.
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

MARIAN = dict(d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8, decoder_attention_heads=8,
              encoder_ffn_dim=2048, decoder_ffn_dim=2048, max_position_embeddings=512, vocab_size=58101,
              pad_token_id=0, eos_token_id=102, decoder_start_token_id=0, forced_eos_token_id=None)
TEXTS = ["The weather in the mountains changed quickly, and the climbers turned back before the storm arrived.",
         "A new library opened downtown.", "She sold the old piano to a neighbour who had always admired it.",
         "Trains to the airport leave every fifteen minutes during the day."]


def build(work: Path) -> tuple[Path, Path]:
    """The random Marian folder and its zoo artifact, made once."""
    import torch
    import transformers

    from tests.tiny import minilm_dir

    folder, artifact = work / "marian", work / "artifact"
    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        model = transformers.MarianMTModel(transformers.MarianConfig(**MARIAN))
        model.save_pretrained(folder)
        transformers.AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(folder)
    if not (artifact / "manifest.json").is_file():
        from exporters.onnx import export_onnx

        export_onnx(str(folder), out=artifact, progress=lambda stage: print(f"  export: {stage}", flush=True))
    return folder, artifact


def run(folder: Path, artifact: Path, threads: int, tokens: int, repeats: int) -> dict[str, Any]:
    import torch
    import transformers

    import zoo

    torch.set_num_threads(threads)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    hf = transformers.MarianMTModel.from_pretrained(folder).eval()
    ours = zoo.load(artifact, threads=threads)
    rows: dict[str, Any] = {}
    for batch in (1, 4):
        texts = TEXTS[:batch]
        encoded = tokenizer(texts, padding=True, return_tensors="pt", return_token_type_ids=False)

        def transformers_generate() -> list[list[int]]:
            with torch.no_grad():
                out = hf.generate(**encoded, num_beams=1, do_sample=False, max_new_tokens=tokens, min_new_tokens=0)
            return [_cut(row[1:], MARIAN["eos_token_id"]) for row in out.tolist()]

        def zoo_generate() -> list[list[int]]:
            return [list(g.token_ids) for g in ours.generate(texts, max_new_tokens=tokens, num_beams=1)]

        times: dict[str, list[float]] = {"transformers": [], "zoo": []}
        outputs: dict[str, list[list[int]]] = {}
        for _ in range(repeats + 1):  # the first round warms both up and is not counted
            for name, function in (("transformers", transformers_generate), ("zoo", zoo_generate)):
                start = time.perf_counter()
                outputs[name] = function()
                times[name].append(time.perf_counter() - start)
        assert outputs["zoo"] == outputs["transformers"], "zoo and transformers chose different greedy tokens"
        new = sum(len(row) for row in outputs["zoo"])
        rate = {name: new / statistics.median(values[1:]) for name, values in times.items()}
        rows[f"batch {batch}"] = {"new_tokens": new, "tokens_per_s": rate, "speedup": rate["zoo"] / rate["transformers"]}
        print(f"batch {batch}: {new} new tokens; transformers {rate['transformers']:.1f} tok/s, zoo {rate['zoo']:.1f} "
              f"tok/s: {rate['zoo'] / rate['transformers']:.2f}x", flush=True)
    return rows


def _cut(row: list[int], eos: int) -> list[int]:
    return row[:row.index(eos)] if eos in row else row  # zoo's token_ids leave EOS (and the padding after) out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=64)
    cache = Path(os.environ.get("ZOO_CACHE", Path.home() / ".cache" / "zoo"))
    parser.add_argument("--work", type=Path, default=cache / "benchmarks" / "seq2seq")
    args = parser.parse_args()
    folder, artifact = build(args.work)
    rows = run(folder, artifact, args.threads, args.tokens, args.repeats)
    result = {"benchmark": "seq2seq greedy decode", "model": "random Marian, opus-mt-en-de sized", "threads":
              args.threads, "max_new_tokens": args.tokens, "repeats": args.repeats, "rows": rows,
              "machine": machine_info(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    out = Path(__file__).parent / "results" / "seq2seq.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
