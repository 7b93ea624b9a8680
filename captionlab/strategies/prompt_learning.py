"""Prompt learning (paper Sec. 3.2, 4.2): the system-prompt and user-prompt token embeddings are trainable.

They are initialised from the real tokens of the zero-shot prompt ("Briefly caption the image"
inside the model's chat template with its system prompt): 48 tokens x 4096 = 196,608 parameters
on LLaVA-1.5-7B. Image tokens and everything else stay frozen.

Mechanism: a controller module registered on the model. A forward pre-hook on the LLaVA model
finds, in each row, the first P attended tokens that are neither BOS nor image tokens (the
prompt: the caption always follows it); a forward hook on the token embedding replaces their
embeddings with the learned ones. Generation steps that feed only new tokens (KV cache) contain
no prompt and pass untouched, so `generate()` with a cache is exact.
"""

from __future__ import annotations

import torch

from captionlab.models.prompting import build_prompt, unwrap
from captionlab.models.registry import ModelSpec
from captionlab.strategies.base import StrategyError, freeze
from captionlab.strategies.controller import ControllerStrategy

CONTROLLER = "captionlab_prompt_learning"


class PromptEmbeddings(torch.nn.Module):
    """The learned prompt (P x d) and the hooks that put it in place of the prompt's embeddings."""

    def __init__(self, init: torch.Tensor, image_token_id: int, bos_token_id: int | None,
                 token_ids: list[int] | None = None, marker_token_ids: tuple[int, ...] = ()):
        super().__init__()
        self.prompt = torch.nn.Parameter(init.clone())
        # the ids of the prompt tokens it stands for (None: unknown, a shape-only build): inputs must carry them
        self.register_buffer("token_ids", None if token_ids is None else torch.tensor(token_ids), persistent=False)
        self.image_token_id = image_token_id
        # tokens the processor puts around an image (SmolVLM's <fake_token_around_image>, ...): not the prompt
        self.register_buffer("marker_token_ids", torch.tensor(marker_token_ids, dtype=torch.long), persistent=False)
        self.bos_token_id = -1 if bos_token_id is None else bos_token_id
        self.enabled = True
        self._mask: torch.Tensor | None = None
        self._handles: list = []

    def attach(self, model: torch.nn.Module) -> None:
        self._handles = [
            model.register_forward_pre_hook(self._find_prompt, with_kwargs=True),
            model.get_input_embeddings().register_forward_hook(self._replace_embeddings),
        ]

    def _find_prompt(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        self._mask = None
        if not self.enabled or input_ids is None or not (input_ids == self.image_token_id).any():
            return None
        attended = kwargs.get("attention_mask")
        attended = torch.ones_like(input_ids, dtype=torch.bool) if attended is None else attended.bool()
        candidates = attended & (input_ids != self.image_token_id) & (input_ids != self.bos_token_id)
        candidates &= ~torch.isin(input_ids, self.marker_token_ids.to(input_ids.device))
        order = candidates.long().cumsum(dim=1)
        mask = candidates & (order <= self.prompt.shape[0])
        counts = mask.sum(dim=1)
        if (counts != self.prompt.shape[0]).any():
            raise StrategyError(
                f"prompt learning expects {self.prompt.shape[0]} prompt tokens per row, found {counts.tolist()}"
            )
        if self.token_ids is not None:
            found = input_ids[mask].view(input_ids.shape[0], -1)
            if not torch.equal(found, self.token_ids.to(found.device).expand_as(found)):
                raise StrategyError("prompt learning learned the embeddings of the prompt it was trained with (the "
                                    "paper's, in the model's template); these inputs carry another prompt, whose "
                                    "tokens it would overwrite: caption with the default prompt")
        self._mask = mask
        return None

    def _replace_embeddings(self, module, args, output):
        mask = self._mask
        if mask is None or mask.shape != output.shape[:2]:
            return output
        self._mask = None
        output = output.clone()
        output[mask] = self.prompt.to(output.dtype).repeat(output.shape[0], 1)
        return output


def prompt_token_ids(spec: ModelSpec, tokenizer) -> list[int]:
    """Ids of the prompt tokens the strategy learns: the template's tokens minus BOS, the image token and the tokens
    the processor wraps an image in (Qwen2.5-VL's <|vision_start|> / <|vision_end|>)."""
    ids = tokenizer(build_prompt(spec), add_special_tokens=True)["input_ids"]
    image_id = tokenizer.convert_tokens_to_ids(spec.family.image_token)
    not_prompt = {tokenizer.bos_token_id, image_id, *spec.family.image_marker_ids(tokenizer)}
    return [i for i in ids if i not in not_prompt]


class PromptLearning(ControllerStrategy):
    name = "prompt_learning"
    controller_name = CONTROLLER
    tensor_name = "prompt"
    label = "Prompt learning"

    def apply(self, model, spec, tokenizer=None):
        base = unwrap(model)
        freeze(model)
        embedding = base.get_input_embeddings()
        if tokenizer is not None:
            ids = prompt_token_ids(spec, tokenizer)
            if spec.prompt_token_count is not None and spec.prompt_token_count != len(ids):
                raise StrategyError(
                    f"{spec.name}: the tokenizer gives {len(ids)} prompt tokens, the registry says {spec.prompt_token_count}"
                )
            init = embedding.weight.detach()[torch.tensor(ids, device=embedding.weight.device)]
            bos = tokenizer.bos_token_id
        elif spec.prompt_token_count is not None:  # shape only (parameter counts on the meta device)
            init = torch.empty(spec.prompt_token_count, embedding.weight.shape[1], device=embedding.weight.device)
            bos, ids = None, None
        else:
            raise StrategyError(f"{spec.name}: prompt learning needs the tokenizer to know the prompt tokens")
        family = spec.family
        markers = family.image_marker_ids(tokenizer) if tokenizer is not None else ()
        controller = PromptEmbeddings(init.float(), family.image_token_id(base.config), bos, token_ids=ids,
                                      marker_token_ids=markers)
        base.add_module(CONTROLLER, controller)
        controller.attach(base)
        return model
