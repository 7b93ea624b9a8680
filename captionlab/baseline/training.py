"""Training the CLIP-Captioner with the project's one trainer.

`load_for_training(config, device)` is what `captionlab.training.trainer` calls for
`strategy: clip_captioner`: `config.model` names the frozen CLIP encoder (see features.py), the
encoder-decoder is built from scratch, seeded by `config.seed`, with sizes chosen from the encoder
(paper-like 3 + 3 layers, d = 512, for a real CLIP; 2 + 2 layers, d = 128, for a tiny one).
Batches carry cached CLIP grid features instead of pixels, so epochs after the first never run
the encoder.

Its strategy and saved artifact: `captionlab.strategies.clip_captioner`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from PIL import Image

from captionlab.baseline.features import CaptionTokenizer, GridFeatureExtractor, load_grid_encoder
from captionlab.baseline.model import PAPER_SIZES, SMALL_SIZES, CaptionModelConfig, ClipCaptionModel
from captionlab.strategies.clip_captioner import ClipCaptionerStrategy
from captionlab.training.batching import IGNORE_INDEX

MAX_CAPTION_TOKENS = 40  # <bos> + caption + <eos>; COCO captions are ~10-20 tokens
PAPER_SIZE_MIN_WIDTH = 512  # encoders at least this wide (ViT-B/L) get the paper-like network


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

    @torch.no_grad()
    def sample_captions(self, model: ClipCaptionModel, images: list[Image.Image], samples: int, max_length: int,
                        greedy: bool) -> list[str]:
        """SCST's captions (training/scst.py): `samples` drawn per image (image-major), or the greedy one."""
        from captionlab.baseline.captioner import greedy_decode, ids_to_text, sample_decode

        memory = model.encode(self.extractor(images).to(self.device))
        if greedy:
            ids = greedy_decode(model, memory, max_length)
        else:
            ids = sample_decode(model, memory.repeat_interleave(samples, dim=0), max_length)
        return [ids_to_text(self.tokenizer, row) for row in ids.tolist()]


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
