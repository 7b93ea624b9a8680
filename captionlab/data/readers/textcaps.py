"""TextCaps: `TextCaps_0.1_val.json`, one entry per caption (five per image).

    {"dataset_type": "val", "dataset_name": "textcaps",
     "data": [{"image_id": "011e7e629fb9ae7b", "image_path": "train/011e7e629fb9ae7b.jpg",
               "image_name": "011e7e629fb9ae7b", "image_width": 1024, "image_height": 683,
               "image_classes": ["Vehicle", ...], "set_name": "val", "caption_id": 16,
               "caption_str": "The yellow bus has the word Metro on its side.",
               "caption_tokens": ["<s>", "the", ...],
               "reference_strs": ["The yellow bus has the word Metro on its side.", ...],
               "reference_tokens": [[...], ...]}, ...]}

Every entry of an image repeats the image's full `reference_strs`, so entries are grouped by
`image_id` and the first list is the image's references, kept as it is: a caption two
annotators wrote alike counts twice, as in the official evaluation (CIDEr-D averages over the
references). A file without `reference_strs` gives each entry's `caption_str`; test entries
have neither and give an image with no references. The images are TextVQA's: the official
`train_val_images.zip` unpacks to `train_images/`, `test_images.zip` to `test_images/`, while
`image_path` says `train/...` or `test/...`; IMAGES may be either folder level. Image path = the
first that exists of IMAGES/image_path, IMAGES/<basename> (IMAGES is `train_images/` itself, or a
flat folder), IMAGES/<folder>_images/<basename> (IMAGES is the folder the zips were unpacked in);
split = the entry's `set_name`, else the file's `dataset_type`; domain "textcaps" unless given.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from captionlab.data.errors import (ReadReport, as_object, check_inputs, finish_read, first_existing,
                                    get_field, get_list, get_string_list, load_json_object,
                                    optional_field, record_id)
from captionlab.data.records import CaptionRecord


def read(annotations: Path, images: Path, split: str | None = None, domain: str | None = None, *,
         skip_missing: bool = False, report: ReadReport | None = None) -> list[CaptionRecord]:
    """Read TextCaps, one record per image with all its reference captions."""
    annotations, images = check_inputs(annotations, images, "TextCaps annotation file")
    data = load_json_object(annotations, "TextCaps annotation file")
    default_split = optional_field(data, "dataset_type", str, annotations, "the top level", default="val")
    grouped: dict[str, _Image] = {}
    for index, entry in enumerate(get_list(data, "data", annotations)):
        entry = as_object(entry, annotations, f"data[{index}]")
        image_id = record_id(entry, annotations, f"data[{index}]", key="image_id")
        where = f"data[{index}] (image_id {image_id})"
        image = grouped.setdefault(image_id, _Image(
            relative_path=get_field(entry, "image_path", str, annotations, where),
            split=optional_field(entry, "set_name", str, annotations, where, default=default_split),
        ))
        image.add_entry(entry, annotations, where)
    records = [
        CaptionRecord(image_id=image_id, image_path=image.locate(images), references=image.references(),
                      split=image.split, domain=domain or "textcaps")
        for image_id, image in grouped.items()
    ]
    return finish_read(records, source=annotations, images=images, split=split,
                       skip_missing=skip_missing, report=report)


class _Image:
    """The entries of one image gathered so far.

    Every entry of an image repeats that image's whole `reference_strs` list (one entry per annotator's caption), so
    the first such list is the image's references, as it is: two annotators who wrote the same caption count twice,
    as in the official evaluation (CIDEr-D averages over references; merging duplicates changes it). Entries with
    only a `caption_str` (files without `reference_strs`) give one reference each, duplicates kept.
    """

    def __init__(self, relative_path: str, split: str) -> None:
        self.relative_path = relative_path
        self.split = split
        self.reference_strs: list[str] | None = None
        self.captions: list[str] = []

    def add_entry(self, entry: dict[str, Any], source: Path, where: str) -> None:
        if entry.get("reference_strs") is not None:
            listed = [text.strip() for text in get_string_list(entry, "reference_strs", source, where)]
            if self.reference_strs is None:
                self.reference_strs = listed
            return
        caption = optional_field(entry, "caption_str", str, source, where)
        if caption and caption.strip():
            self.captions.append(caption.strip())

    def references(self) -> tuple[str, ...]:
        return tuple(self.reference_strs if self.reference_strs is not None else self.captions)

    def locate(self, images: Path) -> Path:
        relative = PurePosixPath(self.relative_path)
        candidates = [images / self.relative_path, images / relative.name]
        if len(relative.parts) > 1:  # train/x.jpg -> train_images/x.jpg, as the official zips unpack
            candidates.append(images / f"{relative.parts[0]}_images" / relative.name)
        return first_existing(candidates)
