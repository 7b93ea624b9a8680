"""Prefix sharing: one image's captions packed after ONE copy of their shared image+prompt prefix.

COCO gives every image 5 captions, and in the one-sequence-per-caption layout of
`build_training_batch` all 5 sequences start with the same image+prompt prefix (617 of 633
tokens on LLaVA-1.5, ~2,970 of ~2,985 on LLaVA-1.6). Packing computes that prefix (and encodes
the image) once per image instead of once per caption:

    row i:  [BOS prompt <image>*N prompt]  [caption 1 + EOS]  [caption 2 + EOS] ... [caption k + EOS]  [pad]
             prefix, positions 0..P-1       positions P..      positions P..          positions P..

The packed computation is *exactly* the per-caption one (same logits, same loss, same gradients
up to floating-point reduction order), because:

- Attention (a 4D mask, `packed_attention_mask`): a prefix token attends causally within the
  prefix; a token of caption j attends to the whole prefix and causally to the earlier tokens
  of caption j only, never to another caption. Padding queries attend only to key 0 (so no
  softmax row is empty; their outputs are never used) and nothing attends to padding.
- Positions restart after the prefix: the first token of every caption has position P (the
  prefix length), as in its own sequence, so rotary embeddings are identical. A family with positions of its
  own (Qwen2.5-VL's 3-D rotary ones, `packed_position_ids`) gets them for the prefix from the prefix alone, and
  each caption counts on from the prefix's next position, again as in its own sequence.
- Targets. In the per-caption layout the first caption token is predicted from the *last
  prefix position*; in a packed row the token before caption j > 1 is the EOS of caption j-1,
  whose prediction is no target at all. Scheme used here: the loss is taken on the logits of
  selected positions only (`logits_to_keep`, a boolean (B, L) mask, which transformers' LLaVA
  forward supports since 5.2x: it returns the kept rows flattened; older versions get an int
  and the kept rows are picked from the last K), and every target names the kept row
  it is predicted from (`loss_index`). The last prefix position is kept once and *gathered k
  times*, once for the first token of each of the row's k captions; token m > 1 of caption j
  is predicted from token m-1 of caption j; the last token (EOS) of each caption predicts
  nothing. The prefix's last hidden state depends only on the prefix (causal mask), which is
  the same for all k captions, so this is the per-caption logit, not an approximation; the
  gather's backward sums the k gradients into that one position, as the k per-caption
  sequences would. The number of targets equals the per-caption count of caption tokens
  (caption + EOS).

How the mask reaches the model: transformers' `create_causal_mask` returns a 4D tensor passed
as `attention_mask` unchanged (masking_utils `_preprocess_mask_arguments`: "If the mask is
already 4D, simply return as-is"). It must be *additive* (0 = attend, dtype-min = blocked) in
the compute dtype: SDPA accepts bool or float masks, but eager attention adds the mask to the
scores, so a bool mask would be wrong there. captionlab's prompt-learning and prefix-tuning
hooks read the top-level `attention_mask` as a 2D (B, L) padding mask to find their token
positions, so by default (`mask_route="decoder"`) the LLaVA forward gets the ordinary 2D mask
(its hooks see exactly what they see for a per-caption batch: the prompt at the start of each
right-padded row) and a forward pre-hook on the LLM decoder swaps in the 4D mask for that one
call. `mask_route="forward"` passes the 4D mask to the top-level forward directly (plain
transformers, no hook; fine for zero-shot, LoRA, DoRA and full fine-tuning).

(`token_mask` is the one-line change that would let those hooks take a 4D mask too.)
The forward uses `use_cache=False`: a training step needs no KV cache.

    batch = build_packed_batch(processor, spec, images, captions_per_image, strategy.prefix_slots, prompt)
    loss_sum, tokens = packed_loss_sum(model, batch)   # = caption_loss_sum over build_training_batch's rows
    (loss_sum / tokens).backward()

A trainer gains only when the captions of an image are in the same micro-batch: order an epoch by
image (all of an image's captions together) instead of shuffling single captions; validation, which
visits every caption of every image in order, can be packed without changing what is computed.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from captionlab.models.families import family_of
from captionlab.models.prompting import build_prompt, language_model
from captionlab.models.registry import ZERO_SHOT_PROMPT, ModelSpec

PAD_SEGMENT = -1  # segment id of padding; 0 is the prefix, j >= 1 is caption j


class PackingError(ValueError):
    """Captions cannot be packed as asked (empty caption list, tokenization not prefix-stable...)."""


def pack_sequences(prefixes: Sequence[torch.Tensor], captions: Sequence[Sequence[torch.Tensor]], pad_token_id: int,
                   pad_to_multiple_of: int = 1) -> dict[str, torch.Tensor]:
    """Pack token ids: row i = prefixes[i] followed by every caption of captions[i] (each ending in EOS).

    Returns input_ids, attention_mask (2D, 1 on real tokens), position_ids, segment_ids (0 prefix,
    j caption j, -1 padding), prefix_lengths, logits_to_keep (bool (B, L)), loss_index and
    loss_targets (1D: target t is predicted from row loss_index[t] of the kept logits), caption_counts.
    """
    if len(prefixes) != len(captions):
        raise PackingError(f"{len(prefixes)} prefixes but {len(captions)} caption lists")
    if not prefixes:
        raise PackingError("nothing to pack")
    lengths = []
    for i, (prefix, caps) in enumerate(zip(prefixes, captions)):
        if len(caps) == 0:
            raise PackingError(f"image {i} has no captions")
        if len(prefix) == 0 or any(len(c) == 0 for c in caps):
            raise PackingError(f"image {i}: empty prefix or caption")
        lengths.append(len(prefix) + sum(len(c) for c in caps))
    width = max(lengths)
    if pad_to_multiple_of > 1:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    rows = len(prefixes)
    input_ids = torch.full((rows, width), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((rows, width), dtype=torch.long)
    segment_ids = torch.full((rows, width), PAD_SEGMENT, dtype=torch.long)
    keep = torch.zeros((rows, width), dtype=torch.bool)
    # (row, position, target) for every target; turned into indices of the kept (flattened) logits below
    targets: list[tuple[int, int, int]] = []
    for i, (prefix, caps) in enumerate(zip(prefixes, captions)):
        prefix = torch.as_tensor(prefix, dtype=torch.long)
        p = len(prefix)
        input_ids[i, :p] = prefix
        position_ids[i, :p] = torch.arange(p)
        segment_ids[i, :p] = 0
        keep[i, p - 1] = True
        start = p
        for j, caption in enumerate(caps, start=1):
            caption = torch.as_tensor(caption, dtype=torch.long)
            n = len(caption)
            input_ids[i, start:start + n] = caption
            position_ids[i, start:start + n] = torch.arange(p, p + n)
            segment_ids[i, start:start + n] = j
            targets.append((i, p - 1, int(caption[0])))  # first token: from the prefix's last position
            for m in range(1, n):
                targets.append((i, start + m - 1, int(caption[m])))
            keep[i, start:start + n - 1] = True  # the last token (EOS) predicts nothing
            start += n
        position_ids[i, start:] = torch.arange(width - start) + p  # padding: any position, never attended
    # kept logits come back flattened in row-major order of `keep`'s True entries
    flat_index = torch.full((rows, width), -1, dtype=torch.long)
    flat_index[keep] = torch.arange(int(keep.sum()))
    loss_index = torch.tensor([int(flat_index[r, pos]) for r, pos, _ in targets], dtype=torch.long)
    loss_targets = torch.tensor([t for _, _, t in targets], dtype=torch.long)
    return {
        "input_ids": input_ids,
        "attention_mask": (segment_ids != PAD_SEGMENT).long(),
        "position_ids": position_ids,
        "segment_ids": segment_ids,
        "prefix_lengths": torch.tensor([len(p) for p in prefixes], dtype=torch.long),
        "caption_counts": torch.tensor([len(c) for c in captions], dtype=torch.long),
        "logits_to_keep": keep,
        "loss_index": loss_index,
        "loss_targets": loss_targets,
    }


def packed_attention_mask(segment_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The additive 4D mask (B, 1, L, L): 0 where query q may attend key k, dtype-min elsewhere.

    q attends k iff k <= q and k is in the prefix or in q's own caption; padding attends key 0 only.
    """
    seg_q = segment_ids[:, :, None]
    seg_k = segment_ids[:, None, :]
    length = segment_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril()
    allowed = causal & (seg_k != PAD_SEGMENT) & ((seg_k == 0) | (seg_k == seg_q)) & (seg_q != PAD_SEGMENT)
    padding_row = (seg_q == PAD_SEGMENT) & (torch.arange(length, device=segment_ids.device) == 0)
    allowed = allowed | padding_row
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def _caption_token_ids(tokenizer, prompt: str, captions: Sequence[str]) -> list[torch.Tensor]:
    """Each caption's tokens (caption + EOS) exactly as `build_training_batch` tokenizes them after the prompt."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    texts = [f"{prompt} {caption.strip()}{tokenizer.eos_token}" for caption in captions]
    out = []
    for caption, ids in zip(captions, tokenizer(texts)["input_ids"]):
        if ids[:len(prompt_ids)] != prompt_ids or len(ids) == len(prompt_ids):
            raise PackingError(f"the tokenization of the prompt changes when {caption!r} follows it; cannot share it")
        out.append(torch.tensor(ids[len(prompt_ids):], dtype=torch.long))
    return out


def build_packed_batch(processor, spec: ModelSpec, images: Sequence[Image.Image], captions_per_image: Sequence[Sequence[str]],
                       prefix_slots: int = 0, user_prompt: str = ZERO_SHOT_PROMPT,
                       pad_to_multiple_of: int = 1) -> dict[str, torch.Tensor]:
    """A packed training batch: one row per image, its captions after one copy of its image+prompt prefix.

    Tokens are those of `build_training_batch` (prompt + " " + caption + EOS): the same loss and
    gradients, computed with `packed_loss_sum`. Rows are padded on the right; LLaVA-NeXT rows may
    have prefixes of different lengths (image tokens depend on the image's size).
    """
    if len(images) != len(captions_per_image):
        raise PackingError(f"{len(images)} images but {len(captions_per_image)} caption lists")
    tokenizer = processor.tokenizer
    prompt = build_prompt(spec, user_prompt, prefix_slots, spec.family.prefix_placeholder(tokenizer))
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        inputs = processor(images=[im.convert("RGB") for im in images], text=[prompt] * len(images),
                           return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = previous_side
    prefixes = [row[mask.bool()] for row, mask in zip(inputs["input_ids"], inputs["attention_mask"])]
    captions = [_caption_token_ids(tokenizer, prompt, caps) for caps in captions_per_image]
    batch = pack_sequences(prefixes, captions, tokenizer.pad_token_id, pad_to_multiple_of)
    for key in spec.family.image_input_keys:  # one image per row (image_sizes: LLaVA-NeXT, ...)
        if key in inputs:
            batch[key] = inputs[key]
    for key in spec.family.token_input_keys:  # per token (Qwen2.5-VL's mm_token_type_ids): the prefix's, 0 after it
        if key in inputs:
            batch[key] = torch.zeros_like(batch["input_ids"], dtype=inputs[key].dtype)
            for row, (values, mask) in enumerate(zip(inputs[key], inputs["attention_mask"])):
                batch[key][row, :len(prefixes[row])] = values[mask.bool()]
    return batch


def packed_position_ids(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The packed rows' position ids: `pack_sequences`' 1-D ones, or, for a family with its own positions
    (Qwen2.5-VL's 3-D rotary positions from the image grid), the family's for the prefix, computed on the prefix
    alone, and each caption's tokens counting on from the prefix's next position, as in its own sequence."""
    inner = getattr(model, "module", model)
    is_prefix = batch["segment_ids"] == 0
    prefix = family_of(inner).prompt_position_ids(inner, {**batch, "attention_mask": is_prefix.long()})
    if prefix is None:
        return batch["position_ids"]
    next_position = prefix.amax(dim=(0, 2)) + 1  # per row: text after the prefix goes on from here
    caption = next_position[:, None] + batch["position_ids"] - batch["prefix_lengths"][:, None]
    return torch.where(is_prefix[None], prefix, caption[None].expand_as(prefix))


MODEL_KEYS = ("input_ids", "pixel_values", "image_sizes")


def _decoder(model: torch.nn.Module) -> torch.nn.Module:
    model = getattr(model, "module", model)  # DistributedDataParallel
    return language_model(model)


def _compute_dtype(model: torch.nn.Module) -> torch.dtype:
    return _decoder(model).get_input_embeddings().weight.dtype


@functools.lru_cache(maxsize=1)
def boolean_logits_to_keep_supported() -> bool:
    """Whether this transformers' `slice_logits_to_keep` takes a boolean (B, L) mask and flattens (5.2x does)."""
    try:
        from transformers.modeling_utils import slice_logits_to_keep

        keep = torch.tensor([[True, False, True], [False, False, True]])
        return tuple(slice_logits_to_keep(torch.zeros(2, 3, 1), keep).shape) == (3, 1)
    except Exception:  # older transformers: no helper, or a boolean tensor is not understood
        return False


def packed_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor], mask_route: str = "decoder") -> torch.Tensor:
    """Logits (n_kept, vocab) of the kept positions of a packed batch, through the stock LLaVA forward.

    Only the kept positions are projected onto the vocabulary (a boolean `logits_to_keep`); on a
    transformers that does not take one, the last K positions (from the earliest last-prefix position
    on) are, and the kept ones are picked from those: the same rows in the same order.
    """
    dtype = _compute_dtype(model)
    mask4d = packed_attention_mask(batch["segment_ids"], dtype)
    image_keys = family_of(getattr(model, "module", model)).image_input_keys
    inputs = {k: batch[k] for k in (*MODEL_KEYS, *image_keys) if k in batch}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    keep = batch["logits_to_keep"]
    if boolean_logits_to_keep_supported():
        to_keep = keep
    else:
        to_keep = keep.shape[1] - int(batch["prefix_lengths"].min()) + 1
    common = dict(position_ids=packed_position_ids(model, batch), logits_to_keep=to_keep, use_cache=False)
    if mask_route == "forward":
        logits = model(**inputs, attention_mask=mask4d, **common).logits
    elif mask_route == "decoder":
        def inject(module, args, kwargs):
            return args, {**kwargs, "attention_mask": mask4d}

        handle = _decoder(model).register_forward_pre_hook(inject, with_kwargs=True)
        try:
            logits = model(**inputs, attention_mask=batch["attention_mask"], **common).logits
        finally:
            handle.remove()
    else:
        raise ValueError(f"mask_route must be 'decoder' or 'forward', not {mask_route!r}")
    if isinstance(to_keep, int):
        logits = logits[keep[:, -to_keep:]]
    return logits


