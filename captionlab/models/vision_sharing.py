"""One vision-tower pass per image for every captioner that shares the tower (the Compare tab).

Every strategy in the study keeps the CLIP vision tower frozen (full fine-tuning trains the projector and
the LLM), so when the Compare tab captions one upload with six LLaVA captioners, the tower would compute
the same features six times. Inside `shared_vision_passes(models)`, each tower's forward remembers its
output for the pixel values it saw, and towers with identical weights (the shared base's and the fully
fine-tuned copy's) share what they remember, so each image goes through the tower once. The captions are
bit-identical to those without it (tests/test_vision_sharing.py); on leaving, the towers are as before.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch

from captionlab.models.prompting import unwrap


def vision_tower(model: torch.nn.Module) -> torch.nn.Module | None:
    """The model's vision tower, where its family says it is (None for a model of no registered family)."""
    from captionlab.models.families import FamilyNotFound, family_of

    inner = unwrap(model)
    try:
        return family_of(inner).vision_tower(inner)
    except (FamilyNotFound, AttributeError):
        return None


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and sa[k].dtype == sb[k].dtype and sa[k].device == sb[k].device
        and torch.equal(sa[k], sb[k]) for k in sa)


class _Memory:
    """Outputs of one group of identical towers, by input pixels (few entries: one per batch captioned)."""

    def __init__(self):
        self.entries: list[tuple[torch.Tensor, tuple, object]] = []
        self.passes = 0  # forwards actually run

    def lookup(self, pixels: torch.Tensor, key: tuple):
        for stored, stored_key, output in self.entries:
            if stored_key == key and stored.shape == pixels.shape and stored.dtype == pixels.dtype \
                    and stored.device == pixels.device and torch.equal(stored, pixels):
                return output
        return None


@contextmanager
def shared_vision_passes(models: Iterable[torch.nn.Module]) -> Iterator[list[_Memory]]:
    """Within the block, each distinct (pixels, options) input runs once per group of identical towers."""
    towers: list[torch.nn.Module] = []
    for model in models:
        tower = vision_tower(model)
        if tower is not None and all(tower is not t for t in towers):
            towers.append(tower)
    groups: list[tuple[torch.nn.Module, _Memory]] = []
    patched: list[torch.nn.Module] = []
    try:
        for tower in towers:
            memory = next((m for rep, m in groups if _same_weights(rep, tower)), None)
            if memory is None:
                memory = _Memory()
                groups.append((tower, memory))
            original = tower.forward

            def remembering(pixel_values, *args, _original=original, _memory=memory, **kwargs):
                key = (tuple(repr(a) for a in args), tuple(sorted((k, repr(v)) for k, v in kwargs.items())),
                       torch.is_grad_enabled())
                found = _memory.lookup(pixel_values, key)
                if found is None:
                    found = _original(pixel_values, *args, **kwargs)
                    _memory.entries.append((pixel_values.detach().clone(), key, found))
                    _memory.passes += 1
                # a shallow copy: a caller may set fields of the output it gets (Qwen2.5-VL's get_image_features
                # replaces pooler_output with its per-image split), which must not change what the next one gets
                return copy.copy(found)

            tower.forward = remembering
            patched.append(tower)
        yield [m for _, m in groups]
    finally:
        for tower in patched:
            del tower.forward  # the instance attribute: the class's forward again
