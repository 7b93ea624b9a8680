"""Fetch benchmarks into a root folder and write the `datasets.yaml` that names what arrived.

    fetch_benchmarks(["nocaps", "cc3m"], Path("/data/captions"))

Each benchmark of captionlab/data/sources.py lands in ROOT/<name>/: its files downloaded (resumable, checked, see
download.py), its zip archives unpacked and then removed (a `.<zip>.unpacked` marker remembers it, so a rerun does
not fetch them again), and, for nocaps and CC3M, each image downloaded from the URL its annotation file gives
(CC3M in img2dataset's files layout, so the sidecar ties image to caption). An image whose URL fails is counted
as missing, never fatal. The disk-space check runs before anything is downloaded. Then ROOT/datasets.yaml gets
one entry per benchmark whose annotations arrived (other entries already there are kept), with its images and
captions per split, and its missing images, counted by the project's own readers and written as comments.
"""

from __future__ import annotations

import json
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from captionlab.data.datasets import CONFIG_FILE_NAME
from captionlab.data.download import DownloadError, Progress, check_free_space, download
from captionlab.data.errors import DatasetError, ReadReport
from captionlab.data.readers import read_dataset
from captionlab.data.sources import SOURCES, Benchmark, RemoteFile

IMG2DATASET_SHARD_SIZE = 10_000  # img2dataset's default samples per shard folder


@dataclass
class FetchResult:
    """What one benchmark's fetch left: counts per split (images, captions), missing images, problems."""

    name: str
    splits: dict[str, tuple[int, int]] = field(default_factory=dict)
    missing_images: int = 0
    failed_image_downloads: int = 0
    error: str = ""


def fetch_benchmarks(names: list[str], root: Path, *, sources: dict[str, Benchmark] | None = None,
                     workers: int = 16, progress: bool = True) -> list[FetchResult]:
    """Fetch each named benchmark under `root`, then write `root/datasets.yaml`; one result per name."""
    sources = SOURCES if sources is None else sources
    unknown = [name for name in names if name not in sources]
    if unknown:
        raise DatasetError(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(sources)}")
    root = Path(root).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    check_free_space(root, sum(remaining_bytes(sources[name], root / name) for name in names))
    results = []
    for name in names:
        benchmark = sources[name]
        result = FetchResult(name)
        try:
            result.failed_image_downloads = fetch_benchmark(benchmark, root / name, workers=workers,
                                                            progress=progress)
        except (DownloadError, DatasetError, zipfile.BadZipFile, OSError) as exc:
            result.error = str(exc)
        results.append(result)
    arrived = [sources[r.name] for r in results if (root / r.name / sources[r.name].annotations).exists()]
    counted = {}
    for result in results:
        benchmark = sources[result.name]
        if benchmark not in arrived:
            continue
        try:
            counted[result.name] = result.splits, result.missing_images = count_records(benchmark, root / result.name)
        except DatasetError as exc:
            result.error = result.error or f"arrived but does not read: {exc}"
    write_datasets_yaml(root, arrived, counted)
    return results


def remaining_bytes(benchmark: Benchmark, folder: Path) -> int:
    """About how many bytes the benchmark still needs on disk under `folder`."""
    needed = sum(file.approx_bytes * (2 if file.unpack_to else 1)
                 for file in benchmark.files if not _already_fetched(file, folder))
    return needed + (0 if (folder / ".images-complete").exists() else benchmark.per_image_approx_bytes)


def fetch_benchmark(benchmark: Benchmark, folder: Path, *, workers: int = 16, progress: bool = True) -> int:
    """Fetch one benchmark into `folder`; returns how many per-image downloads failed (counted, not fatal)."""
    folder.mkdir(parents=True, exist_ok=True)
    for file in benchmark.files:
        if _already_fetched(file, folder):
            continue
        path = _download_with_mirrors(benchmark, file, folder / file.target, progress)
        if file.unpack_to:
            _unpack(path, folder / file.unpack_to, file.members)
            _unpacked_marker(file, folder).touch()
            path.unlink()
    if not benchmark.per_image_urls:
        return 0
    jobs = _image_jobs(benchmark, folder)
    failed = _download_images(jobs, workers, progress, benchmark.name)
    if not failed:
        (folder / ".images-complete").touch()
    return failed


def _download_with_mirrors(benchmark: Benchmark, file: RemoteFile, target: Path, progress: bool) -> Path:
    """The owner's URL first, then each mirror, named as such; the error lists every URL tried."""
    problems = []
    for url in (file.url, *file.mirrors):
        if url != file.url:
            print(f"{benchmark.name}: trying {url}, a mirror of the owner's {file.url}", file=sys.stderr)
        try:
            return download(url, target, sha256=file.sha256, progress=progress,
                            label=f"{benchmark.name}/{file.target}")
        except DownloadError as exc:
            problems.append(str(exc))
    hint = f"; download it by hand from {benchmark.homepage} into {target}" if benchmark.homepage else ""
    raise DownloadError("; ".join(problems) + hint)


def _already_fetched(file: RemoteFile, folder: Path) -> bool:
    return _unpacked_marker(file, folder).exists() if file.unpack_to else (folder / file.target).exists()


def _unpacked_marker(file: RemoteFile, folder: Path) -> Path:
    return folder / f".{Path(file.target).name}.unpacked"


