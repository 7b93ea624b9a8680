"""Model families: where a family of VLMs keeps its parts, asked by everything that touches a model.

A family says, for a model of its architecture (the registry's `architecture`, a config.json's
`model_type`): its transformers config and model classes, its processor, its default prompt
template and system prompt, where its LLM decoder, vision tower and projector live, what full
fine-tuning trains, which linear layers LoRA adapts, which blocks FSDP shards, and how to make a
tiny random model of it for tests. The registry, loading, prompting, vision sharing, the
strategies, FSDP and the tiny models ask `family_for(spec.architecture)` or `family_of(model)`
instead of reaching into `model.model.language_model` themselves.

Adding a family (LLaVA-OneVision, Qwen2.5-VL, SmolVLM, ...): a module here with a `ModelFamily`
subclass, and one `register_family(...)` line below (or a call from anywhere before the model is
loaded: tests add a toy one). LLaVA (`llava`), LLaVA-NeXT (`llava_next`), SmolVLM (`idefics3`),
LLaVA-OneVision (`llava_onevision`), Qwen2.5-VL (`qwen2_5_vl`) are here.
Importing this package does not import torch or transformers.
"""

from __future__ import annotations

from captionlab.models.families.base import FamilyNotFound, ModelFamily
from captionlab.models.families.llava import LlavaFamily
from captionlab.models.families.llava_next import LlavaNextFamily
from captionlab.models.families.llava_onevision import LlavaOnevisionFamily
from captionlab.models.families.qwen2_5_vl import Qwen25VLFamily
from captionlab.models.families.smolvlm import SmolVLMFamily

FAMILIES: dict[str, ModelFamily] = {}


def register_family(family: ModelFamily) -> ModelFamily:
    """Add `family` under its architecture name (a later one of the same name replaces it)."""
    FAMILIES[family.architecture] = family
    return family


def unregister_family(architecture: str) -> None:
    FAMILIES.pop(architecture, None)


def family_for(architecture: str) -> ModelFamily:
    """The family of a registry `architecture` / config `model_type` (FamilyNotFound naming the known ones)."""
    try:
        return FAMILIES[architecture]
    except KeyError:
        raise FamilyNotFound(f"model_type {architecture!r} is not supported (expected one of {sorted(FAMILIES)})") \
            from None


def family_of(model) -> ModelFamily:
    """The family of a loaded model (peft- or FSDP-wrapped or not), by its config's `model_type`."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return family_for(getattr(inner.config, "model_type", None))


register_family(LlavaFamily())
register_family(LlavaNextFamily())
register_family(SmolVLMFamily())
register_family(LlavaOnevisionFamily())
register_family(Qwen25VLFamily())

__all__ = ["FAMILIES", "FamilyNotFound", "ModelFamily", "family_for", "family_of", "register_family",
           "unregister_family"]
