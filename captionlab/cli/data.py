"""`python -m captionlab data ...`: look at caption datasets and generate the embedded world.

    data stats --format karpathy --annotations dataset_coco.json --images coco/ [--split test]
    data stats --dataset coco [--config datasets.yaml]       (or --dataset karpathy:/path/file.json)
    data world [--out DIR] [--seed N]
    data fetch NAME [NAME ...] | --all --root DIR [--workers N]    (data fetch --list: the sources)

`stats` prints images and captions per split and the mean words per caption, and per domain
where the benchmark has domains (nocaps: in-domain, near-domain, out-domain), (`--json` for a
machine-readable object); `--skip-missing` leaves out records whose image file is missing
instead of stopping, and says how many (none left is an error). A dataset named without
`--config` is the embedded world's, generated on first use as `train run` does.

`fetch` downloads benchmarks from their owners' sources (captionlab/data/sources.py) into ROOT/<name>/, resumably,
after a disk-space check, and writes ROOT/datasets.yaml for what arrived (use it as `--config`).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from captionlab.cli import UserError
from captionlab.data.readers import FORMATS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="caption datasets: statistics, the embedded world",
                                   description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="data_command", required=True)

    stats = commands.add_parser("stats", help="images, captions and caption length per split")
    source = stats.add_argument_group("which dataset (either --dataset, or --format with --annotations)")
    source.add_argument("--dataset", help="a name from the dataset config, or FORMAT:PATH")
    source.add_argument("--config", type=Path, help="dataset config YAML (default: the embedded world's)")
    source.add_argument("--format", choices=FORMATS, help="annotation format")
    source.add_argument("--annotations", type=Path, help="annotation file")
    stats.add_argument("--images", type=Path, help="image folder (default: from the config, "
                                                   "else the annotation file's folder)")
    stats.add_argument("--split", help="only this split (e.g. test for COCO Karpathy)")
    stats.add_argument("--skip-missing", action="store_true", help="leave out records whose image is missing")
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    stats.set_defaults(func=run_stats)

    world = commands.add_parser("world", help="generate the embedded caption world")
    world.add_argument("--out", type=Path, help="output folder (default: the workspace's world/)")
    world.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    world.set_defaults(func=run_world)

    from captionlab.data.sources import NAMES

    fetch = commands.add_parser("fetch", help="download benchmarks and write a datasets.yaml for them")
    fetch.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to fetch: {', '.join(NAMES)}")
    fetch.add_argument("--all", action="store_true", help="fetch every benchmark")
    fetch.add_argument("--root", type=Path, help="folder to fetch into (datasets.yaml goes here)")
    fetch.add_argument("--list", action="store_true", help="print the sources (URLs, sizes, layout) and stop")
    fetch.add_argument("--workers", type=int, default=16, help="parallel per-image downloads (default 16)")
    fetch.add_argument("--quiet", action="store_true", help="no progress bars")
    fetch.set_defaults(func=run_fetch)


def run_stats(args: argparse.Namespace) -> int:
    from captionlab.data.datasets import (ensure_embedded_world, resolve_dataset, split_statistics,
                                          subdomain_statistics, total_statistics)
    from captionlab.data.errors import DatasetError, ReadReport

    report = ReadReport()
    dataset = _dataset_argument(args)
    ensure_embedded_world(dataset, args.config)  # as `train run` and `evaluate` do, on a fresh workspace
    try:
        spec = resolve_dataset(dataset, images=args.images, config_path=args.config)
        records = spec.read(split=args.split, skip_missing=args.skip_missing, report=report)
    except DatasetError as exc:
        raise UserError(str(exc)) from None
    if not records:
        raise UserError(_nothing_readable(spec, report))
    per_split = split_statistics(records)
    per_domain = subdomain_statistics(records)
    total = total_statistics(records)
    if args.json:
        print(json.dumps({
            "dataset": spec.name, "format": spec.format, "annotations": str(spec.annotations),
            "images_folder": str(spec.images), "splits": {name: asdict(s) for name, s in per_split.items()},
            "domains": {name: asdict(s) for name, s in per_domain.items()},
            "total": asdict(total), "missing_images_skipped": report.missing_images,
            "dropped_rows": report.dropped_rows,
            "dropped_captions": report.dropped_captions,
            "images_without_captions": report.images_without_captions, "notes": report.notes(),
        }, indent=2))
        return 0
    print(spec.name if ":" in spec.name else f"{spec.name} ({spec.format}): {spec.annotations}")
    print(f"{'split':<10}{'images':>8}{'captions':>10}{'words/caption':>15}")
    for name, stats in [*per_split.items(), ("all", total)]:
        print(f"{name:<10}{stats.images:>8}{stats.captions:>10}{stats.mean_words:>15.2f}")
    if per_domain:
        print(f"{'domain':<12}{'images':>6}{'captions':>10}{'words/caption':>15}")
        for name, stats in per_domain.items():
            print(f"{name:<12}{stats.images:>6}{stats.captions:>10}{stats.mean_words:>15.2f}")
    for note in report.notes():
        print(f"note: {note}")
    return 0


def _nothing_readable(spec, report) -> str:
    """Why there are no records to count (a table of zeros would look like a dataset that is fine)."""
    if report.missing_images:
        return (f"nothing readable in {spec.name}: the image file of every one of its {report.missing_images} "
                f"record(s) is missing under {spec.images} (e.g. {report.missing_examples[0]}); check --images")
    return f"nothing readable in {spec.name}: {spec.annotations} lists no captioned image"


def _dataset_argument(args: argparse.Namespace) -> str:
    """The --dataset value, or FORMAT:PATH built from --format and --annotations."""
    if args.dataset and (args.format or args.annotations):
        raise UserError("give either --dataset, or --format with --annotations, not both")
    if args.dataset:
        return args.dataset
    if not (args.format and args.annotations):
        raise UserError("say which dataset: --dataset NAME (or FORMAT:PATH), "
                        "or --format FORMAT with --annotations FILE")
    return f"{args.format}:{args.annotations}"


def run_fetch(args: argparse.Namespace) -> int:
    from captionlab.data.datasets import CONFIG_FILE_NAME
    from captionlab.data.download import DownloadError
    from captionlab.data.errors import DatasetError
    from captionlab.data.fetch import fetch_benchmarks
    from captionlab.data.sources import NAMES

    if args.list:
        return _print_sources()
    if args.root is None:
        raise UserError("say where to fetch into: --root DIR")
    if args.all == bool(args.names):
        raise UserError(f"name the benchmarks to fetch ({', '.join(NAMES)}) or give --all, not both")
    try:
        results = fetch_benchmarks(list(NAMES) if args.all else args.names, args.root, workers=args.workers,
                                   progress=not args.quiet)
    except (DownloadError, DatasetError) as exc:
        raise UserError(str(exc)) from None
    for result in results:
        if result.error:
            print(f"{result.name}: not fetched: {result.error}")
            continue
        splits = ", ".join(f"{split} {images} images / {captions} captions"
                           for split, (images, captions) in result.splits.items())
        print(f"{result.name}: {splits or 'no readable record'}; {result.missing_images} missing image(s)"
              + (f" ({result.failed_image_downloads} image URL(s) failed)" if result.failed_image_downloads else ""))
    print(f"wrote {args.root / CONFIG_FILE_NAME} (use it with --config)")
    return 1 if any(result.error for result in results) else 0


def _print_sources() -> int:
    from captionlab.data.sources import SOURCES

    for benchmark in SOURCES.values():
        print(f"{benchmark.name} ({benchmark.format}, at most about {benchmark.approx_bytes() / 1e9:.1f} GB of disk): "
              f"{benchmark.homepage}")
        for file in benchmark.files:
            unpack = f" -> unpacked into {benchmark.name}/{file.unpack_to}/" if file.unpack_to else ""
            print(f"  {file.url} ({file.approx_bytes / 1e6:,.0f} MB){unpack}")
        if benchmark.per_image_urls:
            print(f"  + each image from its URL in the annotations (about "
                  f"{benchmark.per_image_approx_bytes / 1e9:.1f} GB)")
        for note in benchmark.notes:
            print(f"  note: {note}")
    return 0


def run_world(args: argparse.Namespace) -> int:
    from captionlab import paths

    try:
        from captionlab.world import write_world
    except ImportError as exc:
        if exc.name not in ("captionlab.world", None):
            raise  # the generator exists but one of its own imports failed: show the real error
        raise UserError(f"the embedded world generator is not available yet ({exc})") from None
    out_dir = args.out if args.out is not None else paths.world_dir()
    written = write_world(out_dir, seed=args.seed)
    print(f"wrote the embedded world to {written}")
    return 0
