"""Qwen2.5-VL (`qwen2_5_vl`, issue #21) on a tiny random-weight model of its real transformers classes.

Built as transformers' own tests build one (a 2-block ViT with windowed and full attention, a 2x2 patch merger, a
2-layer Qwen2.5 LLM with M-RoPE sections), with images of three sizes, so dynamic resolution gives rows of
different lengths. Its parts and prompt, its 3-D rotary positions under prefix sharing and GreedyDecoder (the
shared prefix's positions are the per-caption ones; the same loss and gradients; generate()'s greedy tokens),
every strategy applied, saved and captioning, and the counts of the published 3B / 7B configs.
"""

from __future__ import annotations

import pytest
import torch

ARCHITECTURE = "qwen2_5_vl"


@pytest.fixture(scope="module")
def tiny_qwen_dir(tmp_path_factory, tiny_tokenizer):
    from captionlab.models.tiny import save_tiny_llava

    return save_tiny_llava(tmp_path_factory.mktemp(ARCHITECTURE), tiny_tokenizer, architecture=ARCHITECTURE,
                           name="tiny-qwen2.5-vl", seed=0)


def _load(folder):
    from captionlab.models.loading import load_model
    from captionlab.models.registry import get_model_spec

    spec = get_model_spec(folder)
    return spec, load_model(spec, device="cpu")


def test_a_tiny_qwen_is_saved_and_loaded_in_hf_format_and_its_family_names_its_parts(tiny_qwen_dir, tiny_tokenizer):
    import transformers

    from captionlab.models.families import family_of
    from captionlab.models.families.qwen2_5_vl import Qwen25VLFamily
    from captionlab.models.prompting import build_prompt

    spec, loaded = _load(tiny_qwen_dir)
    model, tokenizer = loaded.model, loaded.tokenizer
    assert isinstance(model, transformers.Qwen2_5_VLForConditionalGeneration)
    family = family_of(model)
    assert isinstance(family, Qwen25VLFamily)
    assert family.language_model(model) is model.model.language_model
    assert family.vision_tower(model) is model.model.visual
    assert family.projector(model) is model.model.visual.merger
    assert isinstance(loaded.processor, transformers.Qwen2_5_VLProcessor)
    assert build_prompt(spec).endswith("<|vision_start|><|image_pad|><|vision_end|>Briefly caption the image"
                                       "<|im_end|>\n<|im_start|>assistant\n")
    # the config's vision tokens are the tokenizer's (the shared tokenizer is not changed)
    config = model.config
    for token, found in [("<|image_pad|>", config.image_token_id), ("<|vision_start|>", config.vision_start_token_id),
                         ("<|vision_end|>", config.vision_end_token_id), ("<|video_pad|>", config.video_token_id)]:
        assert tokenizer.convert_tokens_to_ids(token) == found, token
    assert "<|image_pad|>" not in tiny_tokenizer.get_vocab()
    # full fine-tuning: the merger and the LLM with its head, never the vision blocks
    trained = {id(p) for p in family.full_fine_tuning_parameters(model)}
    assert all(id(p) in trained for p in model.model.visual.merger.parameters())
    assert all(id(p) in trained for p in model.lm_head.parameters())
    assert not any(id(p) in trained for p in model.model.visual.blocks.parameters())
    assert not any(id(p) in trained for p in model.model.visual.patch_embed.parameters())


def test_images_of_different_sizes_get_different_token_counts(tiny_qwen_dir, tiny_images):
    from captionlab.models.prompting import build_prompt

    spec, loaded = _load(tiny_qwen_dir)
    inputs = loaded.processor(images=tiny_images, text=[build_prompt(spec)] * len(tiny_images), return_tensors="pt",
                              padding=True)
    image_tokens = (inputs["input_ids"] == loaded.model.config.image_token_id).sum(dim=1).tolist()
    assert len(set(image_tokens)) == len(tiny_images)  # dynamic resolution: every row its own length
    assert inputs["image_grid_thw"].prod(dim=1).div(4).tolist() == image_tokens  # 2 x 2 patches per token


def _randomise_llm(model, std=0.2):
    """Random weights large enough that the greedy tokens vary from step to step and row to row."""
    from captionlab.models.prompting import language_model

    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in language_model(model).parameters():
            if parameter.dim() == 2:
                parameter.normal_(0, std)


