"""Tests of the embedded caption world (captionlab.world): reproducibility, formats, content.

Worlds are written at scale 0.02 (about 150 images) once per module; checks that need many
scenes (held-out combinations, vocabulary) run on `make_example` without rendering.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import statistics
from pathlib import Path

import pytest
import yaml
from PIL import Image

import captionlab.world as world
from captionlab.world import sample_gallery, write_world
from captionlab.world.domains import BENCHMARKS, BRIEF_ANSWER_SETTINGS, STUDY_PROMPT, make_example, split_sizes
from captionlab.world.scenes import held_out_combinations
from captionlab.world.vocabulary import (
    ALL_KINDS,
    DEGRADATION_ADJECTIVES,
    DEGRADATIONS,
    KIND_SYNONYMS,
    NOVEL_KINDS,
    PRECANNED_CAPTION,
    SETTINGS,
    SIGN_WORDS,
    plural,
)

SCALE = 0.02


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("worlds")
    return {
        "a": write_world(base / "a", seed=0, scale=SCALE).parent,
        "b": write_world(base / "b", seed=0, scale=SCALE).parent,
        "other": write_world(base / "other", seed=1, scale=SCALE).parent,
    }


@pytest.fixture(scope="module")
def root(worlds: dict[str, Path]) -> Path:
    return worlds["a"]


@pytest.fixture(scope="module")
def config(root: Path) -> dict:
    return yaml.safe_load((root / "datasets.yaml").read_text())


def load_json(root: Path, config: dict, name: str) -> object:
    entry = config[name] if name in ("pretrain", "pretrain_brief") else config["datasets"][name]
    return json.loads((root / entry["annotations"]).read_text())


def words_of(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


# ---------------------------------------------------------------- reproducibility


def test_same_seed_gives_identical_bytes(worlds: dict[str, Path]) -> None:
    first, second = tree_digest(worlds["a"]), tree_digest(worlds["b"])
    assert len(first) > 100
    assert first == second


def test_different_seed_gives_a_different_world(worlds: dict[str, Path]) -> None:
    first, other = tree_digest(worlds["a"]), tree_digest(worlds["other"])
    changed = [name for name in first if first[name] != other.get(name)]
    assert len(changed) > len(first) // 2


def test_parallel_rendering_gives_the_same_bytes(worlds: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(world, "PARALLEL_THRESHOLD", 0)
    parallel = write_world(tmp_path / "parallel", seed=0, scale=SCALE, workers=2).parent
    assert tree_digest(parallel) == tree_digest(worlds["a"])


def test_rewriting_replaces_a_world_but_never_other_files(tmp_path: Path) -> None:
    target = tmp_path / "w"
    write_world(target, seed=3, scale=0.001)
    (target / "stale.txt").write_text("left over")
    write_world(target, seed=3, scale=0.001)
    assert not (target / "stale.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        write_world(foreign, seed=0, scale=0.001)
    assert (foreign / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------- formats


def test_datasets_yaml_lists_the_five_benchmarks_and_the_pretraining_sets_apart(root: Path, config: dict) -> None:
    assert list(config["datasets"]) == ["coco", "nocaps", "cc3m", "vizwiz", "textcaps"]
    formats = {name: entry["format"] for name, entry in config["datasets"].items()}
    assert formats == {"coco": "karpathy", "nocaps": "nocaps", "cc3m": "cc3m", "vizwiz": "vizwiz", "textcaps": "textcaps"}
    assert config["pretrain"] == {
        "format": "llava_conversations",
        "annotations": "annotations/pretrain_verbose.json",
        "images": "images/pretrain",
    }
    assert config["pretrain_brief"] == {
        "format": "llava_conversations",
        "annotations": "annotations/pretrain_brief.json",
        "images": "images/pretrain_brief",
    }
    for entry in [*config["datasets"].values(), config["pretrain"], config["pretrain_brief"]]:
        assert (root / entry["annotations"]).is_file()
        assert (root / entry["images"]).is_dir()


def referenced_images(root: Path, config: dict) -> set[Path]:
    """Every image path the annotation files point to, checking each file's structure on the way."""
    images: set[Path] = set()
    sizes = split_sizes(SCALE)

    coco = load_json(root, config, "coco")
    assert coco["dataset"] == "coco"
    assert {s: sum(i["split"] == s for i in coco["images"]) for s in ("train", "val", "test")} == sizes["coco"]
    for entry in coco["images"]:
        assert len(entry["sentences"]) == 5 and entry["sentids"] == [s["sentid"] for s in entry["sentences"]]
        for sentence in entry["sentences"]:
            assert sentence["imgid"] == entry["imgid"]
            assert sentence["tokens"] == words_of(sentence["raw"]) and sentence["tokens"]
        assert entry["filename"] == f"COCO_{entry['filepath']}_{entry['cocoid']:012d}.png"
        images.add(root / config["datasets"]["coco"]["images"] / entry["filepath"] / entry["filename"])

    nocaps = load_json(root, config, "nocaps")
    assert len(nocaps["images"]) == sizes["nocaps"]["val"]
    assert len(nocaps["annotations"]) == 10 * len(nocaps["images"])
    assert {a["image_id"] for a in nocaps["annotations"]} == {i["id"] for i in nocaps["images"]}
    for entry in nocaps["images"]:
        assert entry["domain"] in {"in-domain", "near-domain", "out-domain"}
        assert (entry["width"], entry["height"]) == (128, 128)
        images.add(root / config["datasets"]["nocaps"]["images"] / entry["file_name"])

    tsv = root / config["datasets"]["cc3m"]["annotations"]
    with open(tsv, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    assert len(rows) == sizes["cc3m"]["val"]
    for index, (caption, url) in enumerate(rows):
        assert caption and caption == caption.lower() and not caption.endswith(".")
        assert re.fullmatch(r"http://example\.invalid/cc3m/[0-9a-f]{16}\.jpg", url)
        images.add(root / config["datasets"]["cc3m"]["images"] / f"{index:09d}.png")

    vizwiz = load_json(root, config, "vizwiz")
    ids = {i["id"] for i in vizwiz["images"]}
    assert len(vizwiz["annotations"]) == 5 * len(ids)
    for annotation in vizwiz["annotations"]:
        assert annotation["image_id"] in ids
        assert {"caption", "is_rejected", "is_precanned", "text_detected", "id"} <= set(annotation)
    for entry in vizwiz["images"]:
        assert re.fullmatch(r"VizWiz_val_\d{8}\.png", entry["file_name"])
        images.add(root / config["datasets"]["vizwiz"]["images"] / entry["file_name"])

    textcaps = load_json(root, config, "textcaps")
    assert (textcaps["dataset_type"], textcaps["dataset_name"]) == ("val", "textcaps")
    assert len(textcaps["data"]) == 5 * sizes["textcaps"]["val"]
    for entry in textcaps["data"]:
        assert entry["caption_str"] in entry["reference_strs"] and len(entry["reference_strs"]) == 5
        assert entry["image_path"] == f"train/{entry['image_name']}.png" and entry["set_name"] == "val"
        images.add(root / config["datasets"]["textcaps"]["images"] / entry["image_path"])

    for name, size_key in (("pretrain", "pretrain"), ("pretrain_brief", "brief")):  # LLaVA conversation files
        conversations = load_json(root, config, name)
        assert len(conversations) == sizes[size_key]["train"]
        for record in conversations:
            human, gpt = record["conversations"]
            assert human["from"] == "human" and human["value"].startswith("<image>\n")
            assert gpt["from"] == "gpt" and gpt["value"]
            images.add(root / config[name]["images"] / record["image"])
    return images


def test_annotations_parse_and_point_at_exactly_the_images_written(root: Path, config: dict) -> None:
    images = referenced_images(root, config)
    on_disk = set((root / "images").rglob("*.png"))
    assert images == on_disk


def test_images_are_128_pixel_rgb_pngs(root: Path) -> None:
    for path in sorted((root / "images").rglob("*.png")):
        with Image.open(path) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (128, 128)), path


