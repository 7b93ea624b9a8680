"""Reference captions for a scene, in the voice of each benchmark's annotators.

The same scene can be described in five registers, mirroring the study's datasets:
  - coco / nocaps: short, plain, everyday sentences, several per image with varied wording;
  - cc3m: web alt-text (lowercase, often no article, stock-photo and illustration idioms);
  - vizwiz: descriptions of imperfect photos that say what is wrong with them, plus the
    "precanned" and rejected captions the real annotation contains;
  - textcaps: sentences that quote the word written in the picture;
  - brief: one short lowercase caption per image in whichever of the registers above the picture calls for, as
    LLaVA's stage-1 data (web images, captioned briefly) covers them all;
  - verbose: the long, padded descriptions of an instruction-tuned multimodal LLM, used to
    pretrain the tiny model so that, like LLaVA, it answers "Briefly caption the image" at length.
Every function takes an explicit `random.Random` so wording is reproducible.
"""

from __future__ import annotations

import random

from captionlab.world.render import ANCHORS
from captionlab.world.scenes import Scene, SceneObject
from captionlab.world.vocabulary import (
    COUNT_WORDS,
    DEGRADATION_ADJECTIVES,
    HYPERNYMS,
    KIND_ACTIONS,
    KIND_DETAILS,
    KIND_SYNONYMS,
    POSITION_PHRASES,
    PRECANNED_CAPTION,
    SETTING_DETAILS,
    SETTING_NOUNS,
    SETTING_PHRASES,
    SETTING_PLACES,
    SIZE_SYNONYMS,
    plural,
    with_article,
)

# ---------------------------------------------------------------- noun phrases


def noun_phrase(
    group: SceneObject,
    rng: random.Random,
    *,
    size_probability: float = 0.3,
    colour: bool = True,
    synonyms: bool = True,
    article: bool = True,
) -> str:
    """"a small red ball", "two blue mugs", "three big green trees"... for one group."""
    noun = rng.choice(KIND_SYNONYMS[group.kind]) if synonyms else group.kind
    words = []
    if rng.random() < size_probability:
        words.append(rng.choice(SIZE_SYNONYMS[group.size]))
    if colour:
        words.append(group.colour)
    words.append(noun if group.count == 1 else plural(noun))
    phrase = " ".join(words)
    if group.count > 1:
        return f"{COUNT_WORDS[group.count]} {phrase}"
    return with_article(phrase) if article else phrase


def _finish(text: str, rng: random.Random, period_probability: float = 0.7) -> str:
    """COCO-style surface: a capital first letter, usually a full stop."""
    text = " ".join(text.split())
    text = text[0].upper() + text[1:]
    return text + "." if rng.random() < period_probability else text


def _relation(a: SceneObject, b: SceneObject) -> str:
    """How group a stands relative to group b, from their positions."""
    (ax, ay), (bx, by) = ANCHORS[a.position], ANCHORS[b.position]
    if abs(ay - by) > abs(ax - bx):
        return "above" if ay < by else "below"
    return "to the left of" if ax < bx else "to the right of"


def _is_are(group: SceneObject) -> str:
    return "is" if group.count == 1 else "are"


# ---------------------------------------------------------------- coco / nocaps


def _short_caption(scene: Scene, rng: random.Random) -> str:
    main = scene.objects[0]
    others = list(scene.objects[1:])
    a = noun_phrase(main, rng)
    where = rng.choice(SETTING_PHRASES[scene.setting])
    place = rng.choice(SETTING_NOUNS[scene.setting])
    if others and rng.random() < 0.55:
        other = rng.choice(others)
        b = noun_phrase(other, rng, size_probability=0.15)
        templates = [
            f"{a} and {b} {where}",
            f"{a} next to {b}",
            f"{a} next to {b} {where}",
            f"{a} {_relation(main, other)} {b}",
            f"{a} {_is_are(main)} {_relation(main, other)} {b} {where}",
            f"{place} with {a} and {b}",
            f"there {_is_are(main)} {a} and {b} {where}",
        ]
    else:
        action = KIND_ACTIONS.get(main.kind)
        templates = [
            f"{a} {where}",
            f"{a} {where}",
            f"there {_is_are(main)} {a} {where}",
            f"a picture of {a} {where}",
            f"{place} with {a}",
            f"{a} {rng.choice(POSITION_PHRASES[main.position])} {where}",
            f"{a} {action} {where}" if action else f"{a} sitting {where}",
        ]
    return _finish(rng.choice(templates), rng)


