"""Captioning with the CLIP-Captioner: beam search over the trained network, behind the Captioner face.

    from captionlab.baseline import load_clip_captioner
    captioner = load_clip_captioner(Path("workspace/runs/<run>/best/artifact"), beam_size=5)
    captioner.caption([image])  # -> ["a red ball on the grass"]

Beam search ranks hypotheses by their summed token log-probabilities, NOT normalised by length
(as the meshed-memory captioning code the CLIP-Captioner comes from does); a finished hypothesis
keeps its score and stays in the beam, so the search stops once the best `beam_size` are all
finished. Beam 1 is greedy decoding, token for token; `greedy_decode` is the plain version.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image

from captionlab.baseline.features import (CaptionTokenizer, ClipCaptionerError, GridFeatureExtractor,
                                          load_grid_encoder)
from captionlab.baseline.model import ClipCaptionModel
from captionlab.strategies.clip_captioner import ClipCaptionerStrategy, load_artifact_tokenizer, read_card

DEFAULT_BEAM_SIZE = 5
DEFAULT_MAX_LENGTH = 20


def _max_steps(model: ClipCaptionModel, max_length: int) -> int:
    return max(1, min(max_length, model.config.max_positions - 1))


def _decode_token_by_token(model: ClipCaptionModel, memory: torch.Tensor, max_length: int,
                           choose: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """(B, L) ids (no <bos>), each step's token chosen by `choose` from the last position's logits; <pad> after
    <eos>."""
    config = model.config
    tokens = torch.full((memory.shape[0], 1), config.bos_id, dtype=torch.long, device=memory.device)
    done = torch.zeros(memory.shape[0], dtype=torch.bool, device=memory.device)
    for _ in range(_max_steps(model, max_length)):
        step = choose(model.decode(tokens, memory)[:, -1])
        step = torch.where(done, torch.full_like(step, config.pad_id), step)
        tokens = torch.cat([tokens, step[:, None]], dim=1)
        done |= step == config.eos_id
        if bool(done.all()):
            break
    return tokens[:, 1:]


@torch.no_grad()
def greedy_decode(model: ClipCaptionModel, memory: torch.Tensor, max_length: int = DEFAULT_MAX_LENGTH) -> torch.Tensor:
    """(B, L) generated ids (no <bos>): the most likely token at every step; <pad> after <eos>."""
    return _decode_token_by_token(model, memory, max_length, lambda logits: logits.argmax(-1))


@torch.no_grad()
def sample_decode(model: ClipCaptionModel, memory: torch.Tensor, max_length: int = DEFAULT_MAX_LENGTH,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, L) ids drawn token by token from the model's distribution (ancestral sampling, temperature 1; SCST's
    samples); <pad> after <eos>."""
    def draw(logits: torch.Tensor) -> torch.Tensor:
        return torch.multinomial(torch.softmax(logits.float(), dim=-1), 1, generator=generator).squeeze(1)

    return _decode_token_by_token(model, memory, max_length, draw)


