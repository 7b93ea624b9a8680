"""Prompt building and model plumbing shared by the strategies, the trainer and the captioners."""

from __future__ import annotations

import torch

from captionlab.models.registry import ZERO_SHOT_PROMPT, ModelSpec


def build_prompt(spec: ModelSpec, user_prompt: str = ZERO_SHOT_PROMPT, prefix_slots: int = 0,
                 placeholder: str = "<unk>") -> str:
    """The chat prompt for one image, e.g. "<system> USER: <image>\\nBriefly caption the image ASSISTANT:".

    `prefix_slots` placeholder tokens go first (after the tokenizer's BOS): prefix tuning
    overwrites their hidden state at every decoder layer with its learned vectors.
    """
    return placeholder * prefix_slots + spec.prompt_template.format(system=spec.system_prompt, prompt=user_prompt)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def language_model(model: torch.nn.Module) -> torch.nn.Module:
    """The LLM decoder (e.g. LlamaModel) of a model, where its family says it is."""
    from captionlab.models.families import family_of

    inner = unwrap(model)
    return family_of(inner).language_model(inner)
