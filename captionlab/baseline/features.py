"""CLIP grid features for the CLIP-Captioner: the frozen encoders, their tokenizers, and an on-disk cache.

The captioner reads what LLaVA's projector reads: every patch token (no CLS) of the penultimate
layer (`FEATURE_LAYER = -2`) of a CLIP visual encoder, named by a source string:

  open_clip:ViT-L-14-336   open_clip's model with OpenAI's weights (LLaVA's encoder), loaded from
                           $CAPTIONLAB_CAPTIONER_CLIP_WEIGHTS or the local caches only
  /path/to/folder          a transformers CLIPModel (or CLIPVisionModel) folder with its image
                           processor and tokenizer, e.g. the embedded world's checkpoints/embedded/clip

The encoder is frozen, so each image's features are computed once: `GridFeatureExtractor` looks
them up in a `FeatureCache` keyed by the encoder id (source + weights fingerprint + layer) and a
sha256 of the image's pixels, stored as safetensors (float16). Features always go through that
storage dtype, so a cache hit gives exactly what a miss computes. An entry that cannot be read
or has the wrong shape or dtype is recomputed and overwritten. The encoder runs in float32 on
the CPU and float16 on CUDA (the cache does not tell the two apart; they differ at float16 precision).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from captionlab import paths

FEATURE_LAYER = -2
OPEN_CLIP_PREFIX = "open_clip:"
OPEN_CLIP_PRETRAINED = "openai"
WEIGHTS_ENV = "CAPTIONLAB_CAPTIONER_CLIP_WEIGHTS"
OPEN_CLIP_WEIGHT_FILES = ("open_clip_model.safetensors",)  # never the pickled .bin: safetensors only
STORAGE_DTYPE = torch.float16


class ClipCaptionerError(RuntimeError):
    """The CLIP-Captioner cannot be built or loaded as asked; the message says why."""


class ClipEncoderNotFound(ClipCaptionerError):
    """The CLIP encoder a captioner reads is not on this machine (nothing is downloaded implicitly)."""


# --- tokenizers --------------------------------------------------------------------------------
class CaptionTokenizer:
    """Captions <-> token ids; <bos>/<eos>/<pad> are added by the caller, never by `encode`."""

    kind: str
    bos_id: int
    eos_id: int
    pad_id: int
    vocab_size: int

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError


class HFCaptionTokenizer(CaptionTokenizer):
    """A transformers tokenizer (the CLIP folder's own, or the copy saved in an artifact)."""

    kind = "transformers"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        if eos is None:
            raise ValueError("the CLIP folder's tokenizer has no end-of-sequence token")
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
        self.eos_id, self.bos_id = int(eos), int(eos if bos is None else bos)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)
        self.vocab_size = len(tokenizer)

    @classmethod
    def from_folder(cls, folder: Path) -> "HFCaptionTokenizer":
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(folder, local_files_only=True))

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def save(self, folder: Path) -> None:
        self.tokenizer.save_pretrained(folder)


class OpenClipCaptionTokenizer(CaptionTokenizer):
    """open_clip's BPE tokenizer (lower-cased); <eot> doubles as padding."""

    kind = "open_clip"

    def __init__(self, model_name: str):
        import open_clip

        self.model_name = model_name
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.bos_id, self.eos_id = int(self.tokenizer.sot_token_id), int(self.tokenizer.eot_token_id)
        self.pad_id = self.eos_id
        self.vocab_size = int(self.tokenizer.vocab_size)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        text = self.tokenizer.decode([i for i in ids if i not in (self.bos_id, self.eos_id)])
        return re.sub(r" ([.,!?;:])", r"\1", " ".join(text.split()))


# --- encoders ----------------------------------------------------------------------------------
class GridEncoder:
    """A frozen CLIP visual encoder giving (B, grid_tokens, feature_dim) penultimate-layer patch tokens."""

    source: str  # what an artifact records to find this encoder again
    id: str  # what the feature cache is keyed by
    feature_dim: int
    grid_tokens: int
    device: torch.device

    def encode(self, images: Sequence[Image.Image]) -> torch.Tensor:
        raise NotImplementedError

    def tokenizer(self) -> CaptionTokenizer:
        raise NotImplementedError