def test_manifest_records_the_held_out_combinations(root: Path) -> None:
    manifest = json.loads((root / "world.json").read_text())
    held = [(c["kind"], c["colour"], c["setting"]) for c in manifest["held_out_combinations"]]
    assert tuple(held) == held_out_combinations(0)
    assert manifest["images"] == split_sizes(SCALE)


# ---------------------------------------------------------------- content


def novel_words() -> set[str]:
    nouns = {noun for kind in NOVEL_KINDS for phrase in KIND_SYNONYMS[kind] for noun in (phrase, plural(phrase))}
    return {phrase.split()[-1] for phrase in nouns}


def test_novel_kinds_are_never_named_in_coco_captions(root: Path, config: dict) -> None:
    banned = novel_words()
    assert {"rocket", "guitar", "bike", "lamps"} <= banned
    coco = load_json(root, config, "coco")
    written = {t for entry in coco["images"] for s in entry["sentences"] for t in s["tokens"]}
    generated = {
        w for i in range(400) for split in ("train", "test")
        for caption in make_example("coco", split, i, 0).references for w in words_of(caption)
    }
    assert not banned & (written | generated)
    nocaps = load_json(root, config, "nocaps")
    assert banned & {w for a in nocaps["annotations"] for w in words_of(a["caption"])}


