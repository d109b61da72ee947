"""Which kind of input a transformers model takes, from its ``model_type`` alone (no transformers import).

Describing a folder reads only JSON files, so the modality cannot come from
transformers' auto mappings; these sets name the vision and audio model types
transformers ships, and everything else is text.
"""

from __future__ import annotations

IMAGE_MODEL_TYPES = frozenset({
    "beit", "bit", "conditional_detr", "convnext", "convnextv2", "cvt", "d_fine", "data2vec-vision",
    "deformable_detr", "deit", "detr", "dinat", "dinov2", "dinov2_with_registers", "dinov3_convnext",
    "dinov3_vit", "dit", "efficientformer", "efficientnet", "focalnet", "hiera", "ijepa", "levit",
    "mobilenet_v1", "mobilenet_v2", "mobilevit", "mobilevitv2", "nat", "poolformer", "pvt", "pvt_v2",
    "regnet", "resnet", "rt_detr", "rt_detr_v2", "rt_detr_resnet", "segformer", "swiftformer", "swin",
    "swinv2", "table-transformer", "textnet", "timm_backbone", "timm_wrapper", "van", "vit", "vit_hybrid",
    "vit_mae", "vit_msn", "vitdet", "yolos", "deta", "dab-detr",
    # dense prediction: semantic segmentation and depth
    "upernet", "mask2former", "dpt", "depth_anything",
})
AUDIO_MODEL_TYPES = frozenset({
    "audio-spectrogram-transformer", "data2vec-audio", "hubert", "sew", "sew-d", "unispeech",
    "unispeech-sat", "wav2vec2", "wav2vec2-bert", "wav2vec2-conformer", "wavlm", "whisper", "clap_audio_model",
})


def hf_modality(model_type: str) -> str:
    """text | image | audio for a transformers ``model_type``."""
    if model_type in IMAGE_MODEL_TYPES:
        return "image"
    if model_type in AUDIO_MODEL_TYPES:
        return "audio"
    return "text"
