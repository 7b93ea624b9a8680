"""VizWiz-Captions: `annotations/val.json`, in the COCO captions layout with quality flags.

Images taken by blind photographers, five crowd captions each. Every caption carries two
flags: `is_rejected` (the worker's caption was rejected) and `is_precanned` (the worker used
a canned answer such as "Quality issues are too severe to recognize visual content.").

    {"info": {...},
     "images": [{"file_name": "VizWiz_val_00000000.jpg", "id": 23431,
                 "vizwiz_url": "https://...", "text_detected": true}, ...],
     "annotations": [{"image_id": 23431, "id": 117155, "caption": "A can of Coca Cola on a counter.",
                      "is_rejected": false, "is_precanned": false, "text_detected": true}, ...]}

Mapping: like the official evaluation, rejected and pre-canned captions are dropped; an image
left with no caption is dropped too. Both counts go to the ReadReport and the log. Image path
= IMAGES/file_name, or IMAGES/<split>/file_name (the layout of the official `val.zip`);
image_id = the image's `id`; split from the file name (`VizWiz_<split>_...`, else "val");
domain "vizwiz" unless given.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from captionlab.data.errors import (ReadReport, check_inputs, finish_read, first_existing,
                                    load_json_object, optional_field)
from captionlab.data.readers.nocaps import index_images, iter_captions
from captionlab.data.records import CaptionRecord

log = logging.getLogger("captionlab.data")

DROPPED_FLAGS = ("is_rejected", "is_precanned")
FILE_SPLIT = re.compile(r"^VizWiz_([A-Za-z]+)_")
DEFAULT_SPLIT = "val"


def read(annotations: Path, images: Path, split: str | None = None, domain: str | None = None, *,
         skip_missing: bool = False, report: ReadReport | None = None) -> list[CaptionRecord]:
    """Read VizWiz-Captions, keeping only captions that are neither rejected nor pre-canned."""
    annotations, images = check_inputs(annotations, images, "VizWiz annotation file")
    data = load_json_object(annotations, "VizWiz annotation file")
    image_entries = index_images(data, annotations)
    kept: dict[str, list[str]] = {image_id: [] for image_id in image_entries}
    dropped = 0
    for index, (image_id, caption, entry) in enumerate(iter_captions(data, annotations, image_entries)):
        if _is_flagged(entry, annotations, f"annotations[{index}]"):
            dropped += 1
        else:
            kept[image_id].append(caption)
    records = [_record(image_id, entry, tuple(kept[image_id]), images, domain or "vizwiz")
               for image_id, entry in image_entries.items() if kept[image_id]]
    without_captions = len(image_entries) - len(records)
    if dropped or without_captions:
        log.info("%s: dropped %d rejected/pre-canned caption(s) and %d image(s) left without a caption",
                 annotations, dropped, without_captions)
    if report is not None:
        report.dropped_captions += dropped
        report.dropped_caption_reason = "rejected or pre-canned"
        report.images_without_captions += without_captions
    return finish_read(records, source=annotations, images=images, split=split,
                       skip_missing=skip_missing, report=report)


def _is_flagged(entry: dict[str, Any], source: Path, where: str) -> bool:
    return any(optional_field(entry, flag, bool, source, where, default=False) for flag in DROPPED_FLAGS)


def _record(image_id: str, entry: dict[str, Any], references: tuple[str, ...], images: Path,
            domain: str) -> CaptionRecord:
    file_name = entry["file_name"]
    match = FILE_SPLIT.match(file_name)
    split = match.group(1).lower() if match else DEFAULT_SPLIT
    image_path = first_existing([images / file_name, images / split / file_name])
    return CaptionRecord(image_id=image_id, image_path=image_path, references=references,
                         split=split, domain=domain)
