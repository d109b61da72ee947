"""Name resolution: aliases, hf:/timm: ids, local folders, offline behaviour, suggestions."""

from __future__ import annotations

import json
import shutil

import pytest

from zoo.errors import ModelUnavailableError, NameNotFoundError
from zoo.resolver import resolve


def test_alias_needs_no_network_or_weights():
    spec = resolve("minilm-l6")
    assert spec.source == "hf" and spec.task == "feature-extraction"
    assert spec.preprocess.pooling == "mean" and spec.preprocess.normalize
    assert [i.name for i in spec.inputs] == ["input_ids", "attention_mask", "token_type_ids"]


def test_misspelt_alias_gets_suggestions():
    with pytest.raises(NameNotFoundError, match="did you mean 'resnet50'"):
        resolve("resnet5")


def test_org_name_without_prefix_is_told_to_use_hf():
    with pytest.raises(NameNotFoundError, match="hf:someorg/somemodel"):
        resolve("someorg/somemodel")


def test_missing_folder_is_named():
    with pytest.raises(NameNotFoundError, match="does not exist"):
        resolve("./no/such/folder")


def test_sentence_transformers_folder(minilm_dir):
    spec = resolve(str(minilm_dir))
    assert spec.task == "feature-extraction"
    assert spec.preprocess.pooling == "mean" and spec.preprocess.normalize
    assert spec.preprocess.max_length == 256  # sentence_bert_config.json, not the tokenizer's 512
    assert spec.local_path == str(minilm_dir.resolve())


def test_save_pretrained_classifier_folder(tiny_text_classifier):
    spec = resolve(str(tiny_text_classifier))
    assert spec.task == "text-classification"
    assert spec.labels == ("negative", "positive")
    assert spec.origin == "local"


def test_timm_folder(tiny_timm_folder):
    spec = resolve(str(tiny_timm_folder))
    assert spec.source == "timm" and spec.arch == "test_resnet"
    assert spec.labels == ("cat", "dog", "bird")
    assert spec.preprocess.input_size == (3, 160, 160)


def test_timm_id_fills_spec_from_pretrained_cfg():
    spec = resolve("timm:resnet50.a1_in1k")
    assert spec.preprocess.interpolation == "bicubic"
    assert spec.preprocess.crop_pct == 0.95
    assert spec.labels is not None and len(spec.labels) == 1000


def test_unknown_timm_id_suggests_close_architectures():
    with pytest.raises(NameNotFoundError, match="Did you mean resnet50"):
        resolve("timm:resnet50x")


def test_hf_id_offline_not_in_cache_names_the_remedy(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelUnavailableError, match="not in the local Hugging Face cache.*local save_pretrained"):
        resolve("hf:someone/not-cached")


def test_not_cached_message_names_the_hf_command_the_project_installs(tmp_path, monkeypatch):
    """Issue 22 defect 2: the message said `huggingface-cli download`, which huggingface_hub 1.x no longer ships.
    The command it names now exists beside this Python and parses as meant: hf's --include takes one pattern
    per flag (with 'hf download ID --include A B' the B is a file name and every --include is ignored)."""
    import shlex
    import subprocess
    import sys
    from pathlib import Path

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelUnavailableError) as caught:
        resolve("hf:someone/not-cached@v2")
    message = str(caught.value)
    assert "(hf download someone/not-cached --revision v2)" in message
    configs = "hf download someone/not-cached --revision v2 --include '*.json' --include '*.txt' --include '*.model'"
    assert configs in message
    hf = Path(sys.executable).parent / "hf"
    assert hf.is_file()
    done = subprocess.run([str(hf), *shlex.split(configs)[1:]], capture_output=True, text=True, timeout=60)
    # offline, it fails at the file listing of the revision (patterns), not at a file named '*.txt'
    assert "Ignoring `--include`" not in done.stderr and "revision/v2" in done.stdout + done.stderr, done.stderr
    sources = sorted(p for p in (Path(__file__).resolve().parents[1] / "zoo").rglob("*.py")
                     if "huggingface-cli" in p.read_text())
    assert not sources


def test_hf_id_resolves_offline_from_the_hub_cache(tmp_path, monkeypatch, minilm_dir):
    """Lay the MiniLM files out as huggingface_hub's cache does; resolution must find them offline."""
    cache = tmp_path / "hub"
    repo = cache / "models--sentence-transformers--all-MiniLM-L6-v2"
    commit = "0" * 40
    snapshot = repo / "snapshots" / commit
    shutil.copytree(minilm_dir, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    spec = resolve("hf:sentence-transformers/all-MiniLM-L6-v2")
    assert spec.source_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert spec.task == "feature-extraction" and spec.preprocess.pooling == "mean"
    assert spec.origin == "hf"
    pinned = resolve(f"hf:sentence-transformers/all-MiniLM-L6-v2@{commit}")
    assert pinned.revision == commit


def test_bad_hf_id_shape():
    with pytest.raises(NameNotFoundError, match="hf:ORG/NAME"):
        resolve("hf:a/b/c")


def test_folder_that_is_no_model(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(NameNotFoundError, match="not a model folder"):
        resolve(str(tmp_path))


def test_public_api_names_stay_the_functions_after_every_submodule_is_imported():
    """Issue 22 defect 3: importing the submodule zoo/resolve.py replaced the function ``zoo.resolve``."""
    import importlib
    import inspect
    import pkgutil

    import zoo

    submodules = {m.name for m in pkgutil.iter_modules(zoo.__path__)}
    assert not submodules & set(zoo.__all__), "a public name of zoo is also one of its submodules"
    for info in pkgutil.walk_packages(zoo.__path__, "zoo."):
        if info.name != "zoo.__main__":  # runs the CLI
            importlib.import_module(info.name)
    for name in zoo.__all__:
        value = getattr(zoo, name)
        assert not inspect.ismodule(value), name
        if name in zoo._LAZY:
            assert value is getattr(importlib.import_module(zoo._LAZY[name]), name), name
    spec = zoo.resolve("minilm-l6")
    assert spec.task == "feature-extraction"
