"""Linear probes of a tiny-CLIP variant: does its vision tower tell object kinds, colours and settings apart?

    CAPTIONLAB_HOME=workspace python -m bench.clip_probe --image-size 96 --patch 16 --epochs 6   # train + probe
    CAPTIONLAB_HOME=workspace python -m bench.clip_probe --load checkpoints/embedded/clip          # probe only
    CAPTIONLAB_HOME=workspace python -m bench.clip_probe --pixels --image-size 48                  # raw pixels

Trains the CLIP on exactly the zoo's pairs (coco train + both pretraining pools; no evaluation image), with the
zoo's options or others (`--words W`: the caption-words objective), then probes it with
`captionlab.embedded.probe.probe_vision_tower`: a logistic regression on the patch tokens LLaVA's projector
reads, fitted on coco train + the brief pool, scoring the main object's kind on coco val+test and each other
benchmark, colour and setting on coco, the written word on TextCaps. Each result is appended to
$CAPTIONLAB_HOME/clip_probes.jsonl. Needs the world (`python -m train zoo --only world`) and the shipped tokenizer.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from PIL import Image

from captionlab.embedded.clip import build_clip, contrastive_step
from captionlab.embedded.probe import load_u8, normalise, probe_vision_tower



def shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to max_shift pixels (edge-replicated), per image; no flips (captions say left/right)."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def probe_clip(tokenizer, a) -> transformers.CLIPModel:
    """The tiny CLIP with the tower the options ask for."""
    return build_clip(tokenizer, image_size=a.image_size, patch_size=a.patch, width=a.width, layers=a.layers,
                      heads=a.heads)


def train(model, tokenizer, images: torch.Tensor, captions: list[list[str]], a, say) -> None:
    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    word_head = torch.nn.Linear(model.config.vision_config.hidden_size, len(tokenizer)) if a.words > 0 else None
    parameters = list(model.parameters()) + (list(word_head.parameters()) if word_head is not None else [])
    optimizer = torch.optim.AdamW(parameters, lr=a.lr, weight_decay=0.1)
    per_epoch = math.ceil(len(images) / a.batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=a.lr, total_steps=a.epochs * per_epoch,
                                                   pct_start=a.warmup)
    started = time.monotonic()
    model.train()
    groups = caption_groups(captions) if a.hard else None
    for epoch in range(a.epochs):
        order = hard_order(groups, len(images), a.batch, rng) if a.hard else list(range(len(images)))
        if not a.hard:
            rng.shuffle(order)
        losses = []
        for start in range(0, len(order), a.batch):
            index = order[start:start + a.batch]
            texts = [rng.choice(captions[i]) for i in index]
            if a.kind_views:  # some texts say only which kinds the caption names: kind is then what matches
                texts = [kind_view(t) if rng.random() < a.kind_views else t for t in texts]
            pixels = shift(normalise(images[index]), a.shift, gen)
            targets = None
            if a.dedup:  # identical captions in a batch are positives of each other, not negatives
                same = torch.tensor([[s == t for t in texts] for s in texts], dtype=torch.float32)
                targets = same / same.sum(1, keepdim=True)
            losses.append(contrastive_step(model, tokenizer, texts, pixels, optimizer, schedule, targets,
                                           word_head=word_head, word_weight=a.words))
        say(f"epoch {epoch + 1}/{a.epochs}: loss {np.mean(losses):.3f} ({time.monotonic() - started:.0f}s)")


def kind_view(caption: str) -> str:
    """The kinds a caption names, in its order, as a short text ("a bird and a cup"); the caption when it names
    none. Text-side only: read from the caption's words, not from the scene."""
    from captionlab.world.vocabulary import KIND_SYNONYMS, PLURALS, with_article

    nouns = {}
    for kind, synonyms in KIND_SYNONYMS.items():
        for noun in set(synonyms) | {PLURALS.get(kind, kind + "s")}:
            nouns[noun] = kind
    words = caption.lower().replace(".", " ").replace(",", " ").split()
    found = []
    for i in range(len(words)):
        for span in (2, 1):
            noun = " ".join(words[i:i + span])
            if noun in nouns and nouns[noun] not in found:
                found.append(nouns[noun])
                break
    return " and ".join(with_article(k) for k in found) if found else caption


SETTING_WORDS = {"beach": ("beach", "sand", "sea"), "park": ("park", "grass"), "street": ("street", "road"),
                 "kitchen": ("kitchen",), "snow": ("snow",), "night": ("night", "starry", "dark"),
                 "room": ("room", "floor"), "lake": ("lake", "water")}


