"""img2dataset output folders, as img2dataset's README documents them (rom1504/img2dataset).

img2dataset downloads a URL list (CC3M's TSV, for one) into shards of 10,000 samples by default.
With `--output_format files` (its default):

    OUT/00000/000000000.jpg     the image
    OUT/00000/000000000.txt     its caption
    OUT/00000/000000000.json    {"key": "000000000", "url": ..., "caption": ..., "status": "success",
                                 "error_message": null, "width": ..., "height": ..., ...}
    OUT/00000.parquet           the same metadata, one row per sample of the shard (failed ones too)
    OUT/00000_stats.json

with `--output_format webdataset`, `OUT/00000.tar` holds `000000000.jpg`, `.txt` and `.json`, beside
the same `OUT/00000.parquet`. The key is the sample's position in the input list (5 digits of shard,
4 of index), so it only equals a TSV row number when the list img2dataset read was exactly that
TSV, without a header: the sidecar's `url` (and `caption`), not the row number, is what ties an
image to its caption.

`index_folder` lists a folder's downloaded samples (tar members are unpacked once into the
workspace cache, since a record names an image file); `read` is the `img2dataset` format: one
record per downloaded sample, its caption the sidecar's. Parquet shards are read only where a
folder has no `.json` sidecar and no `.tar` (`--output_format parquet`, images as bytes), and
need pyarrow, which captionlab does not pin: without it the error says so.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from captionlab.data.errors import DatasetError, ReadReport, finish_read, require_dir
from captionlab.data.records import CaptionRecord

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
SUCCESS = "success"
SPLIT = "val"
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
SHARD_NAME = re.compile(r"^\d+$")  # 00000, 00001, ... (`oom_shard_count` digits)
FAILED_REASON = "img2dataset sample not downloaded (status other than 'success')"
NO_CAPTION_REASON = "img2dataset sample without a caption"


@dataclass(frozen=True)
class Sample:
    """One sample of an img2dataset output: its metadata and, when it was downloaded, its image file."""

    key: str
    url: str
    caption: str
    status: str
    image: Path | None


def is_img2dataset_folder(folder: Path) -> bool:
    """Whether `folder` holds img2dataset output: a shard's .json sidecars, .tar or .parquet shards."""
    if not folder.is_dir():
        return False
    shards = [*_shard_files(folder, "*.tar"), *_shard_files(folder, "*.parquet")]
    if any(SHARD_NAME.match(path.stem) for path in shards):
        return True
    return any(SHARD_NAME.match(path.parent.name) for path in _sidecars(folder))


def index_folder(folder: Path) -> list[Sample]:
    """Every sample of an img2dataset output folder, in key order."""
    folder = require_dir(Path(folder).expanduser().resolve(), "img2dataset output folder")
    samples = {sample.key: sample for sample in _files_samples(folder)}
    for tar_path in _shard_files(folder, "*.tar"):
        for sample in _tar_samples(tar_path):
            samples.setdefault(sample.key, sample)
    if not samples:
        for parquet_path in _shard_files(folder, "*.parquet"):
            for sample in _parquet_samples(parquet_path):
                samples.setdefault(sample.key, sample)
    return [samples[key] for key in sorted(samples)]


def read(annotations: Path, images: Path, split: str | None = None, domain: str | None = None, *,
         skip_missing: bool = False, report: ReadReport | None = None) -> list[CaptionRecord]:
    """Read an img2dataset output folder: `annotations` (`images`, checked to exist, is where a file
    `annotations` such as the folder's 00000_stats.json points to)."""
    annotations, images = Path(annotations).expanduser().resolve(), Path(images).expanduser().resolve()
    if not annotations.exists():
        raise DatasetError(f"img2dataset output folder not found: {annotations}")
    require_dir(images, "image folder")
    folder = annotations if annotations.is_dir() else images
    if not is_img2dataset_folder(folder):
        raise DatasetError(f"{folder} holds no img2dataset output (no shard .json sidecars, .tar or .parquet)")
    records = []
    for sample in index_folder(folder):
        if sample.status != SUCCESS or sample.image is None:
            _count(report, FAILED_REASON)
        elif not sample.caption.strip():
            _count(report, NO_CAPTION_REASON)
        else:
            records.append(CaptionRecord(image_id=sample.key, image_path=sample.image,
                                         references=(sample.caption.strip(),), split=SPLIT,
                                         domain=domain or "cc3m"))
    return finish_read(records, source=folder, images=folder, split=split, skip_missing=skip_missing,
                       report=report)


def _count(report: ReadReport | None, reason: str) -> None:
    if report is not None:
        report.dropped_rows[reason] = report.dropped_rows.get(reason, 0) + 1