@torch.no_grad()
def beam_search(model: ClipCaptionModel, memory: torch.Tensor, beam_size: int = DEFAULT_BEAM_SIZE,
                max_length: int = DEFAULT_MAX_LENGTH) -> torch.Tensor:
    """(B, L) ids of each image's best hypothesis by summed log-probability (see the module doc)."""
    if beam_size < 1:
        raise ValueError(f"beam_size must be at least 1 (got {beam_size})")
    config, batch, k = model.config, memory.shape[0], beam_size
    device = memory.device
    memory = memory.repeat_interleave(k, dim=0)
    tokens = torch.full((batch * k, 1), config.bos_id, dtype=torch.long, device=device)
    scores = torch.full((batch, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: keep one live so the first step fans out from it
    done = torch.zeros(batch, k, dtype=torch.bool, device=device)
    offsets = torch.arange(batch, device=device)[:, None] * k
    for _ in range(_max_steps(model, max_length)):
        logits = model.decode(tokens, memory)[:, -1].float()
        log_probs = torch.log_softmax(logits, dim=-1).view(batch, k, -1)
        vocab = log_probs.shape[-1]
        finished = torch.full((vocab,), float("-inf"), device=device)
        finished[config.pad_id] = 0.0  # a finished hypothesis only pads on, at no cost
        log_probs = torch.where(done[..., None], finished, log_probs)
        top, index = (scores[..., None] + log_probs).view(batch, k * vocab).topk(k, dim=-1)
        beam, step = index // vocab, index % vocab
        tokens = torch.cat([tokens[(beam + offsets).view(-1)], step.view(-1, 1)], dim=1)
        done = done.gather(1, beam) | (step == config.eos_id)
        scores = top
        if bool(done.all()):
            break
    best = scores.argmax(dim=-1)
    return tokens.view(batch, k, -1)[torch.arange(batch, device=device), best, 1:]


def ids_to_text(tokenizer: CaptionTokenizer, ids: Sequence[int]) -> str:
    """The caption in `ids`: up to the first <eos>, special tokens dropped, whitespace tidied."""
    kept = []
    for token in ids:
        if token == tokenizer.eos_id:
            break
        if token not in (tokenizer.bos_id, tokenizer.pad_id):
            kept.append(int(token))
    return " ".join(tokenizer.decode(kept).split())


class ClipCaptioner:
    """The CLIP-Captioner behind the Captioner face: frozen CLIP grid features -> encoder-decoder -> beam search."""

    key = "clip_captioner"
    name = "CLIP-Captioner"

    def __init__(self, model: ClipCaptionModel, extractor: GridFeatureExtractor, tokenizer: CaptionTokenizer,
                 beam_size: int = DEFAULT_BEAM_SIZE, max_length: int = DEFAULT_MAX_LENGTH, batch_size: int = 32,
                 strategy: ClipCaptionerStrategy | None = None):
        self.model, self.extractor, self.tokenizer = model.eval(), extractor, tokenizer
        self.beam_size, self.max_length, self.batch_size = beam_size, max_length, batch_size
        self.strategy = strategy

    @property
    def device(self) -> torch.device:
        return self.model.head.weight.device

    @torch.inference_mode()
    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        captions: list[str] = []
        for start in range(0, len(images), self.batch_size):
            features = self.extractor(list(images[start:start + self.batch_size])).to(self.device)
            memory = self.model.encode(features)
            if self.beam_size == 1:
                ids = greedy_decode(self.model, memory, self.max_length)
            else:
                ids = beam_search(self.model, memory, self.beam_size, self.max_length)
            captions.extend(ids_to_text(self.tokenizer, row) for row in ids.tolist())
        return captions

    def save(self, folder: Path) -> None:
        """Write this captioner's network as an artifact (what `load_clip_captioner` reads)."""
        if self.strategy is None:
            raise ClipCaptionerError("this captioner was not loaded from an artifact; save it with its strategy")
        self.strategy.save(self.model, Path(folder))


def load_clip_captioner(folder: Path, device: str | torch.device | None = None, *,
                        beam_size: int = DEFAULT_BEAM_SIZE, max_length: int = DEFAULT_MAX_LENGTH,
                        encoder: str | None = None, cache_root: Path | None = None, use_cache: bool = True,
                        batch_size: int = 32) -> ClipCaptioner:
    """A captioner from a saved artifact folder; its card names the CLIP encoder, which `encoder` can relocate."""
    folder = Path(folder)
    card = read_card(folder)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    grid = load_grid_encoder(encoder or card["encoder"], device)
    if card.get("encoder_id") and grid.id != card["encoder_id"]:
        raise ClipCaptionerError(
            f"{folder} was trained on CLIP features {card['encoder_id']} but {encoder or card['encoder']} now gives "
            f"{grid.id} (its weights changed): retrain the CLIP-Captioner, or pass encoder= the original CLIP")
    tokenizer = load_artifact_tokenizer(folder, card)
    strategy = ClipCaptionerStrategy(card["encoder"], card.get("encoder_id"), tokenizer)
    model = strategy.load(None, None, folder).to(device)
    extractor = GridFeatureExtractor(grid, cache_root=cache_root, use_cache=use_cache, batch_size=batch_size)
    return ClipCaptioner(model, extractor, tokenizer, beam_size, max_length, batch_size, strategy)
