"""Every registry entry builds (in shrunken form) through the real loading paths."""

from __future__ import annotations

import json

import pytest
import torch

from tests import tiny
from zoo import sources  # noqa: F401
from zoo.sources import load_processor
from zoo.tasks import get_task
from zoo.create import create_model
from zoo.errors import ConfigError, ModelUnavailableError
from zoo.registry import load_registry
from zoo.resolver import resolve

ALIASES = load_registry().names()


def test_every_registry_entry_has_a_shrunken_form(registry):
    """Guard: a new registry entry must come with a tiny form, or this fails."""
    missing = [a for a in registry.names()
               if (registry.get(a).source == "hf" and registry.get(a).arch not in tiny.HF_TINY)
               or (registry.get(a).source == "timm" and registry.get(a).arch not in tiny.TIMM_TINY)]
    assert not missing, f"registry entries without a tiny form in tests/tiny.py: {missing}"


@pytest.mark.parametrize("alias", ALIASES)
def test_registry_entry_builds_and_runs(alias, registry, tmp_path):
    spec, kwargs, pretrained = tiny.shrink(registry.get(alias), tmp_path / alias)
    model, preprocess = create_model(spec, pretrained=pretrained, model_kwargs=kwargs)
    task = get_task(spec.task)
    module = task.export_module(model, spec)
    token_ids_only = all(len(i.shape) == 2 for i in spec.inputs)  # a decoder's inputs include its KV cache
    with torch.no_grad():
        if task.modality == "text" and token_ids_only:
            feeds = {i.name: torch.ones(2, 9, dtype=torch.long) for i in spec.inputs}
            out = module(**feeds)
        elif task.modality in ("text", "audio") or [i.name for i in spec.inputs] != ["pixel_values"]:
            # the exporter's own example: synthetic clips, a cache, question/context windows, a dual encoder's texts
            example = task.export_example(spec, load_processor(spec))
            out = module(**{name: torch.from_numpy(array[:2]) for name, array in example.items()})
        else:
            out = module(pixel_values=torch.randn(2, *preprocess.input_size))
    if spec.task == "text-generation":  # (logits, present.0.key, ...): the logits cover the new tokens
        logits, *present = out
        assert len(present) == len([i for i in spec.inputs if i.name.startswith("past_key_values")])
        out = logits
    if spec.task == "object-detection":  # raw (logits, pred_boxes): one query set per picture
        logits, out = out
        assert logits.shape[:2] == out.shape[:2] and logits.shape[2] == len(spec.labels) + (spec.arch != "rt_detr")
        assert out.shape[2] == 4 and torch.isfinite(logits).all()
    if isinstance(out, tuple):  # several outputs (answer spans, a dual encoder's towers): each finite, batched
        assert len(out) >= 2 and all(o.shape[0] == 2 and torch.isfinite(o).all() for o in out), [o.shape for o in out]
        return
    assert out.shape[0] == 2
    if spec.task == "token-classification":
        assert out.shape[1] == 9 and out.shape[2] == len(spec.labels)
    elif spec.task.endswith("classification"):
        assert out.shape[1] == (len(spec.labels) if spec.labels else 1000)
    assert torch.isfinite(out).all()


def test_new_labels_give_a_new_head(tiny_text_classifier):
    spec = resolve(str(tiny_text_classifier))
    model, _ = create_model(spec, labels=["a", "b", "c"])
    assert model.config.num_labels == 3 and model.config.id2label[2] == "c"


def test_sentence_embedder_is_pooled_and_normalised(minilm_dir):
    model, _ = create_model(str(minilm_dir))
    ids = torch.tensor([[101, 7592, 2088, 102, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    emb = model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))
    assert emb.shape == (1, 384)
    assert torch.allclose(emb.norm(dim=1), torch.ones(1), atol=1e-5)


def test_timm_pretrained_offline_names_the_remedy(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelUnavailableError, match="--random-init"):
        create_model("timm:test_resnet.r160_in1k", pretrained=True)


def test_hf_alias_not_in_cache_names_the_remedy(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelUnavailableError, match="local save_pretrained folder"):
        create_model("bert-base", pretrained=False)


def test_timm_random_init_needs_no_network():
    model, preprocess = create_model("timm:test_vit", pretrained=False)
    assert preprocess.input_size == (3, 160, 160)
    assert isinstance(model, torch.nn.Module)


def test_remote_code_is_refused_unless_opted_in(tiny_text_classifier, tmp_path):
    import shutil

    folder = tmp_path / "custom"
    shutil.copytree(tiny_text_classifier, folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "my-custom-arch"
    config["auto_map"] = {"AutoConfig": "configuration_custom.CustomConfig",
                          "AutoModelForSequenceClassification": "modeling_custom.CustomModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_custom.py").write_text("raise SystemExit('remote code must not run')\n")
    with pytest.raises(ConfigError, match="trust_remote_code"):
        create_model(str(folder))


def test_save_and_reload_timm_folder_keeps_labels_and_weights(tiny_timm_folder, tmp_path):
    spec = resolve(str(tiny_timm_folder))
    model, _ = create_model(spec)
    out = tmp_path / "again"
    sources.for_spec(spec).save_model(model, spec, out)
    again, _ = create_model(str(out))
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    assert resolve(str(out)).labels == ("cat", "dog", "bird")


def test_folder_without_tokenizer_files_is_refused(tiny_text_classifier, tmp_path):
    """transformers 5 would build an empty tokenizer here; training and export must refuse instead."""
    import shutil

    from zoo.sources import load_processor

    folder = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_text_classifier, folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(ModelUnavailableError, match="no tokenizer files.*save_pretrained"):
        load_processor(resolve(str(folder)))
    assert load_processor(resolve(str(tiny_text_classifier))).is_fast
