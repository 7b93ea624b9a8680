"""Every strategy on tiny random LLaVA models: gradients, save/load, init identity, cached generation."""

from __future__ import annotations

import pytest
import torch

from captionlab.captioner import GenerationSettings, LlavaCaptioner, load_captioners
from captionlab.models.loading import load_model
from captionlab.models.prompting import build_prompt
from captionlab.models.registry import get_model_spec
from captionlab.strategies import PAPER_STRATEGIES, get_strategy
from captionlab.training.batching import IGNORE_INDEX, build_training_batch

TRAINABLE = ["prompt_learning", "prefix_tuning", "lora", "dora", "full"]
CAPTIONS = ["a red ball on the grass", "two blue cups", "a small tree next to a house"]


def fresh(model_dir, strategy_name, seed=0):
    torch.manual_seed(seed)
    spec = get_model_spec(model_dir)
    loaded = load_model(spec, device="cpu")
    strategy = get_strategy(strategy_name)
    loaded.model = strategy.apply(loaded.model, spec, loaded.tokenizer)
    return loaded, strategy


def perturb(strategy, model, seed=1, scale=0.5):
    """Move the trainable parameters away from their (possibly identity) initialisation."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in strategy.trainable_parameters(model):
            p.add_(torch.randn(p.shape, generator=generator) * scale)


def loss_of(loaded, strategy, images):
    batch = build_training_batch(loaded.processor, loaded.spec, images, CAPTIONS, strategy.prefix_slots)
    return loaded.model(**batch).loss, batch


@pytest.mark.parametrize("name", TRAINABLE)
def test_only_the_strategy_parameters_receive_gradients(tiny_llava_dir, tiny_images, name):
    loaded, strategy = fresh(tiny_llava_dir, name)
    trainable = {n for n, _ in strategy.trainable_parameters(loaded.model)}
    assert trainable
    perturb(strategy, loaded.model)  # LoRA's B starts at zero, which would zero A's gradient
    loss, _ = loss_of(loaded, strategy, tiny_images)
    loss.backward()
    for n, p in loaded.model.named_parameters():
        if n in trainable:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None, n
    assert not any("vision_tower" in n for n in trainable)
    if name in ("lora", "dora", "prompt_learning", "prefix_tuning"):
        assert not any("multi_modal_projector" in n for n in trainable)


def test_labels_cover_only_the_caption(tiny_llava_dir, tiny_images):
    loaded, strategy = fresh(tiny_llava_dir, "zero_shot")
    batch = build_training_batch(loaded.processor, loaded.spec, tiny_images, CAPTIONS)
    tok = loaded.tokenizer
    for row, caption in enumerate(CAPTIONS):
        labelled = batch["labels"][row][batch["labels"][row] != IGNORE_INDEX]
        assert tok.decode(labelled, skip_special_tokens=True).strip() == caption
        assert labelled[-1] == tok.eos_token_id


@pytest.mark.parametrize("name", ["lora", "dora"])
def test_lora_and_dora_leave_logits_unchanged_at_init(tiny_llava_dir, tiny_images, name):
    base, _ = fresh(tiny_llava_dir, "zero_shot")
    adapted, strategy = fresh(tiny_llava_dir, name)
    batch = build_training_batch(base.processor, base.spec, tiny_images, CAPTIONS)
    with torch.no_grad():
        torch.testing.assert_close(adapted.model(**batch).logits, base.model(**batch).logits, rtol=1e-5, atol=1e-5)


def test_prompt_learning_starts_from_the_real_prompt_tokens(tiny_llava_dir, tiny_images):
    base, _ = fresh(tiny_llava_dir, "zero_shot")
    adapted, strategy = fresh(tiny_llava_dir, "prompt_learning")
    batch = build_training_batch(base.processor, base.spec, tiny_images, CAPTIONS)
    with torch.no_grad():
        torch.testing.assert_close(adapted.model(**batch).logits, base.model(**batch).logits)
    tok = base.tokenizer
    prompt_ids = tok(build_prompt(base.spec))["input_ids"]
    expected = len([i for i in prompt_ids if i not in (tok.bos_token_id, tok.convert_tokens_to_ids("<image>"))])
    (name, param), = strategy.trainable_parameters(adapted.model)
    assert param.shape == (expected, base.spec.text_hidden_size)


@pytest.mark.parametrize("name", TRAINABLE)
def test_save_then_load_gives_identical_logits(tiny_llava_dir, tiny_images, tmp_path, name):
    loaded, strategy = fresh(tiny_llava_dir, name)
    perturb(strategy, loaded.model)
    loss, batch = loss_of(loaded, strategy, tiny_images)
    strategy.save(loaded.model, tmp_path / name)
    assert not list((tmp_path / name).glob("*.bin")) and not list((tmp_path / name).glob("*.pt"))
    reloaded = load_model(get_model_spec(tiny_llava_dir), device="cpu")
    model = strategy.load(reloaded.model, reloaded.spec, tmp_path / name, reloaded.tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, loaded.model(**batch).logits)


@pytest.mark.parametrize("name", ["lora", "dora"])
def test_adapters_load_with_plain_peft(tiny_llava_dir, tiny_images, tmp_path, name):
    from peft import PeftModel

    loaded, strategy = fresh(tiny_llava_dir, name)
    perturb(strategy, loaded.model)
    strategy.save(loaded.model, tmp_path)
    plain = PeftModel.from_pretrained(load_model(get_model_spec(tiny_llava_dir), device="cpu").model, str(tmp_path))
    batch = build_training_batch(loaded.processor, loaded.spec, tiny_images, CAPTIONS)
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).logits, loaded.model(**batch).logits)


def greedy_without_cache(loaded, strategy, image, steps):
    """Reference decoding: full forward passes, no KV cache, argmax each step."""
    prompt = build_prompt(loaded.spec, prefix_slots=strategy.prefix_slots, placeholder=loaded.tokenizer.unk_token)
    inputs = loaded.processor(images=[image], text=[prompt], return_tensors="pt")
    ids = inputs["input_ids"]
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    with torch.no_grad():
        for _ in range(steps):
            logits = loaded.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False, **extra).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[0, inputs["input_ids"].shape[1]:].tolist()


@pytest.mark.parametrize("name", PAPER_STRATEGIES)
@pytest.mark.parametrize("arch", ["llava", "llava_next"])
def test_cached_generate_equals_greedy_loop_without_cache(tiny_llava_dir, tiny_llava_next_dir, tiny_images, name, arch):
    model_dir = tiny_llava_dir if arch == "llava" else tiny_llava_next_dir
    loaded, strategy = fresh(model_dir, name)
    perturb(strategy, loaded.model)
    loaded.model.eval()
    steps = 6
    prompt = build_prompt(loaded.spec, prefix_slots=strategy.prefix_slots, placeholder=loaded.tokenizer.unk_token)
    inputs = loaded.processor(images=[tiny_images[0]], text=[prompt], return_tensors="pt")
    with torch.no_grad():
        out = loaded.model.generate(**inputs, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                                    pad_token_id=loaded.tokenizer.pad_token_id)
    cached = out[0, inputs["input_ids"].shape[1]:].tolist()
    assert cached == greedy_without_cache(loaded, strategy, tiny_images[0], steps)


def test_strategies_change_the_captions_they_are_applied_to(tiny_llava_dir, tiny_images):
    """Guards against hooks that silently do nothing under generate()."""
    outputs = {}
    for name in ["zero_shot", "prompt_learning", "prefix_tuning"]:
        loaded, strategy = fresh(tiny_llava_dir, name)
        perturb(strategy, loaded.model, seed=3)
        prompt = build_prompt(loaded.spec, prefix_slots=strategy.prefix_slots, placeholder=loaded.tokenizer.unk_token)
        inputs = loaded.processor(images=[tiny_images[0]], text=[prompt], return_tensors="pt")
        with torch.no_grad():
            outputs[name] = loaded.model(**inputs).logits[0, -1]
    assert not torch.allclose(outputs["zero_shot"], outputs["prompt_learning"])
    assert not torch.allclose(outputs["zero_shot"], outputs["prefix_tuning"])


def test_llava_next_captions_a_batch_with_several_tile_counts(tiny_llava_next_dir, tiny_images):
    loaded = load_model(get_model_spec(tiny_llava_next_dir), device="cpu")
    captioner = LlavaCaptioner(loaded, get_strategy("zero_shot"), GenerationSettings(max_new_tokens=4))
    # 48x32 (landscape), 32x64 (portrait), 32x32 (square) pick different any-resolution grids
    captions = captioner.caption(tiny_images)
    assert len(captions) == 3 and all(isinstance(c, str) for c in captions)


def test_shared_base_switches_between_strategies(tiny_llava_dir, tiny_images, tmp_path):
    artifacts = {"zero_shot": None}
    for name in TRAINABLE:
        loaded, strategy = fresh(tiny_llava_dir, name)
        perturb(strategy, loaded.model, seed=5)
        strategy.save(loaded.model, tmp_path / name)
        artifacts[name] = tmp_path / name
    settings = GenerationSettings(max_new_tokens=5)
    captioners = load_captioners(get_model_spec(tiny_llava_dir), artifacts, settings, device="cpu")
    assert list(captioners) == PAPER_STRATEGIES
    shared = {id(c.base) for k, c in captioners.items() if k != "full"}
    assert len(shared) == 1  # one base model for every adapter strategy
    for name in PAPER_STRATEGIES:
        # each captioner on the shared base gives what a dedicated model with only that strategy gives
        alone = load_model(get_model_spec(tiny_llava_dir), device="cpu")
        strategy = get_strategy(name)
        if artifacts[name] is not None:
            alone.model = strategy.load(alone.model, alone.spec, artifacts[name], alone.tokenizer)
        expected = LlavaCaptioner(alone, strategy, settings).caption(tiny_images[:2])
        assert captioners[name].caption(tiny_images[:2]) == expected, name


def test_captions_cut_at_the_token_limit_are_told_apart_from_finished_ones(tiny_llava_dir, tiny_images):
    """last_cut: per caption, whether it used every allowed token without an end token (the real decoder's rows)."""
    import torch

    from captionlab.captioner import cut_short

    loaded = load_model(get_model_spec(tiny_llava_dir), device="cpu")
    eos = loaded.processor.tokenizer.eos_token_id
    tokens = torch.tensor([[5, 6, 7], [5, eos, 0], [eos, 0, 0]])
    assert cut_short(tokens, 3, eos) == [True, False, False]
    assert cut_short(tokens[:, :2], 3, eos) == [False] * 3  # every row ended before the limit
    captioner = LlavaCaptioner(loaded, get_strategy("zero_shot"), GenerationSettings(max_new_tokens=3))
    captions = captioner.caption(tiny_images)
    assert len(captioner.last_cut) == len(captions) == 3
    long = LlavaCaptioner(loaded, get_strategy("zero_shot"), GenerationSettings(max_new_tokens=60))
    finished = long.caption(tiny_images)
    for short, cut, whole in zip(captions, captioner.last_cut, finished):
        assert cut == (short != whole)  # a caption cut at 3 tokens is the start of a longer one; a finished one is all


def test_prompt_learning_refuses_inputs_of_another_prompt_instead_of_overwriting_their_tokens(tiny_llava_dir,
                                                                                                tiny_images):
    """Its learned vectors stand for the paper's prompt: another prompt's tokens (or a caption's) must not be replaced."""
    from captionlab.strategies.base import StrategyError
    from captionlab.training.config import ConfigError, resolve_config

    loaded, strategy = fresh(tiny_llava_dir, "prompt_learning")
    assert LlavaCaptioner(loaded, strategy, GenerationSettings(max_new_tokens=2)).caption(tiny_images[:1])
    for prompt, error in (("Tell me, in one short sentence, what this image shows", "these inputs carry another prompt"),
                          ("Caption", "expects 63 prompt tokens per row, found")):  # longer, then shorter
        with pytest.raises(StrategyError, match=error):
            LlavaCaptioner(loaded, strategy, GenerationSettings(max_new_tokens=2, prompt=prompt)).caption(tiny_images[:1])
    with pytest.raises(ConfigError, match="prompt: prompt learning learns the paper's prompt"):
        resolve_config(None, {"model": str(tiny_llava_dir), "strategy": "prompt_learning", "prompt": "Caption"})
    resolve_config(None, {"model": str(tiny_llava_dir), "strategy": "lora", "prompt": "Caption"})  # others may


def test_prefix_tuning_takes_no_slot_in_a_decoding_step_that_generated_the_placeholder(tiny_llava_dir, tiny_images):
    """A cached step whose new token is <unk> (the slot's placeholder) must run as any other step."""
    import torch

    loaded, strategy = fresh(tiny_llava_dir, "prefix_tuning")
    perturb(strategy, loaded.model, seed=3)
    unk = loaded.processor.tokenizer.unk_token_id
    inputs = loaded.processor(images=tiny_images[:1], text=[captioner_prompt(loaded, strategy)], return_tensors="pt")
    with torch.no_grad():
        prefill = loaded.model(**inputs, use_cache=True)
        step_ids = torch.tensor([[unk]])
        mask = torch.cat([inputs["attention_mask"], torch.ones(1, 1, dtype=inputs["attention_mask"].dtype)], dim=1)
        cached = loaded.model(input_ids=step_ids, attention_mask=mask, past_key_values=prefill.past_key_values,
                              use_cache=True).logits[0, -1]
        whole = loaded.model(input_ids=torch.cat([inputs["input_ids"], step_ids], dim=1), attention_mask=mask,
                             pixel_values=inputs["pixel_values"]).logits[0, -1]
    assert torch.allclose(cached, whole, atol=1e-4), float((cached - whole).abs().max())


def captioner_prompt(loaded, strategy) -> str:
    from captionlab.models.prompting import build_prompt

    return build_prompt(loaded.spec, GenerationSettings().prompt, strategy.prefix_slots, loaded.processor.tokenizer.unk_token)


@pytest.mark.parametrize("name", ["lora", "dora"])
def test_lora_a_starts_gaussian_where_the_spec_says_so_as_the_paper_does(tiny_llava_dir, name):
    """The paper (Sec. 3.2): A Gaussian, B zero. peft's default A is Kaiming-uniform, bounded by 1/sqrt(fan_in)."""
    from dataclasses import replace

    from captionlab.models.registry import PAPER_LORA

    assert get_model_spec("llava-1.5-7b").lora == get_model_spec("llava-1.6-7b").lora == PAPER_LORA
    assert PAPER_LORA == {"r": 128, "alpha": 256, "init": "gaussian"}
    spec = get_model_spec(tiny_llava_dir)
    outside = {}
    for init in ("gaussian", True):
        torch.manual_seed(0)
        loaded = load_model(spec, device="cpu")
        model = get_strategy(name).apply(loaded.model, replace(spec, lora={"r": 8, "alpha": 16, "init": init}),
                                         loaded.tokenizer)
        a = [p for n, p in model.named_parameters() if "lora_A" in n]
        b = [p for n, p in model.named_parameters() if "lora_B" in n]
        assert a and all(float(p.abs().max()) == 0 for p in b)
        bound = max(1 / p.shape[1] ** 0.5 for p in a)
        outside[init] = sum(int((p.abs() > bound).sum()) for p in a) / sum(p.numel() for p in a)
    assert outside[True] == 0 and outside["gaussian"] > 0.1  # a uniform never passes its bound; a Gaussian does


def test_lora_apply_and_load_leave_no_gradient_checkpointing_warning(tiny_llava_dir, tmp_path):
    """peft reads transformers' deprecated `is_gradient_checkpointing` when it wraps a model: that FutureWarning
    opened every LoRA/DoRA training and evaluation log."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # conftest ignores FutureWarnings suite-wide: see them here
        loaded, strategy = fresh(tiny_llava_dir, "lora")
        strategy.save(loaded.model, tmp_path / "lora")
        again = load_model(get_model_spec(tiny_llava_dir), device="cpu")
        strategy.load(again.model, again.spec, tmp_path / "lora", again.tokenizer)
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]
