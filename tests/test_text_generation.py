"""text-generation: causal LMs claimed, exported as one decoder graph with a KV cache, verified step by step,
and generated from without torch.

Tiny random Llama (grouped-query attention: 4 heads, 2 KV heads) and GPT-2 (learned absolute positions)
from tests/tiny.py, exported once per module with one grid seed; the Qwen2 export is marked slow.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests import tiny
from zoo.errors import InputError, UnsupportedTaskError

PROMPTS = ["The capital of France is", "Once upon a time, in a small village by the sea, there lived", "Hi"]


def _tiny(registry, alias: str, folder: Path):
    spec, _, _ = tiny.shrink(registry.get(alias), folder)
    return spec


def _export(spec, out: Path):
    from exporters.onnx import export_onnx

    with pytest.MonkeyPatch.context() as patch:
        import exporters.source

        patch.setattr(exporters.source, "SEEDS", (0,))  # one seed: every case kind, a third of the time
        return export_onnx(spec, out=out)


@pytest.fixture(scope="module")
def llama(tmp_path_factory, registry):
    root = tmp_path_factory.mktemp("tiny-llama")
    spec = _tiny(registry, "smollm2-135m", root / "model")
    return spec, _export(spec, root / "artifact")


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory, registry):
    root = tmp_path_factory.mktemp("tiny-gpt2")
    spec = _tiny(registry, "gpt2", root / "model")
    return spec, _export(spec, root / "artifact")


def _hf_greedy(folder: Path, prompts: list[str], new: int) -> list[list[int]]:
    """transformers' own greedy continuation of left-padded prompts, cut before EOS."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, padding_side="left")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    encoded = tokenizer(prompts, padding=True, return_tensors="pt", return_token_type_ids=False)
    with torch.no_grad():
        out = model.generate(**encoded, do_sample=False, max_new_tokens=new, pad_token_id=0)
    rows = out[:, encoded["input_ids"].shape[1]:].tolist()
    eos = model.generation_config.eos_token_id
    return [row[:row.index(eos)] if eos in row else row for row in rows]


# ---------------------------------------------------------------- the task claims causal LMs


