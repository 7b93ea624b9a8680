"""LLaVA-1.5 (`llava`): CLIP ViT-L/14-336 + a two-layer MLP projector + Vicuna, 576 image tokens per image."""

from __future__ import annotations

from captionlab.models.families.base import ModelFamily


class LlavaFamily(ModelFamily):
    architecture = "llava"
    model_class_name = "LlavaForConditionalGeneration"
    config_class_name = "LlavaConfig"