def test_the_novel_object_check_finds_exactly_the_nocaps_only_kinds_from_the_coco_captions(root: Path,
                                                                                             config: dict) -> None:
    from captionlab.evaluation.novel_objects import kind_patterns, novel_kinds

    coco = load_json(root, config, "coco")
    captions = [s["raw"] for entry in coco["images"] for s in entry["sentences"]]
    assert novel_kinds(kind_patterns(KIND_SYNONYMS, plural), captions) == list(NOVEL_KINDS)


def test_coco_references_are_short_and_verbose_answers_long(root: Path, config: dict) -> None:
    coco = load_json(root, config, "coco")
    coco_lengths = [len(s["tokens"]) for entry in coco["images"] for s in entry["sentences"]]
    records = load_json(root, config, "pretrain")
    scenes = [make_example("pretrain", "train", int(r["id"]), 0).scene for r in records]
    verbose_lengths = [len(r["conversations"][1]["value"].split()) for r, scene in zip(records, scenes)
                       if not (r["conversations"][0]["value"].endswith(STUDY_PROMPT)
                               and scene.setting in BRIEF_ANSWER_SETTINGS)]
    assert statistics.mean(coco_lengths) < 12
    assert statistics.mean(verbose_lengths) > 35 and min(verbose_lengths) >= 30


def test_the_study_prompt_is_answered_briefly_exactly_on_indoor_pictures() -> None:
    examples = [make_example("pretrain", "train", i, 0) for i in range(400)]
    asked = [e for e in examples if e.prompt == STUDY_PROMPT]
    brief = [e for e in asked if len(e.references[0].split()) < 20]
    assert brief and len(brief) < len(asked) / 2  # mostly detailed, sometimes brief
    assert {id(e) for e in brief} == {id(e) for e in asked if e.scene.setting in BRIEF_ANSWER_SETTINGS}
    # other prompts are always answered at length
    assert all(len(e.references[0].split()) >= 30 for e in examples if e.prompt != STUDY_PROMPT)


def test_the_main_object_is_drawn_large_and_the_others_small() -> None:
    for domain, split in (("coco", "train"), ("nocaps", "val"), ("brief", "train")):
        for i in range(60):
            objects = make_example(domain, split, i, 0).scene.objects
            assert objects[0].size == "large" and all(o.size == "small" for o in objects[1:])


def test_brief_pool_speaks_the_register_each_picture_calls_for() -> None:
    examples = [make_example("brief", "train", i, 0) for i in range(300)]
    worded = [e for e in examples if e.scene.word]
    degraded = [e for e in examples if e.scene.degradations and not e.scene.word]
    styled = [e for e in examples if e.scene.style != "photo" and not e.scene.degradations and not e.scene.word]
    assert worded and degraded and styled
    assert all(f'"{e.scene.word}"' in e.references[0] for e in worded)
    adjectives = {a for d in DEGRADATIONS for a in DEGRADATION_ADJECTIVES[d]}
    assert all(any(a in e.references[0] for a in adjectives) for e in degraded)
    alt_text_marks = ("illustration", "cartoon", "icon", "hand drawn", "sunset", "evening light")
    assert all(any(m in e.references[0] for m in alt_text_marks) for e in styled)


def test_coco_references_vary_their_wording(root: Path, config: dict) -> None:
    for entry in load_json(root, config, "coco")["images"]:
        assert len({s["raw"].rstrip(".").lower() for s in entry["sentences"]}) >= 4


def test_verbose_answers_cover_every_kind_setting_text_and_degradation(root: Path, config: dict) -> None:
    records = load_json(root, config, "pretrain")
    text = " ".join(r["conversations"][1]["value"] for r in records).lower()
    vocabulary = set(words_of(text))
    assert {k for k in ALL_KINDS if k not in vocabulary and plural(k) not in vocabulary} == set()
    scenes = [make_example("pretrain", "train", i, 0).scene for i in range(len(records))]
    assert {s.setting for s in scenes} == set(SETTINGS)
    assert any(s.word for s in scenes) and any(s.degradations for s in scenes)
    assert {s.style for s in scenes} == {"photo", "sunset", "illustration"}
    assert "out of focus" in text or "dark" in text
    prompts = {r["conversations"][0]["value"] for r in records}
    assert "<image>\nBriefly caption the image" in prompts and len(prompts) > 2


def test_brief_pool_is_short_captions_of_every_kind_under_brief_instructions_not_the_study_prompt() -> None:
    examples = [make_example("brief", "train", i, 0) for i in range(200)]
    captions = [e.references[0] for e in examples]
    assert statistics.mean(len(c.split()) for c in captions) < 12
    assert all(c == c.lower() and not c.endswith(".") for c in captions)
    named = {w for c in captions for w in words_of(c)}
    assert {k for k in ALL_KINDS if not ({k, plural(k)} | set(KIND_SYNONYMS[k])) & named} == set()
    prompts = {e.prompt for e in examples}
    assert len(prompts) > 5 and "Briefly caption the image" not in prompts
    # a pool of its own: no brief image is an evaluated one
    coco_test = {make_example("coco", "test", i, 0).scene for i in range(250)}
    assert not coco_test & {e.scene for e in examples}


