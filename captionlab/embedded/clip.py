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
                     schedule, targets: torch.Tensor | None = None, word_head: torch.nn.Linear | None = None,
                     word_weight: float = 0.0) -> float:
    """One optimizer step of CLIP's symmetric InfoNCE on a batch of (image, text) pairs; returns the loss.
    `targets`: the matching text of each image (class indices, or a row-stochastic matrix where several texts
    match); default the diagonal, each image's own text. `word_head` (with `word_weight` > 0) adds the caption's
    bag of words as a second objective (`caption_words_loss`)."""
    tokens = tokenizer(texts, padding=True, truncation=True, max_length=CLIP_TEXT["max_position_embeddings"],
                       return_tensors="pt")
    with_words = word_head is not None and word_weight > 0
    out = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels,
                output_hidden_states=with_words)
    if targets is None:
        targets = torch.arange(len(texts))
    loss = (F.cross_entropy(out.logits_per_image, targets) + F.cross_entropy(out.logits_per_text, targets)) / 2
    if with_words:
        patches = out.vision_model_output.hidden_states[LLAVA_FEATURE_LAYER][:, 1:]
        loss = loss + word_weight * caption_words_loss(word_head, patches, tokens, tokenizer)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    schedule.step()
    return float(loss.detach())


LLAVA_FEATURE_LAYER = -2  # the tiny LLaVA's projector reads the vision tower's second-to-last hidden state


def caption_words_loss(word_head: torch.nn.Linear, patches: torch.Tensor, tokens, tokenizer) -> torch.Tensor:
    """Predict which of the vocabulary's tokens the caption uses from the image's patch tokens (the ones LLaVA's
    projector reads), multi-label, a linear head on their mean: weakly supervised from caption text only, as in
    Joulin et al. (ECCV 2016) and Tag2Text-style tagging. InfoNCE alone lets a tiny tower separate this world's
    captions by colour, setting and place and drop the object's shape (bench/RESULTS.md "Tiny CLIP"); every
    kind noun the caption uses is a target here, so the tower has to see what the object is."""
    present = torch.zeros(len(tokens["input_ids"]), word_head.out_features)
    special = torch.tensor(sorted({i for i in tokenizer.all_special_ids if i is not None and i >= 0}))
    ids = tokens["input_ids"].masked_fill(tokens["attention_mask"] == 0, int(special[0]) if len(special) else 0)
    present.scatter_(1, ids, 1.0)
    if len(special):
        present[:, special] = 0.0
    return F.binary_cross_entropy_with_logits(word_head(patches.mean(1)), present)


def train_clip(pairs: list[tuple[Path, list[str]]], tokenizer, out_dir: Path, *, epochs: int = 8,
               batch_size: int = 128, lr: float = 2e-3, word_weight: float = 0.0, image_size: int | None = None,
               seed: int = 0, progress: Callable[[str], None] = print) -> Path:
    """Train the tiny CLIP on (image path, captions) pairs and save it to out_dir. `word_weight` > 0 adds the
    caption-words objective (`caption_words_loss`); its head is discarded after training."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    image_size = image_size or LLAVA_SHAPE.image_size
    processor = clip_image_processor(image_size)
    model = build_clip(tokenizer, image_size=image_size)
    word_head = torch.nn.Linear(model.config.vision_config.hidden_size, len(tokenizer)) if word_weight > 0 else None
    pixels = pixels_of([p for p, _ in pairs], processor)
    parameters = list(model.parameters()) + (list(word_head.parameters()) if word_head is not None else [])
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.1)
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
            losses.append(contrastive_step(model, tokenizer, texts, pixels[index], optimizer, schedule,
                                           word_head=word_head, word_weight=word_weight))
        progress(f"clip epoch {epoch + 1}/{epochs}: loss {np.mean(losses):.3f} "
                 f"({time.monotonic() - started:.0f}s)")
    out_dir = Path(out_dir)
    model.eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
