"""Training the CLIP-Captioner with the project's one trainer, and its saved artifact.

`load_for_training(config, device)` is what `captionlab.training.trainer` calls for
`strategy: clip_captioner`: `config.model` names the frozen CLIP encoder (see features.py), the
encoder-decoder is built from scratch, seeded by `config.seed`, with sizes chosen from the encoder
(paper-like 3 + 3 layers, d = 512, for a real CLIP; 2 + 2 layers, d = 128, for a tiny one).
Batches carry cached CLIP grid features instead of pixels, so epochs after the first never run
the encoder.

An artifact folder holds `strategy.json` (the card: which encoder, its id, the tokenizer kind),
`captioner_config.json` (the network's sizes and token ids), `model.safetensors` and, for a
transformers encoder, its tokenizer under `tokenizer/`. No pickle anywhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from captionlab.baseline.features import (FEATURE_LAYER, OPEN_CLIP_PREFIX, CaptionTokenizer, GridFeatureExtractor,
                                          HFCaptionTokenizer, OpenClipCaptionTokenizer, load_grid_encoder)
from captionlab.baseline.model import PAPER_SIZES, SMALL_SIZES, CaptionModelConfig, ClipCaptionModel
from captionlab.strategies.base import Strategy, StrategyError
from captionlab.training.batching import IGNORE_INDEX

CONFIG_FILE = "captioner_config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
ARTIFACT_VERSION = 1
MAX_CAPTION_TOKENS = 40  # <bos> + caption + <eos>; COCO captions are ~10-20 tokens
PAPER_SIZE_MIN_WIDTH = 512  # encoders at least this wide (ViT-B/L) get the paper-like network


class ClipCaptionerStrategy(Strategy):
    """The baseline as a Strategy: the whole encoder-decoder trains; the CLIP encoder stays outside, frozen."""

    name = "clip_captioner"
    label = "CLIP-Captioner"
    prefix_slots = 0

    def __init__(self, encoder_source: str | None = None, encoder_id: str | None = None,
                 tokenizer: CaptionTokenizer | None = None):
        self.encoder_source, self.encoder_id, self.tokenizer = encoder_source, encoder_id, tokenizer

    def apply(self, model: torch.nn.Module, spec=None, tokenizer=None) -> torch.nn.Module:
        model.requires_grad_(True)
        return model.train()

    def save(self, model: torch.nn.Module, directory: Path) -> None:
        if self.encoder_source is None or self.tokenizer is None:
            raise StrategyError("a clip_captioner artifact needs the encoder and tokenizer it was trained with")
        directory = Path(directory)
        self.write_card(directory, encoder=self.encoder_source, encoder_id=self.encoder_id,
                        feature_layer=FEATURE_LAYER, tokenizer=self.tokenizer.kind, version=ARTIFACT_VERSION)
        (directory / CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=2, sort_keys=True))
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(directory / WEIGHTS_FILE))
        if isinstance(self.tokenizer, HFCaptionTokenizer):
            self.tokenizer.save(directory / TOKENIZER_DIR)

    def load(self, model: torch.nn.Module | None, spec, directory: Path, tokenizer=None) -> torch.nn.Module:
        """The saved network (built from the artifact's config when `model` is None), in eval mode."""
        self.check_card(directory)
        config = CaptionModelConfig.from_dict(json.loads((Path(directory) / CONFIG_FILE).read_text()))
        if model is None:
            model = ClipCaptionModel(config)
        elif model.config != config:
            raise StrategyError(f"{directory} holds a network of other sizes than the model given")
        model.load_state_dict(load_file(str(Path(directory) / WEIGHTS_FILE)), strict=True)
        return model.eval()


def read_card(directory: Path) -> dict:
    return ClipCaptionerStrategy().check_card(Path(directory))


def load_artifact_tokenizer(directory: Path, card: dict) -> CaptionTokenizer:
    if card.get("tokenizer") == "open_clip":
        return OpenClipCaptionTokenizer(card["encoder"][len(OPEN_CLIP_PREFIX):])
    return HFCaptionTokenizer.from_folder(Path(directory) / TOKENIZER_DIR)


def encode_captions(tokenizer: CaptionTokenizer, captions: Sequence[str],
                    max_tokens: int = MAX_CAPTION_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels): <bos> caption <eos>, right-padded; labels are the ids except <bos> and padding."""
    rows = [[tokenizer.bos_id] + tokenizer.encode(c.strip())[: max_tokens - 2] + [tokenizer.eos_id] for c in captions]
    length = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), length), tokenizer.pad_id, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
        labels[i, 1: len(row)] = torch.tensor(row[1:])
    return input_ids, labels


@dataclass
class ClipCaptionerTraining:
    """What the trainer trains: the network, plus the frozen encoder behind a feature cache."""

    model: ClipCaptionModel
    extractor: GridFeatureExtractor
    tokenizer: CaptionTokenizer
    device: torch.device
    dtype: torch.dtype = torch.float32

    def build_batch(self, images: list[Image.Image], captions: list[str]) -> dict[str, torch.Tensor]:
        input_ids, labels = encode_captions(self.tokenizer, captions, self.model.config.max_positions)
        return {"features": self.extractor(images), "input_ids": input_ids, "labels": labels}


def network_config(feature_dim: int, grid_tokens: int, tokenizer: CaptionTokenizer) -> CaptionModelConfig:
    sizes = PAPER_SIZES if feature_dim >= PAPER_SIZE_MIN_WIDTH else SMALL_SIZES
    return CaptionModelConfig(feature_dim=feature_dim, grid_tokens=grid_tokens, vocab_size=tokenizer.vocab_size,
                              bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                              max_positions=MAX_CAPTION_TOKENS, **sizes)


def load_for_training(config, device: torch.device) -> tuple[ClipCaptionerTraining, ClipCaptionerStrategy]:
    """(the network + cached encoder, the strategy) for a TrainConfig with strategy clip_captioner."""
    device = torch.device(device)
    encoder = load_grid_encoder(config.model, device)
    tokenizer = encoder.tokenizer()
    torch.manual_seed(config.seed)
    model = ClipCaptionModel(network_config(encoder.feature_dim, encoder.grid_tokens, tokenizer)).to(device)
    strategy = ClipCaptionerStrategy(encoder.source, encoder.id, tokenizer)
    model = strategy.apply(model)
    return ClipCaptionerTraining(model, GridFeatureExtractor(encoder), tokenizer, device), strategy
