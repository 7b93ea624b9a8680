"""The tiny CLIP: trained contrastively (InfoNCE, as CLIP) on the embedded world's images and captions.

Its vision tower has exactly the tiny LLaVA's vision-encoder shape, so the trained weights are
copied into the LLaVA (as LLaVA uses CLIP ViT-L). Saved in Hugging Face format with its tokenizer
and image processor, which is what `captionlab.evaluation.clipscore.HFClipEncoder` loads.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from PIL import Image

from captionlab.embedded.shapes import CLIP_PROJECTION_DIM, CLIP_TEXT, LLAVA_SHAPE


def clip_image_processor(image_size: int) -> transformers.CLIPImageProcessor:
    return transformers.CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        do_center_crop=True, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )


def build_clip(tokenizer, *, image_size: int | None = None, patch_size: int | None = None,
               width: int | None = None, layers: int | None = None, heads: int | None = None) -> transformers.CLIPModel:
    """A randomly initialised tiny CLIP; its vision tower has the tiny LLaVA's shape unless told otherwise (the
    probes in `bench/clip_probe.py` try other towers)."""
    shape = LLAVA_SHAPE
    width = width or shape.vision_hidden
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.eos_token_id, **CLIP_TEXT),
        vision_config=dict(hidden_size=width, intermediate_size=4 * width,
                           num_hidden_layers=layers or shape.vision_layers,
                           num_attention_heads=heads or shape.vision_heads,
                           image_size=image_size or shape.image_size, patch_size=patch_size or shape.patch_size,
                           hidden_act="quick_gelu"),
        projection_dim=CLIP_PROJECTION_DIM,
    )
    return transformers.CLIPModel(config)


def pixels_of(paths: list[Path], processor) -> torch.Tensor:
    """All images preprocessed once (the world fits in memory at 48 px)."""
    chunks = []
    for start in range(0, len(paths), 256):
        images = []
        for path in paths[start:start + 256]:
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
        chunks.append(processor(images=images, return_tensors="pt")["pixel_values"])
    return torch.cat(chunks)


def contrastive_step(model: transformers.CLIPModel, tokenizer, texts: list[str], pixels: torch.Tensor, optimizer,
                     schedule, targets: torch.Tensor | None = None) -> float:
    """One optimizer step of CLIP's symmetric InfoNCE on a batch of (image, text) pairs; returns the loss.
    `targets`: the matching text of each image (class indices, or a row-stochastic matrix where several texts
    match); default the diagonal, each image's own text."""
    tokens = tokenizer(texts, padding=True, truncation=True, max_length=CLIP_TEXT["max_position_embeddings"],
                       return_tensors="pt")
    out = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels)
    if targets is None:
        targets = torch.arange(len(texts))
    loss = (F.cross_entropy(out.logits_per_image, targets) + F.cross_entropy(out.logits_per_text, targets)) / 2
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    schedule.step()
    return float(loss.detach())


def train_clip(pairs: list[tuple[Path, list[str]]], tokenizer, out_dir: Path, *, epochs: int = 8,
               batch_size: int = 128, lr: float = 2e-3, seed: int = 0,
               progress: Callable[[str], None] = print) -> Path:
    """Train the tiny CLIP on (image path, captions) pairs and save it to out_dir."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    processor = clip_image_processor(LLAVA_SHAPE.image_size)
    model = build_clip(tokenizer)
    pixels = pixels_of([p for p, _ in pairs], processor)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    steps = epochs * math.ceil(len(pairs) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    started = time.monotonic()
    for epoch in range(epochs):
        order = list(range(len(pairs)))
        rng.shuffle(order)
        losses = []
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            texts = [rng.choice(pairs[i][1]) for i in index]
            # duplicates of a caption in a batch are rare enough to ignore: the diagonal targets
            losses.append(contrastive_step(model, tokenizer, texts, pixels[index], optimizer, schedule))
        progress(f"clip epoch {epoch + 1}/{epochs}: contrastive loss {np.mean(losses):.3f} "
                 f"({time.monotonic() - started:.0f}s)")
    out_dir = Path(out_dir)
    model.eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
