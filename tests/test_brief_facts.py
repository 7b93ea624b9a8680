"""The paper's facts that the product brief says must stay exact, pinned where the code keeps them.

Light on purpose: registry JSON, TrainConfig's defaults and the 7B recipes' YAML, read without building a model.
"""

from __future__ import annotations

import json

import pytest
import yaml

from captionlab import paths
from captionlab.models import registry
from captionlab.training.config import TrainConfig

PAPER_MODELS = {"llava-1.5-7b": "llava-hf/llava-1.5-7b-hf", "llava-1.6-7b": "llava-hf/llava-v1.6-vicuna-7b-hf"}


def test_zero_shot_prompt_and_training_defaults_are_the_papers():
    assert registry.ZERO_SHOT_PROMPT == "Briefly caption the image"
    config = TrainConfig()
    assert config.prompt == "Briefly caption the image"
    assert (config.lr_max, config.lr_min, config.batch_size, config.epochs) == (2e-2, 1e-5, 32, 4)
    assert config.momentum == 0.0 and config.weight_decay == 0.0  # plain SGD


@pytest.mark.parametrize("model", sorted(PAPER_MODELS))
def test_registry_models_carry_the_papers_ids_prompt_length_and_lora(model):
    card = json.loads((paths.MODEL_CONFIGS_DIR / f"{model}.json").read_text())
    assert card["hf_id"] == PAPER_MODELS[model]
    assert card["prompt_token_count"] == 48  # system + user prompt tokens: 48 x 4096 = 196,608 for prompt learning
    assert card["lora"]["r"] == 128 and card["lora"]["alpha"] == 256
    text = card["config"]["text_config"]
    assert (text["hidden_size"], text["num_hidden_layers"]) == (4096, 32)  # prefix tuning: 32 x 4096 = 131,072
    assert registry.PAPER_LORA["r"] == 128 and registry.PAPER_LORA["alpha"] == 256


@pytest.mark.parametrize("recipe", sorted((paths.PROJECT_ROOT / "train" / "recipes").glob("llava-1.*-7b/*.yaml")),
                         ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_the_7b_recipes_keep_the_papers_hyperparameters(recipe):
    values = yaml.safe_load(recipe.read_text())
    assert values["model"] == recipe.parent.name and values["dataset"] == "coco"
    if values.get("objective") == "scst":  # beyond the paper: a self-critical stage after its cross-entropy run
        assert "init_from=" in recipe.read_text().splitlines()[0] and values["batch_size"] == 32
        assert values["val_split"] == "val" and values["train_split"].startswith("train")
        return
    assert values.get("optimizer", "sgd") == "sgd" and values.get("lr_schedule", "cosine") == "cosine"
    assert values.get("warmup_steps", 0) == 0
    assert (values["lr_max"], values["lr_min"], values["batch_size"], values["epochs"]) == (0.02, 1e-5, 32, 4)
    assert values.get("momentum", 0.0) == 0.0 and values.get("weight_decay", 0.0) == 0.0
    assert values["val_split"] == "val"  # best checkpoint by validation loss
