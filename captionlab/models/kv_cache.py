"""The decoder's KV cache: allocated once for prompt + new tokens and written in place.

Why. `generate()`'s `DynamicCache` grows with `torch.cat`, copying the whole cache every decoding step (~85 GB
per step at batch 128 on a 7B model). `PreallocatedCache` holds every layer's keys and values in buffers of the
final length, written in place; its write position is a device tensor, so a captured CUDA graph can replay a
step that writes there.

How a decoding step sees it. Two ways, over the same buffers:

  PreallocatedCache  the whole buffer, every step the same shape (one CUDA graph serves every step); the
                     unwritten slots (and any left padding) are hidden by the caller's additive mask
  ExactLengthView    views of exactly the tokens written so far, the step's own included (no copy): with no
                     padding in the batch a one-token query may attend to all of them, so the step needs no
                     mask, and transformers' SDPA path then passes none (`attn_mask=None`, `is_causal=False`
                     for one query token), which lets SDPA pick its flash kernel; the view's shape grows by one
                     token per step, so a CUDA graph serves only the step length it was captured at

The prefill writes through `PreallocatedCache.prefill_view()`, a transformers `Cache` over the same buffers.
"""

from __future__ import annotations

import torch


class PreallocatedCache:
    """A KV cache of fixed length written in place; the duck type of a transformers `Cache` that decoder
    layers use (`update(key, value, layer_idx)`), with the write position as a device tensor so a captured
    graph can replay it. Through `update` a step sees the whole buffer (unwritten slots masked by the caller);
    through `ExactLengthView(cache)` it sees exactly the written tokens."""

    def __init__(self, max_length: int, device: torch.device, shape: tuple[int, int, int, int], layers: int,
                 dtype: torch.dtype):
        self.max_length = max_length
        batch, heads, dim, value_dim = shape  # (batch, kv heads, head dim, value head dim): every layer allocated now
        self.keys = {i: torch.zeros(batch, heads, max_length, dim, dtype=dtype, device=device) for i in range(layers)}
        self.values = {i: torch.zeros(batch, heads, max_length, value_dim, dtype=dtype, device=device)
                       for i in range(layers)}
        self.write_at = torch.zeros(1, dtype=torch.long, device=device)
        self.offsets = torch.arange(max_length, device=device)
        self.length = 0  # tokens written (host-side mirror of write_at)

    def write(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> None:
        """Write `key` / `value` (batch, heads, tokens, dim) at the write position (not advanced: see `advance`)."""
        positions = self.offsets[: key.shape[-2]] + self.write_at
        self.keys[layer_idx].index_copy_(2, positions, key)
        self.values[layer_idx].index_copy_(2, positions, value)

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Write, and return the whole buffers (the masked decoding step's view)."""
        self.write(key, value, layer_idx)
        return self.keys[layer_idx], self.values[layer_idx]

    def prefill_view(self):
        """A transformers `Cache` over these buffers for the prefill: each layer writes its keys and values in
        place and attends to exactly the tokens written so far, so the model's own forward (its mask building,
        causal attention without a mask when nothing is padded) runs as with a `DynamicCache`, without a second
        copy of the cache. None where this transformers version has no such layer API."""
        try:
            from transformers.cache_utils import Cache, DynamicLayer
        except ImportError:
            return None

        class BufferLayer(DynamicLayer):
            def __init__(self, keys: torch.Tensor, values: torch.Tensor):
                super().__init__()
                self.buffer_keys, self.buffer_values, self.written = keys, values, 0
                self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True

            def update(self, key_states, value_states, *args, **kwargs):
                end = self.written + key_states.shape[-2]
                self.buffer_keys[:, :, self.written:end].copy_(key_states)
                self.buffer_values[:, :, self.written:end].copy_(value_states)
                self.written = end
                self.keys, self.values = self.buffer_keys[:, :, :end], self.buffer_values[:, :, :end]
                return self.keys, self.values

            def get_seq_length(self) -> int:
                return self.written

        try:
            return Cache(layers=[BufferLayer(self.keys[i], self.values[i]) for i in range(len(self.keys))])
        except TypeError:
            return None

    def take(self, cache, length: int) -> None:
        """Move a filled transformers cache (`length` tokens per layer) in, freeing its layers as they are copied."""
        layers = getattr(cache, "layers", None)
        count = len(layers) if layers is not None else len(cache.key_cache)
        for index in range(count):
            if layers is not None:
                key, value = layers[index].keys, layers[index].values
            else:  # older transformers: key_cache / value_cache lists
                key, value = cache.key_cache[index], cache.value_cache[index]
            if key.shape[-2] != length:
                raise ValueError(f"layer {index} of the prefill cache holds {key.shape[-2]} tokens, expected {length}")
            if key.data_ptr() != self.keys[index].data_ptr():  # (a prefill view's layers are our buffers)
                self.write(key, value, index)
            if layers is not None:
                layers[index].keys = layers[index].values = None
            del key, value
        self.advance(length)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def advance(self, tokens: int) -> None:
        self.write_at.add_(tokens)
        self.length += tokens

    def reset(self) -> None:
        self.write_at.zero_()
        self.length = 0


class ExactLengthView:
    """A `PreallocatedCache` as a decoding step of an unpadded batch sees it: `update` writes the step's keys and
    values into the buffers and returns views of exactly the tokens written (the step's own included), so
    attention reads no unwritten slot and needs no mask.

    It also answers what transformers' mask building asks of a cache (`get_query_offset`, `get_mask_sizes`):
    asked for a causal mask with no 2D mask, one query token and this view, `create_causal_mask` returns None
    for SDPA (`_ignore_causal_mask_sdpa`), and `sdpa_attention_forward` then calls SDPA with `attn_mask=None`
    and `is_causal=False` (its `is_causal` needs more than one query token). Other attention implementations
    (eager) build a mask of this exact length instead, all-attend for one token: the same result.

    The lengths are host-side (`cache.length`), so each step length is its own shape: graph-capturable once per
    length, not once for all steps."""

    def __init__(self, cache: PreallocatedCache):
        self.cache = cache

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        self.cache.write(key, value, layer_idx)
        end = self.cache.length + key.shape[-2]
        return self.cache.keys[layer_idx][:, :, :end], self.cache.values[layer_idx][:, :, :end]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.cache.length

    def get_query_offset(self, layer_idx: int = 0) -> int:
        return self.cache.length

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        """(kv_length, kv_offset) of what `update` returns for `query_length` new tokens."""
        return self.cache.length + query_length, 0
