"""Prefix sharing: a packed batch (one row per image, its captions after one shared prefix) gives exactly the
per-caption loss and gradients, for every strategy, on LLaVA and LLaVA-NeXT, with SDPA and eager attention."""

from __future__ import annotations

import pytest
import torch

from captionlab.models.loading import load_model
from captionlab.models.registry import get_model_spec
from captionlab.strategies import get_strategy
from captionlab.strategies.prefix_tuning import LayerPrefixes
from captionlab.strategies.prompt_learning import PromptEmbeddings
from captionlab.training.batching import IGNORE_INDEX, build_training_batch
from captionlab.training.prefix_sharing import (PAD_SEGMENT, PackingError, build_packed_batch, pack_sequences,
                                                packed_attention_mask, packed_loss_sum, token_mask)
from captionlab.training.trainer import caption_loss_sum

# three images with 5, 3 and 1 captions of different lengths
CAPTIONS = [
    ["a red ball on the grass", "two blue cups", "a small tree next to a house", "a ball", "red"],
    ["two blue cups on a kitchen table", "a cup", "The image shows a vibrant scene"],
    ["a house"],
]
RTOL = 1e-5
# Trainable parameters are moved this far from their init (LoRA's B = 0 would zero A's gradient). At 0.5, LoRA
# r=8 alpha=16 on the tiny model saturates layer 0's attention, and fp32 round-off (different but equally valid
# summation orders) reaches 1.6e-4 relative in its q/k gradients; in float64 they agree to 1e-7 (the float32
# cross-entropy is the limit), which test_packed_is_exact_in_float64_even_when_ill_conditioned checks.
SCALE = 0.1


def fresh(model_dir, name, attention=None, scale=SCALE, dtype=torch.float32):
    torch.manual_seed(0)
    spec = get_model_spec(model_dir)
    loaded = load_model(spec, device="cpu", dtype=dtype)
    if attention:
        loaded.model.set_attn_implementation(attention)
    strategy = get_strategy(name)
    loaded.model = strategy.apply(loaded.model, spec, loaded.tokenizer)
    if dtype != torch.float32:
        loaded.model.to(dtype)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, p in strategy.trainable_parameters(loaded.model):
            p.add_(torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.dtype) * scale)
    return loaded, strategy


def loss_and_grads(strategy, model, compute):
    params = dict(strategy.trainable_parameters(model))
    for p in params.values():
        p.grad = None
    loss, tokens = compute()
    if params:
        loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in params.items()}
    for p in params.values():
        p.grad = None
    return loss.detach(), tokens, grads


def check_packed_equals_per_caption(loaded, strategy, images, routes=("decoder",), rtol=RTOL):
    """Per-caption (build_training_batch + caption_loss_sum) against packed (one check per mask route)."""
    flat_images = [im for im, caps in zip(images, CAPTIONS) for _ in caps]
    flat_captions = [c for caps in CAPTIONS for c in caps]
    per_caption = build_training_batch(loaded.processor, loaded.spec, flat_images, flat_captions, strategy.prefix_slots)
    per_caption["pixel_values"] = per_caption["pixel_values"].to(loaded.model.dtype)

    def reference():
        inputs = {k: v for k, v in per_caption.items() if k != "labels"}
        labels = per_caption["labels"]
        return caption_loss_sum(loaded.model(**inputs).logits, labels), int((labels[:, 1:] != IGNORE_INDEX).sum())

    packed = build_packed_batch(loaded.processor, loaded.spec, images, CAPTIONS, strategy.prefix_slots)
    assert packed["input_ids"].shape[0] == len(images)
    assert packed["input_ids"].numel() < per_caption["input_ids"].numel() / 2
    ref_loss, ref_tokens, ref_grads = loss_and_grads(strategy, loaded.model, reference)
    worst = (0.0, 0.0)
    for route in routes:
        loss, tokens, grads = loss_and_grads(strategy, loaded.model, lambda: packed_loss_sum(loaded.model, packed, route))
        assert tokens == ref_tokens
        loss_rel = abs(float(loss - ref_loss)) / abs(float(ref_loss))
        assert loss_rel < rtol, (route, loss_rel)
        assert set(grads) == set(ref_grads)
        grad_rel = 0.0
        for name, ref in ref_grads.items():
            assert ref.abs().sum() > 0, name
            grad_rel = max(grad_rel, float((grads[name] - ref).norm() / ref.norm()))
        assert grad_rel < rtol, (route, grad_rel)
        worst = (max(worst[0], loss_rel), max(worst[1], grad_rel))
    print(f"{strategy.name}: loss rel {worst[0]:.1e}, max grad rel {worst[1]:.1e}")
    return packed


class SwitchableHookFix:
    """The proposed change to a strategy's position hook: read the mask through `token_mask` (off until enabled)."""

    def __init__(self, monkeypatch, cls, method):
        self.enabled = False
        original = getattr(cls, method)
        fix = self

        def patched(hook_self, module, args, kwargs):
            mask = kwargs.get("attention_mask")
            if fix.enabled and mask is not None and mask.dim() == 4:
                kwargs = {**kwargs, "attention_mask": token_mask(mask, kwargs.get("input_ids"))}
            return original(hook_self, module, args, kwargs)

        monkeypatch.setattr(cls, method, patched)


