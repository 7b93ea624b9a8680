"""Linear probes of a tiny-CLIP variant: does its vision tower tell object kinds, colours and settings apart?

    CAPTIONLAB_HOME=workspace python -m bench.clip_probe --image-size 96 --patch 16 --epochs 6   # train + probe
    CAPTIONLAB_HOME=workspace python -m bench.clip_probe --load checkpoints/embedded/clip          # probe only
    CAPTIONLAB_HOME=workspace python -m bench.clip_probe --pixels --image-size 48                  # raw pixels

Trains the CLIP on exactly the zoo's pairs (coco train + both pretraining pools; no evaluation image), then fits
a multinomial logistic regression on features of the 3000 coco train images and scores it on the 500 coco
val+test images, for three labels read from the world's scenes: the first object's kind (14), its colour, the
setting. Features: "llava" = the patch tokens of the layer LLaVA feeds its projector (hidden_states[-2],
flattened, what the LLM sees), "embed" = CLIP's projected image embedding. The first object is one of up to
three groups, so "kind1" also scores the single-group images and "kindany" whether the predicted kind is in
the picture at all. Each result is appended to $CAPTIONLAB_HOME/clip_probes.jsonl. Needs the world
(`python -m train zoo --only world`) and the shipped tokenizer.
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



def load_u8(paths: list[Path], size: int) -> torch.Tensor:
    """Images resized (bicubic, as CLIPImageProcessor) to size, uint8 NCHW."""
    out = torch.empty(len(paths), 3, size, size, dtype=torch.uint8)
    for i, path in enumerate(paths):
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BICUBIC)
            out[i] = torch.from_numpy(np.array(im)).permute(2, 0, 1)
    return out


def normalise(u8: torch.Tensor) -> torch.Tensor:
    return (u8.float() / 255.0 - 0.5) / 0.5


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
    optimizer = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.1)
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
            losses.append(contrastive_step(model, tokenizer, texts, pixels, optimizer, schedule, targets))
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


@torch.no_grad()
def features(model, images: torch.Tensor, layer: int = -2) -> dict[str, torch.Tensor]:
    model.eval()
    feats = {"llava": [], "embed": []}
    for start in range(0, len(images), 250):
        pixels = normalise(images[start:start + 250])
        out = model.vision_model(pixel_values=pixels, output_hidden_states=True)
        patches = out.hidden_states[layer][:, 1:]
        feats["llava"].append(patches.flatten(1))
        feats["embed"].append(model.visual_projection(out.pooler_output))
    return {k: torch.cat(v) for k, v in feats.items()}


def probe(train_x, train_y, test_x, classes: int) -> torch.Tensor:
    """Multinomial logistic regression (full-batch L-BFGS); its L2 strength picked on the last 500 train rows
    (never on the test rows), then refitted on all train rows."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std

    def fit(x, y, l2):
        w = torch.zeros(x.shape[1], classes, requires_grad=True)
        b = torch.zeros(classes, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], lr=1, max_iter=100, history_size=10, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(x @ w + b, y) + l2 * (w ** 2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        return w.detach(), b.detach()

    fit_x, fit_y, hold_x, hold_y = train_x[:-500], train_y[:-500], train_x[-500:], train_y[-500:]

    def holdout(l2):
        w, b = fit(fit_x, fit_y, l2)
        return float(((hold_x @ w + b).argmax(1) == hold_y).float().mean())

    best = max((1e-3, 1e-2), key=holdout)
    w, b = fit(train_x, train_y, best)
    return (test_x @ w + b).argmax(1)


def labels(split: str, n: int) -> dict[str, list[str]]:
    from captionlab.world.domains import make_example

    out = {"kind": [], "colour": [], "setting": [], "kinds": []}
    for i in range(n):
        scene = make_example("coco", split, i, 0).scene
        out["kinds"].append(set(scene.kinds()))
        out["kind"].append(scene.objects[0].kind)
        out["colour"].append(scene.objects[0].colour)
        out["setting"].append(scene.setting)
    return out


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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layer", type=int, default=-2, help="hidden state probed (LLaVA's projector reads -2)")
    p.add_argument("--untrained", action="store_true", help="probe a randomly initialised tower (no training)")
    p.add_argument("--pixels", action="store_true", help="probe the raw pixels at --image-size (no model)")
    p.add_argument("--name", default=None)
    p.add_argument("--save", help="save the trained CLIP here")
    a = p.parse_args()
    name = a.name or f"{a.image_size}px-p{a.patch}-w{a.width}-l{a.layers}-e{a.epochs}-lr{a.lr}-s{a.shift}" \
                     f"{'-dedup' if a.dedup else ''}{'-hard' if a.hard else ''}" \
                     f"{f'-kindviews{a.kind_views}' if a.kind_views else ''}"
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
    root = world_config().parent
    coco = json.loads((root / "annotations" / "dataset_coco.json").read_text())["images"]
    by_split = {s: [root / "images" / "coco" / im["filepath"] / im["filename"] for im in coco if im["split"] == s]
                for s in ("train", "val", "test")}
    fit_images = load_u8(by_split["train"], a.image_size)
    eval_images = load_u8(by_split["val"] + by_split["test"], a.image_size)
    if a.pixels:  # the reference: the same probe on the raw pixels the tower is given
        fit_feats = {"llava": normalise(fit_images).flatten(1)}
        eval_feats = {"llava": normalise(eval_images).flatten(1)}
    else:
        fit_feats, eval_feats = features(model, fit_images, a.layer), features(model, eval_images, a.layer)
    fit_labels = labels("train", len(by_split["train"]))
    val, test = labels("val", len(by_split["val"])), labels("test", len(by_split["test"]))
    eval_labels = {k: val[k] + test[k] for k in fit_labels}
    result = {**vars(a), "name": name, "train_seconds": round(train_seconds)}
    single = torch.tensor([len(k) == 1 for k in eval_labels["kinds"]])
    for target, feats in (("kind", ("llava", "embed")), ("colour", ("llava",)), ("setting", ("llava", "embed"))):
        names = sorted(set(fit_labels[target]))
        ytr = torch.tensor([names.index(v) for v in fit_labels[target]])
        yte = torch.tensor([names.index(v) for v in eval_labels[target]])
        for feat in (f for f in feats if f in fit_feats):
            predicted = probe(fit_feats[feat], ytr, eval_feats[feat], len(names))
            result[f"{target}/{feat}"] = round(float((predicted == yte).float().mean()), 3)
            if target == "kind":  # the first group is one of up to 3: also score single-group images, and
                # whether the predicted kind is in the picture at all
                result[f"kind1/{feat}"] = round(float((predicted == yte)[single].float().mean()), 3)
                result[f"kindany/{feat}"] = round(float(np.mean([names[int(k)] in present for k, present
                                                                 in zip(predicted, eval_labels["kinds"])])), 3)
    say(json.dumps(result))
    with open(paths.workspace() / "clip_probes.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    main()