def coco_references(scene: Scene, rng: random.Random, n: int = 5) -> list[str]:
    """n short everyday captions with varied wording (COCO has 5 per image, nocaps 10)."""
    references: list[str] = []
    for _ in range(n * 20):  # annotators rarely write identical sentences; avoid exact repeats
        caption = _short_caption(scene, rng)
        if caption.rstrip(".").lower() not in {r.rstrip(".").lower() for r in references}:
            references.append(caption)
        if len(references) == n:
            break
    while len(references) < n:
        references.append(_short_caption(scene, rng))
    return references


def brief_caption(scene: Scene, rng: random.Random) -> str:
    """One short caption (lowercase, no full stop) in the register the picture calls for, as LLaVA's stage-1 data
    (LCS-558K: web images from LAION, CC3M and SBU, captioned briefly) covers far more than COCO's photos: the
    written word quoted when there is one, the photo's problem named when it has one, web alt-text for sunsets and
    illustrations, an everyday sentence otherwise."""
    if scene.word:
        text = _textcaps_caption(scene, rng)
    elif scene.degradations:
        text = _vizwiz_caption(scene, rng)
    elif scene.style != "photo":
        text = alt_text(scene, rng)
    else:
        text = _short_caption(scene, rng)
    return text.rstrip(".").lower()


# ---------------------------------------------------------------- cc3m


def _hyper_or_kind(group: SceneObject, rng: random.Random) -> str:
    noun = HYPERNYMS[group.kind] if group.kind in HYPERNYMS and rng.random() < 0.25 else group.kind
    return noun if group.count == 1 else plural(noun)


def alt_text(scene: Scene, rng: random.Random) -> str:
    """One web alt-text caption: lowercase, no final period, often no article."""
    main = scene.objects[0]
    noun = _hyper_or_kind(main, rng)
    bare = f"{main.colour} {noun}" if main.count == 1 else f"{COUNT_WORDS[main.count]} {main.colour} {noun}"
    where = rng.choice(SETTING_PHRASES[scene.setting])
    if scene.style == "illustration":
        templates = [
            f"vector illustration of {with_article(bare) if main.count == 1 else bare}",
            f"cartoon {bare} isolated on a white background",
            f"{bare} icon",
            f"flat illustration of {with_article(main.kind)}",
            f"hand drawn {bare} on a light background",
        ]
    elif scene.style == "sunset":
        templates = [
            f"{bare} {where} during sunset",
            f"{noun} at sunset",
            f"sunset over {rng.choice(SETTING_NOUNS[scene.setting])} with {with_article(bare) if main.count == 1 else bare}",
            f"{bare} {where} in the evening light",
        ]
    else:
        templates = [
            f"stock photo of {with_article(bare) if main.count == 1 else bare} {where}",
            f"{bare} {where}",
            f"close up of {with_article(bare) if main.count == 1 else bare}",
            f"view of {with_article(noun) if main.count == 1 else noun} {where}",
            f"{noun} {where} on a sunny day",
            f"{with_article(bare) if main.count == 1 else bare} {where}",
        ]
    return " ".join(rng.choice(templates).split())


# ---------------------------------------------------------------- vizwiz

REJECTED_CAPTIONS = (
    "a picture",
    "i can not tell what this is",
    "photo of something",
    "unknown object",
    "not sure",
)


def _quality_adjective(scene: Scene, rng: random.Random) -> str:
    adjectives = [rng.choice(DEGRADATION_ADJECTIVES[d]) for d in scene.degradations]
    if len(adjectives) > 1 and rng.random() < 0.5:
        return f"{adjectives[0]} and {adjectives[1]}"
    return rng.choice(adjectives)


