"""Novel-object naming: whole words and plurals, counted loosely and for correctness against the references."""

from __future__ import annotations

from captionlab.evaluation.novel_objects import (
    count_novel_naming,
    embedded_novel_patterns,
    kind_patterns,
    kinds_named,
    novel_kinds,
)
from captionlab.world.vocabulary import KIND_SYNONYMS, NOVEL_KINDS, plural


def test_whole_words_and_plurals_of_any_noun_name_a_kind():
    novel = embedded_novel_patterns()
    assert kinds_named("Two bikes leaning on a wall.", novel) == {"bicycle"}
    assert kinds_named("A Table Lamp and a guitar.", novel) == {"lamp", "guitar"}
    assert kinds_named("A lampshade, a rocketship and an anchored boat.", novel) == set()  # not whole words
    assert kinds_named("A red ball on the grass.", novel) == set()


def test_a_naming_counts_as_correct_only_where_the_image_references_name_the_kind():
    novel = embedded_novel_patterns()
    predictions = {"a": "A guitar on a table.", "b": "A guitar on a table.", "c": "Two bikes.", "d": "A red cup."}
    references = {"a": ["An acoustic guitar."], "b": ["A table lamp on a desk."], "c": ["A bicycle by a tree."],
                  "d": ["A crown on a cushion."]}
    counted = count_novel_naming(predictions, references, novel)
    assert (counted.captions, counted.named, counted.correct, counted.wrong, counted.shown) == (4, 3, 2, 1, 4)
    assert "in 3 of 4 nocaps captions: correctly (the image's references name it) in 2 of the 4" in counted.line("X")


def test_a_captioner_naming_one_kind_everywhere_is_mostly_wrong():
    novel = embedded_novel_patterns()
    references = {str(i): [f"A {kind} in a field."] for i, kind in enumerate(NOVEL_KINDS)}
    counted = count_novel_naming({i: "A rocket." for i in references}, references, novel)
    assert counted.named == len(NOVEL_KINDS) and counted.correct == 1 and counted.wrong == len(NOVEL_KINDS) - 1


def test_the_novel_kinds_are_the_kinds_no_in_domain_caption_names():
    patterns = kind_patterns(KIND_SYNONYMS, plural)
    in_domain = ["A red ball and two boxes.", "A mug on a table.", "A wall clock above a house."]
    found = novel_kinds(patterns, in_domain)
    assert "ball" not in found and "box" not in found and "cup" not in found and "clock" not in found
    assert set(NOVEL_KINDS) <= set(found)
