"""Training samples: (image, caption) pairs from dataset records, and a deterministic order per epoch.

The order of an epoch depends only on (seed, epoch), so a resumed run visits exactly the samples
an uninterrupted run would have. An epoch is a list of *groups* (one image's samples for the unit
"image_captions", one sample each otherwise), and its optimizer steps are a deterministic split of
those groups (`split_steps`), so a step's position in the epoch identifies its samples exactly.
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

    unit "caption": every pair once; unit "image": every image once with one caption drawn for it;
    unit "image_captions": every image once with all its captions (images shuffled, each image's
    captions together and in reference order).
    """
    return [sample for group in epoch_groups(records, unit, seed, epoch) for sample in group]


def epoch_groups(records: list[CaptionRecord], unit: str, seed: int, epoch: int) -> list[list[Sample]]:
    """The epoch as groups of samples that stay together: one image's captions for unit "image_captions",
    a single sample for the other units (in `epoch_samples`' order)."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    if unit == "image_captions":
        groups = [[Sample(r.image_id, r.image_path, c) for c in r.references] for r in records if r.references]
        order = torch.randperm(len(groups), generator=generator).tolist()
        return [groups[i] for i in order]
    if unit == "image":
        usable = [r for r in records if r.references]
        picks = torch.randint(0, 1 << 30, (len(usable),), generator=generator).tolist()
        samples = [Sample(r.image_id, r.image_path, r.references[p % len(r.references)]) for r, p in zip(usable, picks)]
    else:
        samples = caption_samples(records)
    order = torch.randperm(len(samples), generator=generator).tolist()
    return [[samples[i]] for i in order]


def image_groups(samples: list[Sample]) -> list[list[Sample]]:
    """Consecutive samples of the same image as one group (validation: every caption of every image, in order)."""
    groups: list[list[Sample]] = []
    for sample in samples:
        if groups and groups[-1][0].image_path == sample.image_path and groups[-1][0].image_id == sample.image_id:
            groups[-1].append(sample)
        else:
            groups.append([sample])
    return groups


def split_steps(groups: list[list[Sample]], limit: int) -> list[list[list[Sample]]]:
    """Whole groups taken greedily until adding the next would exceed `limit` samples (at least one group each).

    With one sample per group this is the plain split into chunks of `limit`. Used for optimizer steps
    (limit = batch_size) and for micro-batches (limit = micro_batch_size).
    """
    chunks: list[list[list[Sample]]] = []
    size = 0
    for group in groups:
        if chunks and size + len(group) <= limit:
            chunks[-1].append(group)
            size += len(group)
        else:
            chunks.append([group])
            size = len(group)
    return chunks


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
