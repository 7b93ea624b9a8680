"""The Strategy interface: how a personalization method attaches to, trains and saves with a LLaVA model.

A strategy is stateless configuration; what it adds lives on the model (peft adapters, or a
registered controller module with hooks). Every strategy's artifact is a folder with
`strategy.json` plus safetensors weights, never a pickle.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import torch

from captionlab.models.registry import ModelSpec
from captionlab.names import ARTIFACT_CARD


class StrategyError(Exception):
    """A strategy cannot be applied or loaded; the message says why."""


class Strategy(ABC):
    """One way of personalizing a model. Subclasses set `name`, `label` and implement apply/save/load."""

    name: ClassVar[str]
    label: ClassVar[str]
    trains: ClassVar[bool] = True
    prefix_slots: ClassVar[int] = 0  # placeholder tokens the prompt must start with
    needs_cuda: ClassVar[bool] = False
    supports_fsdp: ClassVar[bool] = False  # trains under `distributed: fsdp` (its save takes a gathered state_dict)
    takes_lora_settings: ClassVar[bool] = False  # built with (rank, alpha): a config's lora_rank / lora_alpha
    loads_4bit_base: ClassVar[bool] = False  # the base model is loaded quantized (NF4) before `apply`
    # False: it brings its own model (the CLIP-Captioner): no LLaVA weights to check, no shared base to attach to;
    # the trainer calls `load_for_training` and captioning `load_captioner` instead.
    uses_llava_base: ClassVar[bool] = True
    own_weights: ClassVar[bool] = False  # its artifact is a whole copy of the model (full fine-tuning), no adapter

    @classmethod
    def needs_artifact(cls) -> bool:
        """Whether evaluating it needs a trained artifact (what trains has one; zero-shot is the base as is)."""
        return cls.trains

    @classmethod
    def load_for_training(cls, config, device):
        """(trainable model, strategy) for a strategy with its own model (`uses_llava_base = False`)."""
        raise NotImplementedError(f"{cls.name} trains on a LLaVA base: the trainer loads the model")

    @classmethod
    def load_captioner(cls, artifact: Path, device: str | None = None, batch_size: int = 32):
        """The Captioner of a strategy with its own model (`uses_llava_base = False`), from its artifact."""
        raise NotImplementedError(f"{cls.name} captions on a shared LLaVA base (captionlab.captioner)")

    @classmethod
    def load_errors(cls) -> tuple[type[BaseException], ...]:
        """The errors `load_captioner` raises for a bad artifact (reported, not crashed on)."""
        return (StrategyError, ValueError, OSError)

    @abstractmethod
    def apply(self, model: torch.nn.Module, spec: ModelSpec, tokenizer=None) -> torch.nn.Module:
        """Freeze the model, attach this strategy's trainable parameters, return the model to use."""

    @abstractmethod
    def save(self, model: torch.nn.Module, directory: Path) -> None:
        """Write the artifact (weights as safetensors) into `directory`."""

    @abstractmethod
    def load(self, model: torch.nn.Module, spec: ModelSpec, directory: Path, tokenizer=None) -> torch.nn.Module:
        """Apply this strategy to `model` with the weights of a saved artifact; return the model to use."""

    def trainable_parameters(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def set_enabled(self, model: torch.nn.Module, enabled: bool) -> None:
        """Switch this strategy's effect on or off on a shared base model (for side-by-side captioning)."""

    # helpers shared by the implementations
    def write_card(self, directory: Path, **extra) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        card = {"strategy": self.name, **extra}
        (directory / ARTIFACT_CARD).write_text(json.dumps(card, indent=2, sort_keys=True))

    def check_card(self, directory: Path) -> dict:
        card_path = Path(directory) / ARTIFACT_CARD
        if not card_path.exists():
            raise StrategyError(f"{directory} is not a captionlab {self.name} artifact (no {ARTIFACT_CARD})")
        card = json.loads(card_path.read_text())
        if card.get("strategy") != self.name:
            raise StrategyError(f"{directory} holds a {card.get('strategy')!r} artifact, not {self.name!r}")
        return card


def freeze(model: torch.nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
