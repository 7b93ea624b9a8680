"""The Compare tab's captioners share one vision-tower pass per image, with unchanged captions."""

from __future__ import annotations

import torch

from captionlab.captioner import GenerationSettings, load_captioners
from captionlab.models.loading import load_model
from captionlab.models.registry import get_model_spec
from captionlab.models.vision_sharing import shared_vision_passes, vision_tower
from test_strategies import fresh, perturb

KEYS = ["prompt_learning", "lora", "full"]


def saved_artifacts(model_dir, tmp_path):
    artifacts = {"zero_shot": None}
    for name in KEYS:
        loaded, strategy = fresh(model_dir, name)
        perturb(strategy, loaded.model, seed=2, scale=0.3)  # (never the vision tower: no strategy trains it)
        strategy.save(loaded.model, tmp_path / name)
        artifacts[name] = tmp_path / name
    return artifacts


def test_one_tower_pass_per_image_and_the_same_captions(tiny_llava_dir, tiny_images, tmp_path):
    captioners = load_captioners(get_model_spec(tiny_llava_dir), saved_artifacts(tiny_llava_dir, tmp_path),
                                 GenerationSettings(max_new_tokens=5), device="cpu")
    images = tiny_images[:1]
    alone = {key: c.caption(images) for key, c in captioners.items()}
    towers = {id(vision_tower(c.model)) for c in captioners.values()}
    assert len(towers) == 2  # the shared base's and the fully fine-tuned copy's (equal weights)
    with shared_vision_passes([c.model for c in captioners.values()]) as memories:
        shared = {key: c.caption(images) for key, c in captioners.items()}
    assert shared == alone
    assert len(memories) == 1 and memories[0].passes == 1  # 4 captioners, 2 tower modules, 1 pass
    assert all("forward" not in vars(vision_tower(c.model)) for c in captioners.values())  # restored


def test_towers_with_different_weights_do_not_share(tiny_llava_dir, tiny_images):
    spec = get_model_spec(tiny_llava_dir)
    a, b = load_model(spec, device="cpu"), load_model(spec, device="cpu")
    with torch.no_grad():
        next(vision_tower(b.model).parameters()).add_(1.0)
    with shared_vision_passes([a.model, b.model]) as memories:
        for loaded in (a, b):
            inputs = loaded.processor(images=tiny_images[:1], text=["<image> hi"], return_tensors="pt")
            loaded.model(**inputs)
    assert [m.passes for m in memories] == [1, 1]
