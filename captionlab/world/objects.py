"""Which objects each image of a generated world shows, from its scene (for CHAIR's ground truth).

    scene_kinds(world_folder, "coco", ["3251", "3252"])  # {"3251": frozenset({"bird"}), ...}

Every image is a pure function of (seed, domain, split, index) and the world's `world.json` records
the seed and each split's size, so an image id of the written files is mapped back to its example
(the inverse of the numbering in `writers`) and its scene regenerated: the objects are known
exactly, never guessed from captions.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from captionlab.world.domains import make_example
from captionlab.world.writers import VIZWIZ_FIRST_IMAGE_ID, hex_id

MANIFEST_NAME = "world.json"  # captionlab.world.MANIFEST_NAME (not imported: that pulls the renderer in)
COCO_SPLIT_ORDER = ("train", "val", "test")  # writers.write_coco numbers images in this order from 1


def world_folder_of(annotations: str | Path) -> Path | None:
    """The generated world an annotation file belongs to (the folder above `annotations/` with a world.json)."""
    folder = Path(annotations).resolve().parent.parent
    return folder if (folder / MANIFEST_NAME).is_file() else None


def _locate(domain: str, image_id: str, sizes: dict[str, int], seed: int,
            textcaps_ids: dict[str, int]) -> tuple[str, int] | None:
    """(split, index) of an image id as `writers` numbered it, or None."""
    if domain == "textcaps":
        index = textcaps_ids.get(image_id)
        return None if index is None else ("val", index)
    try:
        number = int(image_id)
    except ValueError:
        return None
    if domain == "coco":
        position = number - 1
        for split in COCO_SPLIT_ORDER:
            if 0 <= position < sizes.get(split, 0):
                return split, position
            position -= sizes.get(split, 0)
        return None
    index = number - VIZWIZ_FIRST_IMAGE_ID if domain == "vizwiz" else number
    return ("val", index) if domain in ("nocaps", "cc3m", "vizwiz") and 0 <= index < sizes.get("val", 0) else None


def scene_kinds(world_folder: str | Path, domain: str, image_ids: Iterable[str]) -> dict[str, frozenset[str]]:
    """image id -> the object kinds its scene shows, for the ids of `domain` that the world has."""
    manifest = json.loads((Path(world_folder) / MANIFEST_NAME).read_text(encoding="utf-8"))
    sizes = {split: int(n) for split, n in manifest["images"].get(domain, {}).items()}
    return {k: frozenset(example.scene.kinds())
            for k, example in world_examples(int(manifest["seed"]), sizes, domain, image_ids).items()}


def world_examples(seed: int, sizes: dict[str, int], domain: str, image_ids: Iterable[str]) -> dict:
    """image id -> its regenerated `Example` (scene and references), in world `seed` whose `domain` has
    `sizes` images per split; ids the world does not have are left out."""
    textcaps_ids = ({hex_id(seed, "textcaps", i): i for i in range(sizes.get("val", 0))}
                    if domain == "textcaps" else {})
    out = {}
    for image_id in image_ids:
        place = _locate(domain, str(image_id), sizes, seed, textcaps_ids)
        if place is not None:
            out[str(image_id)] = make_example(domain, place[0], place[1], seed)
    return out
