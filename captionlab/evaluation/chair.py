"""CHAIR (Rohrbach et al., EMNLP 2018): how often captions name objects that are not in the image.

    vocabulary = coco_vocabulary()                      # the authors' synonym lists (chair_data/synonyms.txt)
    truth = coco_truth(["instances_val2014.json"], references, vocabulary)
    report = score_chair(predictions, truth, vocabulary)
    report.paper_scale_metrics()   # {"CHAIR-i": 12.3, "CHAIR-s": 30.1, "Object-Recall": 55.0} (percent)
    report.per_image["42"].hallucinated   # [Mention(word="dogs", object="dog")]

CHAIR-i: hallucinated object mentions / all object mentions (every mention counts, repeats too);
CHAIR-s: captions with at least one hallucinated mention / all captions; Object-Recall (beside them,
not in the paper): ground-truth objects a caption names / all ground-truth objects, over all images.

The method, as the authors apply it to COCO: lowercase words, singular; the two-word names
("hot dog", "teddy bear", "traffic light"...) read as one word; "baby"/"adult" before an animal and
"passenger" before "jet"/"train" do not make a person; "bow tie" is a tie; "toilet seat" is a
toilet, and a "seat" next to a toilet is no chair. Each word is mapped to its COCO category by the
synonym lists; an image's ground truth is its instance annotations' categories plus the objects its
reference captions name. Two differences from the authors' script, both fixes of what it could not
have meant: entries are split on commas with spaces stripped (theirs split on ", ", so the list's
" motor bike" and " cheesecake" never matched), and "iPhone" is compared lowercased as every word is.
Plurals: a small rule set (+ irregular nouns) instead of the `pattern` library's `singularize`.

The embedded caption world knows each scene's objects exactly (`captionlab.world.objects`), so there
the ground truth is the scene's kinds and the vocabulary the world's own nouns (`world_vocabulary`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from captionlab.names import LOWER_IS_BETTER  # noqa: F401  (CHAIR: the lower the better)

SYNONYMS_PATH = Path(__file__).resolve().parent / "chair_data" / "synonyms.txt"
CHAIR_METRICS = ("CHAIR-i", "CHAIR-s", "Object-Recall")

# The authors' two-word COCO names, read as one word (their list, duplicates dropped).
COCO_DOUBLE_WORDS = (
    "motor bike", "motor cycle", "air plane", "traffic light", "street light", "traffic signal", "stop light",
    "fire hydrant", "stop sign", "parking meter", "suit case", "sports ball", "baseball bat", "baseball glove",
    "tennis racket", "wine glass", "hot dog", "cell phone", "mobile phone", "teddy bear", "hair drier",
    "potted plant", "bow tie", "laptop computer", "stove top oven", "home plate",
)
# "baby bird" is a bird, not a person (their rule); "passenger jet" a jet.
ANIMAL_WORDS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub")
VEHICLE_WORDS = ("jet", "train")

IRREGULAR_PLURALS = {
    "men": "man", "women": "woman", "children": "child", "feet": "foot", "teeth": "tooth", "mice": "mouse",
    "geese": "goose", "oxen": "ox", "knives": "knife", "wives": "wife", "leaves": "leaf", "shelves": "shelf",
    "calves": "calf", "wolves": "wolf", "halves": "half", "loaves": "loaf", "buses": "bus", "people": "person",
    "glasses": "glass", "benches": "bench", "ponies": "pony", "dice": "die",
}
_WORD = re.compile(r"[a-z]+")


class ChairUnavailable(Exception):
    """CHAIR cannot be computed here; the message says why and what would make it possible."""


@dataclass(frozen=True)
class ObjectVocabulary:
    """Which words name which object. `words`: word or phrase -> object; `phrases`: two words read as one
    (-> the word they count as); `not_with`: (word, other) pairs: `word` is no mention when `other` is named."""

    words: Mapping[str, str]
    phrases: Mapping[str, str] = field(default_factory=dict)
    not_with: tuple[tuple[str, str], ...] = ()
    source: str = ""

    def known(self, token: str) -> bool:
        return token in self.words or any(token in phrase.split() for phrase in self.phrases)


@dataclass(frozen=True)
class Mention:
    """One object mention in a caption: the caption's word(s) and the object it names."""

    word: str
    object: str


