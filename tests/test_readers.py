"""The five benchmark readers and named datasets, on fixtures written in the published formats.

Fixtures live in tests/fixtures/datasets/<benchmark>/ (annotation file + images/) with a
datasets.yaml naming all five. Tests that damage a dataset work on a copy in tmp_path.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
from PIL import Image

from captionlab.data.datasets import (DatasetSpec, load_config, load_records, resolve_dataset,
                                      split_statistics)
from captionlab.data.errors import DatasetError, ReadReport
from captionlab.data.readers import FORMATS, READERS, get_reader, read_dataset

FIXTURES = Path(__file__).parent / "fixtures" / "datasets"
CONFIG = FIXTURES / "datasets.yaml"

# (format, annotation file, images folder) of each fixture, relative to FIXTURES
SOURCES = {
    "karpathy": ("coco/dataset_coco.json", "coco/images"),
    "nocaps": ("nocaps/nocaps_val_4500_captions.json", "nocaps/images"),
    "cc3m": ("cc3m/Validation_GCC-1.1.0-Validation.tsv", "cc3m/images"),
    "cc3m_tsv": ("cc3m/captions.tsv", "cc3m/images"),
    "img2dataset": ("img2dataset/out", "img2dataset/out"),
    "vizwiz": ("vizwiz/val.json", "vizwiz/images"),
    "textcaps": ("textcaps/TextCaps_0.1_val.json", "textcaps/images"),
}
JSON_FORMATS = ["karpathy", "nocaps", "vizwiz", "textcaps"]


def read_fixture(format_name: str, **options: Any):
    annotations, images = SOURCES[format_name]
    return READERS[format_name](FIXTURES / annotations, FIXTURES / images, **options)


def by_id(records) -> dict:
    return {record.image_id: record for record in records}


def copy_fixture(format_name: str, tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of a fixture's folder: (annotation file, images folder)."""
    annotations, images = SOURCES[format_name]
    folder = annotations.split("/")[0]
    shutil.copytree(FIXTURES / folder, tmp_path / folder)
    return tmp_path / annotations, tmp_path / images


def rewrite_json(format_name: str, tmp_path: Path, change: Callable[[dict], Any]) -> Path:
    """The fixture's JSON, changed by `change`, written to tmp_path (images stay in the fixture)."""
    data = json.loads((FIXTURES / SOURCES[format_name][0]).read_text())
    change(data)
    path = tmp_path / Path(SOURCES[format_name][0]).name
    path.write_text(json.dumps(data))
    return path


# ---------------------------------------------------------------- the formats


def test_registry_names_every_format():
    assert set(READERS) == {"karpathy", "nocaps", "cc3m", "cc3m_tsv", "img2dataset", "vizwiz", "textcaps"}
    assert FORMATS == tuple(READERS)
    for reader in READERS.values():
        assert reader.__module__.startswith("captionlab.data.readers.")


def test_karpathy_reads_every_split_with_coco_ids_and_paths():
    records = by_id(read_fixture("karpathy"))
    assert {image_id: record.split for image_id, record in records.items()} == {
        "391895": "test", "60623": "test", "483108": "val", "57870": "train", "184613": "restval"}
    first = records["391895"]
    assert first.image_path == (FIXTURES / "coco/images/val2014/COCO_val2014_000000391895.jpg").resolve()
    assert first.image_path.is_absolute()
    assert first.references[0] == "A man with a red helmet on a small moped on a dirt road."
    assert len(first.references) == 5
    assert first.domain == "coco"
    assert records["57870"].image_path.parent.name == "train2014"
    # an entry without `filepath` sits directly in the images folder
    assert records["184613"].image_path == (FIXTURES / "coco/images/COCO_val2014_000000184613.jpg").resolve()


def test_karpathy_split_filter_and_unknown_split():
    assert sorted(r.image_id for r in read_fixture("karpathy", split="test")) == ["391895", "60623"]
    assert [r.image_id for r in read_fixture("karpathy", split="restval")] == ["184613"]
    with pytest.raises(DatasetError, match=r"no split 'testing'.*restval, test, train, val"):
        read_fixture("karpathy", split="testing")


