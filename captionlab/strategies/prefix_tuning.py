"""Prefix tuning as the paper defines it (Sec. 3.2, 4.2) — not peft's PrefixTuning.

One learnable token is prepended to the input of every decoder layer and its output trimmed:
L x d parameters (32 x 4096 = 131,072 on the 7B LLM). peft's PrefixTuning instead learns
separate key and value prefixes per layer, a different method.

Mechanism: the prompt starts with one placeholder token (`<unk>`, or its family's `prefix_placeholder`; after
BOS), which gives
the prefix its slot in the sequence, the attention mask, the positions and the KV cache. A
forward pre-hook on decoder layer i overwrites the hidden state at that slot with the learned
vector e_i, so every layer sees [e_i, h_1..h_T]; what the layer outputs at the slot is discarded
(overwritten by e_{i+1}, and its logit is never a target): the "trimmed" extra token. During
cached generation the slot's keys and values come from the cache, exactly as without a cache.
"""

from __future__ import annotations

import torch

from captionlab.models.prompting import language_model, unwrap
from captionlab.strategies.base import StrategyError, freeze
from captionlab.strategies.controller import ControllerStrategy

CONTROLLER = "captionlab_prefix_tuning"


class LayerPrefixes(torch.nn.Module):
    """The per-layer prefix vectors (L x d) and the hooks that put them in place."""

    def __init__(self, init: torch.Tensor, placeholder_id: int):
        super().__init__()
        self.prefix = torch.nn.Parameter(init.clone())
        self.placeholder_id = placeholder_id
        self.enabled = True
        self._mask: torch.Tensor | None = None
        self._handles: list = []

    def attach(self, model: torch.nn.Module) -> None:
        self._handles = [model.register_forward_pre_hook(self._find_slot, with_kwargs=True)]
        for index, layer in enumerate(language_model(model).layers):
            self._handles.append(layer.register_forward_pre_hook(self._make_layer_hook(index), with_kwargs=True))

    def _find_slot(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        self._mask = None
        if not self.enabled or input_ids is None or input_ids.shape[1] == 1:
            # one token per row: a cached decoding step, whose slot is in the cache already; a generated <unk> there
            # is a token like any other (taking it for the slot replaced its hidden state with the prefix)
            return None
        is_slot = input_ids == self.placeholder_id
        attended = kwargs.get("attention_mask")
        if attended is not None:
            if attended.dim() == 2:
                # generate()'s decoding steps pass one new token per row with the mask of the whole sequence:
                # the mask's last columns are the ones that belong to these input ids
                attended = attended[:, -input_ids.shape[1]:]
            is_slot &= attended.bool()
        first = is_slot & (is_slot.long().cumsum(dim=1) == 1)  # the first placeholder of each row
        if first.any():
            if not first.any(dim=1).all():
                raise StrategyError("prefix tuning: some rows of the batch lack the prefix slot")
            self._mask = first
        return None

    def _make_layer_hook(self, index: int):
        def hook(module, args, kwargs):
            mask = self._mask
            hidden = args[0] if args else kwargs["hidden_states"]
            if mask is None or mask.shape != hidden.shape[:2]:
                return None
            replaced = torch.where(mask.unsqueeze(-1), self.prefix[index].to(hidden.dtype), hidden)
            if args:
                return (replaced, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": replaced}

        return hook


class PrefixTuning(ControllerStrategy):
    name = "prefix_tuning"
    controller_name = CONTROLLER
    tensor_name = "prefix"
    label = "Prefix tuning"
    prefix_slots = 1

    def apply(self, model, spec, tokenizer=None):
        base = unwrap(model)
        freeze(model)
        layers, hidden = spec.text_num_layers, spec.text_hidden_size
        device = base.get_input_embeddings().weight.device
        init = torch.empty(layers, hidden, device=device)
        if device.type != "meta":
            # No meaningful initialisation exists (paper, Sec. 3.2): small Gaussian, the LLM's init scale.
            generator = torch.Generator(device="cpu").manual_seed(0)
            std = float(spec.text_config.get("initializer_range", 0.02))
            init = (torch.randn(layers, hidden, generator=generator) * std).to(device)
        slot_token = None if tokenizer is None else spec.family.prefix_placeholder(tokenizer)
        placeholder = 0 if tokenizer is None else tokenizer.convert_tokens_to_ids(slot_token)
        controller = LayerPrefixes(init, placeholder)
        base.add_module(CONTROLLER, controller)
        controller.attach(base)
        return model