def _one_row(inputs: dict, row: int) -> dict:
    """Row `row` of a processor batch: its tokens and its image's patches (pixel_values holds every image's)."""
    patches = inputs["image_grid_thw"].prod(dim=1).tolist()
    start = sum(patches[:row])
    one = {k: v[row:row + 1] for k, v in inputs.items() if k not in ("pixel_values", "image_grid_thw")}
    return {**one, "pixel_values": inputs["pixel_values"][start:start + patches[row]],
            "image_grid_thw": inputs["image_grid_thw"][row:row + 1]}


@pytest.mark.parametrize("strategy_name", ["zero_shot", "prefix_tuning", "prompt_learning"])
def test_greedy_decoder_gives_generates_greedy_tokens_with_3d_positions(tiny_qwen_dir, tiny_images, strategy_name):
    """Rows of three lengths, left-padded: positions from the image grids in the prefill, then counting on."""
    from captionlab.models.decoding import GreedyDecoder
    from captionlab.models.prompting import build_prompt
    from captionlab.strategies import get_strategy

    spec, loaded = _load(tiny_qwen_dir)
    _randomise_llm(loaded.model)
    strategy = get_strategy(strategy_name)
    model = strategy.apply(loaded.model, spec, loaded.tokenizer)
    for _, parameter in strategy.trainable_parameters(model):
        with torch.no_grad():
            parameter.add_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(2)) * 0.5)
    tokenizer = loaded.tokenizer
    prompt = build_prompt(spec, prefix_slots=strategy.prefix_slots,
                          placeholder=spec.family.prefix_placeholder(tokenizer))
    inputs = loaded.processor(images=tiny_images, text=[prompt] * len(tiny_images), return_tensors="pt", padding=True)
    assert not bool(inputs["attention_mask"].bool().all())  # padded: the masked steps
    kwargs = dict(max_new_tokens=8, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    with torch.inference_mode():
        expected = model.generate(**inputs, do_sample=False, num_beams=1, **kwargs)
        decoder = GreedyDecoder(model)
        found = decoder(dict(inputs), **kwargs)
        single = _one_row(inputs, int(inputs["attention_mask"].sum(dim=1).argmax()))  # the longest: no padding
        assert bool(single["attention_mask"].bool().all())  # the exact-length steps
        unpadded_expected = model.generate(**single, do_sample=False, num_beams=1, **kwargs)
        unpadded_found = GreedyDecoder(model)(dict(single), **kwargs)
    expected = expected[:, inputs["input_ids"].shape[1]:]
    assert len(set(expected[0].tolist())) > 1  # not a constant token: the comparison can tell decoders apart
    assert torch.equal(found, expected)
    assert torch.equal(unpadded_found, unpadded_expected[:, single["input_ids"].shape[1]:])


def test_the_shared_prefix_and_each_caption_keep_their_per_caption_3d_positions(tiny_qwen_dir, tiny_images):
    """Every token of a packed row has the (t, h, w) position it has in its own per-caption sequence."""
    from test_prefix_sharing import CAPTIONS

    from captionlab.training.batching import build_training_batch
    from captionlab.training.prefix_sharing import build_packed_batch, packed_position_ids

    spec, loaded = _load(tiny_qwen_dir)
    packed = build_packed_batch(loaded.processor, spec, tiny_images, CAPTIONS)
    positions = packed_position_ids(loaded.model, packed)
    assert positions.shape == (3, *packed["input_ids"].shape)
    for row, (image, captions) in enumerate(zip(tiny_images, CAPTIONS)):
        single = build_training_batch(loaded.processor, spec, [image] * len(captions), captions)
        expected, _ = loaded.model.model.get_rope_index(single["input_ids"], single["mm_token_type_ids"],
                                                        image_grid_thw=single["image_grid_thw"],
                                                        attention_mask=single["attention_mask"])
        for caption, segment in enumerate(range(1, len(captions) + 1)):
            tokens = (packed["segment_ids"][row] == 0) | (packed["segment_ids"][row] == segment)
            length = int(tokens.sum())
            assert torch.equal(packed["input_ids"][row][tokens], single["input_ids"][caption, :length])
            assert torch.equal(positions[:, row][:, tokens], expected[:, caption, :length])
    image_rows = positions[1][packed["input_ids"] == loaded.model.config.image_token_id]
    assert len(set(image_rows.tolist())) > 1  # the image's height positions vary: truly 3-D, not a running count


@pytest.mark.parametrize("name", ["prompt_learning", "prefix_tuning", "lora", "full"])
def test_prefix_shared_training_has_per_caption_loss_and_gradients(tiny_qwen_dir, tiny_images, name):
    """One image's captions after one copy of its image+prompt prefix: the per-caption loss and gradients (the check
    of tests/test_prefix_sharing.py), with rows of three prefix lengths and 3-D rotary positions."""
    from test_prefix_sharing import check_packed_equals_per_caption, fresh

    loaded, strategy = fresh(tiny_qwen_dir, name)
    packed = check_packed_equals_per_caption(loaded, strategy, tiny_images)
    assert len(set(packed["prefix_lengths"].tolist())) == 3
    assert "mm_token_type_ids" in packed and "image_grid_thw" in packed


def test_every_paper_strategy_applies_saves_and_captions(tiny_qwen_dir, tiny_images, tmp_path):
    from captionlab.captioner import GenerationSettings, load_captioners
    from captionlab.strategies import PAPER_STRATEGIES, get_strategy
    from captionlab.strategies.prompt_learning import prompt_token_ids

    spec, _ = _load(tiny_qwen_dir)
    artifacts = {}
    for name in PAPER_STRATEGIES:
        strategy = get_strategy(name)
        _, loaded = _load(tiny_qwen_dir)
        model = strategy.apply(loaded.model, spec, loaded.tokenizer)
        trainable = dict(strategy.trainable_parameters(model))
        assert (sum(p.numel() for p in trainable.values()) == 0) == (name == "zero_shot"), name
        if name == "prompt_learning":  # the template's text tokens: not the image's, nor its vision wrappers
            ids = prompt_token_ids(spec, loaded.tokenizer)
            wrappers = spec.family.image_marker_ids(loaded.tokenizer)
            assert not set(ids) & {*wrappers, loaded.model.config.image_token_id}
            assert sum(p.numel() for p in trainable.values()) == len(ids) * spec.text_hidden_size
        if name == "lora":
            adapted = [n for n, _ in model.named_modules() if n.endswith(("q_proj.lora_A", "down_proj.lora_A"))]
            assert adapted and all("language_model" in n for n in adapted)  # never the ViT's gate/up/down_proj
        if name == "full":
            assert not any("visual.blocks" in n for n in trainable) and any("visual.merger" in n for n in trainable)
        artifacts[name] = None if name == "zero_shot" else tmp_path / name
        if artifacts[name] is not None:
            strategy.save(model, artifacts[name])
    captioners = load_captioners(spec, artifacts, GenerationSettings(max_new_tokens=4, batch_size=2), device="cpu")
    assert set(captioners) == set(PAPER_STRATEGIES)
    for name, captioner in captioners.items():
        captions = captioner.caption(tiny_images)
        assert len(captions) == len(tiny_images) and all(isinstance(c, str) for c in captions), name


def _published_lora_count(spec) -> int:
    """LoRA's trainable parameters from the published config alone: r x (in + out) of the LLM's seven projections."""
    text = spec.text_config
    hidden, heads = text["hidden_size"], text["num_attention_heads"]
    kv = text["num_key_value_heads"] * text.get("head_dim", hidden // heads)
    per_layer = 2 * (hidden + hidden) + 2 * (hidden + kv) + 3 * (hidden + text["intermediate_size"])  # q o, k v, mlp
    return spec.lora["r"] * per_layer * text["num_hidden_layers"]


@pytest.mark.parametrize("name, low, high, rank", [("qwen2.5-vl-7b", 8.28e9, 8.30e9, 128),
                                                   ("qwen2.5-vl-3b", 3.7e9, 3.8e9, 64)])
def test_the_registry_models_build_at_their_published_size_and_counts_follow_from_their_configs(name, low, high,
                                                                                                  rank):
    """Built on the meta device from the flat published config.json: "8.29B" / "3.75B" parameters; the layers LoRA
    adapts are exactly the LLM's seven projections (the family's pattern, as peft matches it), r x (in + out) each."""
    import re

    from captionlab.models.loading import build_random_model
    from captionlab.models.registry import get_model_spec

    spec = get_model_spec(name)
    assert spec.lora["r"] == rank and spec.lora["alpha"] == 2 * rank  # the paper's r 128 / alpha 256 on the 7B
    model = build_random_model(spec, "meta")
    assert low < sum(p.numel() for p in model.parameters()) < high
    text = spec.text_config
    assert model.config.text_config.num_hidden_layers == text["num_hidden_layers"]
    assert model.config.text_config.rope_parameters["mrope_section"] == [16, 24, 24]
    adapted = [module for module_name, module in model.named_modules()
               if re.fullmatch(spec.family.lora_target_modules, module_name)]
    assert len(adapted) == 7 * text["num_hidden_layers"]
    assert sum(spec.lora["r"] * (m.in_features + m.out_features) for m in adapted) == _published_lora_count(spec)
    assert spec.text_hidden_size * spec.text_num_layers == text["hidden_size"] * text["num_hidden_layers"]
    trained = {id(p): p for p in spec.family.full_fine_tuning_parameters(model)}  # 3B: lm_head is the embedding
    frozen = {id(p) for module in (model.model.visual.blocks, model.model.visual.patch_embed)
              for p in module.parameters()}
    assert not set(trained) & frozen and set(trained) | frozen == {id(p) for p in model.parameters()}
    vision_blocks = sum(p.numel() for p in model.model.visual.blocks.parameters())
    assert 600e6 < vision_blocks < 700e6  # the 32-block ViT, the same in both sizes



NEW_MODELS = ("llava-onevision-0.5b", "llava-onevision-7b", "qwen2.5-vl-3b", "qwen2.5-vl-7b", "smolvlm-256m",
              "smolvlm-2.2b")


@pytest.mark.parametrize("model", NEW_MODELS)
def test_each_new_models_recipes_resolve_and_the_train_form_takes_them(model):
    """Every strategy's recipe resolves through resolve_config, names its registry model, keeps the paper's schedule and
    the registry's LoRA rank; the Train tab lists the model and starts its form from these recipes."""
    from captionlab import paths
    from captionlab.models.registry import get_model_spec
    from captionlab.service import runs
    from captionlab.training.config import resolve_config

    spec = get_model_spec(model)
    recipes = sorted((paths.RECIPES_DIR / model).glob("*.yaml"))
    assert {p.stem for p in recipes} >= {"prompt_learning", "prefix_tuning", "lora", "dora", "full"}
    seven_b = spec.text_hidden_size >= 3584
    for path in recipes:
        recipe = f"{model}/{path.stem}"
        assert path.read_text().splitlines()[0].startswith(("# python -m train run --recipe " + recipe,
                                                            "# accelerate launch --multi_gpu"))
        config = resolve_config(recipe, [])
        assert config.model == model and config.strategy in runs.trainable_strategies()
        assert (config.lr_max, config.lr_min, config.batch_size, config.epochs) == (0.02, 1e-5, 32, 4)
        if config.strategy in ("lora", "dora"):
            assert (config.lora_rank, config.lora_alpha) == (spec.lora["r"], spec.lora["alpha"])
            paper = (128, 256) if seven_b else (spec.lora["r"], 2 * spec.lora["r"])  # small: a stated r, alpha 2r
            assert (config.lora_rank, config.lora_alpha) == paper
        if config.strategy == "full":
            assert config.distributed == ("fsdp" if seven_b else "ddp")
        if path.stem != "lora_shared_prefix":
            assert runs.recipe_for(model, config.strategy) == recipe
    assert model in runs.model_choices()


def test_the_trainer_gives_the_same_losses_with_and_without_prefix_sharing(tmp_path, tiny_qwen_dir, tiny_world):
    """The real trainer on the embedded world's images (LoRA, one epoch): the shared-prefix run's losses are the
    per-caption run's, step by step."""
    from test_trainer import make_run, train_losses, val_losses

    from captionlab.training.trainer import train_run

    settings = dict(strategy="lora", epoch_unit="image_captions", epochs=1, batch_size=12, micro_batch_size=6,
                    max_train_images=6, max_val_images=2, momentum=0.0, lr_max=0.5)
    per_caption = make_run(tmp_path, tiny_qwen_dir, tiny_world, "per_caption", share_prefix=False, **settings)
    shared = make_run(tmp_path, tiny_qwen_dir, tiny_world, "shared", share_prefix=True, **settings)
    assert train_run(per_caption) == 0 and train_run(shared) == 0
    assert len(train_losses(shared)) >= 2
    assert train_losses(shared) == pytest.approx(train_losses(per_caption), rel=1e-5)
    assert val_losses(shared) == pytest.approx(val_losses(per_caption), rel=1e-5)
    assert val_losses(shared)[-1] != pytest.approx(val_losses(shared)[0], rel=1e-4)  # the run really moved


def test_the_readme_model_families_table_is_generated_from_the_estimates():
    """The README's table lists every registry model with a shipped config, and the small SmolVLM's row is what
    `python -m captionlab.families_report` computes now (the 7B rows take minutes to recompute: not here)."""
    from captionlab import paths
    from captionlab.families_report import END, START, family_rows, render_table
    from captionlab.models.registry import list_models

    readme = (paths.PROJECT_ROOT / "README.md").read_text()
    section = readme[readme.index(START):readme.index(END)]
    for name in list_models():
        assert (f"| `{name}` |" in section) == (name != "embedded"), name
    row = render_table(family_rows(["smolvlm-256m"])).splitlines()[2]
    assert row in section.splitlines()
    assert "| 16 |" in row and "≈" in row  # its stated LoRA rank; prompt learning (no tokenizer here): ≈ zero-shot


def test_the_families_table_marks_what_it_could_not_count():
    from captionlab.families_report import render_table

    memory = {"zero_shot": 2**30, "prefix_tuning": 2**30, "lora": 2 * 2**30, "dora": 2 * 2**30, "full": 8 * 2**30}
    rows = [{"name": "m", "family": "F", "hf_id": "o/m", "lora_r": 8, "total": 5e8, "memory": memory}]
    line = render_table(rows).splitlines()[2]
    assert line == "| `m` | F | `o/m` | 0.50B | 8 | 1.0 | ≈ 1.0 | 1.0 | 2.0 | 2.0 | 8.0 |"


def test_two_fsdp_processes_fine_tune_a_tiny_qwen_as_one_does(tmp_path, tiny_qwen_dir, tiny_world):
    """distributed: fsdp on two gloo processes shards Qwen2.5-VL's decoder layers and ViT blocks (the family's
    layer_suffixes) and trains the merger and the LLM exactly as one process does."""
    from test_fsdp import launch_fsdp, step_rows
    from test_trainer import make_run, val_losses

    from captionlab.training.checkpoint import load_checkpoint
    from captionlab.training.fsdp import layer_class_names
    from captionlab.training.trainer import train_run

    _, loaded = _load(tiny_qwen_dir)
    assert layer_class_names(loaded.model) == ["Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock"]
    settings = dict(strategy="full", batch_size=8, micro_batch_size=2, epochs=1, max_train_images=4,
                    max_val_images=2, lr_max=0.2, momentum=0.9, checkpoint_every_steps=100)
    single = make_run(tmp_path, tiny_qwen_dir, tiny_world, "single", **settings)
    assert train_run(single) == 0
    double = make_run(tmp_path, tiny_qwen_dir, tiny_world, "double", distributed="fsdp", **settings)
    launch_fsdp(double)
    one, two = step_rows(single), step_rows(double)
    assert sorted(two) == sorted(one) and len(one) >= 2
    for step in one:
        assert two[step]["loss"] == pytest.approx(one[step]["loss"], rel=1e-5), step
    assert val_losses(double) == pytest.approx(val_losses(single), rel=1e-5)
    _, trained_1, _ = load_checkpoint(single / "last")
    _, trained_2, _ = load_checkpoint(double / "last")
    assert sorted(trained_2) == sorted(trained_1) and any("visual.merger" in key for key in trained_1)
    assert not any("visual.blocks" in key for key in trained_1)
    assert max(float((trained_2[k] - trained_1[k]).abs().max()) for k in trained_1) < 1e-5


def test_the_compare_tabs_shared_vision_pass_keeps_qwens_captions(tiny_qwen_dir, tiny_images, tmp_path):
    """Qwen2.5-VL's tower (`visual`) holds the merger that full fine-tuning trains: the fully fine-tuned copy's tower
    differs, so it is not shared with the base's (two passes, not one), and every caption is unchanged."""
    from test_vision_sharing import saved_artifacts

    from captionlab.captioner import GenerationSettings, load_captioners
    from captionlab.models.registry import get_model_spec
    from captionlab.models.vision_sharing import shared_vision_passes

    captioners = load_captioners(get_model_spec(tiny_qwen_dir), saved_artifacts(tiny_qwen_dir, tmp_path),
                                 GenerationSettings(max_new_tokens=5), device="cpu")
    alone = {key: c.caption(tiny_images[:1]) for key, c in captioners.items()}
    with shared_vision_passes([c.model for c in captioners.values()]) as memories:
        shared = {key: c.caption(tiny_images[:1]) for key, c in captioners.items()}
    assert shared == alone
    assert sorted(m.passes for m in memories) == [1, 1]  # the base's tower (3 captioners) and the full copy's