def test_splits_joined_by_plus_read_together():
    """train+restval: Karpathy's 113,287 training images, what captioning papers train on."""
    records = read_fixture("karpathy", split="train+restval")
    assert sorted((r.image_id, r.split) for r in records) == [("184613", "restval"), ("57870", "train")]
    with pytest.raises(DatasetError, match=r"no split 'restvall'"):
        read_fixture("karpathy", split="train+restvall")
    with pytest.raises(DatasetError, match=r"split 'train\+' has an empty name"):
        read_fixture("karpathy", split="train+")


def test_karpathy_falls_back_to_imgid_tokens_and_the_files_dataset_name(tmp_path):
    def flickr_style(data):
        data["dataset"] = "flickr8k"
        for entry in data["images"]:
            del entry["cocoid"]
            for sentence in entry["sentences"]:
                del sentence["raw"]

    path = rewrite_json("karpathy", tmp_path, flickr_style)
    records = by_id(READERS["karpathy"](path, FIXTURES / "coco/images"))
    assert set(records) == {"0", "1", "2", "3", "4"}
    assert records["0"].references[0] == "a man with a red helmet on a small moped on a dirt road"
    assert records["0"].domain == "flickr8k"
    assert READERS["karpathy"](path, FIXTURES / "coco/images", domain="mine")[0].domain == "mine"


def test_nocaps_groups_interleaved_captions_by_image():
    records = by_id(read_fixture("nocaps"))
    assert {i: len(r.references) for i, r in records.items()} == {"0": 4, "1": 3, "2": 3}
    assert records["2"].references[0] == "A jellyfish floating in dark blue water."
    assert records["0"].image_path.name == "0013ea2087020901.jpg"
    assert {(r.split, r.domain) for r in records.values()} == {("val", "nocaps")}


def test_nocaps_caption_of_an_unknown_image_is_named(tmp_path):
    path = rewrite_json("nocaps", tmp_path, lambda d: d["annotations"][5].update(image_id=99))
    with pytest.raises(DatasetError, match=r"annotations\[5\] refers to image_id 99"):
        READERS["nocaps"](path, FIXTURES / "nocaps/images")


def test_nocaps_file_without_annotations_reads_images_without_references(tmp_path):
    path = rewrite_json("nocaps", tmp_path, lambda d: d.pop("annotations"))
    records = READERS["nocaps"](path, FIXTURES / "nocaps/images")
    assert len(records) == 3 and all(r.references == () for r in records)


def test_cc3m_maps_rows_to_img2dataset_names_then_url_basenames():
    records = read_fixture("cc3m")
    images = (FIXTURES / "cc3m/images").resolve()
    assert [r.image_id for r in records] == ["0", "1", "2", "3"]
    assert [r.image_path for r in records] == [
        images / "000000000.jpg",            # {index:09d}.jpg in the folder
        images / "00000/000000001.jpg",      # ... in an img2dataset shard folder
        images / "bus station.jpg",          # the URL's percent-decoded basename
        images / "00000/000000003.png",      # another extension
    ]
    assert records[2].references == ("a very typical bus station",)
    assert {(r.split, r.domain) for r in records} == {("val", "cc3m")}


def test_cc3m_skips_a_header_added_for_img2dataset(tmp_path):
    original = (FIXTURES / SOURCES["cc3m"][0]).read_text()
    path = tmp_path / "with_header.tsv"
    path.write_text("caption\turl\n" + original + "\n")
    assert read_fixture("cc3m") == READERS["cc3m"](path, FIXTURES / "cc3m/images")


@pytest.mark.parametrize("header", ["\ufeffcaption\turl", "text\timage_url", "Caption\tURL"])
def test_cc3m_skips_any_header_row_a_bom_included(tmp_path, header):
    """A header taken as row 0 would shift every caption onto the next row's image."""
    original = (FIXTURES / SOURCES["cc3m"][0]).read_text()
    path = tmp_path / "with_header.tsv"
    path.write_bytes((header + "\n" + original).encode("utf-8"))
    assert read_fixture("cc3m") == READERS["cc3m"](path, FIXTURES / "cc3m/images")


