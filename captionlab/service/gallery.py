"""Example images with reference captions for the Compare tab.

Shipped galleries live in `<checkpoints>/gallery/` as images plus `gallery.json`:

    {"items": [{"id": "coco-0", "file": "coco-0.png", "domain": "coco", "references": ["...", ...]}, ...]}

(a bare list of items is read too). Without one, a gallery is rendered once from the embedded
caption world (`captionlab.world.sample_gallery`: the images the benchmarks score) into the
workspace and read back from there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from captionlab import atomic, paths

GALLERY_FILE = "gallery.json"
DEFAULT_SIZE = 10  # two per benchmark
_cache: dict[Path, list["GalleryItem"]] = {}


@dataclass(frozen=True)
class GalleryItem:
    """One example: an image file, the benchmark it mirrors and its reference captions."""

    id: str
    path: Path
    domain: str
    references: tuple[str, ...]


def read_gallery(folder: Path) -> list[GalleryItem]:
    """The items of a gallery folder (its gallery.json); items whose image is missing are skipped."""
    folder = Path(folder)
    data = json.loads((folder / GALLERY_FILE).read_text())
    entries = data.get("items", []) if isinstance(data, dict) else data
    items = []
    for index, entry in enumerate(entries):
        image = folder / str(entry.get("file", ""))
        if not entry.get("file") or not image.is_file():
            continue
        references = tuple(str(r) for r in entry.get("references", []) if str(r).strip())
        items.append(GalleryItem(str(entry.get("id", index)), image.resolve(), str(entry.get("domain", "")),
                                 references))
    return items


def write_gallery(folder: Path, n: int = DEFAULT_SIZE, seed: int = 0) -> list[GalleryItem]:
    """Render `n` embedded-world examples into `folder` with their gallery.json."""
    from captionlab.world import sample_gallery

    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for index, (image, domain, references) in enumerate(sample_gallery(n, seed)):
        name = f"{domain}-{index:02d}.png"
        image.save(folder / name, format="PNG")
        entries.append({"id": f"{domain}-{index:02d}", "file": name, "domain": domain, "references": list(references)})
    atomic.write_json(folder / GALLERY_FILE, {"source": f"captionlab.world.sample_gallery(n={n}, seed={seed})",
                                              "items": entries})
    return read_gallery(folder)


def generated_gallery_dir() -> Path:
    return paths.workspace() / "cache" / "gallery"


def gallery_dir(checkpoints: Path | None) -> Path:
    """The folder the gallery is read from: the shipped one when present, else the generated one."""
    if checkpoints is not None and (Path(checkpoints) / "gallery" / GALLERY_FILE).is_file():
        return Path(checkpoints) / "gallery"
    return generated_gallery_dir()


def load_gallery(checkpoints: Path | None) -> tuple[list[GalleryItem], str]:
    """(items, where they come from); generates the embedded-world gallery on first use."""
    folder = gallery_dir(checkpoints)
    if folder not in _cache:
        if (folder / GALLERY_FILE).is_file():
            _cache[folder] = read_gallery(folder)
        else:
            _cache[folder] = write_gallery(folder)
    source = "shipped gallery" if folder != generated_gallery_dir() else "rendered from the embedded caption world"
    return _cache[folder], f"{len(_cache[folder])} examples, {source} ({folder})"

