"""Scenes: the symbolic content of one picture, and their seeded sampling.

A scene is what both the renderer and the captioners read, so an image and its references
always agree. Sampling takes an explicit `random.Random` (never the global RNG) so that every
image of the world is a pure function of (world seed, domain, index).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from captionlab.world.vocabulary import (
    COCO_KINDS,
    COLOURS,
    DEGRADATIONS,
    POSITIONS,
    SETTINGS,
    SIGN_WORDS,
    SIZES,
)

Combination = tuple[str, str, str]  # (kind, colour, setting)


@dataclass(frozen=True)
class SceneObject:
    """One group of identical objects: `count` copies of a `size` `colour` `kind` at `position`. A scene's first
    group is its main subject (drawn large; the others small)."""

    kind: str
    colour: str
    size: str
    position: str
    count: int = 1


@dataclass(frozen=True)
class Scene:
    """Everything a picture shows.

    style: "photo", "sunset" (warm sky; outdoor settings only) or "illustration" (flat, plain
    background: the setting is not drawn). word/word_carrier/word_position: the written word
    (TextCaps), its carrier ("sign", "banner", or "label" on the first object) and where it is.
    degradations: VizWiz-like photo problems, applied after drawing; `severe` makes them
    strong enough that annotators give up. render_seed drives pixel-level randomness
    (stars, blur radius, tilt angle, crop window) so rendering is a pure function of the scene.
    """

    setting: str
    objects: tuple[SceneObject, ...]
    style: str = "photo"
    word: str | None = None
    word_carrier: str | None = None
    word_position: str | None = None
    degradations: tuple[str, ...] = ()
    severe: bool = False
    render_seed: int = 0

    def kinds(self) -> tuple[str, ...]:
        return tuple(group.kind for group in self.objects)

    def combinations(self) -> tuple[Combination, ...]:
        """The (kind, colour, setting) triples this scene shows."""
        return tuple((group.kind, group.colour, self.setting) for group in self.objects)


def held_out_combinations(seed: int, n: int = 12) -> tuple[Combination, ...]:
    """(kind, colour, setting) triples kept out of coco train and planted in coco test.

    Each kind, colour and setting still appears in training on its own; only the combination is
    new, so a model that scores on these has composed what it learned rather than memorised it.
    """
    rng = random.Random(f"{seed}:held-out")
    colours = sorted(COLOURS)
    chosen: list[Combination] = []
    kinds = list(COCO_KINDS)
    rng.shuffle(kinds)
    for kind in kinds[:n]:  # one per kind, so no kind loses much of its training data
        chosen.append((kind, rng.choice(colours), rng.choice(SETTINGS)))
    return tuple(sorted(chosen))


MAIN_SIZE, OTHER_SIZE = "large", "small"


def main_or_other_size(index: int) -> str:
    """The first group is the picture's main subject, drawn large, as a photo's subject is framed; the other
    groups are drawn small. So "the main object" is defined by the pixels (the largest group), the same one
    every caption register names first."""
    return MAIN_SIZE if index == 0 else OTHER_SIZE


def _group_count(rng: random.Random) -> int:
    return rng.choices((1, 2, 3), weights=(45, 40, 15))[0]


def _copies(rng: random.Random) -> int:
    return rng.choices((1, 2, 3), weights=(68, 22, 10))[0]


def sample_scene(
    rng: random.Random,
    kinds: tuple[str, ...] = COCO_KINDS,
    settings: tuple[str, ...] = SETTINGS,
    *,
    style: str = "photo",
    first: Combination | None = None,
    must_include: tuple[str, ...] = (),
    avoid: frozenset[Combination] = frozenset(),
    with_word: str | None = None,
    degradations: int = 0,
    severe: bool = False,
    max_groups: int = 3,
) -> Scene:
    """Sample a scene.

    kinds/settings: what may appear. first: force the first group's (kind, colour, setting).
    must_include: kinds of which at least one must appear (e.g. a novel kind for nocaps).
    avoid: combinations that must not appear (coco train's held-out ones); resampled until so.
    with_word: a text carrier ("sign", "banner", "label") to add with a random word.
    degradations: how many photo problems to apply.
    """
    for _ in range(1000):
        scene = _sample_once(
            rng, kinds, settings, style, first, must_include, with_word, degradations, severe, max_groups
        )
        if not avoid.intersection(scene.combinations()):
            return scene
    raise RuntimeError("could not sample a scene avoiding the held-out combinations")


def _sample_once(
    rng: random.Random,
    kinds: tuple[str, ...],
    settings: tuple[str, ...],
    style: str,
    first: Combination | None,
    must_include: tuple[str, ...],
    with_word: str | None,
    degradations: int,
    severe: bool,
    max_groups: int,
) -> Scene:
    setting = first[2] if first else rng.choice(settings)
    n_groups = min(_group_count(rng), max_groups)
    # A sign needs a free slot; a banner takes the top row.
    free_positions = list(POSITIONS)
    if with_word == "banner":
        free_positions.remove("top")
    if n_groups == 1:
        # Single subjects are usually centred, as in photos.
        positions = ["center"] if rng.random() < 0.5 else [rng.choice(free_positions)]
    else:
        positions = rng.sample(free_positions, n_groups)
    chosen_kinds: list[str] = []
    if first:
        chosen_kinds.append(first[0])
    elif with_word == "label":
        chosen_kinds.append("box")  # the label is printed on a box
    elif must_include:
        chosen_kinds.append(rng.choice(must_include))
    while len(chosen_kinds) < n_groups:
        candidate = rng.choice(kinds)
        if candidate not in chosen_kinds:
            chosen_kinds.append(candidate)
    if must_include and not set(must_include) & set(chosen_kinds):
        chosen_kinds[-1] = rng.choice([k for k in must_include if k not in chosen_kinds])
    objects = []
    colours = sorted(COLOURS)
    for index, (kind, position) in enumerate(zip(chosen_kinds, positions)):
        colour = first[1] if (first and index == 0) else rng.choice(colours)
        rng.choice(SIZES)  # drawn and discarded: the role decides the size, the random stream stays the same
        objects.append(SceneObject(kind, colour, main_or_other_size(index), position, _copies(rng)))
    word = carrier = word_position = None
    if with_word:
        word, carrier = rng.choice(SIGN_WORDS), with_word
        if carrier == "label":
            # The word is printed on the first object, a box drawn large and alone to be legible.
            objects[0] = SceneObject("box", objects[0].colour, "large", objects[0].position, 1)
            word_position = objects[0].position
        elif carrier == "banner":
            word_position = "top"
        else:
            used = {group.position for group in objects}
            # At most three groups, so one of these four slots is always free.
            spare = [p for p in ("left", "right", "center", "bottom") if p not in used]
            word_position = rng.choice(spare)
    problems = tuple(sorted(rng.sample(DEGRADATIONS, degradations))) if degradations else ()
    return Scene(
        setting=setting,
        objects=tuple(objects),
        style=style,
        word=word,
        word_carrier=carrier,
        word_position=word_position,
        degradations=problems,
        severe=severe and bool(problems),
        render_seed=rng.getrandbits(32),
    )
