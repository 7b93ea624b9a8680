"""Training samples: (image, caption) pairs from dataset records, and a deterministic order per epoch.

The order of an epoch depends only on (seed, epoch), so a resumed run visits exactly the samples
an uninterrupted run would have.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from captionlab.data.records import CaptionRecord


@dataclass(frozen=True)
class Sample:
    image_id: str
    image_path: Path
    caption: str


def caption_samples(records: list[CaptionRecord]) -> list[Sample]:
    """Every (image, reference caption) pair."""
    return [Sample(r.image_id, r.image_path, c) for r in records for c in r.references]


def epoch_samples(records: list[CaptionRecord], unit: str, seed: int, epoch: int) -> list[Sample]:
    """The samples of one epoch, shuffled by (seed, epoch).

    unit "caption": every pair once; unit "image": every image once with one caption drawn for it.
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    if unit == "image":
        usable = [r for r in records if r.references]
        picks = torch.randint(0, 1 << 30, (len(usable),), generator=generator).tolist()
        samples = [Sample(r.image_id, r.image_path, r.references[p % len(r.references)]) for r, p in zip(usable, picks)]
    else:
        samples = caption_samples(records)
    order = torch.randperm(len(samples), generator=generator).tolist()
    return [samples[i] for i in order]


class ImageCache:
    """Decoded RGB images by path, bounded (the embedded world fits whole; real data streams)."""

    def __init__(self, capacity: int = 8192):
        self.capacity = capacity
        self._images: OrderedDict[Path, Image.Image] = OrderedDict()

    def get(self, path: Path) -> Image.Image:
        image = self._images.get(path)
        if image is None:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
            self._images[path] = image
            if len(self._images) > self.capacity:
                self._images.popitem(last=False)
        else:
            self._images.move_to_end(path)
        return image