def _vizwiz_caption(scene: Scene, rng: random.Random) -> str:
    main = scene.objects[0]
    a = noun_phrase(main, rng, size_probability=0.1)
    adjective = _quality_adjective(scene, rng)
    photo = rng.choice(("photo", "picture", "image"))
    where = rng.choice(SETTING_PHRASES[scene.setting])
    templates = [
        f"{with_article(adjective)} {photo} of {a}",
        f"{with_article(adjective)} {photo} of {a} {where}",
        f"{a} {where} in {with_article(adjective)} {photo}",
        f"{with_article(adjective)} {photo} showing {a}",
    ]
    if "cropped" in scene.degradations:
        templates.append(f"a close up of part of {a}")
        templates.append(f"a partial view of {a} {where}")
    if scene.word:
        templates.append(f'{a} with a label that says "{scene.word}"')
    if scene.severe:
        templates = [
            f"a very {adjective} {photo} of what looks like {a}",
            f"a very {adjective} {photo} of something {main.colour}",
            f"{with_article(adjective)} {photo}, possibly of {a}",
        ]
    return _finish(rng.choice(templates), rng, period_probability=0.8)


def vizwiz_references(scene: Scene, rng: random.Random, n: int = 5, rejected: int = 0) -> list[tuple[str, bool, bool]]:
    """n (caption, is_rejected, is_precanned) triples, like VizWiz-Captions' annotations.

    Severe photos get two to four precanned "quality issues" captions; `rejected` other
    captions are junk flagged as rejected by quality control. Evaluation should drop both, as
    the official code does.
    """
    slots = list(range(n))
    rng.shuffle(slots)
    precanned = set(slots[: rng.randint(2, 4)]) if scene.severe else set()
    junk = set(slots[len(precanned) : len(precanned) + rejected])
    out: list[tuple[str, bool, bool]] = []
    for slot in range(n):
        if slot in precanned:
            out.append((PRECANNED_CAPTION, False, True))
        elif slot in junk:
            out.append((rng.choice(REJECTED_CAPTIONS), True, False))
        else:
            caption = _vizwiz_caption(scene, rng)
            for _ in range(10):  # prefer a wording not used yet for this image
                if caption not in (c for c, _, _ in out):
                    break
                caption = _vizwiz_caption(scene, rng)
            out.append((caption, False, False))
    return out


# ---------------------------------------------------------------- textcaps


def _textcaps_caption(scene: Scene, rng: random.Random) -> str:
    word = f'"{scene.word}"'
    others = [g for g in scene.objects if not (scene.word_carrier == "label" and g is scene.objects[0])]
    main = scene.objects[0]
    where = rng.choice(SETTING_PHRASES[scene.setting])
    if scene.word_carrier == "label":
        box = noun_phrase(main, rng, size_probability=0.0, synonyms=False)
        templates = [
            f"{box} with a {word} label",
            f"{box} labeled {word} {where}",
            f"{box} that says {word} on it",
            f"a label reading {word} on {box}",
            f"{box} with the word {word} printed on the front",
        ]
    elif scene.word_carrier == "banner":
        a = noun_phrase(main, rng, size_probability=0.1)
        templates = [
            f"a banner that says {word} above {a}",
            f"{a} under a {word} banner",
            f"a {word} banner over {rng.choice(SETTING_NOUNS[scene.setting])}",
            f"a banner with the word {word} {where}",
            f"{a} {where} below a sign reading {word}",
        ]
    else:
        a = noun_phrase(others[0], rng, size_probability=0.1) if others else "nothing"
        templates = [
            f"a sign that says {word} next to {a}",
            f"{a} next to a sign reading {word}",
            f"a sign with the word {word} on it {where}",
            f"a {word} sign {where}",
            f"{a} {where} near a {word} sign",
        ]
    return _finish(rng.choice(templates), rng)


def textcaps_references(scene: Scene, rng: random.Random, n: int = 5) -> list[str]:
    """n captions that each quote the written word."""
    references: list[str] = []
    for _ in range(n * 20):
        caption = _textcaps_caption(scene, rng)
        if caption not in references:
            references.append(caption)
        if len(references) == n:
            return references
    while len(references) < n:
        references.append(_textcaps_caption(scene, rng))
    return references


# ---------------------------------------------------------------- verbose (instruction-tuned MLLM)

