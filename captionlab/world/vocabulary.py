"""The closed vocabulary of the caption world: what can appear in a scene and how it is named.

Everything the generator can draw or say is listed here, so that the domains differ only in
*which* parts of the vocabulary they use and *how* they phrase it, as the real benchmarks do:
COCO names the `COCO_KINDS`, nocaps adds the `NOVEL_KINDS` that COCO never names, TextCaps
adds written `SIGN_WORDS`, VizWiz adds `DEGRADATIONS`, CC3M adds picture `STYLES`.
"""

from __future__ import annotations

# Object kinds named in the coco domain (the "COCO classes" of the miniature).
COCO_KINDS: tuple[str, ...] = (
    "ball", "box", "tree", "house", "car", "cup", "kite",
    "fish", "flower", "umbrella", "bird", "boat", "clock", "bottle",
)

# Kinds that appear only outside the coco domain (nocaps' novel objects); coco-domain captions
# never name them, so captioning them is out-of-distribution for a coco-personalised model.
NOVEL_KINDS: tuple[str, ...] = ("rocket", "guitar", "crown", "anchor", "lamp", "bicycle")

ALL_KINDS: tuple[str, ...] = COCO_KINDS + NOVEL_KINDS

PLURALS: dict[str, str] = {
    "box": "boxes", "fish": "fish", "spacecraft": "spacecraft",
}

# Alternative nouns annotators use for the same thing (first entry is the canonical name).
KIND_SYNONYMS: dict[str, tuple[str, ...]] = {
    "ball": ("ball", "ball", "toy ball"),
    "box": ("box", "box", "package"),
    "tree": ("tree",),
    "house": ("house", "house", "home"),
    "car": ("car", "car", "vehicle"),
    "cup": ("cup", "mug", "cup"),
    "kite": ("kite",),
    "fish": ("fish",),
    "flower": ("flower", "flower", "blossom"),
    "umbrella": ("umbrella", "umbrella", "parasol"),
    "bird": ("bird",),
    "boat": ("boat", "sailboat", "boat"),
    "clock": ("clock", "clock", "wall clock"),
    "bottle": ("bottle", "bottle", "plastic bottle"),
    "rocket": ("rocket", "rocket", "space rocket"),
    "guitar": ("guitar", "guitar", "acoustic guitar"),
    "crown": ("crown",),
    "anchor": ("anchor", "anchor", "ship anchor"),
    "lamp": ("lamp", "lamp", "table lamp"),
    "bicycle": ("bicycle", "bike", "bicycle"),
}

# What a kind is typically doing; used by some templates for more natural captions.
KIND_ACTIONS: dict[str, str] = {
    "kite": "flying", "bird": "perched", "boat": "floating", "fish": "swimming",
    "car": "parked", "rocket": "standing", "bicycle": "parked",
}

# Colour names with the RGB used to draw them.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 40, 40),
    "blue": (38, 84, 214),
    "green": (44, 160, 64),
    "yellow": (240, 206, 36),
    "orange": (245, 136, 28),
    "purple": (134, 58, 178),
    "white": (246, 246, 246),
    "black": (28, 28, 30),
}

SIZES: tuple[str, ...] = ("small", "large")
SIZE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "small": ("small", "little", "small", "tiny"),
    "large": ("large", "big", "large", "huge"),
}

POSITIONS: tuple[str, ...] = ("left", "right", "center", "top", "bottom")
POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("on the left", "to the left", "on the left side"),
    "right": ("on the right", "to the right", "on the right side"),
    "center": ("in the middle", "in the center", "in the middle of the picture"),
    "top": ("at the top", "near the top", "up at the top"),
    "bottom": ("at the bottom", "in the foreground", "near the bottom"),
}

COUNT_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three"}

