"""The one record type every dataset reader yields."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CaptionRecord:
    """One image with its reference captions.

    image_id: the dataset's own id for the image, as a string (COCO ids, nocaps ids, file stems...).
    image_path: absolute path of the image file.
    references: the reference captions (may be empty for caption-free use, e.g. an upload).
    split: "train", "val", "test" or "restval" (Karpathy), else the dataset's split name.
    domain: the benchmark the record comes from: coco, nocaps, cc3m, vizwiz, textcaps (or a custom name).
    subdomain: the benchmark's own part the image belongs to, where it has parts: nocaps' "in-domain",
        "near-domain" or "out-domain" (its file's `images[].domain`); None elsewhere.
    """

    image_id: str
    image_path: Path
    references: tuple[str, ...]
    split: str
    domain: str
    subdomain: str | None = None
