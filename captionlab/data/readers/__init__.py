"""Readers for the five benchmarks' published annotation formats, by format name.

Every reader has the same signature (see `Reader`) and returns `CaptionRecord`s whose images
exist; bad input raises `DatasetError` naming the file and record, and what was left out on
purpose is counted in the `ReadReport` passed in. The formats:

    karpathy   COCO Karpathy splits, dataset_coco.json          (readers/karpathy.py)
    nocaps     nocaps_val_4500_captions.json                    (readers/nocaps.py)
    cc3m       Google's Validation_GCC-1.1.0-Validation.tsv      (readers/cc3m.py)
    cc3m_tsv   a headed caption<TAB>image TSV                    (readers/cc3m.py)
    img2dataset  an img2dataset output folder (files or webdataset) (readers/img2dataset.py)
    vizwiz     VizWiz-Captions val.json                          (readers/vizwiz.py)
    textcaps   TextCaps_0.1_val.json                             (readers/textcaps.py)
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from captionlab.data.errors import DatasetError, ReadReport
from captionlab.data.readers import cc3m, img2dataset, karpathy, nocaps, textcaps, vizwiz
from captionlab.data.records import CaptionRecord


class Reader(Protocol):
    """read(annotations, images, split, domain, *, skip_missing, report) -> records."""

    def __call__(self, annotations: Path, images: Path, split: str | None = None, domain: str | None = None,
                 *, skip_missing: bool = False, report: ReadReport | None = None) -> list[CaptionRecord]: ...


READERS: dict[str, Reader] = {
    "karpathy": karpathy.read,
    "nocaps": nocaps.read,
    "cc3m": cc3m.read,
    "cc3m_tsv": cc3m.read_tsv,
    "img2dataset": img2dataset.read,
    "vizwiz": vizwiz.read,
    "textcaps": textcaps.read,
}

FORMATS: tuple[str, ...] = tuple(READERS)


def get_reader(format_name: str) -> Reader:
    """The reader of a format, or a DatasetError listing the formats there are."""
    try:
        return READERS[format_name]
    except KeyError:
        raise DatasetError(f"unknown dataset format '{format_name}'; valid formats: {', '.join(FORMATS)}") from None


def read_dataset(format_name: str, annotations: Path, images: Path, split: str | None = None,
                 domain: str | None = None, *, skip_missing: bool = False,
                 report: ReadReport | None = None) -> list[CaptionRecord]:
    """Read `annotations` in the named format (see READERS)."""
    return get_reader(format_name)(annotations, images, split, domain, skip_missing=skip_missing, report=report)
