"""Benchmarks as people store them: CC3M with local paths or downloaded by img2dataset (files and webdataset
layouts), TextCaps unpacked from its official zips, nocaps' image domains.

Every layout here is written as its owner publishes it (img2dataset's README: shard folders `00000/` with
`000000000.jpg/.txt/.json`, or `00000.tar` with the same members; TextCaps' `train_val_images.zip` unpacking to
`train_images/`), in tmp_path, except the img2dataset files fixture in tests/fixtures/datasets/img2dataset/.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from captionlab.data.errors import DatasetError, ReadReport
from captionlab.data.readers import READERS

FIXTURES = Path(__file__).parent / "fixtures" / "datasets"
IMG2DATASET = FIXTURES / "img2dataset" / "out"
SIDECARS = {key: json.loads((IMG2DATASET / "00000" / f"{key}.json").read_text())
            for key in ("000000000", "000000001", "000000002")}


def _image(path: Path, colour: tuple[int, int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 6), colour).save(path)
    return path


def _local_path_tsv(tmp_path: Path, header: str | None) -> tuple[Path, Path]:
    """A CC3M TSV whose second column is each image's path in the images folder; the files are named so that no
    row number matches another row's image."""
    images = tmp_path / "images"
    rows = [("a dog running on a beach", "photos/dog.jpg"), ("a bowl of tomato soup", "photos/000000000.jpg"),
            ("a red car parked outside", "cars/car 1.png")]
    for index, (_, path) in enumerate(rows):
        _image(images / path, (index * 80, 10, 10))
    lines = ([header] if header else []) + [f"{caption}\t{path}" for caption, path in rows]
    tsv = tmp_path / "cc3m_local.tsv"
    tsv.write_text("\n".join(lines) + "\n")
    return tsv, images


@pytest.mark.parametrize("header", [None, "caption\turl", "caption\timage_path", "Caption\tFile_Name"])
def test_cc3m_local_paths_pair_every_caption_with_its_own_image(tmp_path, header):
    tsv, images = _local_path_tsv(tmp_path, header)
    report = ReadReport()
    records = READERS["cc3m"](tsv, images, report=report)
    assert [(r.image_id, r.image_path, r.references) for r in records] == [
        ("0", (images / "photos/dog.jpg").resolve(), ("a dog running on a beach",)),
        ("1", (images / "photos/000000000.jpg").resolve(), ("a bowl of tomato soup",)),
        ("2", (images / "cars/car 1.png").resolve(), ("a red car parked outside",)),
    ]
    if header:
        assert report.dropped_rows == {f"line 1 read as a header ({header.replace(chr(9), '<TAB>')})": 1}
        assert any("dropped 1 row(s): line 1 read as a header" in note for note in report.notes())
    else:
        assert report.dropped_rows == {} and report.notes() == []


def test_cc3m_first_row_is_a_caption_unless_its_words_are_column_names(tmp_path):
    """The old rule (a first row without '://' is a header) dropped the first caption of a local-path TSV."""
    tsv, images = _local_path_tsv(tmp_path, "image\tcaption of the photo")  # not all column names: a caption row
    (images / "caption of the photo").write_bytes((images / "photos/dog.jpg").read_bytes())
    records = READERS["cc3m"](tsv, images)
    assert len(records) == 4 and records[0].references == ("image",)


def test_cc3m_absolute_local_path(tmp_path):
    image = _image(tmp_path / "elsewhere" / "x.jpg", (1, 2, 3))
    tsv = tmp_path / "val.tsv"
    tsv.write_text(f"a tiny picture\t{image}\n")
    images = tmp_path / "images"
    images.mkdir()
    [record] = READERS["cc3m"](tsv, images)
    assert record.image_path == image.resolve()


def _google_tsv(tmp_path: Path) -> Path:
    """Google's TSV with the fixture's three URLs in another order than img2dataset's keys, plus one URL
    img2dataset did not download: only the sidecars can pair them."""
    rows = [(SIDECARS["000000002"]["caption"], SIDECARS["000000002"]["url"]),
            ("a cat asleep on a sofa", "http://d.example/cat.jpg"),
            (SIDECARS["000000000"]["caption"], SIDECARS["000000000"]["url"]),
            (SIDECARS["000000001"]["caption"], SIDECARS["000000001"]["url"])]
    tsv = tmp_path / "Validation_GCC-1.1.0-Validation.tsv"
    tsv.write_text("".join(f"{caption}\t{url}\n" for caption, url in rows))
    return tsv


def _expected_pairs(image_folder) -> list[tuple[str, str]]:
    return [(SIDECARS[key]["caption"], image_folder(key)) for key in ("000000002", "000000000", "000000001")]


def test_cc3m_tsv_with_img2dataset_files_output_pairs_by_the_sidecar_url(tmp_path):
    out = tmp_path / "out"
    shutil.copytree(IMG2DATASET, out)
    tsv = _google_tsv(tmp_path)
    with pytest.raises(DatasetError, match="missing"):
        READERS["cc3m"](tsv, out)  # the undownloaded cat is a missing image, not someone else's
    report = ReadReport()
    records = READERS["cc3m"](tsv, out, skip_missing=True, report=report)
    assert report.missing_images == 1
    assert [(r.references[0], r.image_path) for r in records] == _expected_pairs(
        lambda key: (out / "00000" / f"{key}.jpg").resolve())
    assert [r.image_id for r in records] == ["0", "2", "3"]  # the TSV's rows