def _unpack(archive: Path, destination: Path, members: tuple[str, ...]) -> None:
    """Unpack a zip into `destination`: all of it, or only `members` (matched by path suffix, flattened)."""
    destination.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as bundle:
        if not members:
            bundle.extractall(destination)  # zipfile drops absolute paths and `..` from member names
            return
        for wanted in members:
            found = [n for n in bundle.namelist() if n == wanted or n.endswith("/" + wanted)]
            if not found:
                raise DatasetError(f"{archive.name} has no member {wanted} (it holds {len(bundle.namelist())} "
                                   f"entries, e.g. {', '.join(bundle.namelist()[:3])})")
            (destination / Path(wanted).name).write_bytes(bundle.read(found[0]))


@dataclass(frozen=True)
class ImageJob:
    """One image to fetch from a URL, and for img2dataset's layout, the sidecar to write beside it."""

    url: str
    target: Path
    sidecar: dict | None = None


def _image_jobs(benchmark: Benchmark, folder: Path) -> list[ImageJob]:
    annotations = folder / benchmark.annotations
    images = folder / benchmark.images
    if benchmark.per_image_urls == "nocaps":
        document = json.loads(annotations.read_text(encoding="utf-8"))
        return [ImageJob(entry.get("coco_url", ""), images / entry["file_name"]) for entry in document["images"]]
    if benchmark.per_image_urls == "cc3m":
        jobs = []
        lines = [line for line in annotations.read_text(encoding="utf-8").splitlines() if line.strip()]
        for row, line in enumerate(lines):
            caption, _, url = line.partition("\t")
            key = f"{row:09d}"
            shard = images / f"{row // IMG2DATASET_SHARD_SIZE:05d}"
            jobs.append(ImageJob(url.strip(), shard / f"{key}.jpg",
                                 {"key": key, "url": url.strip(), "caption": caption.strip()}))
        return jobs
    raise DatasetError(f"{benchmark.name}: unknown per-image layout '{benchmark.per_image_urls}'")


def _download_images(jobs: list[ImageJob], workers: int, progress: bool, label: str) -> int:
    """Fetch every job's image (those already there are skipped); returns how many failed."""
    bar = Progress(f"{label} images", len(jobs), unit="images") if progress else None

    def fetch_one(job: ImageJob) -> bool:
        ok, error = True, None
        if not job.target.exists():
            try:
                if not job.url.startswith(("http://", "https://")):
                    raise DownloadError(f"no http(s) URL ({job.url!r})")
                download(job.url, job.target, retries=1, timeout=20, progress=False)
            except (DownloadError, OSError, ValueError) as exc:
                ok, error = False, str(exc)
        if job.sidecar is not None:
            _write_sidecar(job, ok, error)
        return ok

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        failed = 0
        for ok in pool.map(fetch_one, jobs):
            failed += not ok
            if bar:
                bar.advance(1)
    if bar:
        bar.close()
    return failed


def _write_sidecar(job: ImageJob, ok: bool, error: str | None) -> None:
    """img2dataset's per-sample `.json` (and `.txt` caption): its `url` is what pairs the image with its row."""
    job.target.parent.mkdir(parents=True, exist_ok=True)
    sidecar = {**job.sidecar, "status": "success" if ok else "failed_to_download", "error_message": error}
    job.target.with_suffix(".json").write_text(json.dumps(sidecar), encoding="utf-8")
    job.target.with_suffix(".txt").write_text(job.sidecar["caption"], encoding="utf-8")


def count_records(benchmark: Benchmark, folder: Path) -> tuple[dict[str, tuple[int, int]], int]:
    """(images, captions) per split as the project's reader sees them, and how many images are missing."""
    report = ReadReport()
    records = read_dataset(benchmark.format, folder / benchmark.annotations, folder / benchmark.images,
                           skip_missing=True, report=report)
    splits: dict[str, tuple[int, int]] = {}
    for record in records:
        images, captions = splits.get(record.split, (0, 0))
        splits[record.split] = (images + 1, captions + len(record.references))
    return dict(sorted(splits.items())), report.missing_images


def write_datasets_yaml(root: Path, arrived: list[Benchmark],
                        counts: dict[str, tuple[dict[str, tuple[int, int]], int]]) -> Path:
    """Write root/datasets.yaml: the arrived benchmarks (paths relative to root), other entries kept as they were."""
    path = root / CONFIG_FILE_NAME
    entries: dict = {}
    if path.exists():
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        entries = dict(document.get("datasets") or {}) if isinstance(document, dict) else {}
    for benchmark in arrived:
        entry = {"format": benchmark.format, "annotations": f"{benchmark.name}/{benchmark.annotations}",
                 "images": f"{benchmark.name}/{benchmark.images}"}
        if benchmark.split:
            entry["split"] = benchmark.split
        entries[benchmark.name] = entry
    lines = ["# Written by `python -m captionlab data fetch`; paths are relative to this file's folder.", "datasets:"]
    for name, entry in entries.items():
        if name in counts:
            splits, missing = counts[name]
            described = ", ".join(f"{split} {images} images / {captions} captions"
                                  for split, (images, captions) in splits.items()) or "no readable record"
            lines.append(f"  # {name}: {described}; {missing} missing image(s)")
        lines.append(f"  {name}: {json.dumps(entry)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