def packed_loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor],
                    mask_route: str = "decoder") -> tuple[torch.Tensor, int]:
    """(summed token-level cross-entropy over every caption token, number of those tokens).

    Equal to `caption_loss_sum` over the per-caption batch of the same captions, and so are its gradients.
    """
    logits = packed_logits(model, batch, mask_route)
    chosen = logits.index_select(0, batch["loss_index"])
    loss = F.cross_entropy(chosen.float(), batch["loss_targets"], reduction="sum")
    return loss, int(batch["loss_targets"].numel())


def token_mask(attention_mask: torch.Tensor | None, input_ids: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: the tokens that take part (not padding), from a 2D padding mask or from a 4D mask.

    In a 4D mask a real token attends to itself (its diagonal entry is True / 0.0); `packed_attention_mask`
    blocks the diagonal of padding. This is the one change prompt learning's and prefix tuning's position
    hooks need to accept a 4D mask at the top-level forward (`mask_route="forward"`), in place of their
    `attention_mask.bool()`.
    """
    if attention_mask is None:
        return torch.ones_like(input_ids, dtype=torch.bool)
    if attention_mask.dim() == 4:
        diagonal = attention_mask[:, 0].diagonal(dim1=-2, dim2=-1)
        return diagonal if diagonal.dtype == torch.bool else diagonal == 0
    return attention_mask.bool()


def caption_token_count(batch: dict[str, torch.Tensor]) -> int:
    """Caption tokens (the loss's denominator) of a packed batch."""
    return int(batch["loss_targets"].numel())
