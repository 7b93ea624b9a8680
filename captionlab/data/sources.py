"""Where the five benchmarks come from: one table of name -> files, URLs, sizes, checksums and layout.

`python -m captionlab data fetch` (captionlab/data/fetch.py) reads this table and nothing else. Each benchmark
lands under ROOT/<name>/ in the layout its reader expects (captionlab/data/readers), so the `datasets.yaml`
written afterwards points at the files exactly as their owners publish them:

    coco      annotations/dataset_coco.json (Karpathy splits), images/train2014/, images/val2014/
    nocaps    annotations/nocaps_val_4500_captions.json, images/<open_images_id>.jpg (each image's URL in the file)
    vizwiz    annotations/val.json (from annotations.zip), images/val/VizWiz_val_*.jpg (from val.zip)
    textcaps  annotations/TextCaps_0.1_val.json, images/train_images/*.jpg (TextVQA's train_val_images.zip)
    cc3m      annotations/Validation_GCC-1.1.0-Validation.tsv, images/00000/000000000.jpg + .json (img2dataset's
              files layout: each row's URL downloaded, its sidecar naming the URL and caption)

The paper trains on COCO only and evaluates the other four on their validation sets, so only those images are
listed. Sizes are the owners' published file sizes where known; they size the disk-space check, and the server's
Content-Length is checked on every download. None of the owners publishes a checksum for these files, so
`sha256` is empty here; the downloader checks it wherever a source gives one. `mirrors` lists copies tried when
the owner's link fails; none is listed yet: no Hub copy of these files was verified to match the owner's bytes,
and an unverified copy would be a guess (add one here with its sha256 once checked).
"""

from __future__ import annotations

from dataclasses import dataclass, field

GB = 1_000_000_000
MB = 1_000_000


@dataclass(frozen=True)
class RemoteFile:
    """One file to download: where from, where to (relative to the benchmark's folder), how to check it."""

    url: str
    target: str
    approx_bytes: int  # for the disk-space check before anything starts
    sha256: str = ""  # checked when given; a mismatch is refused
    unpack_to: str = ""  # a zip archive unpacked into this folder (then removed); "" keeps the file as it is
    members: tuple[str, ...] = ()  # unpack only these members of the archive (flattened into unpack_to)
    mirrors: tuple[str, ...] = ()  # tried in order when the owner's URL fails; the output names each as a mirror


@dataclass(frozen=True)
class Benchmark:
    """A benchmark: its files, the images listed one URL per image in its annotations, and its datasets.yaml entry."""

    name: str
    format: str  # a reader of captionlab/data/readers
    annotations: str  # relative to ROOT/<name>/
    images: str  # relative to ROOT/<name>/
    files: tuple[RemoteFile, ...]
    split: str = ""  # the split the study evaluates (datasets.yaml's `split`), "" for the reader's own
    per_image_urls: str = ""  # "nocaps" or "cc3m": images downloaded one by one from the annotation's URLs
    per_image_approx_bytes: int = 0
    homepage: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    def approx_bytes(self) -> int:
        """Bytes on disk once fetched (archives are unpacked then removed, so each counts about twice at peak)."""
        return sum(f.approx_bytes * (2 if f.unpack_to else 1) for f in self.files) + self.per_image_approx_bytes


SOURCES: dict[str, Benchmark] = {
    "coco": Benchmark(
        name="coco", format="karpathy", annotations="annotations/dataset_coco.json", images="images", split="test",
        files=(
            RemoteFile("https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip",
                       "caption_datasets.zip", 36 * MB, unpack_to="annotations", members=("dataset_coco.json",)),
            RemoteFile("http://images.cocodataset.org/zips/val2014.zip", "val2014.zip", 6_645_013_297,
                       unpack_to="images"),
            RemoteFile("http://images.cocodataset.org/zips/train2014.zip", "train2014.zip", 13_510_573_713,
                       unpack_to="images"),
        ),
        homepage="https://cocodataset.org/#download",
        notes=("Karpathy's test split (5,000 images) is all in val2014; train2014 is for training.",),
    ),
    "nocaps": Benchmark(
        name="nocaps", format="nocaps", annotations="annotations/nocaps_val_4500_captions.json", images="images",
        files=(RemoteFile("https://nocaps.s3.amazonaws.com/nocaps_val_4500_captions.json",
                          "annotations/nocaps_val_4500_captions.json", 4 * MB),),
        per_image_urls="nocaps", per_image_approx_bytes=4500 * 400_000,
        homepage="https://nocaps.org/download",
        notes=("4,500 Open Images validation images, each from the `coco_url` the annotation file gives.",),
    ),
    "vizwiz": Benchmark(
        name="vizwiz", format="vizwiz", annotations="annotations/val.json", images="images",
        files=(
            RemoteFile("https://vizwiz.cs.colorado.edu/VizWiz_final/caption/annotations.zip", "annotations.zip",
                       15 * MB, unpack_to="annotations", members=("annotations/val.json",)),
            RemoteFile("https://vizwiz.cs.colorado.edu/VizWiz_final/images/val.zip", "val.zip", 2_500 * MB,
                       unpack_to="images"),
        ),
        homepage="https://vizwiz.org/tasks-and-datasets/image-captioning/",
    ),
    "textcaps": Benchmark(
        name="textcaps", format="textcaps", annotations="annotations/TextCaps_0.1_val.json", images="images",
        files=(
            RemoteFile("https://dl.fbaipublicfiles.com/textvqa/data/textcaps/TextCaps_0.1_val.json",
                       "annotations/TextCaps_0.1_val.json", 30 * MB),
            RemoteFile("https://dl.fbaipublicfiles.com/textvqa/images/train_val_images.zip", "train_val_images.zip",
                       7_100 * MB, unpack_to="images"),
        ),
        homepage="https://textvqa.org/textcaps/dataset/",
        notes=("TextCaps' images are TextVQA's: the val images are in train_val_images.zip (train_images/).",),
    ),
    "cc3m": Benchmark(
        name="cc3m", format="cc3m", annotations="annotations/Validation_GCC-1.1.0-Validation.tsv", images="images",
        files=(RemoteFile("https://storage.googleapis.com/gcc-data/Validation/GCC-1.1.0-Validation.tsv",
                          "annotations/Validation_GCC-1.1.0-Validation.tsv", 2 * MB),),
        per_image_urls="cc3m", per_image_approx_bytes=15_840 * 150_000,
        homepage="https://ai.google.com/research/ConceptualCaptions/download",
        notes=("15,840 rows, each image from its own web URL: many are gone by now and are counted as missing.",),
    ),
}

NAMES: tuple[str, ...] = tuple(SOURCES)