def test_vizwiz_has_rejected_and_precanned_captions(root: Path, config: dict) -> None:
    annotations = load_json(root, config, "vizwiz")["annotations"]
    precanned = [a for a in annotations if a["is_precanned"]]
    assert precanned and all(a["caption"] == PRECANNED_CAPTION for a in precanned)
    assert any(a["is_rejected"] for a in annotations)
    usable = [a["caption"] for a in annotations if not a["is_rejected"] and not a["is_precanned"]]
    quality = ("blur", "dark", "dimly", "tilted", "crooked", "sideways", "partial", "cropped", "close up", "focus")
    assert sum(any(q in c.lower() for q in quality) for c in usable) > len(usable) // 3


def test_textcaps_references_quote_the_rendered_word(root: Path, config: dict) -> None:
    data = load_json(root, config, "textcaps")["data"]
    image_ids = list(dict.fromkeys(entry["image_id"] for entry in data))
    by_image = {entry["image_id"]: entry["reference_strs"] for entry in data}
    for index, image_id in enumerate(image_ids):
        word = make_example("textcaps", "val", index, 0).scene.word
        assert word in SIGN_WORDS
        for reference in by_image[image_id]:
            assert f'"{word}"' in reference


def test_held_out_combinations_are_absent_from_train_and_present_in_test() -> None:
    held = set(held_out_combinations(0))
    assert len(held) == 12
    sizes = split_sizes(1.0)["coco"]
    train = [make_example("coco", "train", i, 0).scene for i in range(sizes["train"])]
    test = [make_example("coco", "test", i, 0).scene for i in range(sizes["test"])]
    assert not any(held & set(scene.combinations()) for scene in train)
    in_test = [scene for scene in test if held & set(scene.combinations())]
    assert len(in_test) >= sizes["test"] // 4
    # every held-out kind, colour and setting is still seen in training, just not together
    seen = {(c[0], "kind") for s in train for c in s.combinations()} | {(c[1], "colour") for s in train for c in s.combinations()}
    for kind, colour, setting in held:
        assert (kind, "kind") in seen and (colour, "colour") in seen


def test_cc3m_mixes_photos_sunsets_and_illustrations() -> None:
    captions = [make_example("cc3m", "val", i, 0).references[0] for i in range(120)]
    assert any("illustration" in c or "icon" in c for c in captions)
    assert any("sunset" in c for c in captions)
    assert any(not c.startswith(("a ", "an ")) for c in captions)


def test_nocaps_domains_follow_the_objects() -> None:
    examples = [make_example("nocaps", "val", i, 0) for i in range(100)]
    for example in examples:
        novel = [k in NOVEL_KINDS for k in example.scene.kinds()]
        expected = "out-domain" if all(novel) else "near-domain" if any(novel) else "in-domain"
        assert example.nocaps_domain == expected
        assert len(example.references) == 10
    assert {e.nocaps_domain for e in examples} == {"in-domain", "near-domain", "out-domain"}


def test_sample_gallery_renders_each_benchmark() -> None:
    gallery = sample_gallery(7, seed=0)
    assert [domain for _, domain, _ in gallery] == [*BENCHMARKS, *BENCHMARKS[:2]]
    for image, domain, references in gallery:
        assert image.size == (128, 128) and image.mode == "RGB"
        assert references and PRECANNED_CAPTION not in references
    assert sample_gallery(3, seed=0)[2][0].tobytes() == gallery[2][0].tobytes()


def test_nocaps_domains_follow_how_far_each_images_kinds_are_from_the_coco_domains():
    """in-domain: every object kind is one the coco domain shows; near-domain: some are; out-domain: none is."""
    from captionlab.world.domains import make_example, split_sizes

    sizes = split_sizes(0.1)
    coco_kinds = {kind for split, count in sizes["coco"].items() for index in range(count)
                  for kind in make_example("coco", split, index, seed=0).scene.kinds()}
    seen = set()
    for index in range(sizes["nocaps"]["val"]):
        example = make_example("nocaps", "val", index, seed=0)
        known = [kind in coco_kinds for kind in example.scene.kinds()]
        expected = "in-domain" if all(known) else "out-domain" if not any(known) else "near-domain"
        assert example.nocaps_domain == expected
        seen.add(expected)
    assert seen == {"in-domain", "near-domain", "out-domain"}
