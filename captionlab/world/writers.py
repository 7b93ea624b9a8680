"""Writing each domain in the published file format of the benchmark it stands for.

Each `write_*` function writes one annotation file and returns the images still to draw as
`ImageJob`s (scene, destination), so rendering, the slow part, can run in parallel while the
annotation files stay byte-identical. JSON keys keep a fixed insertion order and no timestamp
or absolute path is written anywhere, so the same seed yields the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import NamedTuple

from captionlab.world.domains import Example, nocaps_domain_of
from captionlab.world.render import IMAGE_SIZE
from captionlab.world.scenes import Scene

# Paths of each benchmark, relative to the world folder (the layout datasets.yaml points to).
ANNOTATIONS = {
    "coco": "annotations/dataset_coco.json",
    "nocaps": "annotations/nocaps_val_4500_captions.json",
    "cc3m": "annotations/Validation_GCC-1.1.0-Validation.tsv",
    "vizwiz": "annotations/vizwiz_val.json",
    "textcaps": "annotations/TextCaps_0.1_val.json",
    "pretrain": "annotations/pretrain_verbose.json",
    "brief": "annotations/pretrain_brief.json",
}
IMAGES = {domain: f"images/{domain}" for domain in ANNOTATIONS} | {"brief": "images/pretrain_brief"}
FORMATS = {
    "coco": "karpathy", "nocaps": "nocaps", "cc3m": "cc3m", "vizwiz": "vizwiz",
    "textcaps": "textcaps", "pretrain": "llava_conversations",
    "brief": "llava_conversations",
}
# Real VizWiz-Captions numbers its val images after the 23,431 train images; keeping that
# offset catches readers that confuse ids with positions.
VIZWIZ_FIRST_IMAGE_ID = 23431
VIZWIZ_FIRST_CAPTION_ID = 5 * VIZWIZ_FIRST_IMAGE_ID


class ImageJob(NamedTuple):
    scene: Scene
    path: Path


def hex_id(seed: int, domain: str, index: int) -> str:
    """A stable 16-hex-digit id, like Open Images' (nocaps, TextCaps) image ids."""
    return hashlib.sha256(f"{seed}:{domain}:{index}".encode()).hexdigest()[:16]


def tokenize(sentence: str) -> list[str]:
    """Karpathy-style tokens: lowercase words, punctuation dropped."""
    return re.findall(r"[a-z0-9]+", sentence.lower())


def _dump_json(path: Path, payload: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, ensure_ascii=True), encoding="utf-8")


def write_coco(out_dir: Path, splits: dict[str, list[Example]]) -> list[ImageJob]:
    """Karpathy's dataset_coco.json; train images under train2014/, val and test under val2014/."""
    images, jobs = [], []
    imgid = sentid = 0
    for split in ("train", "val", "test"):
        folder = "train2014" if split == "train" else "val2014"
        for example in splits.get(split, []):
            cocoid = imgid + 1
            filename = f"COCO_{folder}_{cocoid:012d}.png"
            sentences = []
            for raw in example.references:
                sentences.append({"raw": raw, "tokens": tokenize(raw), "imgid": imgid, "sentid": sentid})
                sentid += 1
            images.append({
                "filepath": folder,
                "filename": filename,
                "imgid": imgid,
                "split": split,
                "sentences": sentences,
                "sentids": [s["sentid"] for s in sentences],
                "cocoid": cocoid,
            })
            jobs.append(ImageJob(example.scene, out_dir / IMAGES["coco"] / folder / filename))
            imgid += 1
    _dump_json(out_dir / ANNOTATIONS["coco"], {"images": images, "dataset": "coco"})
    return jobs


def write_nocaps(out_dir: Path, examples: list[Example], seed: int) -> list[ImageJob]:
    """nocaps' val file: COCO-style images/annotations with 10 captions per image."""
    images, annotations, jobs = [], [], []
    for example in examples:
        open_images_id = hex_id(seed, "nocaps", example.index)
        file_name = f"{open_images_id}.png"
        images.append({
            "id": example.index,
            "open_images_id": open_images_id,
            "file_name": file_name,
            "coco_url": f"http://example.invalid/nocaps/val/{file_name}",
            "height": IMAGE_SIZE,
            "width": IMAGE_SIZE,
            "domain": example.nocaps_domain or nocaps_domain_of(example.scene),
        })
        for caption in example.references:
            annotations.append({"image_id": example.index, "caption": caption, "id": len(annotations)})
        jobs.append(ImageJob(example.scene, out_dir / IMAGES["nocaps"] / file_name))
    _dump_json(out_dir / ANNOTATIONS["nocaps"], {"images": images, "annotations": annotations})
    return jobs