OPENINGS = (
    "The image shows {summary}.",
    "This image depicts {summary}.",
    "In this image, we can see {summary}.",
    "The picture presents {summary}.",
)
QUALITY_SENTENCES = {
    "blurry": "The photo is blurry and out of focus, so fine details are hard to make out.",
    "dark": "The picture is quite dark, as if it was taken in poor light.",
    "tilted": "The camera seems tilted, so the scene appears at an angle.",
    "cropped": "Only part of the scene is visible, cut off by the edges of the frame.",
}
SEVERE_SENTENCE = "Overall, the image quality is too poor to identify the content with certainty."
FILLERS = (
    "Overall, the scene conveys a calm and pleasant atmosphere.",
    "The composition is simple, with each object standing out clearly against the background.",
    "The colors are bright and vivid, giving the image a lively and cheerful feel.",
    "There are no people visible in the image, which adds to the quiet mood of the scene.",
    "The lighting is soft and even, and the shapes are drawn with clean, dark outlines.",
    "The arrangement of the elements creates a balanced and visually appealing composition.",
    "The scene has a playful, almost toy-like quality that makes it easy to read at a glance.",
    "This kind of image could be used in a children's book or an educational illustration.",
)


def _summary(scene: Scene) -> str:
    n = sum(g.count for g in scene.objects)
    things = "a single object" if n == 1 else f"{COUNT_WORDS[n] if n <= 3 else 'several'} objects"
    if scene.style == "illustration":
        return f"a simple flat illustration of {things} on a plain light background"
    place = SETTING_PLACES[scene.setting]
    if scene.style == "sunset":
        return f"a scene set {place} at sunset, with warm orange and pink tones filling the sky, featuring {things}"
    return f"a scene set {place}, featuring {things}"


def _group_sentence(group: SceneObject, rng: random.Random, detailed: bool) -> str:
    where = rng.choice(POSITION_PHRASES[group.position])
    obj = noun_phrase(group, rng, size_probability=1.0, synonyms=False)
    detail = KIND_DETAILS[group.kind]
    if group.count > 1:
        detail = "each " + detail
    be = _is_are(group)
    if detailed:
        sentence = rng.choice(
            (
                f"{where}, there {be} {obj}, {detail}.",
                f"{obj} {be} positioned {where}, {detail}.",
                f"{where}, we can see {obj} {detail}.",
            )
        )
    else:
        sentence = rng.choice((f"{where}, there {be} {obj}.", f"{obj} {be} positioned {where}."))
    return sentence[0].upper() + sentence[1:]


def _word_sentence(scene: Scene, rng: random.Random) -> str:
    word = f'"{scene.word}"'
    if scene.word_carrier == "label":
        return f"A white label on the front of the box reads {word} in bold capital letters."
    if scene.word_carrier == "banner":
        return f"Across the top of the image, a wide banner displays the word {word} in large capital letters."
    where = rng.choice(POSITION_PHRASES[scene.word_position or "center"])
    return f"{where[0].upper() + where[1:]}, a sign on a grey post shows the word {word} in bold capital letters."


def _core_sentences(scene: Scene, rng: random.Random, details: int, background: bool, all_remarks: bool) -> list[str]:
    sentences = [rng.choice(OPENINGS).format(summary=_summary(scene))]
    sentences += [_group_sentence(group, rng, index < details) for index, group in enumerate(scene.objects)]
    if scene.word:
        sentences.append(_word_sentence(scene, rng))
    if background and scene.style != "illustration":
        sentences.append(f"The background features {SETTING_DETAILS[scene.setting]}.")
    remarks = [QUALITY_SENTENCES[d] for d in scene.degradations]
    if scene.severe:
        remarks.append(SEVERE_SENTENCE)
    sentences += remarks if all_remarks else remarks[:1]
    return sentences


def _words(sentences: list[str]) -> int:
    return sum(len(s.split()) for s in sentences)


def verbose_description(scene: Scene, rng: random.Random, min_words: int = 45, max_words: int = 80) -> str:
    """A long, detailed, slightly padded description in the style of LLaVA's answers.

    Crowded scenes first lose per-object details, then the background sentence, then all but
    one remark on photo quality, so that every object, the written word and (at least one of)
    the photo's problems are always mentioned within max_words.
    """
    variants = ((3, True, True), (1, True, True), (0, True, True), (0, False, True), (0, False, False))
    for details, background, all_remarks in variants:
        state = rng.getstate()  # same wording choices whichever variant is kept
        sentences = _core_sentences(scene, rng, details, background, all_remarks)
        if _words(sentences) <= max_words:
            break
        rng.setstate(state)
    fillers = list(FILLERS)
    rng.shuffle(fillers)
    while fillers and _words(sentences) < min_words:
        candidate = fillers.pop()
        if _words(sentences) + len(candidate.split()) <= max_words:
            sentences.append(candidate)
    return " ".join(sentences)
