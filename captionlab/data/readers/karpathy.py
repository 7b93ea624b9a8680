"""COCO with the Karpathy splits: Andrej Karpathy's `dataset_coco.json`.

One JSON object; `images` holds one entry per image with all its sentences and its split
(`train`, `val`, `test` or `restval`; the paper evaluates on the 5,000-image `test`):

    {"images": [{"filepath": "val2014",
                 "filename": "COCO_val2014_000000391895.jpg",
                 "imgid": 0, "split": "test", "cocoid": 391895,
                 "sentids": [770337, ...],
                 "sentences": [{"raw": "A man with a red helmet on a small moped on a dirt road.",
                                "tokens": ["a", "man", ...], "imgid": 0, "sentid": 770337}, ...]},
                ...],
     "dataset": "coco"}

Mapping: image path = IMAGES/filepath/filename (IMAGES/filename when `filepath` is absent or
empty); image_id = cocoid, else imgid (the Flickr8k/30k files of the same format have no
cocoid); references = each sentence's `raw` text (its joined `tokens` when `raw` is absent);
split as written; domain = the file's `dataset` name ("coco" when absent) unless given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from captionlab.data.errors import (ReadReport, as_object, check_inputs, finish_read, get_field,
                                    get_list, get_string_list, load_json_object,
                                    optional_field)
from captionlab.data.records import CaptionRecord


def read(annotations: Path, images: Path, split: str | None = None, domain: str | None = None, *,
         skip_missing: bool = False, report: ReadReport | None = None) -> list[CaptionRecord]:
    """Read a Karpathy-split JSON; `split` keeps only that split (train, val, test, restval)."""
    annotations, images = check_inputs(annotations, images, "Karpathy annotation file")
    data = load_json_object(annotations, "Karpathy annotation file")
    domain = domain or str(data.get("dataset") or "coco")
    records = [
        _record(as_object(entry, annotations, f"images[{index}]"), index, annotations, images, domain)
        for index, entry in enumerate(get_list(data, "images", annotations))
    ]
    return finish_read(records, source=annotations, images=images, split=split,
                       skip_missing=skip_missing, report=report)


def _record(entry: dict[str, Any], index: int, source: Path, images: Path, domain: str) -> CaptionRecord:
    id_key = "cocoid" if "cocoid" in entry else "imgid"
    where = f"images[{index}]"
    image_id = str(get_field(entry, id_key, (int, str), source, where))
    where = f"images[{index}] ({id_key} {image_id})"
    filename = get_field(entry, "filename", str, source, where)
    folder = optional_field(entry, "filepath", str, source, where, default="")
    sentences = get_list(entry, "sentences", source, where)
    references = tuple(_sentence_text(sentence, source, f"{where} sentences[{n}]")
                       for n, sentence in enumerate(sentences))
    return CaptionRecord(
        image_id=image_id,
        image_path=images / folder / filename,
        references=references,
        split=get_field(entry, "split", str, source, where),
        domain=domain,
    )


def _sentence_text(sentence: Any, source: Path, where: str) -> str:
    sentence = as_object(sentence, source, where)
    if "raw" in sentence or "tokens" not in sentence:
        return get_field(sentence, "raw", str, source, where).strip()
    return " ".join(get_string_list(sentence, "tokens", source, where))
