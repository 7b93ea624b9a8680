"""CLIP-Score and RefCLIP-Score (Hessel et al., EMNLP 2021), behind a small encoder interface.

Definitions, as in the CLIPScore paper and its reference code:

    CLIP-S(c, v)       = w * max(cos(E_text("A photo depicts " + c), E_image(v)), 0),  w = 2.5
    RefCLIP-S(c, R, v) = H-Mean(CLIP-S(c, v), max(max_{r in R} cos(E_text(c), E_text(r)), 0))

where every text (candidate and references alike) is encoded with the "A photo depicts "
prefix and truncated to CLIP's context, embeddings are L2-normalised, and H-Mean(a, b) =
2ab / (a + b) (0 when both are 0). Corpus values are means over images. The reference code does
not clip the text-text term at 0; the paper's formula does and so does this module (the two
differ only when every reference is anti-aligned with the candidate). The paper's CLIP-S column
(e.g. 0.806) is on this scale (not x100); the reference encoder is ViT-B/32 (`OpenClipEncoder`).

Encoders (`ClipEncoder`): `OpenClipEncoder` (open_clip ViT-B/32, OpenAI weights, loaded lazily
from a local file or the Hugging Face cache, never downloaded implicitly) and `HFClipEncoder`
(a transformers `CLIPModel` saved in a local folder, e.g. the embedded world's tiny CLIP).
Every report carries `encoder_name`, so results say which CLIP produced them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Hashable, Mapping, Sequence

import torch

from captionlab.evaluation.clip_names import EMBEDDED_CLIP_NAME, PAPER_CLIP_NAME  # noqa: F401 (re-exported)

CLIP_SCORE_WEIGHT = 2.5
CLIP_SCORE_PREFIX = "A photo depicts "
OPENCLIP_WEIGHTS_ENV = "CAPTIONLAB_OPENCLIP_WEIGHTS"
OPENAI_VITB32_HF_REPO = "timm/vit_base_patch32_clip_224.openai"
OPENCLIP_WEIGHT_FILES = ("open_clip_model.safetensors",)  # never the pickled .bin: safetensors only


class ClipWeightsNotFound(RuntimeError):
    """The CLIP weights are not on this machine (and nothing is downloaded implicitly)."""


class ClipEncoder:
    """Interface: L2-normalised embeddings for images and texts, and a name for reports."""

    name: str = "clip"

    def encode_images(self, images: list) -> torch.Tensor:
        """[N, D] L2-normalised image embeddings for N PIL images."""
        raise NotImplementedError

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """[N, D] L2-normalised text embeddings (the caller adds any prefix)."""
        raise NotImplementedError


def _features(output) -> torch.Tensor:
    """transformers 5 returns a model output whose pooler_output is the projected embedding."""
    if isinstance(output, torch.Tensor):
        return output
    return output.pooler_output


class HFClipEncoder(ClipEncoder):
    """A transformers `CLIPModel` with its tokenizer and image processor from a local folder."""

    def __init__(self, folder: str | Path, name: str | None = None, device: str | torch.device = "cpu"):
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        self.folder = Path(folder)
        if not (self.folder / "config.json").is_file():
            raise ClipWeightsNotFound(f"no CLIP model in {self.folder} (config.json missing)")
        self.name = name or f"hf-clip:{self.folder.name}"
        self.device = torch.device(device)
        self.model = CLIPModel.from_pretrained(self.folder, local_files_only=True, use_safetensors=True).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder, local_files_only=True)
        self.image_processor = AutoImageProcessor.from_pretrained(self.folder, local_files_only=True)
        self.max_length = int(self.model.config.text_config.max_position_embeddings)

    @torch.inference_mode()
    def encode_images(self, images: list) -> torch.Tensor:
        pixels = self.image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
        features = _features(self.model.get_image_features(pixel_values=pixels["pixel_values"].to(self.device)))
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu()

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt")
        tokens = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        features = _features(self.model.get_text_features(**tokens))
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu()


def openclip_weights_path(weights: str | Path | None = None, cache_dir: str | Path | None = None) -> Path:
    """Local file with open_clip's ViT-B/32 OpenAI weights, or ClipWeightsNotFound saying how to
    get them. Looks at `weights`, then $CAPTIONLAB_OPENCLIP_WEIGHTS, then the Hugging Face cache
    (`cache_dir` or the default); never touches the network."""
    how_to = (
        f"get them while online with `python -c \"import open_clip; open_clip.create_model_and_transforms("
        f"'ViT-B-32', pretrained='openai')\"` (fills the Hugging Face cache from {OPENAI_VITB32_HF_REPO}), "
        f"or point ${OPENCLIP_WEIGHTS_ENV} at a downloaded {OPENCLIP_WEIGHT_FILES[0]}; "
        f"without them, use HFClipEncoder (e.g. the embedded tiny CLIP) and label results accordingly"
    )
    explicit = weights or os.environ.get(OPENCLIP_WEIGHTS_ENV, "").strip() or None
    if explicit:
        path = Path(explicit).expanduser()
        if path.suffix != ".safetensors":
            raise ClipWeightsNotFound(f"open_clip weights file {path} is not a .safetensors file (pickled "
                                      f"weights are never loaded); {how_to}")
        if path.is_file():
            return path
        raise ClipWeightsNotFound(f"open_clip weights file {path} does not exist; {how_to}")
    from huggingface_hub import try_to_load_from_cache

    for filename in OPENCLIP_WEIGHT_FILES:
        cached = try_to_load_from_cache(OPENAI_VITB32_HF_REPO, filename,
                                        cache_dir=str(cache_dir) if cache_dir else None)
        if isinstance(cached, str) and Path(cached).is_file():
            return Path(cached)
    where = cache_dir or "the Hugging Face cache"
    raise ClipWeightsNotFound(f"CLIP ViT-B/32 (OpenAI) weights for CLIP-Score are not in {where}; {how_to}")


class OpenClipEncoder(ClipEncoder):
    """open_clip ViT-B/32 with OpenAI's weights (the CLIP-Score reference), loaded on first use."""

    def __init__(self, weights: str | Path | None = None, cache_dir: str | Path | None = None,
                 device: str | torch.device | None = None):
        self.weights, self.cache_dir = weights, cache_dir
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.name = PAPER_CLIP_NAME
        self._model = self._preprocess = self._tokenizer = None

    def _load(self) -> None:
        if self._model is not None:
            return
        path = openclip_weights_path(self.weights, self.cache_dir)  # raises before importing open_clip
        import open_clip

        # OpenAI's CLIP uses QuickGELU; the tag would set it, a file path does not.
        model, _, preprocess = open_clip.create_model_and_transforms(
            "ViT-B-32", pretrained=str(path), force_quick_gelu=True, device=self.device)
        self._model, self._preprocess = model.eval(), preprocess
        self._tokenizer = open_clip.get_tokenizer("ViT-B-32")  # truncates to the 77-token context

    @torch.inference_mode()
    def encode_images(self, images: list) -> torch.Tensor:
        self._load()
        batch = torch.stack([self._preprocess(im.convert("RGB")) for im in images]).to(self.device)
        return torch.nn.functional.normalize(self._model.encode_image(batch).float(), dim=-1).cpu()

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        self._load()
        tokens = self._tokenizer(list(texts)).to(self.device)
        return torch.nn.functional.normalize(self._model.encode_text(tokens).float(), dim=-1).cpu()


