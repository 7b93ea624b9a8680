"""The images of an evaluation's drill-down: each image id's file, found through the evaluated dataset, as a
small inline thumbnail (a data URI: the page needs no file route into the dataset folder).

    paths, note = image_paths("coco", "test")     # image id -> file; note says why none, when none
    thumbnail_uri(paths["42"])                    # "data:image/jpeg;base64,..."

Nothing is generated or downloaded here: a dataset that is not on this machine gives no thumbnails and a note.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

THUMBNAIL_PX = 96  # longest side of a drill-down thumbnail
MAX_THUMBNAILS = 100  # per drill-down: each is a few kB of the page


def image_paths(dataset: str, split: str | None) -> tuple[dict[str, Path], str]:
    """(image id -> image file, "") for an evaluated dataset (a name of the workspace's config or FORMAT:PATH),
    else ({}, why the images cannot be shown)."""
    from captionlab.data.datasets import default_config_path, load_records

    if ":" not in dataset and not default_config_path().exists():
        return {}, (f"images not shown: the embedded world is not on this machine ({default_config_path()} is "
                    f"missing); `python -m captionlab data world --out workspace/world` writes it")
    try:
        records = load_records(dataset, split=split, skip_missing=True)
    except Exception as exc:  # a dataset moved or renamed since the evaluation: the captions still show
        return {}, f"images not shown: {dataset} cannot be read here ({type(exc).__name__}: {exc})"
    return {record.image_id: Path(record.image_path) for record in records}, ""


def thumbnail_uri(path: Path, size: int = THUMBNAIL_PX) -> str | None:
    """A JPEG data URI of the image at `path`, at most `size` pixels on its longest side (None if unreadable)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((size, size))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=80)
    except (OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