# Settings (backgrounds). `phrases` follow a noun phrase ("a red ball ..."), `nouns` stand alone.
SETTINGS: tuple[str, ...] = ("beach", "park", "street", "kitchen", "snow", "night", "room", "lake")
SETTING_PHRASES: dict[str, tuple[str, ...]] = {
    "beach": ("on the beach", "on a sandy beach", "by the sea", "on the sand"),
    "park": ("in the park", "on the grass", "in a grassy field", "in a park"),
    "street": ("on the street", "on a city street", "by the road", "on the road"),
    "kitchen": ("on a kitchen table", "in a kitchen", "on the kitchen counter", "in the kitchen"),
    "snow": ("in the snow", "on a snowy field", "on the snow", "in a snowy field"),
    "night": ("at night", "under the night sky", "under a starry sky", "in the dark night"),
    "room": ("in a room", "in a living room", "on a wooden floor", "inside a room"),
    "lake": ("on a lake", "by the water", "on the water", "on a lake"),
}
SETTING_NOUNS: dict[str, tuple[str, ...]] = {
    "beach": ("a beach", "a sandy beach"),
    "park": ("a park", "a grassy park"),
    "street": ("a street", "a city street"),
    "kitchen": ("a kitchen", "a kitchen counter"),
    "snow": ("a snowy field", "a field of snow"),
    "night": ("the night sky", "a starry night"),
    "room": ("a room", "a living room"),
    "lake": ("a lake", "a calm lake"),
}
# Where a scene is set, for the verbose describer's opening sentence.
SETTING_PLACES: dict[str, str] = {
    "beach": "on a sandy beach", "park": "in a grassy park", "street": "on a city street",
    "kitchen": "in a kitchen", "snow": "in a snowy landscape", "night": "under a starry night sky",
    "room": "inside a living room", "lake": "by a calm lake",
}
# Words for the verbose describer's background sentence.
SETTING_DETAILS: dict[str, str] = {
    "beach": "a bright blue sky above a strip of sea and a wide stretch of golden sand",
    "park": "a clear blue sky above a lush green lawn with a few bushes",
    "street": "grey buildings behind a paved road marked with white dashed lines",
    "kitchen": "a tiled kitchen wall above a wooden counter top",
    "snow": "a pale winter sky, distant mountains and a smooth field of white snow",
    "night": "a dark navy night sky dotted with small stars and a glowing moon",
    "room": "striped wallpaper above a floor of wooden planks",
    "lake": "a light sky above calm blue water with gentle ripples",
}
OUTDOOR_SETTINGS: tuple[str, ...] = ("beach", "park", "street", "snow", "lake")
INDOOR_SETTINGS: tuple[str, ...] = ("kitchen", "room")

# Words written on signs and labels (TextCaps); none of them is a kind, colour or setting.
SIGN_WORDS: tuple[str, ...] = (
    "open", "stop", "sale", "cafe", "exit", "hotel", "taxi", "pizza",
    "books", "menu", "bank", "hello", "music", "sushi", "zoo", "bakery",
)
# What carries the written word, and how captions call it.
TEXT_CARRIERS: tuple[str, ...] = ("sign", "banner", "label")

# VizWiz-like photo problems and how captions describe them.
DEGRADATIONS: tuple[str, ...] = ("blurry", "dark", "tilted", "cropped")
DEGRADATION_ADJECTIVES: dict[str, tuple[str, ...]] = {
    "blurry": ("blurry", "out of focus", "blurred"),
    "dark": ("dark", "dimly lit", "very dark"),
    "tilted": ("tilted", "crooked", "sideways"),
    "cropped": ("partial", "cropped", "close up"),
}
PRECANNED_CAPTION = "Quality issues are too severe to recognize visual content."

# Picture styles (CC3M's web images): ordinary photos, sunsets, flat vector illustrations.
STYLES: tuple[str, ...] = ("photo", "sunset", "illustration")


def plural(kind: str) -> str:
    """The plural noun of a kind ("box" -> "boxes")."""
    noun = PLURALS.get(kind)
    if noun is not None:
        return noun
    last = kind.split()[-1]
    if last in PLURALS:
        return kind[: -len(last)] + PLURALS[last]
    return kind + "s"


def with_article(phrase: str) -> str:
    """Prefix "a" or "an" by the first letter of the phrase."""
    first = phrase.lstrip('"')[:1]  # a quoted word counts by its own first letter
    return ("an " if first and first in "aeiou" else "a ") + phrase

# Broader nouns web alt-text often uses instead of the precise kind (CC3M "hypernymises").
HYPERNYMS: dict[str, str] = {
    "ball": "toy", "car": "vehicle", "boat": "vessel", "bird": "animal", "fish": "animal",
    "flower": "plant", "tree": "plant", "guitar": "musical instrument", "bicycle": "vehicle",
    "cup": "kitchen item", "bottle": "container", "box": "container", "rocket": "spacecraft",
}

# One visual detail per kind, for the verbose describer.
KIND_DETAILS: dict[str, str] = {
    "ball": "with a smooth, rounded surface and a small shiny highlight",
    "box": "drawn as a cube with its top and side faces visible",
    "tree": "with a thick brown trunk and a full, rounded canopy",
    "house": "with a pointed roof, a wooden door and two small windows",
    "car": "with a rounded cabin, tinted windows and two black wheels",
    "cup": "with a curved handle on its side and a dark rim",
    "kite": "shaped like a diamond, with crossed spars and a wavy tail",
    "fish": "with a pointed tail fin, a small dorsal fin and a round eye",
    "flower": "with five round petals around a bright center and a green stem",
    "umbrella": "with an open dome-shaped canopy and a curved handle",
    "bird": "with a round head, a short pointed beak and folded wings",
    "boat": "with a wooden mast and two white triangular sails",
    "clock": "with a round white face, hour marks and two black hands",
    "bottle": "with a narrow neck, a grey cap and a pale label",
    "rocket": "with a pointed nose cone, side fins, a round window and a flame below",
    "guitar": "with a curved body, a dark sound hole and a long wooden neck",
    "crown": "with three pointed tips topped by pink jewels and a band of blue gems",
    "anchor": "with a ring at the top, a crossbar and two curved arms",
    "lamp": "with a wide shade, a thin grey pole and a round base",
    "bicycle": "with two large black wheels, a triangular frame and handlebars",
}