def _webdataset_shard(out: Path) -> Path:
    """The fixture's samples as img2dataset's `--output_format webdataset` writes them: 00000.tar."""
    out.mkdir(parents=True, exist_ok=True)
    tar_path = out / "00000.tar"
    with tarfile.open(tar_path, "w") as archive:
        for key in SIDECARS:
            for extension in (".jpg", ".txt", ".json"):
                data = (IMG2DATASET / "00000" / f"{key}{extension}").read_bytes()
                member = tarfile.TarInfo(f"{key}{extension}")
                member.size = len(data)
                archive.addfile(member, io.BytesIO(data))
    shutil.copy(IMG2DATASET / "00000_stats.json", out / "00000_stats.json")
    return tar_path


def test_cc3m_tsv_with_webdataset_tars_pairs_by_the_sidecar_url(tmp_path):
    out = tmp_path / "wds"
    _webdataset_shard(out)
    records = READERS["cc3m"](_google_tsv(tmp_path), out, skip_missing=True)
    assert [r.references[0] for r in records] == [caption for caption, _ in _expected_pairs(str)]
    for record, key in zip(records, ("000000002", "000000000", "000000001")):
        assert record.image_path.read_bytes() == (IMG2DATASET / "00000" / f"{key}.jpg").read_bytes()


@pytest.mark.parametrize("layout", ["files", "webdataset"])
def test_img2dataset_format_reads_captions_from_the_sidecars(tmp_path, layout):
    out = tmp_path / "out"
    if layout == "files":
        shutil.copytree(IMG2DATASET, out)
    else:
        _webdataset_shard(out)
    records = READERS["img2dataset"](out, out)
    assert [(r.image_id, r.references) for r in records] == [
        (key, (sidecar["caption"],)) for key, sidecar in SIDECARS.items()]
    for record in records:
        assert record.image_path.read_bytes() == (IMG2DATASET / "00000" / f"{record.image_id}.jpg").read_bytes()
        assert (record.split, record.domain) == ("val", "cc3m")


def test_img2dataset_failed_downloads_are_counted(tmp_path):
    out = tmp_path / "out"
    shutil.copytree(IMG2DATASET, out)
    sidecar = out / "00000" / "000000001.json"
    sidecar.write_text(json.dumps({**SIDECARS["000000001"], "status": "failed_to_download"}))
    (out / "00000" / "000000001.jpg").unlink()
    report = ReadReport()
    records = READERS["img2dataset"](out, out, report=report)
    assert [r.image_id for r in records] == ["000000000", "000000002"]
    assert sum(report.dropped_rows.values()) == 1 and report.notes()


def test_img2dataset_parquet_only_folder_needs_pyarrow(tmp_path):
    pytest.importorskip("pandas")
    try:
        import pyarrow  # noqa: F401
        pytest.skip("pyarrow is installed: the message for its absence cannot be shown")
    except ImportError:
        pass
    out = tmp_path / "parquet_out"
    out.mkdir()
    (out / "00000.parquet").write_bytes(b"PAR1")
    with pytest.raises(DatasetError, match="needs pyarrow, which is not installed"):
        READERS["img2dataset"](out, out)


def _textcaps_zip_layout(tmp_path: Path) -> tuple[Path, Path]:
    """TextCaps' val file beside the folder train_val_images.zip unpacks to (train_images/)."""
    unpacked = tmp_path / "textvqa"
    for image_id in ("011e7e629fb9ae7b", "0a1b2c3d4e5f6a7b"):
        _image(unpacked / "train_images" / f"{image_id}.jpg", (9, 9, 9))
    return FIXTURES / "textcaps" / "TextCaps_0.1_val.json", unpacked


@pytest.mark.parametrize("level", ["parent", "train_images"])
def test_textcaps_reads_the_official_zip_layout_from_either_folder_level(tmp_path, level):
    annotations, unpacked = _textcaps_zip_layout(tmp_path)
    images = unpacked if level == "parent" else unpacked / "train_images"
    records = READERS["textcaps"](annotations, images)
    assert sorted(r.image_path for r in records) == sorted(
        (unpacked / "train_images" / f"{i}.jpg").resolve() for i in ("011e7e629fb9ae7b", "0a1b2c3d4e5f6a7b"))


def test_nocaps_keeps_each_images_domain(tmp_path):
    records = READERS["nocaps"](FIXTURES / "nocaps/nocaps_val_4500_captions.json", FIXTURES / "nocaps/images")
    assert [r.subdomain for r in records] == ["in-domain", "near-domain", "out-domain"]
    data = json.loads((FIXTURES / "nocaps/nocaps_val_4500_captions.json").read_text())
    data["images"][1]["domain"] = "near"
    path = tmp_path / "nocaps.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="has domain 'near'; expected one of in-domain, near-domain, out-domain"):
        READERS["nocaps"](path, FIXTURES / "nocaps/images")
