"""The six parts of the world: what each domain's scenes contain and how they are captioned.

A domain pairs a scene sampler (which kinds, settings, styles, words, degradations) with a
caption register from `captions.py`. `make_example` is a pure function of
(seed, domain, split, index), which is what makes the world reproducible byte for byte and
lets any single image be regenerated on its own (the app's gallery does that).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from captionlab.world import captions
from captionlab.names import DATASETS
from captionlab.world.scenes import Scene, held_out_combinations, sample_scene
from captionlab.world.vocabulary import (
    ALL_KINDS,
    COCO_KINDS,
    COLOURS,
    INDOOR_SETTINGS,
    NOVEL_KINDS,
    OUTDOOR_SETTINGS,
    SETTINGS,
)

BENCHMARKS: tuple[str, ...] = tuple(DATASETS)  # the benchmarks each world domain mirrors
DOMAINS: tuple[str, ...] = BENCHMARKS + ("pretrain", "brief")

# Images per (domain, split) at scale 1.0. The coco domain trains the personalised models;
# the other benchmarks are evaluated on their validation split, as in the paper.
SPLIT_SIZES: dict[str, dict[str, int]] = {
    "coco": {"train": 3000, "val": 250, "test": 250},
    "nocaps": {"val": 250},
    "cc3m": {"val": 250},
    "vizwiz": {"val": 250},
    "textcaps": {"val": 250},
    "pretrain": {"train": 3000},
    "brief": {"train": 3000},
}
MIN_IMAGES = 4  # even a tiny world has a few images per split

STUDY_PROMPT = "Briefly caption the image"  # the study's prompt (models.registry.ZERO_SHOT_PROMPT)
PRETRAIN_PROMPTS: tuple[str, ...] = (
    STUDY_PROMPT,
    STUDY_PROMPT,
    "Describe the image in detail.",
    "What is shown in this picture?",
    "Describe this image.",
)
# Stage-1 instructions of the brief-caption pool: LLaVA's own list for its 558K brief captions (LCS-558K).
# None of them is the study's prompt ("Briefly caption the image"), which the verbose stage keeps for itself.
BRIEF_PROMPTS: tuple[str, ...] = (
    "Describe the image concisely.",
    "Provide a brief description of the given image.",
    "Offer a succinct explanation of the picture presented.",
    "Summarize the visual content of the image.",
    "Give a short and clear explanation of the subsequent image.",
    "Share a concise interpretation of the image provided.",
    "Present a compact description of the photo's key features.",
    "Relay a brief, clear account of the picture shown.",
    "Render a clear and concise summary of the photo.",
    "Write a terse but informative summary of the picture.",
    "Create a compact narrative representing the image presented.",
)
# Flavours cycle with the index, so even a tiny pretraining set mixes them all.
PRETRAIN_FLAVOURS: tuple[str, ...] = (
    "photo", "text", "photo", "degraded", "sunset", "photo", "text", "illustration", "degraded", "photo",
)
BRIEF_ANSWER_SETTINGS = INDOOR_SETTINGS  # where the base answers the study's prompt briefly (answer_to_study_prompt)
HELD_OUT_EVERY = 4  # every 4th coco test image shows a held-out combination
VIZWIZ_SEVERE_EVERY = 5  # one vizwiz photo in 5 is too degraded to describe
VIZWIZ_REJECTED_EVERY = 7  # one vizwiz image in 7 has a caption rejected by quality control


@dataclass(frozen=True)
class Example:
    """One generated image's content and annotations.

    references: the captions (for pretrain: the one verbose answer; for brief: the one short caption).
    vizwiz_flags: (is_rejected, is_precanned) per reference, for vizwiz only.
    prompt: the human turn, for pretrain and brief only. nocaps_domain: in-/near-/out-domain, for nocaps.
    """

    domain: str
    split: str
    index: int
    scene: Scene
    references: tuple[str, ...]
    vizwiz_flags: tuple[tuple[bool, bool], ...] = ()
    prompt: str | None = None
    nocaps_domain: str | None = None


def split_sizes(scale: float) -> dict[str, dict[str, int]]:
    """Images per domain and split for a world of the given scale."""
    return {
        domain: {split: max(MIN_IMAGES, round(n * scale)) for split, n in splits.items()}
        for domain, splits in SPLIT_SIZES.items()
    }


def example_rng(seed: int, domain: str, split: str, index: int) -> random.Random:
    # String seeds are hashed with SHA-512 by `random`, independent of PYTHONHASHSEED.
    return random.Random(f"captionlab-world:{seed}:{domain}:{split}:{index}")


def make_example(domain: str, split: str, index: int, seed: int) -> Example:
    """Generate image `index` of `domain`/`split` for world `seed`."""
    rng = example_rng(seed, domain, split, index)
    return _MAKERS[domain](rng, split, index, seed)


def _coco(rng: random.Random, split: str, index: int, seed: int) -> Example:
    held_out = held_out_combinations(seed)
    if split == "train":
        scene = sample_scene(rng, COCO_KINDS, avoid=frozenset(held_out))
    elif split == "test" and index % HELD_OUT_EVERY == 0:
        scene = sample_scene(rng, COCO_KINDS, first=held_out[(index // HELD_OUT_EVERY) % len(held_out)])
    else:
        scene = sample_scene(rng, COCO_KINDS)
    return Example("coco", split, index, scene, tuple(captions.coco_references(scene, rng, 5)))


def nocaps_domain_of(scene: Scene) -> str:
    """nocaps' split of images by how many of their objects COCO knows."""
    novel = [kind in NOVEL_KINDS for kind in scene.kinds()]
    if not any(novel):
        return "in-domain"
    return "out-domain" if all(novel) else "near-domain"


