"""nocaps validation: `nocaps_val_4500_captions.json`, in the COCO captions layout.

One JSON object with an `images` list (Open Images validation images, each tagged with its
nocaps sub-domain) and an `annotations` list holding one caption each (ten per image):

    {"licenses": [...], "info": {...},
     "images": [{"id": 0, "open_images_id": "0013ea2087020901",
                 "file_name": "0013ea2087020901.jpg", "height": 1024, "width": 732,
                 "domain": "in-domain", "coco_url": "https://..."}, ...],
     "annotations": [{"image_id": 0, "id": 0,
                      "caption": "A baby is standing in front of a house."}, ...]}

Mapping: image path = IMAGES/file_name; image_id = the image's `id`; references = its
captions in file order; split "val"; domain "nocaps" unless given; subdomain = the image's
`domain` (in-domain, near-domain or out-domain: how many of its objects COCO's classes hold),
None where the file has none; any other value is an error. A file without `annotations` (the
test image list) reads as records with no references.

`index_images` and `iter_captions` read this COCO captions layout for other readers too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from captionlab.data.errors import (DatasetError, ReadReport, as_object, check_inputs, finish_read,
                                    get_field, get_list, load_json_object, optional_field, record_id)
from captionlab.data.records import CaptionRecord

SPLIT = "val"
# nocaps' image domains, in the order its paper and leaderboard report them (`images[].domain` of its files).
NOCAPS_DOMAINS: tuple[str, ...] = ("in-domain", "near-domain", "out-domain")


def read(annotations: Path, images: Path, split: str | None = None, domain: str | None = None, *,
         skip_missing: bool = False, report: ReadReport | None = None) -> list[CaptionRecord]:
    """Read the nocaps validation captions file."""
    annotations, images = check_inputs(annotations, images, "nocaps annotation file")
    data = load_json_object(annotations, "nocaps annotation file")
    image_entries = index_images(data, annotations)
    references: dict[str, list[str]] = {image_id: [] for image_id in image_entries}
    for image_id, caption, _ in iter_captions(data, annotations, image_entries):
        references[image_id].append(caption)
    records = [
        CaptionRecord(image_id=image_id, image_path=images / entry["file_name"],
                      references=tuple(references[image_id]), split=SPLIT, domain=domain or "nocaps",
                      subdomain=_image_domain(entry, annotations, image_id))
        for image_id, entry in image_entries.items()
    ]
    return finish_read(records, source=annotations, images=images, split=split,
                       skip_missing=skip_missing, report=report)


def _image_domain(entry: dict[str, Any], source: Path, image_id: str) -> str | None:
    """The image's nocaps domain (None when the file gives none), checked to be one of NOCAPS_DOMAINS."""
    value = optional_field(entry, "domain", str, source, f"images (id {image_id})")
    if value is not None and value not in NOCAPS_DOMAINS:
        raise DatasetError(f"{source}: images (id {image_id}) has domain {value!r}; "
                           f"expected one of {', '.join(NOCAPS_DOMAINS)}")
    return value


def index_images(data: dict[str, Any], source: Path) -> dict[str, dict[str, Any]]:
    """The `images` entries by id (as a string), each checked to have an id and a file_name."""
    entries: dict[str, dict[str, Any]] = {}
    for index, entry in enumerate(get_list(data, "images", source)):
        entry = as_object(entry, source, f"images[{index}]")
        image_id = record_id(entry, source, f"images[{index}]")
        get_field(entry, "file_name", str, source, f"images[{index}] (id {image_id})")
        if image_id in entries:
            raise DatasetError(f"{source}: images[{index}] repeats image id {image_id}")
        entries[image_id] = entry
    return entries


def iter_captions(data: dict[str, Any], source: Path,
                  known_images: dict[str, dict[str, Any]]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(image id, caption, raw annotation) per `annotations` entry; none when the list is absent."""
    if "annotations" not in data:
        return
    for index, entry in enumerate(get_list(data, "annotations", source)):
        where = f"annotations[{index}]"
        entry = as_object(entry, source, where)
        image_id = record_id(entry, source, where, key="image_id")
        caption = get_field(entry, "caption", str, source, where)
        if image_id not in known_images:
            raise DatasetError(f"{source}: {where} refers to image_id {image_id}, which is not in 'images'")
        yield image_id, caption.strip(), entry