def test_causal_lm_folders_are_text_generation_with_their_cache_layout(tmp_path, registry):
    from zoo.resolver import resolve_folder

    llama = resolve_folder(tiny.tiny_hf_folder(registry.get("smollm2-135m"), tmp_path / "llama"))
    gpt2 = resolve_folder(tiny.tiny_hf_folder(registry.get("gpt2"), tmp_path / "gpt2"))
    assert llama.task == gpt2.task == "text-generation"  # LlamaForCausalLM and GPT2LMHeadModel
    names = [i.name for i in llama.inputs]
    assert names[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert names[3:] == ["past_key_values.0.key", "past_key_values.0.value", "past_key_values.1.key",
                         "past_key_values.1.value"]
    # grouped-query attention: 2 KV heads of 8 dims, not the 4 query heads
    assert llama.inputs[3].shape == ("batch", 2, "past_sequence", 8)
    assert gpt2.inputs[3].shape == ("batch", 2, "past_sequence", 16)
    assert llama.preprocess.max_length == 256


def test_a_seq2seq_model_is_text2text_and_one_no_task_handles_is_refused():
    from zoo.tasks import task_for_hf_config

    t5 = task_for_hf_config({"architectures": ["T5ForConditionalGeneration"], "model_type": "t5",
                             "is_encoder_decoder": True})
    assert t5.name == "text2text-generation"
    with pytest.raises(UnsupportedTaskError, match="SpeechT5ForSpeechToText .a sequence-to-sequence encoder-decoder"):
        task_for_hf_config({"architectures": ["SpeechT5ForSpeechToText"], "model_type": "speecht5",
                            "is_encoder_decoder": True})


def test_the_manifest_records_the_chat_template_and_generation_defaults(tmp_path, registry):
    from zoo.sources import load_processor
    from zoo.tasks.text_generation import generation_record

    spec = _tiny(registry, "qwen2.5-0.5b", tmp_path / "qwen2")
    tokenizer = load_processor(spec)
    record = generation_record(spec, tokenizer, Path(spec.local_path))
    assert record["chat_template"] == tiny.CHAT_TEMPLATE
    # what a template writes as bos_token / eos_token: the tokenizer's strings, as transformers passes them
    assert (record["bos_token"], record["eos_token"]) == (tokenizer.bos_token or "", tokenizer.eos_token or "")
    assert record["eos_token_ids"] == [102] and record["pad_token_id"] == 0
    assert record["kv_cache"] == {"layers": 2, "kv_heads": 2, "head_dim": 8, "dtype": "float32",
                                  "layout": "batch, kv_heads, sequence, head_dim"}
    assert record["context_length"] == 256


# ---------------------------------------------------------------- export and verification


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_export_verifies_decode_steps_and_greedy_generation(family, request):
    from exporters.golden import golden_sets, read_golden
    from exporters.verify import verify_artifact

    _, result = request.getfixturevalue(family)
    checks = {c.name: c for c in result.report.checks}
    assert result.report.passed, result.report.summary()
    assert result.exporter == "dynamo"
    assert checks["prefill + decode steps (own cache)"].value == "18 steps on 2 batches"
    assert checks["greedy generation vs transformers"].value == "3/3 identical"
    manifest = json.loads((result.path / "manifest.json").read_text())
    generation = manifest["preprocess"]["generation"]
    assert generation["eos_token_ids"] == [102] and generation["kv_cache"]["layers"] == 2
    shapes = {i["name"]: i["shape"] for i in manifest["inputs"]}
    assert shapes["attention_mask"] == ["batch", "total_sequence"]  # past + new tokens, inferred by the exporter
    assert shapes["past_key_values.1.value"][0] == "batch" and shapes["past_key_values.1.value"][2] == "past_sequence"
    assert [o["name"] for o in manifest["outputs"]][:2] == ["logits", "present.0.key"]
    # the golden data holds a decode step on a non-empty cache, and zoo verify replays it
    decode = [s for s in golden_sets(result.path) if read_golden(s)[0]["input_ids"].shape[1] == 1]
    assert decode and read_golden(decode[0])[0]["past_key_values.0.key"].shape[2] > 0
    assert read_golden(decode[0])[1]["present.0.key"].shape[2] == read_golden(decode[0])[0][
        "past_key_values.0.key"].shape[2] + 1
    assert verify_artifact(result.path).passed


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_the_decoder_graph_is_fused_where_onnxruntime_has_the_operators(family, request):
    """Llama's norms, rotary embeddings and attention become onnxruntime's operators, GPT-2's attention too
    (its LayerNorm and learned positions have no rule here), each verified like the plain graph: the checks
    above and test_runtime_greedy_equals_transformers_generate run on the fused graphs."""
    import onnx

    _, result = request.getfixturevalue(family)
    fusion = json.loads((result.path / "manifest.json").read_text())["preprocess"]["generation"]["fusion"]
    ops = {n.op_type for n in onnx.load(str(result.path / "model.onnx"), load_external_data=False).graph.node
           if n.domain == "com.microsoft"}
    # heads of 8: the rotary stays outside the attention (the kernel turns multiples of 16), q/k/v and gate/up are
    # each one MatMul + Split
    fused = {"llama": {"SkipSimplifiedLayerNormalization": 4, "RotaryEmbedding": 4, "GroupQueryAttention": 2,
                       "packed MatMul + Split": 4},
             "gpt2": {"GroupQueryAttention": 2}}[family]
    assert fusion == {"fused": fused, "kept": "fused"}
    assert result.manifest.graph == {"form": "fused", "recipe": "decoder", "fusions": fused}
    # the packings are counts of rewritten MatMuls, not operators; GPT-2 gains a FusedMatMul too
    assert set(fused) - {"packed MatMul + Split"} <= ops and result.manifest.export_notes == ()


def test_zoo_bench_refuses_a_text_generation_artifact_in_one_line(llama, capsys):
    from zoo.cli import main

    with pytest.raises(SystemExit) as done:
        main(["bench", str(llama[1].path)])
    err = capsys.readouterr().err
    assert done.value.code == 1 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "text-generation" in err and "bench_generate.py" in err


@pytest.mark.slow
def test_qwen2_exports_verifies_and_chats_like_transformers(tmp_path, registry):
    import torch
    import transformers

    import zoo

    spec = _tiny(registry, "qwen2.5-0.5b", tmp_path / "model")
    result = _export(spec, tmp_path / "artifact")
    assert result.report.passed, result.report.summary()
    assert result.manifest.preprocess["generation"]["chat_template"] == tiny.CHAT_TEMPLATE
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
    reply = zoo.load(result.path).chat(messages, max_new_tokens=12)
    tokenizer = transformers.AutoTokenizer.from_pretrained(spec.local_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(spec.local_path).eval()
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, do_sample=False, max_new_tokens=12, pad_token_id=0)
    want = out[0, ids["input_ids"].shape[1]:].tolist()
    assert list(reply.token_ids) == (want[:want.index(102)] if 102 in want else want)
    assert reply.prompt_tokens == ids["input_ids"].shape[1]


@pytest.mark.slow
@pytest.mark.parametrize("alias,attention", [
    ("mistral-7b", "packed QKV, rotary in GroupQueryAttention"),
    ("phi-3-mini", "packed QKV, rotary in GroupQueryAttention"),  # its q/k/v weight is one already: sliced
    ("gemma-2b", "packed QKV, rotary in GroupQueryAttention"),  # one KV head for four query heads
    ("qwen3-0.6b", "RotaryEmbedding"),  # an RMS norm on q and k comes between the projection and the rotary
    ("gemma-3-1b", "RotaryEmbedding"),  # the same
    ("gemma-2-2b", None),  # soft-capped attention scores: onnxscript's attention rule does not match them
])
def test_the_other_families_export_fused_and_generate_like_transformers(tmp_path, registry, alias, attention):
    """Mistral, Phi-3, Gemma 1-3 and Qwen3 as their registry entries name them, tiny: verified (grid, decode steps,
    greedy generation; prompts and generations past the 8-token sliding windows), fused, and the runtime's greedy
    tokens are transformers'."""
    import zoo

    spec = _tiny(registry, alias, tmp_path / "model")
    result = _export(spec, tmp_path / "artifact")
    assert result.report.passed, result.report.summary()
    fusion = result.manifest.preprocess["generation"]["fusion"]
    assert fusion["kept"] == "fused", fusion
    if attention is None:
        assert "GroupQueryAttention" not in fusion["fused"] and fusion["fused"]["RotaryEmbedding"] == 4, fusion
    else:
        assert fusion["fused"]["GroupQueryAttention"] == 2 and attention in fusion["fused"], fusion
    got = zoo.load(result.path).generate(PROMPTS, max_new_tokens=12)
    assert [list(r.token_ids) for r in got] == _hf_greedy(Path(spec.local_path), PROMPTS, 12)


def test_chat_templates_render_as_transformers_renders_them(tmp_path, registry):
    from zoo.runtime.chat import render_chat
    from zoo.sources import load_processor

    spec = _tiny(registry, "qwen2.5-0.5b", tmp_path / "qwen2")
    tokenizer = load_processor(spec)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Héllo {{ 7*7 }}"},
                {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Again"}]
    for prompt in (True, False):
        assert render_chat(tiny.CHAT_TEMPLATE, messages, add_generation_prompt=prompt) == \
            tokenizer.apply_chat_template(messages, add_generation_prompt=prompt, tokenize=False)
    assert "{{ 7*7 }}" in render_chat(tiny.CHAT_TEMPLATE, messages)  # content is data, never template code


def test_the_template_sandbox_refuses_what_a_template_must_not_do():
    from zoo.runtime.chat import render_chat

    hostile = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(Exception, match="unsafe|not safely|access to attribute"):
        render_chat(hostile, [{"role": "user", "content": "hi"}])
    refusing = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}ok"
    with pytest.raises(InputError, match="chat template refused these messages: user first"):
        render_chat(refusing, [{"role": "system", "content": "x"}])


@pytest.mark.parametrize("messages,message", [
    ([{"role": "wizard", "content": "hi"}], "message 0 has role 'wizard'; valid roles: system, user, assistant"),
    ([{"role": "user"}], "message 0 is not"),
    ("Hello", "chat takes a non-empty list of messages"),
    ([], "chat takes a non-empty list of messages"),
])
def test_bad_chat_messages_are_one_clear_error(messages, message):
    from zoo.runtime.chat import check_messages

    with pytest.raises(InputError, match=message):
        check_messages(messages)


def test_a_model_without_a_chat_template_says_so(llama):
    import zoo

    with pytest.raises(InputError, match="this model has no chat template"):
        zoo.load(llama[1].path).chat([{"role": "user", "content": "hi"}])


class _DropsTheCache:
    """Planted fault: the graph looks only at the new tokens, as if the cache were empty."""

    def run(self, input_ids, attention_mask, position_ids, past):
        new = input_ids.shape[1]
        empty = [(k[:, :, :0], v[:, :, :0]) for k, v in past]  # still inputs of the graph, never read
        return super().run(input_ids, attention_mask[:, -new:], position_ids, empty)


class _PositionsIgnorePadding:
    """Planted fault: positions count from the first column, padding included (the wrong offset).

    Planted on GPT-2: its learned absolute positions see the offset. Rotary embeddings (Llama) depend only on
    the distance between tokens, so a constant offset per row leaves their outputs unchanged (not a fault)."""

    def run(self, input_ids, attention_mask, position_ids, past):
        import torch

        start = attention_mask.shape[1] - input_ids.shape[1]
        wrong = position_ids * 0 + torch.arange(start, attention_mask.shape[1])
        return super().run(input_ids, attention_mask, wrong, past)


@pytest.mark.parametrize("fault,family", [(_DropsTheCache, "llama"), (_PositionsIgnorePadding, "gpt2")])
def test_planted_decoder_faults_are_refused(fault, family, request, tmp_path):
    """A graph that drops the cache, or puts left-padded tokens at the wrong positions, matches its own torch
    module case by case (the grid passes) but not transformers step by step: verification refuses it."""
    from exporters.onnx import export_with
    from exporters.source import build_source
    from exporters.verify import verify_model
    from zoo.tasks._generate_torch import DecoderWithCache, decoder_module

    spec, _ = request.getfixturevalue(family)
    source = build_source(spec, seeds=(0,))
    planted = decoder_module(source.module.model, 2, type("Planted", (fault, DecoderWithCache), {}))
    path = tmp_path / "model.onnx"
    export_with("dynamo", planted, spec, source.example, path)
    report, _ = verify_model(planted, spec, path, source.cases)
    checks = {c.name: c for c in report.checks}
    assert checks["shape grid"].passed and checks["output logits"].passed  # a single forward cannot tell
    assert not checks["prefill + decode steps (own cache)"].passed
    assert not report.passed
    if fault is _DropsTheCache:
        assert "step 1" in checks["prefill + decode steps (own cache)"].detail  # the prompt itself is right
    else:
        assert "prefill" in checks["prefill + decode steps (own cache)"].detail


def test_a_near_tie_is_told_apart_from_a_real_difference():
    from zoo.spec import Tolerances
    from zoo.tasks._generate_verify import near_tie

    tol = Tolerances(atol=1e-4, rtol=1e-3)
    assert near_tie(np.array([1.0, 5.0, 5.0 + 1e-3]), tol)[0]  # 1e-3 apart, within 1e-4 + 1e-3 * 5
    assert not near_tie(np.array([1.0, 5.0, 5.5]), tol)[0]



def test_the_cache_goes_in_by_the_name_the_model_takes_it():
    """transformers 5.25 renamed a causal LM's cache argument to ``cache`` and drops ``past_key_values`` in 5.40:
    the decoder zoo traces and its step checks call the model by the name its forward takes, on either side."""
    import warnings

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from zoo.tasks._generate_torch import cache_argument, decoder_module, input_names

    class OldSpelling(LlamaForCausalLM):  # a forward that only knows the old name, as transformers 4.x
        def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                    use_cache=None):
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   cache=past_key_values, use_cache=use_cache)

    config = LlamaConfig(**tiny.HF_TINY["llama"])
    new, old = LlamaForCausalLM(config).eval(), OldSpelling(config).eval()
    old.load_state_dict(new.state_dict())
    assert (cache_argument(new), cache_argument(old)) == ("cache", "past_key_values")
    layers, heads, dim = config.num_hidden_layers, config.num_key_value_heads, config.head_dim
    inputs = {"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.ones(1, 3, dtype=torch.int64),
              "position_ids": torch.arange(3)[None]}
    inputs |= {n: torch.zeros(1, heads, 0, dim) for n in input_names(layers)[3:]}
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the deprecated name is never passed
        outputs = [decoder_module(m, layers)(**inputs) for m in (new, old)]
    torch.testing.assert_close(outputs[0][0], outputs[1][0])
    assert outputs[0][1].shape == (1, heads, 3, dim)  # the grown cache came back under either name