def test_pack_sequences_layout_mask_and_targets():
    prefixes = [torch.tensor([1, 10, 11, 12]), torch.tensor([1, 10, 11, 12, 13, 14])]
    captions = [[torch.tensor([20, 21, 2]), torch.tensor([22, 2])], [torch.tensor([23, 2])]]
    batch = pack_sequences(prefixes, captions, pad_token_id=3, pad_to_multiple_of=4)
    assert batch["input_ids"].tolist() == [[1, 10, 11, 12, 20, 21, 2, 22, 2, 3, 3, 3],
                                           [1, 10, 11, 12, 13, 14, 23, 2, 3, 3, 3, 3]]
    assert batch["position_ids"][0, :9].tolist() == [0, 1, 2, 3, 4, 5, 6, 4, 5]  # restart at the prefix length
    assert batch["position_ids"][1, :8].tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert batch["segment_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2] + [PAD_SEGMENT] * 3
    assert batch["caption_counts"].tolist() == [2, 1] and batch["prefix_lengths"].tolist() == [4, 6]
    # targets, by (row, position they are predicted from): both first tokens from the prefix's last position
    keep = batch["logits_to_keep"]
    kept_positions = [(int(r), int(c)) for r, c in keep.nonzero()]
    assert kept_positions == [(0, 3), (0, 4), (0, 5), (0, 7), (1, 5), (1, 6)]
    pairs = [(kept_positions[i], t) for i, t in zip(batch["loss_index"].tolist(), batch["loss_targets"].tolist())]
    assert pairs == [((0, 3), 20), ((0, 4), 21), ((0, 5), 2), ((0, 3), 22), ((0, 7), 2), ((1, 5), 23), ((1, 6), 2)]
    allowed = packed_attention_mask(batch["segment_ids"])[:, 0] == 0
    assert allowed[0, 7].tolist()[:9] == [True] * 4 + [False] * 3 + [True, False]  # caption 2 sees prefix + itself
    assert allowed[0, 6].tolist()[:9] == [True] * 7 + [False] * 2
    assert allowed[0, 2].tolist()[:4] == [True, True, True, False]  # causal prefix
    assert not allowed[:, :, 9:].any()  # nothing attends to padding
    assert allowed[0, 10].tolist() == [True] + [False] * 11  # padding attends key 0 only (no empty softmax row)
    assert token_mask(packed_attention_mask(batch["segment_ids"]), batch["input_ids"]).tolist() == \
        batch["attention_mask"].bool().tolist()
    with pytest.raises(PackingError):
        pack_sequences([torch.tensor([1, 2])], [[]], pad_token_id=0)


@pytest.mark.parametrize("name,attention", [("zero_shot", None), ("prompt_learning", None), ("prefix_tuning", None),
                                            ("lora", None), ("dora", None), ("full", "eager")])
def test_packed_loss_and_gradients_equal_per_caption(tiny_llava_dir, tiny_images, monkeypatch, name, attention):
    """zero-shot weights + every strategy; full fine-tuning with eager attention (the others: SDPA).

    LoRA, DoRA, full and zero-shot also take the 4D mask through the plain forward (mask_route="forward").
    Prompt learning and prefix tuning find their positions from the top-level 2D mask: with a 4D one they
    fail as shipped, and work with the proposed one-line change (token_mask), checked here.
    """
    hook_fix = None
    if name in HOOKS:
        hook_fix = SwitchableHookFix(monkeypatch, *HOOKS[name])
    loaded, strategy = fresh(tiny_llava_dir, name, attention=attention)
    if attention:
        assert loaded.model.config.text_config._attn_implementation == attention
    if hook_fix is None:
        check_packed_equals_per_caption(loaded, strategy, tiny_images, routes=("decoder", "forward"))
        return
    packed = check_packed_equals_per_caption(loaded, strategy, tiny_images, routes=("decoder",))
    with pytest.raises(RuntimeError):
        packed_loss_sum(loaded.model, packed, mask_route="forward")
    hook_fix.enabled = True
    check_packed_equals_per_caption(loaded, strategy, tiny_images, routes=("decoder", "forward"))


HOOKS = {"prompt_learning": (PromptEmbeddings, "_find_prompt"), "prefix_tuning": (LayerPrefixes, "_find_slot")}


@pytest.mark.parametrize("name,boolean_keep", [("prompt_learning", False), ("prefix_tuning", True)])
def test_packed_llava_next_rows_with_different_prefix_lengths(tiny_llava_next_dir, tiny_images, monkeypatch, name,
                                                              boolean_keep):
    """Rows of different prefix lengths; with prompt learning also the path for a transformers without a boolean
    logits_to_keep (the last K positions are projected and the kept ones picked from them)."""
    from captionlab.training import prefix_sharing

    if not boolean_keep:
        monkeypatch.setattr(prefix_sharing, "boolean_logits_to_keep_supported", lambda: False)
    else:
        assert prefix_sharing.boolean_logits_to_keep_supported()  # transformers 5.23
    loaded, strategy = fresh(tiny_llava_next_dir, name)
    packed = check_packed_equals_per_caption(loaded, strategy, tiny_images)
    assert len(set(packed["prefix_lengths"].tolist())) == 3  # landscape, portrait, square: different image tokens


def test_packed_is_exact_in_float64_even_when_ill_conditioned(tiny_llava_next_dir, tiny_images):
    loaded, strategy = fresh(tiny_llava_next_dir, "lora", scale=0.5, dtype=torch.float64)
    check_packed_equals_per_caption(loaded, strategy, tiny_images, rtol=1e-6)