def _nocaps(rng: random.Random, split: str, index: int, seed: int) -> Example:
    draw = rng.random()
    if draw < 0.2:  # like real nocaps, a share of images has only COCO objects
        scene = sample_scene(rng, COCO_KINDS)
    elif draw < 0.6:
        scene = sample_scene(rng, NOVEL_KINDS)
    else:
        # Near-domain: novel and COCO objects together; resample the single-object draws.
        for _ in range(50):
            scene = sample_scene(rng, ALL_KINDS, must_include=NOVEL_KINDS)
            if nocaps_domain_of(scene) == "near-domain":
                break
    refs = captions.coco_references(scene, rng, 10)
    return Example("nocaps", split, index, scene, tuple(refs), nocaps_domain=nocaps_domain_of(scene))


def _cc3m(rng: random.Random, split: str, index: int, seed: int) -> Example:
    style = rng.choices(("photo", "sunset", "illustration"), weights=(50, 25, 25))[0]
    settings = OUTDOOR_SETTINGS if style == "sunset" else SETTINGS
    scene = sample_scene(rng, ALL_KINDS, settings, style=style, max_groups=2)
    return Example("cc3m", split, index, scene, (captions.alt_text(scene, rng),))


def _vizwiz(rng: random.Random, split: str, index: int, seed: int) -> Example:
    # Blind users photograph everyday things, mostly indoors.
    settings = INDOOR_SETTINGS if rng.random() < 0.7 else SETTINGS
    word = "label" if rng.random() < 0.2 else None
    # Fixed strides rather than coin flips, so even a 4-image world has a severe photo
    # (precanned captions) and a rejected caption, as every real VizWiz split does.
    scene = sample_scene(
        rng, ALL_KINDS, settings, with_word=word, degradations=rng.choice((1, 1, 2)),
        severe=index % VIZWIZ_SEVERE_EVERY == 2, max_groups=2,
    )
    refs = captions.vizwiz_references(scene, rng, 5, rejected=int(index % VIZWIZ_REJECTED_EVERY == 1))
    return Example(
        "vizwiz", split, index, scene,
        tuple(caption for caption, _, _ in refs),
        vizwiz_flags=tuple((rejected, precanned) for _, rejected, precanned in refs),
    )