def write_cc3m(out_dir: Path, examples: list[Example], seed: int) -> list[ImageJob]:
    """The GCC validation TSV (caption<TAB>url, no header); images named by row as img2dataset does."""
    lines, jobs = [], []
    for row, example in enumerate(examples):
        url = f"http://example.invalid/cc3m/{hex_id(seed, 'cc3m', example.index)}.jpg"
        lines.append(f"{example.references[0]}\t{url}\n")
        jobs.append(ImageJob(example.scene, out_dir / IMAGES["cc3m"] / f"{row:09d}.png"))
    path = out_dir / ANNOTATIONS["cc3m"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as handle:  # "\n" on every platform
        handle.writelines(lines)
    return jobs


def write_vizwiz(out_dir: Path, examples: list[Example]) -> list[ImageJob]:
    """VizWiz-Captions' val file, rejected and precanned captions included and flagged."""
    images, annotations, jobs = [], [], []
    for example in examples:
        image_id = VIZWIZ_FIRST_IMAGE_ID + example.index
        file_name = f"VizWiz_val_{example.index:08d}.png"
        text = example.scene.word is not None
        images.append({
            "file_name": file_name,
            "vizwiz_url": f"http://example.invalid/vizwiz/{file_name}",
            "id": image_id,
            "text_detected": text,
        })
        for caption, (rejected, precanned) in zip(example.references, example.vizwiz_flags):
            annotations.append({
                "image_id": image_id,
                "caption": caption,
                "is_rejected": rejected,
                "is_precanned": precanned,
                "text_detected": text,
                "id": VIZWIZ_FIRST_CAPTION_ID + len(annotations),
            })
        jobs.append(ImageJob(example.scene, out_dir / IMAGES["vizwiz"] / file_name))
    _dump_json(out_dir / ANNOTATIONS["vizwiz"], {"images": images, "annotations": annotations})
    return jobs


def write_textcaps(out_dir: Path, examples: list[Example], seed: int) -> list[ImageJob]:
    """TextCaps' val file: one entry per caption, each carrying all references of its image."""
    data, jobs = [], []
    for example in examples:
        image_id = hex_id(seed, "textcaps", example.index)
        references = list(example.references)
        classes = sorted({kind.capitalize() for kind in example.scene.kinds()} | {"Text"})
        for caption in references:
            data.append({
                "image_id": image_id,
                "image_classes": classes,
                "image_path": f"train/{image_id}.png",
                "image_name": image_id,
                "image_width": IMAGE_SIZE,
                "image_height": IMAGE_SIZE,
                "set_name": "val",
                "caption_id": len(data),
                "caption_str": caption,
                "caption_tokens": ["<s>", *tokenize(caption), "</s>"],
                "reference_strs": references,
                "reference_tokens": [["<s>", *tokenize(r), "</s>"] for r in references],
            })
        jobs.append(ImageJob(example.scene, out_dir / IMAGES["textcaps"] / "train" / f"{image_id}.png"))
    _dump_json(out_dir / ANNOTATIONS["textcaps"], {"dataset_type": "val", "dataset_name": "textcaps", "data": data})
    return jobs


def write_pretrain(out_dir: Path, examples: list[Example], domain: str = "pretrain") -> list[ImageJob]:
    """LLaVA conversations: one human prompt, one answer each (verbose for "pretrain", brief for "brief")."""
    records, jobs = [], []
    for example in examples:
        record_id = f"{example.index:09d}"
        records.append({
            "id": record_id,
            "image": f"{record_id}.png",
            "conversations": [
                {"from": "human", "value": f"<image>\n{example.prompt}"},
                {"from": "gpt", "value": example.references[0]},
            ],
        })
        jobs.append(ImageJob(example.scene, out_dir / IMAGES[domain] / f"{record_id}.png"))
    _dump_json(out_dir / ANNOTATIONS[domain], records)
    return jobs


def datasets_config(manifest_name: str, seed: int, scale: float) -> dict:
    """The datasets.yaml content: the five benchmarks under `datasets`, the two pretraining sets apart."""
    return {
        "datasets": {
            domain: {"format": FORMATS[domain], "annotations": ANNOTATIONS[domain], "images": IMAGES[domain]}
            for domain in ("coco", "nocaps", "cc3m", "vizwiz", "textcaps")
        },
        "pretrain": {"format": FORMATS["pretrain"], "annotations": ANNOTATIONS["pretrain"], "images": IMAGES["pretrain"]},
        "pretrain_brief": {"format": FORMATS["brief"], "annotations": ANNOTATIONS["brief"], "images": IMAGES["brief"]},
        "world": {"seed": seed, "scale": scale, "manifest": manifest_name},
    }