def _shard_files(folder: Path, pattern: str) -> list[Path]:
    return sorted(path for path in folder.glob(pattern) if path.is_file())


def _sidecars(folder: Path):
    """The per-sample .json files of the `files` layout (in shard folders or the folder itself)."""
    for path in sorted([*folder.glob("*.json"), *folder.glob("*/*.json")]):
        if not path.name.endswith("_stats.json") and path.is_file():
            yield path


def _files_samples(folder: Path) -> list[Sample]:
    samples = []
    for path in _sidecars(folder):
        metadata = _metadata(path.read_bytes(), str(path))
        if metadata is None:
            continue
        image = next((path.with_suffix(ext) for ext in IMAGE_EXTENSIONS if path.with_suffix(ext).is_file()),
                     path.with_suffix(IMAGE_EXTENSIONS[0]))  # a downloaded sample's image gone: reported missing
        samples.append(_sample(metadata, path.stem, image))
    return samples


def _metadata(raw: bytes, where: str) -> dict | None:
    """A sidecar's JSON object, or None for a JSON file that is not an img2dataset sidecar."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{where}: not a readable img2dataset .json sidecar ({exc})") from exc
    if not isinstance(data, dict) or "url" not in data or not ("key" in data or "status" in data):
        return None
    return data


def _sample(metadata: dict, stem: str, image: Path | None) -> Sample:
    return Sample(key=str(metadata.get("key") or stem), url=str(metadata.get("url") or "").strip(),
                  caption=str(metadata.get("caption") or ""), status=str(metadata.get("status") or SUCCESS),
                  image=image)


def _cache_folder(shard: Path) -> Path:
    """Where a shard's images are unpacked: one folder per shard file version, in the workspace cache."""
    from captionlab import paths

    stat = shard.stat()
    digest = hashlib.sha1(f"{shard}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return paths.workspace() / "cache" / "img2dataset" / f"{shard.stem}-{digest}"


def _tar_samples(tar_path: Path) -> list[Sample]:
    """A webdataset shard's samples: members grouped by key (the name up to its first dot)."""
    members: dict[str, dict[str, tarfile.TarInfo]] = {}
    try:
        with tarfile.open(tar_path) as archive:
            for member in archive.getmembers():
                name = member.name.rsplit("/", 1)[-1]
                key, dot, extension = name.partition(".")
                if member.isfile() and dot and KEY_PATTERN.match(key):
                    members.setdefault(key, {})[f".{extension.lower()}"] = member
            return [sample for key, files in members.items()
                    if (sample := _tar_sample(archive, tar_path, key, files)) is not None]
    except (tarfile.TarError, OSError) as exc:
        raise DatasetError(f"cannot read the webdataset shard {tar_path}: {exc}") from exc


def _tar_sample(archive: tarfile.TarFile, tar_path: Path, key: str,
                files: dict[str, tarfile.TarInfo]) -> Sample | None:
    if ".json" not in files:
        return None
    metadata = _metadata(archive.extractfile(files[".json"]).read(), f"{tar_path}:{files['.json'].name}")
    if metadata is None:
        return None
    if not metadata.get("caption") and ".txt" in files:
        metadata["caption"] = archive.extractfile(files[".txt"]).read().decode("utf-8", errors="replace")
    extension = next((ext for ext in IMAGE_EXTENSIONS if ext in files), None)
    image = None
    if extension is not None:
        image = _cache_folder(tar_path) / f"{key}{extension}"
        if not image.is_file() or image.stat().st_size != files[extension].size:
            image.parent.mkdir(parents=True, exist_ok=True)
            partial = image.with_suffix(image.suffix + ".part")
            partial.write_bytes(archive.extractfile(files[extension]).read())
            partial.replace(image)
    return _sample(metadata, key, image)


def _parquet_samples(parquet_path: Path) -> list[Sample]:
    """A parquet shard's samples (`--output_format parquet` keeps the image bytes in a `jpg` column)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetError(f"{parquet_path}: reading img2dataset .parquet shards needs pyarrow, which is not "
                           "installed (pip install pyarrow); the .json sidecars of `--output_format files` and "
                           "the .tar shards of `--output_format webdataset` read without it") from None
    table = pq.read_table(parquet_path).to_pylist()
    samples = []
    for row in table:
        key = str(row.get("key") or "")
        if not KEY_PATTERN.match(key):
            continue
        image = None
        data = next((row[column] for column in ("jpg", "png", "webp") if row.get(column)), None)
        if data:
            image = _cache_folder(parquet_path) / f"{key}.jpg"
            if not image.is_file():
                image.parent.mkdir(parents=True, exist_ok=True)
                image.write_bytes(data)
        samples.append(_sample(row, key, image))
    return samples
