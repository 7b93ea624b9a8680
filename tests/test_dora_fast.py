"""captionlab's DoRA forward (row norms from r-wide products) equals peft's: outputs and every gradient."""

from __future__ import annotations

import copy

import torch

import pytest

from captionlab.strategies.dora_fast import (FastDoraLinearLayer, FastDoraLinearVariant, _row_norms, _weight_times_a,
                                          use_peft_dora)
from captionlab.training.batching import build_training_batch
from test_strategies import fresh, perturb

CAPTIONS = ["a red ball on the grass", "two blue cups", "a small tree next to a house"]


def test_row_norms_equal_the_materialised_norms():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(24, 40, generator=generator, dtype=torch.float64)
    a = torch.randn(6, 40, generator=generator, dtype=torch.float64)
    b = torch.randn(24, 6, generator=generator, dtype=torch.float64)
    want = torch.linalg.norm(weight + 1.7 * (b @ a), dim=1)
    got = _row_norms(weight, a, b, 1.7, weight.pow(2).sum(dim=1).float())
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_half_precision_weight_times_float32_adapter_is_exact_to_float32(device):
    """A bf16 base with peft's float32 adapter: W A^T without a float32 copy of W (on CUDA from two bf16 products
    of A's high and low parts) equals the float32 product to ~1e-5."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(512, 1024, generator=generator).to(torch.bfloat16).to(device)
    lora_a = (torch.randn(16, 1024, generator=generator) / 32).to(device)
    want = weight.double() @ lora_a.double().t()
    got = _weight_times_a(weight, lora_a, torch.float32)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=2e-5 * want.abs().max().item())
    rounded = (weight.double() @ lora_a.to(torch.bfloat16).double().t())  # what A in bf16 alone would give
    assert (rounded - want).abs().max() > 20 * (got.double() - want).abs().max()  # the low part matters


def dora_model(model_dir):
    loaded, strategy = fresh(model_dir, "dora")
    perturb(strategy, loaded.model, scale=0.3)  # B = 0 at init would hide the cross terms
    return loaded, strategy


def test_dora_strategy_uses_the_fast_layers_and_matches_peft(tiny_llava_dir, tiny_images):
    loaded, strategy = dora_model(tiny_llava_dir)
    fast_layers = [m for m in loaded.model.modules() if isinstance(m, FastDoraLinearLayer)]
    assert len(fast_layers) == 7 * loaded.spec.text_num_layers
    variants = [v for m in loaded.model.modules() for v in (getattr(m, "lora_variant", None) or {}).values()]
    assert len(variants) == len(fast_layers) and all(isinstance(v, FastDoraLinearVariant) for v in variants)
    reference = copy.deepcopy(loaded.model)
    assert use_peft_dora(reference) == len(fast_layers)  # peft's own forward
    assert not any(isinstance(m, FastDoraLinearLayer) for m in reference.modules())

    batch = build_training_batch(loaded.processor, loaded.spec, tiny_images, CAPTIONS, strategy.prefix_slots)
    losses, grads = [], []
    for model in (loaded.model, reference):
        model.train()
        loss = model(**batch).loss
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-6, atol=1e-6)
    assert grads[0].keys() == grads[1].keys() and any("lora_magnitude_vector" in n for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6, msg=name)
    with torch.no_grad():  # and in eval mode (captioning)
        logits = [model.eval()(**batch).logits for model in (loaded.model, reference)]
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-5, atol=1e-5)


def test_weight_norm_cache_follows_in_place_changes_of_the_base_weight(tiny_llava_dir):
    loaded, _ = dora_model(tiny_llava_dir)
    layer = next(m for m in loaded.model.modules() if hasattr(m, "lora_magnitude_vector") and m.lora_magnitude_vector)
    dora = next(iter(layer.lora_magnitude_vector.values()))
    weight = layer.get_base_layer().weight
    first = dora._weight_sq(weight, weight.dtype).clone()
    with torch.no_grad():
        weight.mul_(2.0)
    torch.testing.assert_close(dora._weight_sq(weight, weight.dtype), first * 4.0)
