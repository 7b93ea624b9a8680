"""Turning (image, caption) pairs into model inputs with labels on the caption tokens only.

The loss is the paper's token-level cross-entropy on the caption: prompt, image, placeholder
and padding positions are labelled -100. Training batches are padded on the right.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from captionlab.models.prompting import build_prompt
from captionlab.models.registry import ZERO_SHOT_PROMPT, ModelSpec

IGNORE_INDEX = -100


def build_training_batch(processor, spec: ModelSpec, images: Sequence[Image.Image], captions: Sequence[str],
                         prefix_slots: int = 0, user_prompt: str = ZERO_SHOT_PROMPT) -> dict[str, torch.Tensor]:
    """Inputs for a batch of (image, caption) pairs: prompt + " " + caption + EOS, labels on the caption."""
    tokenizer = processor.tokenizer
    prompt = build_prompt(spec, user_prompt, prefix_slots, spec.family.prefix_placeholder(tokenizer))
    texts = [f"{prompt} {caption.strip()}{tokenizer.eos_token}" for caption in captions]
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        inputs = processor(images=[im.convert("RGB") for im in images], text=texts, return_tensors="pt", padding=True)
        prompt_only = processor(images=[images[0].convert("RGB")], text=[prompt], return_tensors="pt")
    finally:
        tokenizer.padding_side = previous_side
    # Every row starts with the same prompt when padded on the right (LLaVA-1.5: a fixed image-token count).
    # LLaVA-NeXT rows differ in image tokens, so count each row's prompt from its own image tokens.
    labels = inputs["input_ids"].clone()
    labels[inputs["attention_mask"] == 0] = IGNORE_INDEX
    image_id = tokenizer.convert_tokens_to_ids(spec.family.image_token)
    text_prompt_len = int((prompt_only["input_ids"][0] != image_id).sum())
    image_counts = (inputs["input_ids"] == image_id).sum(dim=1)
    for row in range(labels.shape[0]):
        labels[row, : text_prompt_len + int(image_counts[row])] = IGNORE_INDEX
    inputs["labels"] = labels
    return dict(inputs)
