"""The CLIP-Captioner baseline as a registered strategy, and its artifact (the one module that reads and writes it).

It is no LLaVA strategy (`uses_llava_base = False`): it brings its own encoder-decoder, trained from scratch on
frozen CLIP grid features (`captionlab.baseline`), so the trainer loads it with `load_for_training` and the
evaluator and the Compare tab with `load_captioner`, asking the class instead of checking its name.

An artifact folder holds `strategy.json` (the card: which encoder, its id, the tokenizer kind),
`captioner_config.json` (the network's sizes and token ids), `model.safetensors` and, for a
transformers encoder, its tokenizer under `tokenizer/`. No pickle anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from captionlab.baseline.features import (FEATURE_LAYER, OPEN_CLIP_PREFIX, CaptionTokenizer, HFCaptionTokenizer,
                                          OpenClipCaptionTokenizer)
from captionlab.baseline.model import CaptionModelConfig, ClipCaptionModel
from captionlab.strategies.base import Strategy, StrategyError

CONFIG_FILE = "captioner_config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
ARTIFACT_VERSION = 1


class ClipCaptionerStrategy(Strategy):
    """The baseline as a Strategy: the whole encoder-decoder trains; the CLIP encoder stays outside, frozen."""

    name = "clip_captioner"
    label = "CLIP-Captioner"
    prefix_slots = 0
    uses_llava_base = False

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
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(weights, str(directory / WEIGHTS_FILE))
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

    @classmethod
    def load_for_training(cls, config, device):
        from captionlab.baseline.training import load_for_training

        return load_for_training(config, device)

    @classmethod
    def load_captioner(cls, artifact: Path, device: str | None = None, batch_size: int = 32):
        from captionlab.baseline.captioner import load_clip_captioner

        return load_clip_captioner(artifact, device=device, batch_size=batch_size)

    @classmethod
    def load_errors(cls) -> tuple[type[BaseException], ...]:
        from captionlab.baseline.features import ClipCaptionerError

        return super().load_errors() + (FileNotFoundError, KeyError, ClipCaptionerError)


def read_card(directory: Path) -> dict:
    return ClipCaptionerStrategy().check_card(Path(directory))


def load_artifact_tokenizer(directory: Path, card: dict) -> CaptionTokenizer:
    if card.get("tokenizer") == "open_clip":
        return OpenClipCaptionTokenizer(card["encoder"][len(OPEN_CLIP_PREFIX):])
    return HFCaptionTokenizer.from_folder(Path(directory) / TOKENIZER_DIR)