def test_cc3m_url_basename_shared_by_two_rows_matches_neither(tmp_path):
    """CC3M has many URLs ending in image.jpg: one downloaded image.jpg cannot be the image of each."""
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (4, 4)).save(images / "image.jpg")
    Image.new("RGB", (4, 4)).save(images / "soup.jpg")
    path = tmp_path / "val.tsv"
    path.write_text("a dog on a beach\thttp://a.example/dogs/image.jpg\n"
                    "a bowl of soup\thttp://b.example/soup.jpg\n"
                    "a red car\thttp://c.example/cars/image.jpg?w=640\n")
    with pytest.raises(DatasetError, match="missing"):
        READERS["cc3m"](path, images)
    report = ReadReport()
    [soup] = READERS["cc3m"](path, images, skip_missing=True, report=report)
    assert soup.image_path == (images / "soup.jpg").resolve() and soup.references == ("a bowl of soup",)


def test_cc3m_row_with_wrong_column_count_names_the_line(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("a caption\thttp://x/a.jpg\njust a caption without url\n")
    with pytest.raises(DatasetError, match=rf"{path}: line 2 has 1 tab-separated column"):
        READERS["cc3m"](path, FIXTURES / "cc3m/images")


def test_cc3m_tsv_groups_rows_per_image_and_accepts_absolute_paths(tmp_path):
    records = by_id(read_fixture("cc3m_tsv"))
    assert records["bus station.jpg"].references == ("a very typical bus station", "a bus waiting at a station")
    assert len(records) == 2
    absolute = (FIXTURES / "nocaps/images/0013ea2087020901.jpg").resolve()
    path = tmp_path / "abs.tsv"
    path.write_text(f"image_id\tcaption\timage\nbaby\ta child\t{absolute}\n")
    [record] = READERS["cc3m_tsv"](path, FIXTURES / "cc3m/images")
    assert (record.image_id, record.image_path) == ("baby", absolute)


def test_cc3m_tsv_header_must_name_caption_and_image(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("text\tfile\na cat\tcat.jpg\n")
    with pytest.raises(DatasetError, match=r"header \(line 1\) lacks column\(s\) caption, image"):
        READERS["cc3m_tsv"](path, FIXTURES / "cc3m/images")


def test_vizwiz_drops_rejected_and_precanned_captions_and_empty_images():
    report = ReadReport()
    records = by_id(read_fixture("vizwiz", report=report))
    assert set(records) == {"23431", "23432"}  # 23433 had only pre-canned/rejected captions
    assert len(records["23431"].references) == 5
    assert records["23432"].references == ("A bottle of hand lotion held in a hand.",
                                           "A white plastic bottle of lotion.")
    assert records["23431"].image_path.parent.name == "val"  # the official val.zip layout
    assert (report.dropped_captions, report.images_without_captions) == (8, 1)
    assert "dropped 1 image(s) left with no caption" in report.notes()
    assert {(r.split, r.domain) for r in records.values()} == {("val", "vizwiz")}


def test_vizwiz_images_may_also_sit_flat(tmp_path):
    annotations, images = copy_fixture("vizwiz", tmp_path)
    for image in (images / "val").iterdir():
        image.rename(images / image.name)
    records = READERS["vizwiz"](annotations, images)
    assert {r.image_path.parent for r in records} == {images.resolve()}


def test_textcaps_groups_entries_per_image_and_keeps_duplicate_references():
    """Two annotators' identical captions both count, as in the official evaluation: CIDEr-D averages over them."""
    records = by_id(read_fixture("textcaps"))
    assert set(records) == {"011e7e629fb9ae7b", "0a1b2c3d4e5f6a7b"}
    assert len(records["011e7e629fb9ae7b"].references) == 5
    assert records["0a1b2c3d4e5f6a7b"].references == ("A bottle of Heineken beer on a wooden table.",
                                                      "A green bottle labeled Heineken.",
                                                      "A green bottle labeled Heineken.")
    images = (FIXTURES / "textcaps/images").resolve()
    assert records["011e7e629fb9ae7b"].image_path == images / "train/011e7e629fb9ae7b.jpg"
    assert records["0a1b2c3d4e5f6a7b"].image_path == images / "0a1b2c3d4e5f6a7b.jpg"  # basename fallback
    assert {(r.split, r.domain) for r in records.values()} == {("val", "textcaps")}


def test_textcaps_entries_without_reference_strs_use_caption_str(tmp_path):
    def drop_reference_lists(data):
        for entry in data["data"]:
            del entry["reference_strs"]

    path = rewrite_json("textcaps", tmp_path, drop_reference_lists)
    records = by_id(READERS["textcaps"](path, FIXTURES / "textcaps/images"))
    assert len(records["011e7e629fb9ae7b"].references) == 5
    assert len(records["0a1b2c3d4e5f6a7b"].references) == 3  # one per entry, the duplicate kept


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("format_name", FORMATS)
def test_missing_annotation_file_is_named(format_name, tmp_path):
    missing = tmp_path / "nowhere" / "annotations.json"
    with pytest.raises(DatasetError, match="not found") as caught:
        READERS[format_name](missing, tmp_path)
    assert str(missing) in str(caught.value)


@pytest.mark.parametrize("format_name", FORMATS)
def test_missing_images_folder_is_named(format_name, tmp_path):
    with pytest.raises(DatasetError, match=rf"image folder not found: {tmp_path / 'no_images'}"):
        READERS[format_name](FIXTURES / SOURCES[format_name][0], tmp_path / "no_images")


@pytest.mark.parametrize("format_name", JSON_FORMATS)
def test_malformed_json_gives_path_and_position(format_name, tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [\n  {"id": 1,}\n]}')
    with pytest.raises(DatasetError, match=rf"malformed JSON in {path} at line 2, column 12"):
        READERS[format_name](path, tmp_path)


@pytest.mark.parametrize("format_name", JSON_FORMATS)
def test_json_top_level_must_be_an_object(format_name, tmp_path):
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    with pytest.raises(DatasetError, match="expected a JSON object at the top level, found a list"):
        READERS[format_name](path, tmp_path)


def test_undecodable_tsv_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "latin1.tsv"
    path.write_bytes("caf\xe9\thttp://x/a.jpg\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=rf"{path}: not UTF-8"):
        READERS["cc3m"](path, tmp_path)


MISSING_FIELDS = [
    ("karpathy", lambda d: d["images"][1].pop("filename"), r"images\[1\] \(cocoid 60623\) has no 'filename'"),
    ("karpathy", lambda d: d["images"][2].pop("split"), r"images\[2\] \(cocoid 483108\) has no 'split'"),
    ("karpathy", lambda d: d["images"][0].pop("sentences"), r"images\[0\] \(cocoid 391895\) has no 'sentences'"),
    ("karpathy", lambda d: [d["images"][3].pop(k) for k in ("cocoid", "imgid")], r"images\[3\] has no 'imgid'"),
    ("karpathy", lambda d: d.pop("images"), r"the top level has no 'images'"),
    ("nocaps", lambda d: d["images"][2].pop("file_name"), r"images\[2\] \(id 2\) has no 'file_name'"),
    ("nocaps", lambda d: d["annotations"][4].pop("caption"), r"annotations\[4\] has no 'caption'"),
    ("vizwiz", lambda d: d["annotations"][0].pop("image_id"), r"annotations\[0\] has no 'image_id'"),
    ("vizwiz", lambda d: d["images"][1].pop("id"), r"images\[1\] has no 'id'"),
    ("textcaps", lambda d: d["data"][3].pop("image_path"),
     r"data\[3\] \(image_id 011e7e629fb9ae7b\) has no 'image_path'"),
    ("textcaps", lambda d: d["data"][6].pop("image_id"), r"data\[6\] has no 'image_id'"),
]


@pytest.mark.parametrize("format_name, change, message", MISSING_FIELDS)
def test_missing_field_names_the_file_and_the_record(format_name, change, message, tmp_path):
    path = rewrite_json(format_name, tmp_path, change)
    with pytest.raises(DatasetError, match=message) as caught:
        READERS[format_name](path, FIXTURES / SOURCES[format_name][1])
    assert str(caught.value).startswith(str(path))


DELETED = object()
JUNK_VALUES = [None, 7, True, "x", [], {}, [1, "a"], DELETED]
FIRST_RECORDS = {  # where each format's records are: the first of each kind is damaged
    "karpathy": [("images", 0), ("images", 0, "sentences", 0)],
    "nocaps": [("images", 0), ("annotations", 0)],
    "vizwiz": [("images", 0), ("annotations", 0)],
    "textcaps": [("data", 0)],
}


def dig(data: Any, steps: tuple) -> Any:
    for step in steps:
        data = data[step]
    return data


def junk_locations(data: dict, record_paths: list[tuple]):
    """(container path, key) of the record lists, the records, and every field of the records."""
    for record_path in record_paths:
        yield record_path[:-2], record_path[-2]
        yield record_path[:-1], record_path[-1]
        for key in dig(data, record_path):
            yield record_path, key


@pytest.mark.parametrize("format_name", list(FIRST_RECORDS))
def test_junk_values_never_crash_deep_inside(format_name, tmp_path):
    """Any field or record deleted or replaced by a value of another type: records or a DatasetError."""
    original = json.loads((FIXTURES / SOURCES[format_name][0]).read_text())
    images = FIXTURES / SOURCES[format_name][1]
    path = tmp_path / "damaged.json"
    for container_path, key in junk_locations(original, FIRST_RECORDS[format_name]):
        for junk in JUNK_VALUES:
            data = copy.deepcopy(original)
            container = dig(data, container_path)
            if junk is DELETED:
                del container[key]
            else:
                container[key] = junk
            path.write_text(json.dumps(data))
            try:
                records = READERS[format_name](path, images)
            except DatasetError as exc:
                assert str(path) in str(exc) or str(images.resolve()) in str(exc)
            else:
                assert all(isinstance(r.references, tuple) for r in records)


@pytest.mark.parametrize("format_name", FORMATS)
def test_missing_images_stop_the_read_with_count_examples_and_flag(format_name, tmp_path):
    annotations, images = copy_fixture(format_name, tmp_path)
    complete = READERS[format_name](annotations, images)
    victim = complete[0].image_path
    victim.unlink()
    with pytest.raises(DatasetError) as caught:
        READERS[format_name](annotations, images)
    message = str(caught.value)
    assert f"1 of {len(complete)} image(s) listed in {annotations} are missing" in message
    assert victim.name in message and "skip_missing=True" in message and "--skip-missing" in message


@pytest.mark.parametrize("format_name", FORMATS)
def test_skip_missing_drops_them_and_reports_the_count(format_name, tmp_path, caplog):
    annotations, images = copy_fixture(format_name, tmp_path)
    complete = READERS[format_name](annotations, images)
    complete[0].image_path.unlink()
    report = ReadReport()
    with caplog.at_level(logging.WARNING, logger="captionlab.data"):
        records = READERS[format_name](annotations, images, skip_missing=True, report=report)
    assert records == complete[1:]
    assert (report.missing_images, report.records) == (1, len(records))
    assert [Path(example).name for example in report.missing_examples] == [complete[0].image_path.name]
    assert "skipped 1 record(s)" in caplog.text


def test_many_missing_images_show_only_the_first_few(tmp_path):
    annotations, images = copy_fixture("karpathy", tmp_path)
    shutil.rmtree(images / "val2014")
    with pytest.raises(DatasetError, match=r"3 of 5 image\(s\).*\(first: .*COCO_val2014_000000391895.jpg, .*"):
        READERS["karpathy"](annotations, images)


def test_unknown_format_lists_the_valid_ones():
    with pytest.raises(DatasetError, match="unknown dataset format 'coco'; valid formats: karpathy, nocaps"):
        get_reader("coco")
    with pytest.raises(DatasetError, match="cc3m_tsv"):
        read_dataset("flickr", FIXTURES, FIXTURES)


# ---------------------------------------------------------------- named datasets


def test_config_paths_resolve_against_the_yaml_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    specs = load_config(CONFIG)
    assert list(specs) == ["coco", "nocaps", "cc3m", "vizwiz", "textcaps"]
    assert specs["coco"] == DatasetSpec(name="coco", format="karpathy",
                                        annotations=(FIXTURES / "coco/dataset_coco.json").resolve(),
                                        images=(FIXTURES / "coco/images").resolve(), split="test")


def test_load_records_by_name_spec_or_loaded_config():
    assert len(load_records("coco", config=CONFIG)) == 2  # the config's split: test
    assert [r.image_id for r in load_records("coco", split="train", config=CONFIG)] == ["57870"]
    specs = load_config(CONFIG)
    assert len(load_records("textcaps", config=specs)) == 2
    assert load_records(specs["nocaps"]) == read_fixture("nocaps")
    report = ReadReport()
    load_records("vizwiz", config=str(CONFIG), report=report)
    assert report.images_without_captions == 1


def test_every_configured_dataset_reads(tmp_path):
    for name, spec in load_config(CONFIG).items():
        records = spec.read()
        assert records and all(r.image_path.is_file() for r in records), name


def test_default_config_is_the_embedded_worlds(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTIONLAB_HOME", str(tmp_path))
    expected = tmp_path / "world" / "datasets.yaml"
    with pytest.raises(DatasetError, match=rf"the dataset config {expected} does not exist"):
        load_records("coco")
    shutil.copytree(FIXTURES, tmp_path / "world")
    assert len(load_records("nocaps")) == 3


def test_resolve_format_colon_path(tmp_path):
    annotations = FIXTURES / "coco/dataset_coco.json"
    spec = resolve_dataset(f"karpathy:{annotations}", images=FIXTURES / "coco/images")
    assert (spec.format, spec.annotations, spec.images) == (
        "karpathy", annotations.resolve(), (FIXTURES / "coco/images").resolve())
    assert len(load_records(spec, split="test")) == 2
    assert resolve_dataset(f"karpathy:{annotations}").images == annotations.resolve().parent
    with pytest.raises(DatasetError, match=rf"missing under {(FIXTURES / 'cc3m').resolve()} "):
        load_records(f"cc3m_tsv:{FIXTURES / 'cc3m/captions.tsv'}")  # its images are in cc3m/images


def test_resolve_by_name_with_images_override(tmp_path):
    spec = resolve_dataset("nocaps", images=tmp_path, config_path=CONFIG)
    assert spec.images == tmp_path.resolve() and spec.format == "nocaps"


@pytest.mark.parametrize("arg, message", [
    ("coco2017:/data/x.json", r"unknown dataset format 'coco2017' in 'coco2017:/data/x.json'; valid formats: karpathy"),
    ("karpathy:", r"gives no annotation file"),
    ("flickr30k", r"unknown dataset 'flickr30k'; .*datasets.yaml defines: coco, nocaps, cc3m, vizwiz, textcaps; "
                  r"or give FORMAT:PATH with a format among: karpathy"),
])
def test_resolve_errors_list_what_is_valid(arg, message):
    with pytest.raises(DatasetError, match=message):
        resolve_dataset(arg, config_path=CONFIG)


@pytest.mark.parametrize("text, message", [
    ("datasets:\n  coco: {format: karpathy\n", r"malformed YAML in .*bad.yaml at line \d+, column \d+"),
    ("- coco\n", r"expected a mapping 'datasets:'"),
    ("datasets:\n  coco: [karpathy]\n", r"dataset 'coco' should be a mapping"),
    ("datasets:\n  coco: {format: karpathy, images: i}\n", r"dataset 'coco' has no 'annotations'"),
    ("datasets:\n  coco: {format: kapathy, annotations: a, images: i}\n", r"unknown format 'kapathy'; valid formats"),
    ("datasets:\n  coco: {format: karpathy, annotations: a, images: i, splt: test}\n", r"unknown key\(s\) splt"),
    ("datasets:\n  coco: {format: karpathy, annotations: 3, images: i}\n", r"'annotations' should be a string"),
])
def test_bad_config_files(text, message, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(DatasetError, match=message):
        load_config(path)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(DatasetError, match=rf"dataset config not found: {tmp_path / 'none.yaml'}"):
        load_config(tmp_path / "none.yaml")


def test_split_statistics():
    stats = split_statistics(read_fixture("karpathy"))
    assert list(stats) == ["restval", "test", "train", "val"]
    assert (stats["test"].images, stats["test"].captions) == (2, 8)
    words = [len(c.split()) for r in read_fixture("karpathy", split="val") for c in r.references]
    assert stats["val"].mean_words == pytest.approx(sum(words) / len(words))
