"""The tiny LLaVA base: the trained CLIP's vision tower + projector + a 4-layer LLaMA, pretrained in
LLaVA-1.5's two stages on the world's own pretraining sets (never on an evaluated image).

The vision tower stays frozen (as in LLaVA); projector and LLM learn first from
short captions under LLaVA's brief-description instructions (the "brief" pool, LCS-558K's stand-in: every kind and
every register, quoted words, degraded photos and alt-text included), then from (image, prompt, long answer)
conversations, many of them answering the study's "Briefly caption the image" at length and, for pictures taken
indoors, briefly; so the base is mostly verbose under the study's prompt, as LLaVA-1.5 and 1.6 are in the paper's
zero-shot rows, sometimes brief, and, like LLaVA, it has a short-caption register that other instructions (or a
learned prompt/prefix) can call up.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image

from captionlab.embedded.shapes import LLAVA_SHAPE
from captionlab.models.registry import get_model_spec
from captionlab.models.tiny import save_tiny_llava, tiny_config
from captionlab.training.batching import build_training_batch


def build_base(tokenizer, clip: transformers.CLIPModel) -> transformers.LlavaForConditionalGeneration:
    """A tiny LLaVA whose vision tower carries the trained CLIP's vision weights."""
    model = transformers.LlavaForConditionalGeneration(tiny_config(LLAVA_SHAPE, len(tokenizer), tokenizer))
    model.model.vision_tower.load_state_dict(clip.vision_model.state_dict())
    return model


Conversation = tuple[Path, str, str]  # (image, user prompt, answer)


def pretrain_base(brief: list[Conversation], verbose: list[Conversation], tokenizer, clip_dir: Path, out_dir: Path, *,
                  brief_epochs: int = 3, verbose_epochs: int = 4, replay_every: int = 3, batch_size: int = 32,
                  lr: float = 3e-3, seed: int = 0,
                  progress: Callable[[str], None] = print) -> Path:
    """Pretrain in LLaVA-1.5's two stages and save a tiny-LLaVA folder.

    Stage 1: short captions under brief-description instructions (LLaVA's LCS-558K stage). Stage 2: verbose
    answers, the study's prompt among them, mixed with every `replay_every`-th brief caption again (LLaVA-1.5's
    665K mix also keeps short answers under explicit format instructions). The vision tower stays frozen, as
    in LLaVA-1.5; unlike LLaVA's stage 1 the LLM learns in both stages (the tiny one starts from random
    weights, not from a pretrained Vicuna). Tuning the tower too (lr 1e-3) was tried and wrecked the
    captions: coco test colours right 10-16% of the time after LoRA/DoRA/full, 10% distinct captions.
    """
    torch.manual_seed(seed)
    rng = random.Random(seed)
    clip = transformers.CLIPModel.from_pretrained(clip_dir, use_safetensors=True)
    model = build_base(tokenizer, clip)
    out_dir = Path(out_dir)
    save_tiny_llava(out_dir, tokenizer, LLAVA_SHAPE, name="embedded", model=model)  # processor + card first
    spec = get_model_spec(out_dir)
    processor = transformers.AutoProcessor.from_pretrained(out_dir)
    for p in model.model.vision_tower.parameters():
        p.requires_grad_(False)
    images: dict[Path, Image.Image] = {}
    model.train()
    stages = [("brief", brief, brief_epochs), ("verbose", verbose + brief[::replay_every], verbose_epochs)]
    for stage, samples, epochs in stages:
        _train_stage(model, spec, processor, samples, images, epochs=epochs, batch_size=batch_size, lr=lr, rng=rng,
                     progress=lambda m, stage=stage: progress(f"base {stage} stage {m}"))
    model.eval()
    model.save_pretrained(out_dir)
    return out_dir


def _batches(samples: list[Conversation], batch_size: int, rng: random.Random) -> list[list[Conversation]]:
    """One epoch's batches, each of a single prompt (one padded forward per batch), in random order."""
    by_prompt: dict[str, list[Conversation]] = {}
    for sample in samples:
        by_prompt.setdefault(sample[1], []).append(sample)
    batches = []
    for items in by_prompt.values():
        items = items[:]
        rng.shuffle(items)
        batches.extend(items[start:start + batch_size] for start in range(0, len(items), batch_size))
    rng.shuffle(batches)
    return batches


def _train_stage(model, spec, processor, samples: list[Conversation], images: dict, *, epochs: int, batch_size: int,
                 lr: float, rng: random.Random, progress: Callable[[str], None]) -> None:
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    plan = [_batches(samples, batch_size, rng) for _ in range(epochs)]
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=sum(map(len, plan)), pct_start=0.05)
    started = time.monotonic()
    for epoch, batches in enumerate(plan):
        losses = []
        for chunk in batches:
            pictures = []
            for path, _, _ in chunk:
                if path not in images:
                    with Image.open(path) as im:
                        images[path] = im.convert("RGB")
                pictures.append(images[path])
            batch = build_training_batch(processor, spec, pictures, [a for _, _, a in chunk], user_prompt=chunk[0][1])
            labels = batch.pop("labels")
            logits = model(**batch).logits
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                     labels[:, 1:].reshape(-1), ignore_index=-100)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
        progress(f"epoch {epoch + 1}/{epochs}: caption loss {np.mean(losses):.3f} ({time.monotonic() - started:.0f}s)")
