"""Tiny LLaVA / LLaVA-NeXT models of the real transformers classes, saved in Hugging Face format.

Used by the tests (random weights) and as the architecture of the embedded model family. A tiny
model folder holds config.json, weights (safetensors), the tokenizer, the processor and a
`captionlab.json` card with its prompt template, so `get_model_spec(folder)` and `load_model`
treat it exactly like a real checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

from captionlab.models.families import family_for
from captionlab.models.registry import ZERO_SHOT_PROMPT

TINY_SYSTEM_PROMPT = "A chat between a curious human and an artificial intelligence assistant."
# Enough text for a tokenizer of random tiny models (tests, CPU benchmarks): the template and a few captions.
TINY_TEXTS = [
    "A chat between a curious human and an artificial intelligence assistant.",
    "USER: <image>\nBriefly caption the image ASSISTANT:",
    "a red ball on the grass", "two blue cups on a kitchen table", "a small tree next to a house",
    "The image shows a vibrant scene with a large red ball in the center of a green park.",
] * 10


@dataclass(frozen=True)
class TinyShape:
    """Sizes of a tiny model. Defaults are for unit tests; the embedded model uses larger ones."""

    image_size: int = 32
    patch_size: int = 8
    vision_hidden: int = 32
    vision_layers: int = 2
    vision_heads: int = 2
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_intermediate: int = 128
    projection_dim: int = 32


def tiny_config(shape: TinyShape, vocab_size: int, tokenizer, architecture: str = "llava") -> transformers.PretrainedConfig:
    vision = dict(
        model_type="clip_vision_model", hidden_size=shape.vision_hidden, intermediate_size=4 * shape.vision_hidden,
        num_attention_heads=shape.vision_heads, num_hidden_layers=shape.vision_layers, image_size=shape.image_size,
        patch_size=shape.patch_size, projection_dim=shape.projection_dim, hidden_act="quick_gelu",
    )
    text = dict(
        model_type="llama", hidden_size=shape.text_hidden, intermediate_size=shape.text_intermediate,
        num_attention_heads=shape.text_heads, num_key_value_heads=shape.text_heads,
        num_hidden_layers=shape.text_layers, vocab_size=vocab_size, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    common = dict(
        vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        projector_hidden_act="gelu", vision_feature_layer=-2, vision_feature_select_strategy="default",
        image_seq_length=(shape.image_size // shape.patch_size) ** 2, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return family_for(architecture).tiny_config(common, shape.image_size)


def tiny_processor(shape: TinyShape, tokenizer, architecture: str = "llava"):
    s = shape.image_size
    image_kwargs = dict(
        size={"shortest_edge": s}, crop_size={"height": s, "width": s}, do_center_crop=True,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    common = dict(patch_size=shape.patch_size, vision_feature_select_strategy="default", num_additional_image_tokens=1)
    return family_for(architecture).tiny_processor(tokenizer, image_kwargs, s, common)


def save_tiny_llava(out_dir: Path, tokenizer, shape: TinyShape = TinyShape(), architecture: str = "llava",
                    seed: int = 0, name: str = "tiny-llava", model: torch.nn.Module | None = None) -> Path:
    """Write a tiny model folder (random weights unless `model` is given) and return its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = family_for(architecture).tiny_tokenizer(tokenizer)
    if model is None:
        torch.manual_seed(seed)
        config = tiny_config(shape, len(tokenizer), tokenizer, architecture)
        model = family_for(architecture).model_class()(config)
    model.save_pretrained(out_dir)
    tiny_processor(shape, tokenizer, architecture).save_pretrained(out_dir)
    card = {
        "name": name,
        "system_prompt": TINY_SYSTEM_PROMPT,
        "prompt_template": family_for(architecture).prompt_template,
        "zero_shot_prompt": ZERO_SHOT_PROMPT,
        "lora": {"r": 8, "alpha": 16},
        "notes": "tiny model of the real transformers classes, made by captionlab",
    }
    (out_dir / "captionlab.json").write_text(json.dumps(card, indent=2))
    return out_dir