@dataclass
class CaptionChair:
    """One caption: every object mention, those not in the image, and the image's objects."""

    mentions: list[Mention]
    hallucinated: list[Mention]
    truth: frozenset[str]

    @property
    def recalled(self) -> set[str]:
        return {m.object for m in self.mentions} & set(self.truth)


@dataclass
class ChairReport:
    """CHAIR over a set of captions (fractions; `paper_scale_metrics` gives percent)."""

    chair_i: float | None
    chair_s: float
    recall: float | None
    n_captions: int
    n_mentions: int
    vocabulary: str
    per_image: dict[str, CaptionChair] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)

    def paper_scale_metrics(self) -> dict[str, float]:
        """Percent, as the CHAIR paper prints them; a rate without a denominator is left out."""
        values = {"CHAIR-i": self.chair_i, "CHAIR-s": self.chair_s, "Object-Recall": self.recall}
        return {name: 100.0 * value for name, value in values.items() if value is not None}

    def hallucinated_words(self) -> dict[str, list[str]]:
        """image id -> the caption's hallucinated words, in caption order (images without any left out)."""
        return {k: [m.word for m in c.hallucinated] for k, c in self.per_image.items() if c.hallucinated}


# --- vocabularies --------------------------------------------------------------------------------


def read_synonyms(path: str | Path = SYNONYMS_PATH) -> list[list[str]]:
    """The synonym file's lines: [object, synonym, ...] each, lowercased, spaces stripped, repeats dropped."""
    groups = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        names = [name.strip().lower() for name in line.split(",") if name.strip()]
        if names:
            groups.append(list(dict.fromkeys(names)))
    return groups


def coco_vocabulary(path: str | Path = SYNONYMS_PATH) -> ObjectVocabulary:
    """COCO's 80 objects and the authors' synonyms, with their two-word names and special cases."""
    words = {name: group[0] for group in read_synonyms(path) for name in group}
    phrases = {phrase: phrase for phrase in COCO_DOUBLE_WORDS}
    for animal in ANIMAL_WORDS:
        phrases[f"baby {animal}"] = phrases[f"adult {animal}"] = animal
    for vehicle in VEHICLE_WORDS:
        phrases[f"passenger {vehicle}"] = vehicle
    phrases.update({"bow tie": "tie", "toilet seat": "toilet"})
    return ObjectVocabulary(words, phrases, not_with=(("seat", "toilet"),),
                            source=f"COCO synonyms of Rohrbach et al. 2018 ({Path(path).name})")


def world_vocabulary() -> ObjectVocabulary:
    """The embedded caption world's object kinds and every noun its captions use for them."""
    from captionlab.world.vocabulary import ALL_KINDS, KIND_SYNONYMS

    words: dict[str, str] = {}
    phrases: dict[str, str] = {}
    for kind in ALL_KINDS:
        for name in dict.fromkeys((kind, *KIND_SYNONYMS.get(kind, ()))):  # plurals: read as their singular
            if " " in name:
                phrases[name] = name
            words[name] = kind
    return ObjectVocabulary(words, phrases, source="the embedded caption world's object kinds and their synonyms")


# --- finding mentions ----------------------------------------------------------------------------


def singular(word: str) -> str:
    """A plural noun's singular ("boxes" -> "box", "knives" -> "knife"); other words unchanged."""
    if word in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[word]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "sses", "xes", "zzes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def _tokens(caption: str, vocabulary: ObjectVocabulary) -> list[str]:
    """Lowercase words; each kept as written when the vocabulary knows it ("skis", "people"), else singular."""
    out = []
    for token in _WORD.findall(caption.lower()):
        out.append(token if vocabulary.known(token) else singular(token))
    return out


