"""Named datasets: a YAML config of (format, annotations, images), and the `FORMAT:PATH` form.

A config file lists datasets by name; relative paths resolve against the file's folder:

    datasets:
      coco:     {format: karpathy, annotations: annotations/dataset_coco.json, images: images/coco, split: test}
      nocaps:   {format: nocaps, annotations: annotations/nocaps_val_4500_captions.json, images: images/nocaps}
      cc3m:     {format: cc3m, annotations: annotations/Validation_GCC-1.1.0-Validation.tsv, images: images/cc3m}
      vizwiz:   {format: vizwiz, annotations: annotations/val.json, images: images/vizwiz}
      textcaps: {format: textcaps, annotations: annotations/TextCaps_0.1_val.json, images: images/textcaps}

`split` (the split read when none is asked for) and `domain` (overrides the reader's) are
optional. The embedded world writes such a file into its folder, which is the default config
(`captionlab.paths.world_dir() / "datasets.yaml"`).

Command lines name a dataset either by its config name (`coco`) or as `FORMAT:PATH`
(`karpathy:/data/coco/dataset_coco.json`, with the images given separately: they default to
the annotation file's folder); `resolve_dataset` turns either into a `DatasetSpec`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from captionlab import paths
from captionlab.data.errors import DatasetError, ReadReport, read_text, type_name
from captionlab.data.readers import FORMATS, read_dataset
from captionlab.data.records import CaptionRecord

CONFIG_FILE_NAME = "datasets.yaml"
REQUIRED_KEYS = ("format", "annotations", "images")
OPTIONAL_KEYS = ("split", "domain")
_FORMAT_PATH_HINT = f"or give FORMAT:PATH with a format among: {', '.join(FORMATS)}"


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset is and how to read it."""

    name: str
    format: str
    annotations: Path
    images: Path
    split: str | None = None
    domain: str | None = None

    def read(self, split: str | None = None, skip_missing: bool = False,
             report: ReadReport | None = None) -> list[CaptionRecord]:
        """The dataset's records (of `split`, else of the spec's own split, else all)."""
        return read_dataset(self.format, self.annotations, self.images, split or self.split, self.domain,
                            skip_missing=skip_missing, report=report)


@dataclass(frozen=True)
class SplitStats:
    """Counts of one split: images, captions, and the mean caption length in words."""

    images: int
    captions: int
    mean_words: float


def default_config_path() -> Path:
    """The config the embedded world writes (used when no config is given)."""
    return paths.world_dir() / CONFIG_FILE_NAME


def ensure_embedded_world(dataset: str, config_path: Path | str | None) -> None:
    """A dataset named without a config means the embedded world's: generate it (seeded, well under a
    minute) on first use, so the CLIs and the Train tab work on a fresh machine."""
    if config_path is not None or ":" in dataset or default_config_path().exists():
        return
    from captionlab.world import write_world

    # a progress note, not output: on stderr it leaves `--json` output parseable
    print(f"generating the embedded caption world in {paths.world_dir()} (first use)", file=sys.stderr, flush=True)
    write_world(paths.world_dir(), seed=0, scale=1.0)


