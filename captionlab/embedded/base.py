"""The tiny LLaVA base: the trained CLIP's vision tower + projector + a 4-layer LLaMA, pretrained
on the world's verbose descriptions (our stand-in for LLaVA's own instruction tuning).

The vision tower stays frozen (as in LLaVA); projector and LLM learn from (image, prompt, long
answer) conversations, most of them answering "Briefly caption the image" at length, so the base
is as verbose as the real MLLMs are in the paper's zero-shot rows.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image

from captionlab.embedded.shapes import LLAVA_SHAPE
from captionlab.models.prompting import build_prompt
from captionlab.models.registry import get_model_spec
from captionlab.models.tiny import save_tiny_llava, tiny_config
from captionlab.training.batching import build_training_batch


def build_base(tokenizer, clip: transformers.CLIPModel) -> transformers.LlavaForConditionalGeneration:
    """A tiny LLaVA whose vision tower carries the trained CLIP's vision weights."""
    model = transformers.LlavaForConditionalGeneration(tiny_config(LLAVA_SHAPE, len(tokenizer), tokenizer))
    model.model.vision_tower.load_state_dict(clip.vision_model.state_dict())
    return model


def pretrain_base(conversations: list[tuple[Path, str, str]], tokenizer, clip_dir: Path, out_dir: Path, *,
                  epochs: int = 6, batch_size: int = 32, lr: float = 3e-3, seed: int = 0,
                  progress: Callable[[str], None] = print) -> Path:
    """Pretrain on (image, user prompt, verbose answer) triples and save a tiny-LLaVA folder."""
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
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    steps = epochs * math.ceil(len(conversations) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.05)
    images = {}
    started = time.monotonic()
    model.train()
    for epoch in range(epochs):
        order = list(range(len(conversations)))
        rng.shuffle(order)
        losses = []
        for start in range(0, len(order), batch_size):
            chunk = [conversations[i] for i in order[start:start + batch_size]]
            by_prompt: dict[str, list] = {}
            for path, prompt, answer in chunk:
                by_prompt.setdefault(prompt, []).append((path, answer))
            optimizer.zero_grad(set_to_none=True)
            total_tokens = 0
            batches = []
            for prompt, items in by_prompt.items():
                pictures = []
                for path, _ in items:
                    if path not in images:
                        with Image.open(path) as im:
                            images[path] = im.convert("RGB")
                    pictures.append(images[path])
                batch = build_training_batch(processor, spec, pictures, [a for _, a in items], user_prompt=prompt)
                total_tokens += int((batch["labels"][:, 1:] != -100).sum())
                batches.append(batch)
            loss_sum = 0.0
            for batch in batches:
                labels = batch.pop("labels")
                logits = model(**batch).logits
                loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                         labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum")
                (loss / total_tokens).backward()
                loss_sum += float(loss)
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            schedule.step()
            losses.append(loss_sum / total_tokens)
        progress(f"base epoch {epoch + 1}/{epochs}: caption loss {np.mean(losses):.3f} ({time.monotonic() - started:.0f}s)")
    model.eval()
    model.save_pretrained(out_dir)
    return out_dir


def sample_answer(folder: Path, image, prompt: str = "Briefly caption the image", max_new_tokens: int = 80) -> str:
    """Greedy answer of a saved base (a quick look at what pretraining produced)."""
    spec = get_model_spec(folder)
    processor = transformers.AutoProcessor.from_pretrained(folder)
    model = transformers.LlavaForConditionalGeneration.from_pretrained(folder, use_safetensors=True).eval()
    inputs = processor(images=[image], text=[build_prompt(spec, prompt)], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
