"""Sizes of the embedded models: small enough to personalise in minutes on 2 CPU cores."""

from __future__ import annotations

from captionlab.models.tiny import TinyShape

# The tiny LLaVA: a 48 px CLIP-style vision tower (36 patches of 8 px) and a 4-layer LLaMA.
LLAVA_SHAPE = TinyShape(
    image_size=48, patch_size=8, vision_hidden=128, vision_layers=4, vision_heads=4,
    text_hidden=128, text_layers=4, text_heads=4, text_intermediate=384, projection_dim=128,
)
VOCAB_SIZE = 1024
CLIP_TEXT = {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 3, "num_attention_heads": 4,
             "max_position_embeddings": 64}
CLIP_PROJECTION_DIM = 128