def embedded_clip_folder() -> Path:
    """Where the embedded world's trained tiny CLIP lives."""
    from captionlab import paths

    return paths.CHECKPOINTS_DIR / "embedded" / "clip"


def embedded_clip_encoder(folder: str | Path | None = None, device: str | torch.device = "cpu") -> HFClipEncoder:
    """The embedded world's tiny CLIP (checkpoints/embedded/clip), labelled "embedded-tiny-clip"."""
    return HFClipEncoder(folder or embedded_clip_folder(), name=EMBEDDED_CLIP_NAME, device=device)


@dataclass
class ClipScoreReport:
    """CLIP-S (and RefCLIP-S when references were given): corpus means and per-image values."""

    encoder_name: str
    clip_score: float
    per_image: dict  # image id -> CLIP-S
    ref_clip_score: float | None = None
    per_image_ref: dict = field(default_factory=dict)  # image id -> RefCLIP-S (images with references)
    n_images: int = 0
    n_images_with_references: int = 0
    unavailable: dict = field(default_factory=dict)  # metric -> reason

    def paper_scale_metrics(self) -> dict[str, float]:
        """Metric name -> corpus value, on the paper's scale (CLIP-S is printed unscaled, e.g. 0.806)."""
        out = {"CLIP-Score": self.clip_score}
        if self.ref_clip_score is not None:
            out["RefCLIP-Score"] = self.ref_clip_score
        return out