def find_mentions(caption: str, vocabulary: ObjectVocabulary) -> list[Mention]:
    """Every object the caption names, in order, as the authors' method reads it (see the module docstring)."""
    tokens = _tokens(caption, vocabulary)
    words: list[str] = []
    index = 0
    while index < len(tokens):
        pair = " ".join(tokens[index:index + 2])
        if index + 1 < len(tokens) and pair in vocabulary.phrases:
            words.append(vocabulary.phrases[pair])
            index += 2
        else:
            words.append(tokens[index])
            index += 1
    for word, other in vocabulary.not_with:
        if other in words:
            words = [w for w in words if w != word]
    return [Mention(word, vocabulary.words[word]) for word in words if word in vocabulary.words]


# --- ground truth --------------------------------------------------------------------------------


def coco_truth(instances: Iterable[str | Path], references: Mapping[str, Iterable[str]],
               vocabulary: ObjectVocabulary) -> dict[str, frozenset[str]]:
    """Per image id: the categories of its instance annotations plus the objects its references name
    (images of `references` only; an image in no instances file keeps its references' objects)."""
    objects: dict[str, set[str]] = {str(k): set() for k in references}
    for path in instances:
        try:
            document = json.loads(Path(path).read_text(encoding="utf-8"))
            names = {c["id"]: str(c["name"]).lower() for c in document["categories"]}
            annotations = document["annotations"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ChairUnavailable(f"cannot read COCO instance annotations {path}: "
                                   f"{type(exc).__name__}: {exc}") from None
        for annotation in annotations:
            image_id = str(annotation.get("image_id"))
            name = names.get(annotation.get("category_id"))
            if image_id in objects and name is not None:
                objects[image_id].add(vocabulary.words.get(name, name))
    for image_id, captions in references.items():
        for caption in captions:
            objects[str(image_id)].update(m.object for m in find_mentions(caption, vocabulary))
    return {k: frozenset(v) for k, v in objects.items()}


def find_instances(annotations: str | Path) -> list[Path]:
    """The COCO `instances_*.json` files beside a caption annotation file (COCO's own layout)."""
    return sorted(Path(annotations).parent.glob("instances_*.json"))


# --- scoring -------------------------------------------------------------------------------------


def score_chair(predictions: Mapping[str, str], truth: Mapping[str, Iterable[str]],
                vocabulary: ObjectVocabulary) -> ChairReport:
    """CHAIR-i, CHAIR-s and object recall of `predictions` (image id -> caption) against `truth`
    (image id -> its objects); images without a ground truth are left out. CHAIR-i and recall are None
    when nothing is mentioned / nothing is in the images."""
    per_image: dict[str, CaptionChair] = {}
    for image_id, caption in predictions.items():
        if image_id not in truth:
            continue
        objects = frozenset(truth[image_id])
        mentions = find_mentions(caption, vocabulary)
        per_image[str(image_id)] = CaptionChair(mentions, [m for m in mentions if m.object not in objects], objects)
    if not per_image:
        raise ChairUnavailable("no captioned image has a ground truth of objects")
    n_mentions = sum(len(c.mentions) for c in per_image.values())
    n_hallucinated = sum(len(c.hallucinated) for c in per_image.values())
    n_truth = sum(len(c.truth) for c in per_image.values())
    return ChairReport(
        chair_i=n_hallucinated / n_mentions if n_mentions else None,
        chair_s=sum(bool(c.hallucinated) for c in per_image.values()) / len(per_image),
        recall=sum(len(c.recalled) for c in per_image.values()) / n_truth if n_truth else None,
        n_captions=len(per_image), n_mentions=n_mentions, vocabulary=vocabulary.source, per_image=per_image)


def mark_hallucinated(caption: str, hallucinated: Iterable[str], marker: str = "**") -> str:
    """The caption with each hallucinated word (or two-word name) wrapped in `marker` (markdown bold)."""
    for word in sorted(set(hallucinated), key=len, reverse=True):
        forms = {word, word + "s", word + "es", *(p for p, one in IRREGULAR_PLURALS.items() if one == word)}
        if word.endswith("y"):
            forms.add(word[:-1] + "ies")
        pattern = "|".join(re.escape(form) for form in sorted(forms, key=len, reverse=True))
        caption = re.sub(rf"(?<![\w*])({pattern})(?![\w*])", rf"{marker}\1{marker}", caption, flags=re.IGNORECASE)
    return caption


# --- one evaluation's CHAIR ----------------------------------------------------------------------


@dataclass
class ChairOutcome:
    """What an evaluation records of CHAIR: metrics (percent) or why it is unavailable, per-image rates
    and each caption's hallucinated words."""

    metrics: dict[str, float] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    per_image: dict[str, dict[str, float]] = field(default_factory=dict)
    hallucinated: dict[str, list[str]] = field(default_factory=dict)


def chair_for_evaluation(spec, records: list, predictions: Mapping[str, str],
                         instances: Iterable[str | Path] | None = None) -> ChairOutcome:
    """CHAIR of an evaluation's predictions on dataset `spec` (a `DatasetSpec`) and its `records`: from the
    scenes on a generated world, from COCO instance annotations (`instances`, else `instances_*.json` beside
    a Karpathy file) plus references elsewhere; unavailable, with why, when neither is there."""
    try:
        report = _report(spec, records, predictions, instances)
    except ChairUnavailable as exc:
        return ChairOutcome(unavailable={name: str(exc) for name in CHAIR_METRICS})
    return outcome_of(report)


def outcome_of(report: ChairReport) -> ChairOutcome:
    """What an evaluation records of a ChairReport."""
    metrics = report.paper_scale_metrics()
    outcome = ChairOutcome(metrics=metrics, hallucinated=report.hallucinated_words())
    for name in CHAIR_METRICS:
        if name not in metrics:
            outcome.unavailable[name] = ("no caption names an object of the vocabulary" if name == "CHAIR-i"
                                         else "the images have no ground-truth objects")
    outcome.per_image = {
        "CHAIR-s": {k: 100.0 * bool(c.hallucinated) for k, c in report.per_image.items()},
        "CHAIR-i": {k: 100.0 * len(c.hallucinated) / len(c.mentions)
                    for k, c in report.per_image.items() if c.mentions},
    }
    return outcome


def _report(spec, records: list, predictions: Mapping[str, str], instances) -> ChairReport:
    from captionlab.world.objects import scene_kinds, world_folder_of

    world = world_folder_of(spec.annotations)
    if world is not None:
        domain = records[0].domain if records else spec.name
        truth = scene_kinds(world, domain, predictions)
        if not truth:
            raise ChairUnavailable(f"the embedded world in {world} has no scene for these {domain} image ids")
        return score_chair(predictions, truth, world_vocabulary())
    files = list(instances) if instances is not None else (
        find_instances(spec.annotations) if spec.format == "karpathy" else [])
    if not files:
        where = (f"no instances_*.json beside {spec.annotations}" if spec.format == "karpathy"
                 else f"the {spec.format} format has none")
        raise ChairUnavailable(f"CHAIR needs COCO instance annotations (instances_*.json, COCO's 80 objects) for "
                               f"these images: {where}. Fix: put COCO's instances_train2014.json / "
                               f"instances_val2014.json beside the caption file, or pass --instances")
    vocabulary = coco_vocabulary()
    references = {r.image_id: list(r.references) for r in records if r.image_id in predictions}
    return score_chair(predictions, coco_truth(files, references, vocabulary), vocabulary)
