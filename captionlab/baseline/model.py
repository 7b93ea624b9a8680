"""The CLIP-Captioner network (Barraco et al., CVPRW 2022; the paper's ref. [10]).

A standard Transformer encoder-decoder trained from scratch: the encoder reads the grid of CLIP
visual features (every patch token of the penultimate layer, LLaVA's feature layer -2), linearly
projected to the model width with a learned position per patch; the decoder has causal
self-attention, cross-attention over the encoder's output, token + learned position embeddings
and a linear head over the vocabulary. The layers are torch.nn's own Transformer layers
(pre-norm: it trains stably from scratch with the project's plain SGD).

`forward(features, input_ids)` returns `.logits` (B, T, V) where logits[:, t] predicts
input_ids[:, t + 1]; `encode` and `decode` are the two halves, used by beam search. Sequences
are right-padded, so causal attention never lets a real token see padding.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class CaptionModelConfig:
    """Sizes of the encoder-decoder and the token ids it was trained with (saved in every artifact)."""

    feature_dim: int
    """Width of the CLIP grid features (1024 for ViT-L/14)."""
    grid_tokens: int
    """Patch tokens per image (576 for ViT-L/14 at 336 px)."""
    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int
    d_model: int = 512
    heads: int = 8
    encoder_layers: int = 3
    decoder_layers: int = 3
    ff_dim: int = 2048
    dropout: float = 0.1
    max_positions: int = 40
    """Longest caption in tokens, <bos> and <eos> included."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "CaptionModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


# The paper-like sizes (3 + 3 layers, d = 512) and the embedded world's small ones.
PAPER_SIZES = dict(d_model=512, heads=8, encoder_layers=3, decoder_layers=3, ff_dim=2048, dropout=0.1)
SMALL_SIZES = dict(d_model=128, heads=4, encoder_layers=2, decoder_layers=2, ff_dim=512, dropout=0.1)


@dataclass
class CaptionOutput:
    logits: torch.Tensor


class ClipCaptionModel(nn.Module):
    """Transformer encoder over CLIP grid features + Transformer decoder over caption tokens."""

    def __init__(self, config: CaptionModelConfig):
        super().__init__()
        self.config = config
        d = config.d_model
        self.visual_proj = nn.Sequential(nn.Linear(config.feature_dim, d), nn.ReLU(), nn.Dropout(config.dropout),
                                         nn.LayerNorm(d))
        self.visual_pos = nn.Parameter(torch.zeros(1, config.grid_tokens, d))
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(d, config.heads, config.ff_dim, config.dropout, batch_first=True, norm_first=True),
            config.encoder_layers, norm=nn.LayerNorm(d), enable_nested_tensor=False)
        self.token_embed = nn.Embedding(config.vocab_size, d)
        self.token_pos = nn.Embedding(config.max_positions, d)
        self.decoder = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(d, config.heads, config.ff_dim, config.dropout, batch_first=True, norm_first=True),
            config.decoder_layers, norm=nn.LayerNorm(d))
        self.head = nn.Linear(d, config.vocab_size)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.visual_pos, std=0.02)
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.token_pos.weight, std=0.02)

    @property
    def dtype(self) -> torch.dtype:
        return self.head.weight.dtype

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """(B, N, feature_dim) CLIP grid -> (B, N, d) memory for the decoder."""
        x = self.visual_proj(features.to(self.dtype)) + self.visual_pos[:, : features.shape[1]]
        return self.encoder(x)

    def decode(self, input_ids: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """(B, T) tokens + (B, N, d) memory -> (B, T, V) next-token logits (causal)."""
        length = input_ids.shape[1]
        if length > self.config.max_positions:
            raise ValueError(f"{length} tokens exceed the model's {self.config.max_positions} positions")
        positions = torch.arange(length, device=input_ids.device)
        x = self.token_embed(input_ids) + self.token_pos(positions)[None]
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=input_ids.device, dtype=x.dtype)
        return self.head(self.decoder(x, memory, tgt_mask=causal, tgt_is_causal=True))

    def forward(self, features: torch.Tensor, input_ids: torch.Tensor) -> CaptionOutput:
        return CaptionOutput(logits=self.decode(input_ids, self.encode(features)))