# ---------------------------------------------------------------- the torch-free runtime


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_runtime_greedy_equals_transformers_generate(family, request):
    import zoo

    spec, result = request.getfixturevalue(family)
    model = zoo.load(result.path)
    got = model.generate(PROMPTS, max_new_tokens=24)
    want = _hf_greedy(Path(spec.local_path), PROMPTS, 24)
    assert [list(r.token_ids) for r in got] == want
    for result_row, row in zip(got, want):
        assert result_row.completion_tokens == len(row)
        assert result_row.finish_reason == ("length" if len(row) == 24 else "stop")
    assert got[2].prompt_tokens == 3  # [CLS] hi [SEP]: padding is not counted


def test_sampling_is_seeded_and_stop_strings_end_the_text(llama):
    import zoo

    _, result = llama
    model = zoo.load(result.path)
    options = dict(max_new_tokens=12, temperature=0.9, top_k=40, top_p=0.9, repetition_penalty=1.2)
    first = model.generate(PROMPTS[:2], seed=7, **options)
    assert first == model.generate(PROMPTS[:2], seed=7, **options)
    assert first != model.generate(PROMPTS[:2], seed=8, **options)
    greedy = model.generate(PROMPTS[0], max_new_tokens=12)[0]
    stop = greedy.text.split()[1] if len(greedy.text.split()) > 1 else greedy.text[1:3]
    stopped = model.generate(PROMPTS[0], max_new_tokens=12, stop=[stop])[0]
    assert stopped.finish_reason == "stop" and stop not in stopped.text
    assert greedy.text.startswith(stopped.text)


