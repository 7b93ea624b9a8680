"""LoRA/DoRA targets: the LLM's seven projections by default (Table 4's count), every linear layer with
`lora_targets: all_linear` (the method text's "all fully connected layers of the MLLMs")."""

from __future__ import annotations

import pytest
import torch

from captionlab.models.loading import load_model
from captionlab.models.registry import get_model_spec
from captionlab.strategies import StrategyError, get_strategy
from captionlab.training.config import ConfigError, resolve_config


def _adapted_layers(model) -> set[str]:
    return {name.split(".lora_A")[0] for name, _ in model.named_parameters() if ".lora_A." in name}


def _linear_layers(model) -> set[str]:
    return {name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}


@pytest.mark.parametrize("name", ["lora", "dora"])
def test_all_linear_adapts_every_linear_layer_and_llm_only_the_projections(tiny_llava_dir, name):
    spec = get_model_spec(tiny_llava_dir)
    counts = {}
    for targets in ("llm", "all_linear"):
        torch.manual_seed(0)
        base = load_model(spec, device="cpu").model
        linear = _linear_layers(base)
        strategy = get_strategy(name, targets=targets)
        model = strategy.apply(base, spec)
        adapted = {layer.removeprefix("base_model.model.") for layer in _adapted_layers(model)}
        counts[targets] = sum(p.numel() for _, p in strategy.trainable_parameters(model))
        if targets == "all_linear":
            assert adapted == linear
            assert any("vision_tower" in n for n in adapted) and any("multi_modal_projector" in n for n in adapted)
            assert "lm_head" in adapted
        else:
            assert adapted and all("language_model" in n for n in adapted)
            assert {n.rsplit(".", 1)[-1] for n in adapted} == {"q_proj", "k_proj", "v_proj", "o_proj",
                                                                   "gate_proj", "up_proj", "down_proj"}
    assert counts["all_linear"] > counts["llm"]


def test_lora_targets_is_a_validated_recipe_option(tiny_llava_dir):
    config = resolve_config(None, {"model": str(tiny_llava_dir), "strategy": "lora", "lora_targets": "all_linear"})
    assert config.lora_targets == "all_linear"
    assert "lora_targets" not in resolve_config(None, {"model": str(tiny_llava_dir), "strategy": "lora"}).to_dict()
    with pytest.raises(ConfigError, match="lora_targets"):
        resolve_config(None, {"model": str(tiny_llava_dir), "strategy": "lora", "lora_targets": "everything"})
    with pytest.raises(StrategyError, match="unknown lora_targets"):
        get_strategy("lora", targets="everything").apply(load_model(get_model_spec(tiny_llava_dir), "cpu").model,
                                                         get_model_spec(tiny_llava_dir))