class HFGridEncoder(GridEncoder):
    """A transformers CLIP folder: hidden_states[-2] of its vision tower, CLS dropped (as LLaVA does)."""

    def __init__(self, folder: Path, source: str, device: torch.device, dtype: torch.dtype = torch.float32):
        from transformers import AutoImageProcessor, CLIPVisionModel
        from transformers.utils import logging as hf_logging

        self.folder, self.source, self.device, self.dtype = Path(folder), source, device, dtype
        verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()  # a CLIPModel folder's text weights are unused here, by design
        hf_logging.disable_progress_bar()
        try:
            self.model = CLIPVisionModel.from_pretrained(self.folder, local_files_only=True, dtype=dtype,
                                                         use_safetensors=True)
        finally:
            hf_logging.set_verbosity(verbosity)
            if bar:
                hf_logging.enable_progress_bar()
        self.model.to(device).eval()
        self.model.requires_grad_(False)
        self.processor = AutoImageProcessor.from_pretrained(self.folder, local_files_only=True)
        vision = self.model.config
        self.feature_dim = int(vision.hidden_size)
        self.grid_tokens = (int(vision.image_size) // int(vision.patch_size)) ** 2
        self.id = f"hf-clip:{folder_fingerprint(self.folder)}:layer{FEATURE_LAYER}"

    @torch.inference_mode()
    def encode(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
        out = self.model(pixel_values=pixels.to(self.device, self.dtype), output_hidden_states=True)
        return out.hidden_states[FEATURE_LAYER][:, 1:].float().cpu()

    def tokenizer(self) -> CaptionTokenizer:
        return HFCaptionTokenizer.from_folder(self.folder)


class OpenClipGridEncoder(GridEncoder):
    """An open_clip CLIP: block FEATURE_LAYER's output through `forward_intermediates`, CLS dropped."""

    def __init__(self, model, preprocess, name: str, pretrained: str = OPEN_CLIP_PRETRAINED,
                 device: torch.device = torch.device("cpu")):
        self.model, self.preprocess, self.name, self.device = model.eval(), preprocess, name, device
        self.model.requires_grad_(False)
        visual = model.visual
        self.feature_dim = int(visual.transformer.width)
        self.grid_tokens = int(visual.grid_size[0] * visual.grid_size[1])
        self.source = f"{OPEN_CLIP_PREFIX}{name}"
        self.id = f"open_clip:{name}:{pretrained}:layer{FEATURE_LAYER}"

    @torch.inference_mode()
    def encode(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = torch.stack([self.preprocess(im.convert("RGB")) for im in images])
        dtype = next(self.model.parameters()).dtype
        out = self.model.visual.forward_intermediates(pixels.to(self.device, dtype), indices=[FEATURE_LAYER],
                                                      stop_early=True, intermediates_only=True, output_fmt="NLC")
        return out["image_intermediates"][0].float().cpu()

    def tokenizer(self) -> CaptionTokenizer:
        return OpenClipCaptionTokenizer(self.name)


def folder_fingerprint(folder: Path) -> str:
    """sha256 (16 hex) of a model folder's config, preprocessing and weight files: changes when they do."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).iterdir()):
        if path.is_file() and (path.suffix == ".safetensors" or path.name in
                               ("config.json", "preprocessor_config.json")):
            digest.update(path.name.encode())
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


def open_clip_weights_file(name: str, cache_dir: str | Path | None = None) -> Path:
    """The local file holding open_clip `name`'s OpenAI weights, or ClipEncoderNotFound saying how to get it."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(name, OPEN_CLIP_PRETRAINED)
    if not cfg:
        raise ClipEncoderNotFound(f"open_clip has no {OPEN_CLIP_PRETRAINED!r} weights for {name!r}")
    how_to = (f"on a machine with internet run `python -c \"import open_clip; open_clip.create_model_and_transforms("
              f"'{name}', pretrained='{OPEN_CLIP_PRETRAINED}')\"` (it fills the Hugging Face cache from "
              f"{cfg.get('hf_hub', '').strip('/')}), or point ${WEIGHTS_ENV} at a downloaded {OPEN_CLIP_WEIGHT_FILES[0]}")
    explicit = os.environ.get(WEIGHTS_ENV, "").strip()
    if explicit:
        if Path(explicit).suffix != ".safetensors":
            raise ClipEncoderNotFound(f"${WEIGHTS_ENV}={explicit} is not a .safetensors file (pickled weights are "
                                      f"never loaded); {how_to}")
        if Path(explicit).expanduser().is_file():
            return Path(explicit).expanduser()
        raise ClipEncoderNotFound(f"${WEIGHTS_ENV}={explicit} is not a file; {how_to}")
    from huggingface_hub import try_to_load_from_cache

    repo = cfg.get("hf_hub", "").strip("/")
    for filename in OPEN_CLIP_WEIGHT_FILES if repo else ():
        cached = try_to_load_from_cache(repo, filename, cache_dir=str(cache_dir) if cache_dir else None)
        if isinstance(cached, str) and Path(cached).is_file():
            return Path(cached)
    raise ClipEncoderNotFound(f"the CLIP-Captioner's encoder {name} ({OPEN_CLIP_PRETRAINED}) is not in the local "
                              f"caches; captionlab never downloads at run time: {how_to}")


def resolve_encoder_folder(source: str) -> Path:
    """A CLIP folder named by `source` (absolute, relative to the working directory or to the project)."""
    path = Path(source).expanduser()
    for candidate in ([path] if path.is_absolute() else [path, paths.PROJECT_ROOT / path]):
        if (candidate / "config.json").is_file():
            return candidate.resolve()
    hint = " (the embedded world's tiny CLIP is built by `python -m train zoo`)" if "embedded" in source else ""
    raise ClipEncoderNotFound(f"no CLIP model folder at {source} (config.json missing){hint}; give a transformers "
                              f"CLIPModel folder or {OPEN_CLIP_PREFIX}ViT-L-14-336")


def encoder_source(source: str) -> str:
    """The stable way to name an encoder in an artifact: project-relative inside the project, else absolute."""
    if source.startswith(OPEN_CLIP_PREFIX):
        return source
    folder = resolve_encoder_folder(source)
    return folder.relative_to(paths.PROJECT_ROOT).as_posix() if folder.is_relative_to(paths.PROJECT_ROOT) else str(folder)


def load_grid_encoder(source: str, device: str | torch.device | None = None) -> GridEncoder:
    """The frozen encoder named by `source` (see the module doc), on `device` (half precision on CUDA)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    if not source.startswith(OPEN_CLIP_PREFIX):
        return HFGridEncoder(resolve_encoder_folder(source), encoder_source(source), device, dtype)
    name = source[len(OPEN_CLIP_PREFIX):]
    weights = open_clip_weights_file(name)
    import open_clip

    cfg = open_clip.get_pretrained_cfg(name, OPEN_CLIP_PRETRAINED)
    model, _, preprocess = open_clip.create_model_and_transforms(
        name, pretrained=str(weights), force_quick_gelu=bool(cfg.get("quick_gelu")), device=device,
        precision="fp16" if dtype == torch.float16 else "fp32", image_mean=cfg.get("mean"), image_std=cfg.get("std"),
        image_interpolation=cfg.get("interpolation"), image_resize_mode=cfg.get("resize_mode"))
    return OpenClipGridEncoder(model, preprocess, name, device=device)


# --- the cache ---------------------------------------------------------------------------------
def image_key(image: Image.Image) -> str:
    """sha256 of an image's decoded RGB pixels and size (equal pixels, equal key, whatever the file format)."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


def default_cache_root() -> Path:
    return paths.workspace() / "feature_cache"


class FeatureCache:
    """One encoder's features on disk: <root>/<encoder slug>/<key[:2]>/<key>.safetensors."""

    def __init__(self, root: Path, encoder_id: str, shape: tuple[int, int], dtype: torch.dtype = STORAGE_DTYPE):
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", encoder_id).strip("-")[:60]
        self.folder = Path(root) / f"{slug}-{hashlib.sha256(encoder_id.encode()).hexdigest()[:12]}"
        self.shape, self.dtype = tuple(shape), dtype
        self.corrupt_entries = 0

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> torch.Tensor | None:
        """The stored features, or None when missing or unusable (unreadable, wrong shape or dtype)."""
        path = self.path(key)
        try:
            features = load_safetensors(path.read_bytes())["features"]
        except FileNotFoundError:
            return None
        except Exception:  # truncated, garbage, or no "features" tensor: recompute
            self.corrupt_entries += 1
            return None
        if tuple(features.shape) != self.shape or features.dtype != self.dtype or not torch.isfinite(features).all():
            self.corrupt_entries += 1
            return None
        return features

    def put(self, key: str, features: torch.Tensor) -> None:
        """Write atomically (temp file + rename), so a reader never sees half an entry."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(save_safetensors({"features": features.to(self.dtype).contiguous()}))
        os.replace(tmp, path)


class GridFeatureExtractor:
    """Images -> (B, grid_tokens, feature_dim) features, through the cache; counts what it really encodes."""

    def __init__(self, encoder: GridEncoder, cache_root: Path | None = None, use_cache: bool = True,
                 batch_size: int = 32):
        self.encoder, self.batch_size = encoder, batch_size
        shape = (encoder.grid_tokens, encoder.feature_dim)
        self.cache = FeatureCache(cache_root or default_cache_root(), encoder.id, shape) if use_cache else None
        self.encoded_images = 0

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        keys = [image_key(image) for image in images]
        found: dict[str, torch.Tensor] = {}
        if self.cache is not None:
            for key in dict.fromkeys(keys):
                hit = self.cache.get(key)
                if hit is not None:
                    found[key] = hit
        first: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key not in found:
                first.setdefault(key, i)
        missing = list(first.values())
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start:start + self.batch_size]
            computed = self.encoder.encode([images[i] for i in chunk]).to(STORAGE_DTYPE)
            self.encoded_images += len(chunk)
            for i, features in zip(chunk, computed):
                found[keys[i]] = features
                if self.cache is not None:
                    self.cache.put(keys[i], features)
        return torch.stack([found[key] for key in keys])