def _as_items(values, ids: list | None) -> tuple[list, list]:
    if isinstance(values, Mapping):
        keys = list(values) if ids is None else ids
        return keys, [values[k] for k in keys]
    values = list(values)
    return (list(range(len(values))) if ids is None else ids), values


def _open_image(image):
    from PIL import Image

    if isinstance(image, (str, Path)):
        with Image.open(image) as opened:
            return opened.convert("RGB")
    return image


def _encode_in_batches(encode, items: list, batch_size: int, load=lambda x: x) -> torch.Tensor:
    chunks = [encode([load(x) for x in items[i:i + batch_size]]) for i in range(0, len(items), batch_size)]
    return torch.nn.functional.normalize(torch.cat(chunks).double(), dim=-1)


def clip_score(
    encoder: ClipEncoder,
    images: Sequence | Mapping[Hashable, object],
    captions: Sequence[str] | Mapping[Hashable, str],
    references: Sequence[Sequence[str]] | Mapping[Hashable, Sequence[str]] | None = None,
    *,
    batch_size: int = 64,
) -> ClipScoreReport:
    """CLIP-S of each caption for its image (and RefCLIP-S when `references` is given).

    `images` are PIL images or paths; `images`, `captions` and `references` are either aligned
    sequences (per-image values keyed 0..N-1) or mappings keyed by image id (same ids). Images
    whose reference list is empty get no RefCLIP-S; the corpus RefCLIP-S averages the others.
    """
    ids, caption_list = _as_items(captions, None)
    if not ids:
        raise ValueError("no captions to score")
    _, image_list = _as_items(images, ids if isinstance(images, Mapping) else None)
    if len(image_list) != len(caption_list) or (isinstance(images, Mapping) and set(images) != set(ids)):
        raise ValueError(f"{len(image_list)} images for {len(caption_list)} captions (ids must match)")
    if any(c is None or not isinstance(c, str) for c in caption_list):
        raise TypeError("captions must be strings")

    prefixed = [CLIP_SCORE_PREFIX + c for c in caption_list]
    image_emb = _encode_in_batches(encoder.encode_images, image_list, batch_size, _open_image)
    text_emb = _encode_in_batches(encoder.encode_texts, prefixed, batch_size)
    cosines = (image_emb * text_emb).sum(-1)
    per_clip = (CLIP_SCORE_WEIGHT * cosines.clamp(min=0)).tolist()
    report = ClipScoreReport(encoder_name=encoder.name, clip_score=float(sum(per_clip) / len(per_clip)),
                             per_image=dict(zip(ids, per_clip)), n_images=len(ids))
    if references is None:
        report.unavailable["RefCLIP-Score"] = "no references given"
        return report

    if isinstance(references, Mapping) and set(references) != set(ids):
        raise ValueError("reference ids differ from caption ids")
    _, ref_lists = _as_items(references, ids if isinstance(references, Mapping) else None)
    if len(ref_lists) != len(ids):
        raise ValueError(f"{len(ref_lists)} reference lists for {len(ids)} captions")
    flat = [(row, CLIP_SCORE_PREFIX + r) for row, refs in enumerate(ref_lists) for r in refs if r and r.strip()]
    if not flat:
        report.unavailable["RefCLIP-Score"] = "no image has references"
        return report
    ref_emb = _encode_in_batches(encoder.encode_texts, [text for _, text in flat], batch_size)
    ref_rows = torch.tensor([row for row, _ in flat])
    ref_cos = (text_emb[ref_rows] * ref_emb).sum(-1)
    best = torch.full((len(ids),), float("-inf"), dtype=ref_cos.dtype).scatter_reduce(0, ref_rows, ref_cos, "amax")
    for row in sorted(set(ref_rows.tolist())):
        clip_s, text_s = per_clip[row], max(float(best[row]), 0.0)
        report.per_image_ref[ids[row]] = 2 * clip_s * text_s / (clip_s + text_s) if clip_s + text_s > 0 else 0.0
    report.n_images_with_references = len(report.per_image_ref)
    report.ref_clip_score = sum(report.per_image_ref.values()) / len(report.per_image_ref)
    return report