def _decoders():
    """Three kinds of tokenizer decoding: WordPiece (MiniLM's, with its cleanup of spaces before punctuation),
    byte-level BPE (GPT-2 / SmolLM2: a token may carry half a character) and SentencePiece-style byte fallback
    (Llama: '<0xE2>' tokens, a leading space stripped)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    wordpiece = Tokenizer.from_file(str(tiny.minilm_dir() / "tokenizer.json"))
    text = ["naïve café crème brûlée, 東京 and 🙂🚲 — déjà vu; l'été. " * 3, "The bicycle's pedals: 1,2,3!"]
    bytelevel = Tokenizer(models.BPE())
    bytelevel.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bytelevel.decoder = decoders.ByteLevel()
    bytelevel.train_from_iterator(text, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"<0x{b:02X}>": 3 + b for b in range(256)}
    words = ["▁", "▁the", "▁bi", "cycle", "▁caf", "é"] + [chr(c) for c in range(0x21, 0x7F)]  # ASCII: no bytes
    vocab |= {w: len(vocab) + i for i, w in enumerate(words)}
    fallback = Tokenizer(models.BPE(vocab, [], unk_token="<unk>", byte_fallback=True))
    fallback.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    fallback.add_special_tokens(["<s>", "</s>"])
    fallback.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                          decoders.Strip(" ", 1, 0)])
    return {"wordpiece": wordpiece, "bytelevel": bytelevel, "fallback": fallback}


@pytest.mark.parametrize("kind", ["wordpiece", "bytelevel", "fallback"])
def test_the_text_grows_by_decoding_only_the_last_tokens(kind):
    """After every token the text is what decoding all of them gives, half characters and cleanups included,
    while each step decodes a few tokens only (decoding them all each step grows with the text)."""
    from types import SimpleNamespace

    from zoo.runtime.generate import Generator, _Row

    tokenizer = _decoders()[kind]
    decoded: list[int] = []

    class Counting:  # what each step hands the tokenizer
        def decode(self, ids, skip_special_tokens):
            decoded.append(len(ids))
            return tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    generator = SimpleNamespace(tokenizer=Counting(), eos=set())
    generator._text = lambda row: Generator._text(generator, row)
    rng = np.random.default_rng(0)
    text = "Naïve café owners in 東京 ride bicycles 🚲🙂, don't they? Yes: 1,234 of them. " * 3
    random = [rng.integers(0, tokenizer.get_vocab_size(), 150) for _ in range(3)]  # half characters galore
    # a run of byte tokens: a window cut inside it decodes to U+FFFD where the text has whole characters
    run = [tokenizer.token_to_id(t) for t in ["x", "<0xE0>", "<0xA7>", "<0x85>", "<0x45>", "<0x4F>", "<0x07>"]]
    for ids in [*random, *([run] if kind == "fallback" else []), tokenizer.encode(text).ids]:
        decoded.clear()
        row = _Row([])
        for token in ids:
            Generator._append(generator, row, int(token), limit=10_000, stops=[])
            assert row.text == tokenizer.decode(row.new, skip_special_tokens=True)
    # on a real text the whole is not decoded again at each step (n^2 / 2 tokens in all), the last few are
    assert len(ids) > 100 and sum(decoded) < len(ids) ** 2 / 8


@pytest.mark.parametrize("stop", [None, "stop"])
def test_stream_pieces_join_to_the_generated_text(llama, stop):
    import zoo

    model = zoo.load(llama[1].path)
    whole = model.generate(PROMPTS[1], max_new_tokens=16)[0].text
    stops = [whole.split()[3]] if stop else None  # a word the greedy text reaches, so the stop is hit
    expected = model.generate(PROMPTS[1], max_new_tokens=16, stop=stops)[0]
    pieces = list(model.stream(PROMPTS[1], max_new_tokens=16, stop=stops))
    assert "".join(pieces) == expected.text and len(pieces) > 1
    assert not stop or expected.finish_reason == "stop"


def test_stream_holds_back_half_characters_and_stop_string_starts():
    from zoo.runtime.generate import _certain

    assert _certain("caf\ufffd", []) == "caf"  # the rest of the UTF-8 sequence comes with the next token
    assert _certain("Hello\n", ["\n\n"]) == "Hello"  # may be the start of the stop string
    assert _certain("Hello\nWorld", ["\n\n"]) == "Hello\nWorld"
    assert _certain("the end", ["END", "ending"]) == "the "


def test_sampling_rules_in_numpy():
    """Repetition penalty moves a seen token's logit toward 'less likely' whatever its sign (greedy too);
    top_k=1 and a tiny top_p leave only the best token to sample."""
    from zoo.runtime.generate import Sampling

    rng = np.random.default_rng(0)
    logits = np.array([[2.0, 1.9, -1.0], [-1.0, -1.1, -3.0]])
    assert Sampling().choose(logits, [[0], [0]], rng).tolist() == [0, 0]
    assert Sampling(repetition_penalty=1.2).choose(logits, [[0], [0]], rng).tolist() == [1, 1]
    spread = np.zeros((1, 50))
    spread[0, 7] = 0.5
    for rule in (Sampling(temperature=1.0, top_k=1), Sampling(temperature=1.0, top_p=1e-3)):
        assert {int(rule.choose(spread, [[]], rng)[0]) for _ in range(20)} == {7}
    assert len({int(Sampling(temperature=1.0).choose(spread, [[]], rng)[0]) for _ in range(40)}) > 5


@pytest.mark.parametrize("options,message", [
    (dict(max_new_tokens=0), "max_new_tokens=0 must be a whole number >= 1"),
    (dict(temperature=-1.0), "temperature=-1.0 must be >= 0"),
    (dict(top_p=1.5), "top_p=1.5 must be in"),
    (dict(stop=[""]), "stop strings must be non-empty"),
    (dict(max_new_tokens=250), "passes the model's context length of 256 tokens"),
    (dict(beams=2), "do not apply to text-generation"),
])
def test_bad_generation_options_are_one_clear_error(llama, options, message):
    import zoo

    model = zoo.load(llama[1].path)
    with pytest.raises(InputError, match=message.replace("(", r"\(")) as caught:
        model.generate([PROMPTS[1]], **options)
    assert "\n" not in str(caught.value)


def test_a_prompt_past_the_context_is_told_its_whole_length(llama):
    """The runtime's tokenizer stops at the model's 256 tokens; the error counts the prompt the user gave."""
    import zoo

    model = zoo.load(llama[1].path)
    for special, prompt in ((True, "word " * 300), (False, "word " * 260)):
        cut_off = model._preprocess.tokenizer.encode(prompt, add_special_tokens=special).overflowing[0].ids
        with pytest.raises(InputError, match=f"prompt 0 has {300 + 2 if special else 260} tokens; "):
            list(model.generator().steps([prompt], max_new_tokens=4, special_tokens=special))
        assert cut_off  # the shared tokenizer itself does cut the prompt (and is left as it was)


def test_no_prompt_or_a_prompt_without_tokens_is_refused(gpt2):
    """A tokenizer that adds no special tokens (GPT-2's own) turns "" into a row of padding only; the tiny models'
    MiniLM tokenizer always adds [CLS] [SEP], so that row is made here directly."""
    from types import SimpleNamespace

    import zoo
    from zoo.runtime.generate import Generator

    model = zoo.load(gpt2[1].path)
    with pytest.raises(InputError, match="generate got no prompts"):
        model.generate([])
    rows = {"input_ids": np.array([[0, 0], [101, 102]]), "attention_mask": np.array([[0, 0], [1, 1]])}
    generator = Generator(model._session, model.manifest, model._preprocess)
    generator.preprocessor = lambda texts: SimpleNamespace(arrays=rows)
    with pytest.raises(InputError, match="prompt 0 makes no tokens"):
        generator.generate(["", "Hi"])


def test_predict_cli_prints_the_generated_text(gpt2):
    from typer.testing import CliRunner

    import zoo
    from zoo.cli import app

    _, result = gpt2
    expected = zoo.load(result.path).generate("Hi", max_new_tokens=64)[0]
    done = CliRunner().invoke(app, ["predict", str(result.path), "Hi", "--json"])
    assert done.exit_code == 0, done.output
    [row] = json.loads(done.output)
    assert row["input"] == "Hi" and row["token_ids"] == list(expected.token_ids)
    assert row["text"] == expected.text and row["finish_reason"] == expected.finish_reason


_PROBE = """
import sys, json
import zoo
out = zoo.load(sys.argv[1]).generate(["Hi", "The capital of France is"], max_new_tokens=4)
heavy = sorted(m for m in ("torch", "transformers") if m in sys.modules)
print(json.dumps({"heavy": heavy, "n": [r.completion_tokens for r in out]}))
"""


def test_generate_imports_no_torch(llama):
    done = subprocess.run([sys.executable, "-c", _PROBE, str(llama[1].path)], capture_output=True, text=True,
                          cwd=Path(__file__).parents[1], timeout=120)
    assert done.returncode == 0, done.stderr
    probe = json.loads(done.stdout.splitlines()[-1])
    assert probe["heavy"] == [] and len(probe["n"]) == 2


def test_the_cache_stays_in_onnxruntime_between_steps(llama, monkeypatch):
    """The steps read the cache as OrtValues, never numpy arrays: the fused graph's shared buffers, bound by the
    prefill call and once for all the decode steps."""
    import onnxruntime

    import zoo

    bound: list[str] = []
    original = onnxruntime.IOBinding.bind_ortvalue_input

    def spy(self, name, value):
        bound.append(name)
        return original(self, name, value)

    monkeypatch.setattr(onnxruntime.IOBinding, "bind_ortvalue_input", spy)
    cpu_inputs: list[str] = []
    original_cpu = onnxruntime.IOBinding.bind_cpu_input
    monkeypatch.setattr(onnxruntime.IOBinding, "bind_cpu_input",
                        lambda self, name, array: (cpu_inputs.append(name), original_cpu(self, name, array))[1])
    runs: list[int] = []
    original_run = onnxruntime.InferenceSession.run_with_iobinding
    monkeypatch.setattr(onnxruntime.InferenceSession, "run_with_iobinding",
                        lambda self, *a, **k: (runs.append(1), original_run(self, *a, **k))[1])
    result = zoo.load(llama[1].path).generate("Hi", max_new_tokens=5)[0]
    steps = result.completion_tokens + (result.finish_reason == "stop")  # an EOS is chosen after a step too
    assert len(runs) == steps >= 3 and bound.count("past_key_values.0.key") == 2
    assert not [n for n in cpu_inputs if n.startswith("past")]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_long_prompt_goes_in_chunks_and_generates_as_transformers(family, request, monkeypatch):
    """A prompt longer than PREFILL_CHUNK is run chunk by chunk on its own cache (bounded memory), left padding
    included (a short row's first chunks are all padding), and still continues token for token as transformers.
    GroupQueryAttention takes a chunk on a cache for one row at a time: rows wider than half of PREFILL_BATCH go
    one after another (a batch that fits goes in one call: tests/test_generate_fast.py)."""
    import onnxruntime

    import zoo
    from zoo.runtime import generate

    spec, result = request.getfixturevalue(family)
    monkeypatch.setattr(generate, "PREFILL_CHUNK", 4)
    monkeypatch.setattr(generate, "PREFILL_BATCH", 4)
    widths: list[int] = []
    original = onnxruntime.IOBinding.bind_cpu_input
    monkeypatch.setattr(onnxruntime.IOBinding, "bind_cpu_input", lambda self, name, array: (
        widths.append(array.shape[1]) if name == "input_ids" else None, original(self, name, array))[1])
    got = zoo.load(result.path).generate(PROMPTS, max_new_tokens=8)
    columns = max(r.prompt_tokens for r in got)
    chunks = [4] * (columns // 4) + ([columns % 4] if columns % 4 else [])
    rows = chunks * len(PROMPTS)
    assert len(chunks) > 2 and widths[:len(rows)] == rows and set(widths[len(rows):]) == {1}
    assert [list(r.token_ids) for r in got] == _hf_greedy(Path(spec.local_path), PROMPTS, 8)