def caption_groups(captions: list[list[str]]) -> dict[tuple, list[int]]:
    """Images grouped by what their first caption says of colour and setting (text only, no scene labels)."""
    from captionlab.world.vocabulary import COLOURS

    groups: dict[tuple, list[int]] = {}
    for i, caps in enumerate(captions):
        words = caps[0].lower().replace(".", " ").replace(",", " ").split()
        colour = next((w for w in words if w in COLOURS), None)
        setting = next((s for s, keys in SETTING_WORDS.items() if any(k in words for k in keys)), None)
        if colour and setting:
            groups.setdefault((colour, setting), []).append(i)
    return groups


def hard_order(groups, n: int, batch: int, rng: random.Random) -> list[int]:
    """Batches whose first half shares a caption's colour and setting (so only kind, count and place tell those
    apart) and whose second half is random (so colours and settings are still contrasted)."""
    half = batch // 2
    pools = [g[:] for g in groups.values() if len(g) >= half]
    order: list[int] = []
    while len(order) < n:
        pool = rng.choice(pools)
        order.extend(rng.sample(pool, half))
        order.extend(rng.sample(range(n), batch - half))
    return order[:n]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--load", help="probe a saved CLIP folder instead of training one")
    p.add_argument("--image-size", type=int, default=48)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=float, default=0.1)
    p.add_argument("--shift", type=int, default=0)
    p.add_argument("--dedup", action="store_true")
    p.add_argument("--hard", action="store_true")
    p.add_argument("--kind-views", type=float, default=0.0,
                   help="share of training texts replaced by the kinds their caption names (use with --dedup)")
    p.add_argument("--words", type=float, default=0.0,
                   help="weight of the caption-words objective (captionlab.embedded.clip.caption_words_loss)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layer", type=int, default=-2, help="hidden state probed (LLaVA's projector reads -2)")
    p.add_argument("--untrained", action="store_true", help="probe a randomly initialised tower (no training)")
    p.add_argument("--pixels", action="store_true", help="probe the raw pixels at --image-size (no model)")
    p.add_argument("--name", default=None)
    p.add_argument("--save", help="save the trained CLIP here")
    a = p.parse_args()
    name = a.name or f"{a.image_size}px-p{a.patch}-w{a.width}-l{a.layers}-e{a.epochs}-lr{a.lr}-s{a.shift}" \
                     f"{'-dedup' if a.dedup else ''}{'-hard' if a.hard else ''}" \
                     f"{f'-kindviews{a.kind_views}' if a.kind_views else ''}{f'-words{a.words}' if a.words else ''}"
    say = lambda m: print(f"[{name} {time.strftime('%H:%M:%S')}] {m}", flush=True)  # noqa: E731
    from captionlab import paths
    from captionlab.embedded.tokenizers import clip_tokenizer_from
    from captionlab.zoo import _world_texts_and_pairs, world_config

    tokenizer = clip_tokenizer_from(transformers.AutoTokenizer.from_pretrained(
        paths.PROJECT_ROOT / "checkpoints" / "embedded" / "tokenizer"))
    started = time.monotonic()
    if a.load:
        model = transformers.CLIPModel.from_pretrained(a.load, use_safetensors=True)
        vision = model.config.vision_config
        a.image_size, a.patch, a.width, a.layers = vision.image_size, vision.patch_size, vision.hidden_size, \
            vision.num_hidden_layers
    elif a.pixels or a.untrained:
        torch.manual_seed(a.seed)
        model = None if a.pixels else probe_clip(tokenizer, a)
    else:
        _, pairs, _ = _world_texts_and_pairs()
        images = load_u8([p for p, _ in pairs], a.image_size)
        say(f"{len(pairs)} training images loaded ({time.monotonic() - started:.0f}s)")
        model = probe_clip(tokenizer, a)
        train(model, tokenizer, images, [c for _, c in pairs], a, say)
        del images
        if a.save:
            model.save_pretrained(a.save)
    train_seconds = time.monotonic() - started
    result = {**vars(a), "name": name, "train_seconds": round(train_seconds),
              **probe_vision_tower(model, world_config().parent, a.image_size, pixels=a.pixels, layer=a.layer)}
    say(json.dumps(result))
    with open(paths.workspace() / "clip_probes.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    main()
