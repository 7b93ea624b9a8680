"""Greedy captioning without `generate()`'s per-step costs: a preallocated KV cache and, on CUDA, the
decoding steps replayed as CUDA graphs.

Why. Captioning a batch is one long prefill (BOS + prompt + 576 image tokens on LLaVA-1.5) and ~20
one-token decoding steps. Plain `generate()` spends each decoding step mostly on the CPU (every decoder
layer launched op by op, logits processors, stopping criteria, mask building) and grows its
`DynamicCache` with `torch.cat`, copying the whole cache every step. Here the cache is allocated once for
prompt + new tokens, filled in place (`kv_cache.py`), and the whole decoding step (embedding, every layer,
final norm, LM head of the last position) is captured as a CUDA graph and replayed (`step_graphs.py`), so
a step costs one launch.

Two kinds of decoding step (`last_step_kind` says which the last batch took):

  masked        any batch (left-padded ones included): the step attends over the WHOLE preallocated buffer
                under an explicit additive 4D mask (batch, 1, 1, prompt + new) that hides padding and unwritten
                slots. One shape for every step, so one CUDA graph.
  exact-length  batches with no padding (every attention_mask 1: LLaVA-1.5 captioning, any batch of one
                prompt and one image shape): the step sees views of exactly the tokens written so far (no copy,
                `ExactLengthView`) and gets no mask, so SDPA may pick its flash kernel. The shape grows by one
                token per step, so on CUDA there is one graph per step length (captured lazily, one shared
                memory pool, kept per batch shape). The default wherever it applies (`exact_length_steps=None`;
                False forces masked steps).

Exactness. The same tokens as `model.generate(do_sample=False, num_beams=1)` with the same
`max_new_tokens` / `min_new_tokens` / EOS / pad (tests: tiny LLaVA and LLaVA-NeXT, every strategy, both
step kinds, left-padded batches). The prefill goes through the model's own forward (strategy hooks see the
prompt, as under `generate()`); decoding steps call the language model directly with explicit positions (and,
masked, the explicit mask), the form in which the steps are graph-capturable. With no padding, `generate()`
itself runs its steps without a mask over exactly the cached tokens: the exact-length step's computation.

    decoder = GreedyDecoder(model)
    new_tokens = decoder(inputs, max_new_tokens=40, eos_token_id=2, pad_token_id=0)   # (batch, <=40)

`GreedyDecoder(model, compile_prefill=True)` runs the prefill through `torch.compile`d layers
(`compiled_layers.py`), falling back to the eager prefill, and saying why in `last_compile_error`, if
compiling fails. A failing graph capture falls back to eager steps, and says why in `last_graph_error`.
`compile_steps=True` (off by default) runs the decoding steps' layers through the same compiled layers
(norms, rotary, SiLU x up and residual adds fused; attention and cache writes eager, so no step length
compiles anything new), inside the CUDA graphs where those are on: a graph-replayed step still launches
dozens of small elementwise kernels per decoder layer.

What each of these measures on a GPU (masked against exact-length steps, compiled prefill and steps), and
what is not measured yet, is in `bench/RESULTS.md`: measurements date, so they live there, not here.

One decoder keeps the buffers (and graphs) of its last batch shape, so batches of one shape reuse them;
`release()` frees them (the cache is the big part: 0.5 MB per token per image on a 7B model).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from captionlab.models.families import family_of
from captionlab.models.kv_cache import ExactLengthView, PreallocatedCache
from captionlab.models.prompting import language_model, unwrap
from captionlab.models.step_graphs import StepGraphs

__all__ = ["GreedyDecoder", "PreallocatedCache"]


@dataclass
class _State:
    """Buffers for one batch shape: the cache, the step's inputs, and the step's captured graphs."""

    key: tuple
    cache: PreallocatedCache
    mask: torch.Tensor  # (batch, 1, 1, max_length) additive: 0 where a key may be attended (masked steps)
    token: torch.Tensor  # (batch, 1) the token the step feeds
    position: torch.Tensor  # (batch, 1) its position id
    graphs: StepGraphs = field(default_factory=StepGraphs)  # on CUDA: "masked", ("exact-length", written length)

    @property
    def exact_view(self) -> ExactLengthView:
        """The cache as an exact-length step sees it (a light view object over the same buffers)."""
        return ExactLengthView(self.cache)


class GreedyDecoder:
    """Greedy decoding for a LLaVA / LLaVA-NeXT model (plain, peft-wrapped or with captionlab's strategies).

    `cuda_graph`: replay the decoding steps as CUDA graphs (None: on CUDA devices). `compile_prefill`: the prefill
    through torch.compile'd layers; `compile_steps`: the decoding steps' layers too (not yet measured on a GPU).
    `exact_length_steps`: decode a batch with no padding through exact-length steps (the written cache, no mask; see
    the module docstring); None (the default) or True: wherever it applies (unpadded batches); False: masked steps
    always. Padded batches always take masked steps. The exact-length steps give generate()'s tokens (CPU tests,
    fp32) but are NOT yet measured on a GPU: whether they are faster there (flash attention, one graph per step
    length) is for the next GPU benchmark to say
    (`bench/caption_throughput.py`'s `captionlab` row against `captionlab-masked-steps`)."""

    def __init__(self, model: torch.nn.Module, cuda_graph: bool | None = None, compile_prefill: bool = False,
                 exact_length_steps: bool | None = None, compile_steps: bool = False):
        self.model = model
        self.cuda_graph = cuda_graph  # None: on CUDA devices
        self.compile_prefill = compile_prefill  # prefill through torch.compile'd layers (`compiled_layers.py`)
        self.compile_steps = compile_steps  # decoding steps' layers through the same compiled layers
        self.exact_length_steps = exact_length_steps  # None: on for unpadded batches
        self._state: _State | None = None
        self._compiled = None
        self.last_graph_error: str | None = None  # why the last batch decoded without a graph, if it did
        self.last_compile_error: str | None = None  # why the prefill ran eagerly although compiling was asked
        self.last_step_kind: str | None = None  # "exact-length" or "masked": how the last batch's steps attended

    # ------------------------------------------------------------------ public
    @torch.inference_mode()
    def __call__(self, inputs: dict, *, max_new_tokens: int, eos_token_id: int | None, pad_token_id: int,
                 min_new_tokens: int = 0) -> torch.Tensor:
        """New tokens (batch, n <= max_new_tokens), rows padded with `pad_token_id` after their EOS."""
        input_ids = inputs["input_ids"]
        batch, length = input_ids.shape
        device = input_ids.device
        attention = inputs.get("attention_mask")
        attention = torch.ones_like(input_ids) if attention is None else attention.to(torch.long)
        if max_new_tokens < 1:
            return input_ids.new_zeros(batch, 0)
        dtype = self._dtype()
        state = self._prepare(batch, length, max_new_tokens, device, dtype)
        cache, mask = state.cache, state.mask
        cache.reset()

        # prefill exactly as generate() does it: the model's own forward (vision tower, projector, strategy hooks,
        # its own mask building: causal attention without a mask when nothing is padded), positions from the
        # attention mask, keys and values written straight into the preallocated buffers
        positions = (attention.cumsum(dim=1) - 1).clamp_(min=0)
        family_positions = family_of(unwrap(self.model)).prompt_position_ids(self.model,
                                                                             {**inputs, "attention_mask": attention})
        forward = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
        padded = not bool(attention.bool().all())
        out = self._prefill(cache, input_ids=input_ids, attention_mask=attention if padded else None,
                            position_ids=positions if family_positions is None else family_positions, use_cache=True,
                            logits_to_keep=1, **forward)
        logits = out.logits[:, -1, :]
        cache.take(out.past_key_values, length)
        del out
        exact = self._exact_steps(padded)
        self.last_step_kind = "exact-length" if exact else "masked"
        if not exact:
            mask.fill_(torch.finfo(dtype).min)
            mask[:, 0, 0, :length].masked_fill_(attention.bool(), 0.0)

        tokens = input_ids.new_full((batch, max_new_tokens), pad_token_id)
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        # the next token's position: one past the last prompt token's (Qwen2.5-VL: its text position, equal in all
        # three rotary dimensions, which generate() too counts on from)
        next_position = (positions if family_positions is None else family_positions[0])[:, -1:] + 1
        produced = 0
        for step in range(max_new_tokens):
            if eos_token_id is not None and step < min_new_tokens:
                logits[:, eos_token_id] = float("-inf")
            chosen = logits.argmax(dim=-1)
            chosen = torch.where(finished, torch.full_like(chosen, pad_token_id), chosen)
            tokens[:, step] = chosen
            produced = step + 1
            if eos_token_id is not None:
                finished |= chosen == eos_token_id
                if bool(finished.all()):
                    break
            if step == max_new_tokens - 1:
                break
            # the next step feeds `chosen` at slot length+step, which it may attend to (an exact-length step sees
            # the slots up to it and no further; a masked step sees them all, the mask opens this one)
            state.token.copy_(chosen.unsqueeze(1))
            state.position.copy_(next_position)
            if not exact:
                mask[:, 0, 0, length + step] = 0.0
            logits = self._step(state, exact)
            cache.advance(1)
            next_position += 1
        return tokens[:, :produced]

    def release(self) -> None:
        """Free the cache, buffers and graphs of the last batch shape."""
        self._state = None

    # ------------------------------------------------------------------ internals
    def _prefill(self, cache: PreallocatedCache, **kwargs):
        """The model's own forward over the prompts, writing keys and values into `cache` (through a prefill view:
        None where this transformers has none, then a DynamicCache is copied in, twice the memory briefly)."""
        return self._compiled_or_eager(self.compile_prefill,
                                       lambda: self.model(past_key_values=cache.prefill_view(), **kwargs),
                                       undo=cache.reset)

    def _compiled_or_eager(self, wanted: bool, run, undo=None):
        """`run()` inside the compiled layers if `wanted` (and compiling has not failed before), else eagerly. A
        compile failure is said in `last_compile_error` (and not retried: the layers are no longer `usable`); `undo`
        clears what the failed try left, then `run()` goes again eagerly. Out of memory is not the compiler's fault:
        it goes to the caller's batch-halving."""
        if wanted and self._compiled_layers().usable:
            try:
                with self._compiled.active():
                    return run()
            except torch.OutOfMemoryError:
                raise
            except Exception:  # noqa: BLE001 - compiling failed: said in last_compile_error, rerun eagerly below
                self.last_compile_error = self._compiled.error
                if undo is not None:
                    undo()
        return run()

    def _compiled_layers(self):
        """The compiled stand-ins for the model's layers, shared by the prefill and the steps (made on first use)."""
        if self._compiled is None:
            from captionlab.models.compiled_layers import CompiledLayers

            self._compiled = CompiledLayers(self.model)
        return self._compiled

    def _dtype(self) -> torch.dtype:
        return unwrap(self.model).get_input_embeddings().weight.dtype

    def _prepare(self, batch: int, length: int, new: int, device: torch.device, dtype: torch.dtype) -> _State:
        key = (batch, length, new, str(device), dtype)
        if self._state is not None and self._state.key == key:
            return self._state
        self._state = None  # free the old buffers first
        if device.type == "cuda":
            torch.cuda.empty_cache()
        max_length = length + new
        self._state = _State(
            key=key, cache=PreallocatedCache(max_length, device, self._kv_shape(batch), self._layers(), dtype),
            mask=torch.zeros(batch, 1, 1, max_length, dtype=dtype, device=device),
            token=torch.zeros(batch, 1, dtype=torch.long, device=device),
            position=torch.zeros(batch, 1, dtype=torch.long, device=device),
        )
        return self._state

    def _text_config(self):
        config = unwrap(self.model).config
        return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config.text_config

    def _layers(self) -> int:
        return int(self._text_config().num_hidden_layers)

    def _kv_shape(self, batch: int) -> tuple[int, int, int, int]:
        text = self._text_config()
        heads = int(getattr(text, "num_key_value_heads", None) or text.num_attention_heads)
        dim = int(getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads)
        return batch, heads, dim, dim

    def _exact_steps(self, padded: bool) -> bool:
        wanted = True if self.exact_length_steps is None else self.exact_length_steps
        return wanted and not padded

    def _eager_step(self, state: _State, exact: bool) -> torch.Tensor:
        """One decoding step: embed the fed token, run the decoder against the cache, project the last position;
        through the compiled layers if `compile_steps` (eagerly, and saying why in `last_compile_error`, if
        compiling fails: the failed try wrote the same keys and values to the same slot, so nothing is lost).

        Masked: the whole buffer with the additive mask. Exact-length: the written tokens and no mask at all (the
        language model builds none: see `ExactLengthView`)."""
        return self._compiled_or_eager(self.compile_steps, lambda: self._layer_step(state, exact))

    def _layer_step(self, state: _State, exact: bool) -> torch.Tensor:
        base = unwrap(self.model)
        embeddings = base.get_input_embeddings()(state.token)
        cache, mask = (state.exact_view, None) if exact else (state.cache, state.mask)
        hidden = language_model(self.model)(inputs_embeds=embeddings, attention_mask=mask,
                                            position_ids=state.position, past_key_values=cache,
                                            use_cache=True).last_hidden_state
        return base.lm_head(hidden[:, -1, :])

    def _use_graph(self, device: torch.device) -> bool:
        wanted = device.type == "cuda" if self.cuda_graph is None else self.cuda_graph
        return wanted and device.type == "cuda"

    def _step(self, state: _State, exact: bool) -> torch.Tensor:
        """One decoding step's logits: replayed as a CUDA graph (captured on first use) where graphs are on, else
        op by op. The masked step has one shape for every step, so one graph serves them all; the exact-length
        step attends to one more token each step, so it has one graph per written length. Capturing runs the
        step eagerly first (warm-up); each run rewrites the same cache slot with the same values (the write
        position moves only in `advance`), so that leaves the decoding state unchanged."""
        device = state.token.device
        if not self._use_graph(device):
            return self._eager_step(state, exact)
        key = ("exact-length", state.cache.length) if exact else "masked"
        logits = state.graphs.run(key, lambda: self._eager_step(state, exact), device)
        if state.graphs.error is not None:
            self.last_graph_error = state.graphs.error
        return logits
