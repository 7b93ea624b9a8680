"""The CLIP-Captioner baseline (Barraco et al., CVPRW 2022; the paper's ref. [10]).

A Transformer encoder-decoder trained from scratch with cross-entropy on COCO, reading the grid
features of the CLIP visual encoder LLaVA uses (ViT-L/14 at 336 px), captioning by beam search.

  model.py      the encoder-decoder network
  features.py   the frozen CLIP encoders, their tokenizers, and the on-disk feature cache
  training.py   what the trainer trains (`strategy: clip_captioner`) and the saved artifact
  captioner.py  beam search and `ClipCaptioner` (the Captioner face), `load_clip_captioner`

Train it with `python -m train run --recipe embedded/clip_captioner` (or clip-captioner/coco).
Names are imported lazily, so importing this package does not import torch.
"""

from __future__ import annotations

_EXPORTS = {
    "ClipCaptioner": "captionlab.baseline.captioner",
    "ClipCaptionerError": "captionlab.baseline.captioner",
    "load_clip_captioner": "captionlab.baseline.captioner",
    "beam_search": "captionlab.baseline.captioner",
    "greedy_decode": "captionlab.baseline.captioner",
    "ClipCaptionModel": "captionlab.baseline.model",
    "CaptionModelConfig": "captionlab.baseline.model",
    "ClipCaptionerStrategy": "captionlab.baseline.training",
    "load_for_training": "captionlab.baseline.training",
    "GridFeatureExtractor": "captionlab.baseline.features",
    "FeatureCache": "captionlab.baseline.features",
    "ClipEncoderNotFound": "captionlab.baseline.features",
    "load_grid_encoder": "captionlab.baseline.features",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