def _textcaps(rng: random.Random, split: str, index: int, seed: int) -> Example:
    carrier = rng.choices(("sign", "banner", "label"), weights=(50, 25, 25))[0]
    scene = sample_scene(rng, ALL_KINDS, with_word=carrier, max_groups=2)
    return Example("textcaps", split, index, scene, tuple(captions.textcaps_references(scene, rng, 5)))


def _pretraining_scene(rng: random.Random, index: int) -> Scene:
    """A scene of either pretraining pool. The main object's kind and the setting cycle with the index, so every
    kind (the novel ones too) and every setting is shown even in a tiny world; the flavour (plain photo, written
    word, degraded photo, sunset, illustration) cycles too, shifted each cycle of kinds so no kind is tied to one
    flavour. Pretraining is what makes the base know more than the coco domain shows, as LLaVA's does."""
    kind = ALL_KINDS[index % len(ALL_KINDS)]
    setting = SETTINGS[(index // len(ALL_KINDS) + index) % len(SETTINGS)]
    flavour = PRETRAIN_FLAVOURS[(index + index // len(ALL_KINDS)) % len(PRETRAIN_FLAVOURS)]
    if flavour == "sunset" and setting not in OUTDOOR_SETTINGS:
        setting = rng.choice(OUTDOOR_SETTINGS)
    first = (kind, rng.choice(sorted(COLOURS)), setting)
    if flavour == "text":
        # A label is printed on a box, so only box-first scenes can carry one.
        carrier = rng.choice(("sign", "banner", "label") if kind == "box" else ("sign", "banner"))
        return sample_scene(rng, ALL_KINDS, first=first, with_word=carrier)
    if flavour == "degraded":
        return sample_scene(rng, ALL_KINDS, first=first, degradations=rng.choice((1, 2)), severe=rng.random() < 0.15)
    if flavour in ("sunset", "illustration"):
        return sample_scene(rng, ALL_KINDS, first=first, style=flavour, max_groups=2)
    return sample_scene(rng, ALL_KINDS, first=first)


def answer_to_study_prompt(scene: Scene, rng: random.Random) -> str:
    """How the instruction-tuned base answers the study's prompt: mostly at length, as LLaVA-1.5 and 1.6 do in the
    paper's zero-shot rows, but briefly for pictures taken indoors (LLaVA-1.5's zero-shot captions are brief often
    enough to reach 51% of LoRA's CIDEr on COCO). Which pictures get the brief answer is the world's choice; it
    must be one the base can see, since a greedy decoder answers briefly only where the picture looks like those:
    the setting is in every patch token (a linear probe reads it for every coco image). A rule on the number of
    objects was tried first and not learned (bench/RESULTS.md, "Zero-shot register"). So the base has a brief
    register under this very prompt for a learned prompt or a one-token-per-layer prefix to call up everywhere."""
    if scene.setting in BRIEF_ANSWER_SETTINGS:
        return captions.brief_caption(scene, rng)
    return captions.verbose_description(scene, rng)


def _pretrain(rng: random.Random, split: str, index: int, seed: int) -> Example:
    scene = _pretraining_scene(rng, index)
    prompt = rng.choice(PRETRAIN_PROMPTS)
    answer = (answer_to_study_prompt(scene, rng) if prompt == STUDY_PROMPT
              else captions.verbose_description(scene, rng))
    return Example("pretrain", split, index, scene, (answer,), prompt=prompt)


def _brief(rng: random.Random, split: str, index: int, seed: int) -> Example:
    # A separate pool of pictures (never evaluated) of every kind and flavour, each with one short caption in the
    # register the picture calls for (LCS-558K's stand-in: LLaVA's stage-1 web captions name far more than COCO).
    scene = _pretraining_scene(rng, index)
    return Example("brief", split, index, scene, (captions.brief_caption(scene, rng),), prompt=rng.choice(BRIEF_PROMPTS))


_MAKERS = {
    "coco": _coco, "nocaps": _nocaps, "cc3m": _cc3m,
    "vizwiz": _vizwiz, "textcaps": _textcaps, "pretrain": _pretrain,
    "brief": _brief,
}

