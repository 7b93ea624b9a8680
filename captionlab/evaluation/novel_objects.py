"""Novel-object naming, counted loosely and for correctness (nocaps' question: can a captioner name what COCO lacks?).

A caption *names a novel kind* when it names, as a whole word (singular or plural, any of the kind's nouns), an
object kind that no in-domain (coco) caption names. That alone says nothing about whether the kind is in the
picture: a captioner that says "guitar" of every image names a novel kind in every caption. So the naming is
*correct* only when the image's own references name that kind too, and *wrong* when the caption names novel kinds
none of which its references name. The loose count is reported beside the correct one, never instead of it.

Which kinds are novel is a property of the in-domain captions (`novel_kinds`): a kind none of whose nouns appears in
any of them. The embedded world's vocabulary lists its kinds and their nouns (`world.vocabulary.KIND_SYNONYMS`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class NovelNaming:
    """How many captions name a novel kind at all, rightly (their references name it) and wrongly (none does)."""

    captions: int
    named: int
    correct: int
    wrong: int
    shown: int  # images whose references name a novel kind: how many a perfect captioner would name correctly

    def line(self, label: str) -> str:
        return (f"{label} names a nocaps-only object kind in {self.named} of {self.captions} nocaps captions: "
                f"correctly (the image's references name it) in {self.correct} of the {self.shown} images that "
                f"show one, wrongly in {self.wrong}.")


def kind_patterns(nouns_by_kind: Mapping[str, Iterable[str]], plural: Callable[[str], str]) -> dict[str, re.Pattern]:
    """kind -> one case-insensitive whole-word pattern over its nouns and their plurals (longest first)."""
    patterns = {}
    for kind, nouns in nouns_by_kind.items():
        forms = sorted({form for noun in nouns for form in (noun, plural(noun))}, key=len, reverse=True)
        patterns[kind] = re.compile(r"\b(?:" + "|".join(re.escape(form) for form in forms) + r")\b", re.IGNORECASE)
    return patterns


def kinds_named(text: str, patterns: Mapping[str, re.Pattern]) -> set[str]:
    """The kinds whose nouns `text` contains as whole words."""
    return {kind for kind, pattern in patterns.items() if pattern.search(text)}


def novel_kinds(patterns: Mapping[str, re.Pattern], in_domain_texts: Iterable[str]) -> list[str]:
    """The kinds that no in-domain text names (in the order `patterns` lists them)."""
    named: set[str] = set()
    for text in in_domain_texts:
        named |= kinds_named(text, patterns)
    return [kind for kind in patterns if kind not in named]


def count_novel_naming(predictions: Mapping[str, str], references: Mapping[str, list[str]],
                       novel_patterns: Mapping[str, re.Pattern]) -> NovelNaming:
    """Count, over the captioned images, loose, correct and wrong namings of the novel kinds."""
    named = correct = wrong = shown = 0
    for image_id, caption in predictions.items():
        in_references = set().union(*(kinds_named(r, novel_patterns) for r in references.get(image_id, [])))
        shown += bool(in_references)
        said = kinds_named(caption, novel_patterns)
        if not said:
            continue
        named += 1
        if said & in_references:
            correct += 1
        else:
            wrong += 1
    return NovelNaming(captions=len(predictions), named=named, correct=correct, wrong=wrong, shown=shown)


def embedded_novel_patterns() -> dict[str, re.Pattern]:
    """The embedded world's novel kinds (those its coco domain never names) as whole-word patterns."""
    from captionlab.world.vocabulary import KIND_SYNONYMS, NOVEL_KINDS, plural

    return kind_patterns({kind: KIND_SYNONYMS[kind] for kind in NOVEL_KINDS}, plural)
