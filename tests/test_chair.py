"""CHAIR (Rohrbach et al. 2018): a hand-computed case with synonyms, plurals and two-word names; the embedded
world's ground truth from its scenes; unavailable, with why, without instance annotations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from captionlab.data.datasets import DatasetSpec
from captionlab.data.records import CaptionRecord
from captionlab.evaluation.chair import (ChairUnavailable, chair_for_evaluation, coco_truth, coco_vocabulary,
                                         find_mentions, mark_hallucinated, read_synonyms, score_chair, singular,
                                         world_vocabulary)


def test_the_published_synonym_lists_are_shipped_whole():
    groups = read_synonyms()
    assert len(groups) == 80  # COCO's 80 objects, one line each
    heads = [group[0] for group in groups]
    assert heads[0] == "person" and "teddy bear" in heads and "hot dog" in heads
    words = coco_vocabulary().words
    assert words["puppy"] == "dog" and words["motor bike"] == "motorcycle" and words["cheesecake"] == "cake"


@pytest.mark.parametrize("plural, single", [("dogs", "dog"), ("boxes", "box"), ("benches", "bench"),
                                            ("knives", "knife"), ("puppies", "puppy"), ("buses", "bus"),
                                            ("glass", "glass"), ("bus", "bus"), ("men", "man")])
def test_plurals_are_read_as_their_singular(plural, single):
    assert singular(plural) == single


def test_a_hand_computed_case_with_synonyms_plurals_and_two_word_names():
    vocabulary = coco_vocabulary()
    predictions = {
        "1": "Two puppies and a kitten sit on a sofa next to a teddy bear.",   # dog, cat, couch, teddy bear
        "2": "A man eats hot dogs at a dining table with his bike.",             # person, hot dog, table, bicycle
        "3": "A baby bird on a toilet seat.",                                    # bird, toilet (no person, no chair)
        "4": "A sunny day.",                                                     # nothing
    }
    truth = {"1": {"dog", "couch"}, "2": {"person", "hot dog", "dining table"}, "3": {"bird"}, "4": {"person"}}
    report = score_chair(predictions, truth, vocabulary)
    mentions = {k: [(m.word, m.object) for m in c.mentions] for k, c in report.per_image.items()}
    assert mentions["1"] == [("puppy", "dog"), ("kitten", "cat"), ("sofa", "couch"), ("teddy bear", "teddy bear")]
    assert mentions["2"] == [("man", "person"), ("hot dog", "hot dog"), ("table", "dining table"),
                             ("bike", "bicycle")]
    assert mentions["3"] == [("bird", "bird"), ("toilet", "toilet")]
    assert mentions["4"] == []
    # by hand: hallucinated mentions kitten, teddy bear (image 1), bike (2), toilet (3): 4 of 10 mentions;
    # captions with one: 1, 2, 3 of 4;
    # recall: dog, couch | person, hot dog, dining table | bird | (person not named): 6 of 7
    assert report.chair_i == pytest.approx(4 / 10)
    assert report.chair_s == pytest.approx(3 / 4)
    assert report.recall == pytest.approx(6 / 7)
    assert report.paper_scale_metrics() == pytest.approx({"CHAIR-i": 40.0, "CHAIR-s": 75.0, "Object-Recall": 600 / 7})
    assert report.hallucinated_words() == {"1": ["kitten", "teddy bear"], "2": ["bike"], "3": ["toilet"]}


def test_repeated_mentions_each_count_as_in_the_paper():
    report = score_chair({"1": "A cat, a cat and another cat beside a dog."}, {"1": {"dog"}}, coco_vocabulary())
    assert report.chair_i == pytest.approx(3 / 4) and report.chair_s == 1.0


def test_coco_truth_joins_instance_categories_and_the_references_objects(tmp_path):
    instances = tmp_path / "instances_val2014.json"
    instances.write_text(json.dumps({"categories": [{"id": 18, "name": "dog"}, {"id": 62, "name": "chair"}],
                                     "annotations": [{"image_id": 7, "category_id": 18},
                                                     {"image_id": 8, "category_id": 62}]}))
    vocabulary = coco_vocabulary()
    truth = coco_truth([instances], {"7": ["A puppy on a couch."]}, vocabulary)
    assert truth == {"7": frozenset({"dog", "couch"})}  # image 8 was not asked for


def test_hallucinated_words_are_marked_in_the_caption():
    marked = mark_hallucinated("Two puppies and a kitten near a teddy bear", ["puppy", "teddy bear"])
    assert marked == "Two **puppies** and a kitten near a **teddy bear**"
    assert mark_hallucinated("Three cups on a table", ["cup"]) == "Three **cups** on a table"


def test_the_embedded_world_knows_each_scenes_objects(tiny_world):
    from captionlab.data.datasets import resolve_dataset

    spec = resolve_dataset("coco", config_path=tiny_world)
    records = spec.read(split="test")
    vocabulary = world_vocabulary()
    # the references describe the scene, so every object they name is one of the scene's
    predictions = {r.image_id: r.references[0] for r in records}
    outcome = chair_for_evaluation(spec, records, predictions)
    assert outcome.metrics["CHAIR-i"] == 0.0 and outcome.metrics["CHAIR-s"] == 0.0
    assert 0 < outcome.metrics["Object-Recall"] <= 100.0
    # naming a kind the scene lacks is a hallucination
    from captionlab.world.objects import scene_kinds, world_folder_of

    truth = scene_kinds(world_folder_of(spec.annotations), "coco", predictions)
    image_id, kinds = next(iter(truth.items()))
    absent = next(k for k in ("rocket", "guitar", "crown") if k not in kinds)
    report = score_chair({image_id: f"Two {absent}s."}, truth, vocabulary)
    assert report.chair_s == 1.0 and report.hallucinated_words() == {image_id: [absent]}


def test_without_instance_annotations_chair_is_unavailable_and_says_why(tmp_path):
    spec = DatasetSpec("mine", "karpathy", tmp_path / "dataset_coco.json", tmp_path)
    records = [CaptionRecord("1", tmp_path / "a.png", ("A dog.",), "test", "coco")]
    outcome = chair_for_evaluation(spec, records, {"1": "A cat."})
    assert outcome.metrics == {}
    assert set(outcome.unavailable) == {"CHAIR-i", "CHAIR-s", "Object-Recall"}
    assert "instances_" in outcome.unavailable["CHAIR-s"] and "--instances" in outcome.unavailable["CHAIR-s"]
    with pytest.raises(ChairUnavailable):
        score_chair({"1": "A cat."}, {}, coco_vocabulary())


def test_mentions_in_the_embedded_vocabulary_use_the_worlds_nouns():
    mentions = find_mentions("Two toy balls, a mug and three boxes by a sailboat.", world_vocabulary())
    assert [(m.word, m.object) for m in mentions] == [("toy ball", "ball"), ("mug", "cup"), ("box", "box"),
                                                      ("sailboat", "boat")]
    assert Path(__file__).exists()


def _yours(strategy: str, chair_s: float, results_json: str | None = None) -> dict:
    return {"source": "yours", "model": "embedded", "strategy": strategy, "dataset": "coco", "split": "test",
            "metrics": {"CIDEr": 80.0, "CHAIR-i": chair_s / 2, "CHAIR-s": chair_s}, "label": "",
            "checkpoint_key": None, "results_json": results_json, "predictions_path": None}


def test_benchmarks_tables_show_chair_with_the_lowest_in_bold():
    from captionlab.service.benchmarks import table_rows

    columns, cells, _ = table_rows([_yours("lora", 40.0), _yours("full", 25.0)], ["coco"])
    assert columns[-2:] == ["CHAIR-i", "CHAIR-s"]
    by_strategy = {line[2]: line for line in cells}
    assert by_strategy["Full fine-tuning"][-1] == "**25.0** ★" and by_strategy["LoRA"][-1] == "40.0"


def test_drilldown_marks_each_captions_hallucinated_words(tmp_path):
    from captionlab.evaluation.results import ResultRow, write_results_json
    from captionlab.service.benchmarks import drilldown

    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text(json.dumps({"image_id": "1", "caption": "Two cats by a dog", "references": ["A dog"]})
                           + "\n" + json.dumps({"image_id": "2", "caption": "A dog", "references": ["A dog"]}) + "\n")
    row = ResultRow("embedded", "lora", "coco", "test", {"CHAIR-s": 50.0}, 2)
    path = write_results_json(tmp_path, row, per_image={"CHAIR-s": {"1": 100.0, "2": 0.0}},
                              hallucinated={"1": ["cat"]})
    lines, note = drilldown({**_yours("lora", 50.0, str(path)), "predictions_path": str(predictions)})
    assert lines[0]["caption"] == "Two **cats** by a dog" and lines[0]["hallucinated"] == "cat"
    assert lines[1]["caption"] == "A dog" and lines[1]["hallucinated"] == ""
    assert "CHAIR" in note


def test_the_shipped_studys_chair_comes_from_its_own_predictions_and_world(tmp_path):
    import shutil

    from captionlab import paths
    from captionlab.evaluation.chair_study import StudyMismatch, add_chair

    shipped = paths.CHECKPOINTS_DIR / "embedded" / "results" / "lora" / "coco"
    if not (shipped / "predictions.jsonl").exists():
        pytest.skip("no shipped study")
    folder = tmp_path / "lora" / "coco"
    shutil.copytree(shipped, folder)
    cider_before = json.loads((folder / "results.json").read_text())["result"]["metrics"]["CIDEr"]
    metrics = add_chair(folder / "results.json")
    assert set(metrics) == {"CHAIR-i", "CHAIR-s", "Object-Recall"} and 0 <= metrics["CHAIR-s"] <= 100
    document = json.loads((folder / "results.json").read_text())
    assert document["result"]["metrics"]["CHAIR-s"] == metrics["CHAIR-s"] and document["hallucinated_words"]
    assert document["result"]["metrics"]["CIDEr"] == cider_before  # the rest untouched
    lines = (folder / "predictions.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["references"] = ["A caption of some other world."]
    (folder / "predictions.jsonl").write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    with pytest.raises(StudyMismatch, match="references differ"):
        add_chair(folder / "results.json")


def test_coco_instances_beside_a_karpathy_file_make_chair_available(tmp_path):
    (tmp_path / "instances_val2014.json").write_text(json.dumps(
        {"categories": [{"id": 18, "name": "dog"}], "annotations": [{"image_id": 1, "category_id": 18}]}))
    spec = DatasetSpec("mine", "karpathy", tmp_path / "dataset_coco.json", tmp_path)
    records = [CaptionRecord("1", tmp_path / "a.png", ("A puppy on a sofa.",), "test", "coco")]
    outcome = chair_for_evaluation(spec, records, {"1": "A dog and a cat on a couch."})
    # dog (instances) and couch (the reference's sofa) are there, the cat is not: 1 of 3 mentions
    assert outcome.metrics == pytest.approx({"CHAIR-i": 100 / 3, "CHAIR-s": 100.0, "Object-Recall": 100.0})
    assert outcome.hallucinated == {"1": ["cat"]} and outcome.unavailable == {}