def load_config(path: Path | str) -> dict[str, DatasetSpec]:
    """The datasets of a YAML config file, by name, with paths made absolute."""
    path = Path(path).expanduser().resolve()
    text = read_text(path, "dataset config")
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise DatasetError(f"malformed YAML in {path}{where}: {problem}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("datasets"), dict):
        raise DatasetError(f"{path}: expected a mapping 'datasets:' of name -> "
                           "{format, annotations, images}")
    return {str(name): _spec(str(name), entry, path) for name, entry in document["datasets"].items()}


def _spec(name: str, entry: Any, config: Path) -> DatasetSpec:
    where = f"{config}: dataset '{name}'"
    if not isinstance(entry, dict):
        raise DatasetError(f"{where} should be a mapping with keys {', '.join(REQUIRED_KEYS)}, "
                           f"found {type_name(entry)}")
    unknown = sorted(set(entry) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise DatasetError(f"{where} has unknown key(s) {', '.join(map(str, unknown))}; "
                           f"allowed: {', '.join(REQUIRED_KEYS + OPTIONAL_KEYS)}")
    for key in REQUIRED_KEYS:
        if key not in entry:
            raise DatasetError(f"{where} has no '{key}'")
    for key in REQUIRED_KEYS + OPTIONAL_KEYS:
        if key in entry and not isinstance(entry[key], str):
            raise DatasetError(f"{where}: '{key}' should be a string, found {type_name(entry[key])}")
    if entry["format"] not in FORMATS:
        raise DatasetError(f"{where}: unknown format '{entry['format']}'; valid formats: {', '.join(FORMATS)}")
    folder = config.parent
    return DatasetSpec(name=name, format=entry["format"],
                       annotations=(folder / Path(entry["annotations"]).expanduser()).resolve(),
                       images=(folder / Path(entry["images"]).expanduser()).resolve(),
                       split=entry.get("split"), domain=entry.get("domain"))


def resolve_dataset(arg: str, images: Path | None = None, config_path: Path | None = None) -> DatasetSpec:
    """A dataset named `NAME` (looked up in the config) or given as `FORMAT:PATH`.

    `images`, when given, replaces the image folder; for FORMAT:PATH it defaults to the
    annotation file's folder. `config_path` defaults to `default_config_path()`.
    """
    images_path = Path(images).expanduser().resolve() if images is not None else None
    if ":" in arg:
        format_name, _, annotation_text = arg.partition(":")
        if format_name not in FORMATS:
            raise DatasetError(f"unknown dataset format '{format_name}' in '{arg}'; "
                               f"valid formats: {', '.join(FORMATS)}")
        if not annotation_text:
            raise DatasetError(f"'{arg}' gives no annotation file after '{format_name}:'")
        annotations = Path(annotation_text).expanduser().resolve()
        return DatasetSpec(name=f"{format_name}:{annotations}", format=format_name, annotations=annotations,
                           images=images_path or annotations.parent)
    spec = _named_spec(arg, Path(config_path) if config_path is not None else default_config_path())
    if images_path is not None:
        spec = DatasetSpec(name=spec.name, format=spec.format, annotations=spec.annotations,
                           images=images_path, split=spec.split, domain=spec.domain)
    return spec


def _named_spec(name: str, config_path: Path) -> DatasetSpec:
    if not config_path.expanduser().exists():
        raise DatasetError(f"unknown dataset '{name}': the dataset config {config_path} does not exist; "
                           f"pass a config file, {_FORMAT_PATH_HINT}")
    return _lookup(name, load_config(config_path), str(config_path))


def _lookup(name: str, specs: Mapping[str, DatasetSpec], source: str) -> DatasetSpec:
    if name not in specs:
        defined = ", ".join(specs) or "none"
        raise DatasetError(f"unknown dataset '{name}'; {source} defines: {defined}; {_FORMAT_PATH_HINT}")
    return specs[name]


def load_records(spec_or_name: DatasetSpec | str, split: str | None = None, skip_missing: bool = False,
                 config: Path | str | Mapping[str, DatasetSpec] | None = None,
                 report: ReadReport | None = None) -> list[CaptionRecord]:
    """The records of a dataset given as a spec, a config name or `FORMAT:PATH`.

    `config` is a config file or already-loaded specs (default: `default_config_path()`);
    `report`, when given, receives what was left out.
    """
    if isinstance(spec_or_name, DatasetSpec):
        spec = spec_or_name
    elif isinstance(config, Mapping) and ":" not in spec_or_name:
        spec = _lookup(spec_or_name, config, "the given config")
    else:
        config_path = Path(config) if isinstance(config, (str, Path)) else None
        spec = resolve_dataset(spec_or_name, config_path=config_path)
    return spec.read(split=split, skip_missing=skip_missing, report=report)


def split_statistics(records: list[CaptionRecord]) -> dict[str, SplitStats]:
    """Per split (in sorted order): images, captions and mean words per caption."""
    by_split: dict[str, list[CaptionRecord]] = {}
    for record in records:
        by_split.setdefault(record.split, []).append(record)
    return {split: _stats(by_split[split]) for split in sorted(by_split)}


def subdomain_statistics(records: list[CaptionRecord]) -> dict[str, SplitStats]:
    """Per subdomain (nocaps' in-domain, near-domain, out-domain, one row each, in that order; then any other),
    the same counts; empty when no record has a subdomain."""
    from captionlab.data.readers.nocaps import NOCAPS_DOMAINS

    found = {record.subdomain for record in records if record.subdomain is not None}
    if not found:
        return {}
    names = [*NOCAPS_DOMAINS, *sorted(found - set(NOCAPS_DOMAINS))]
    return {name: _stats([r for r in records if r.subdomain == name]) for name in names}


def total_statistics(records: list[CaptionRecord]) -> SplitStats:
    """The same counts over all records."""
    return _stats(records)


def _stats(records: list[CaptionRecord]) -> SplitStats:
    captions = [caption for record in records for caption in record.references]
    words = sum(len(caption.split()) for caption in captions)
    return SplitStats(images=len(records), captions=len(captions),
                      mean_words=words / len(captions) if captions else 0.0)
