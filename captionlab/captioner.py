"""The one Captioner face: `caption(images) -> list[str]`, batched, for every model and strategy.

`LlavaCaptioner` captions with a LLaVA model plus a strategy, greedily, with `GreedyDecoder`
(`captionlab/models/decoding.py`: the tokens of `generate(do_sample=False)`, from a preallocated KV cache
and, on CUDA, a decoding step replayed as a CUDA graph). `load_captioners` loads one frozen base model and puts every adapter strategy on top
of it (switchable), instead of one full copy per strategy; full fine-tuning, whose weights differ
everywhere, is the one separate copy. The CLIP-Captioner implements the same protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image

from captionlab.caption_length import DEFAULT_MAX_NEW_TOKENS
from captionlab.load_failures import describe_load_failure
from captionlab.models.decoding import GreedyDecoder
from captionlab.models.loading import LoadedModel, load_model
from captionlab.models.prompting import build_prompt
from captionlab.models.registry import ZERO_SHOT_PROMPT, ModelSpec
from captionlab.strategies import PAPER_STRATEGIES, Strategy, get_strategy


class Captioner(Protocol):
    name: str  # what the strategy / model is called in tables ("LoRA", "CLIP-Captioner")
    key: str  # its registry key ("lora", "clip_captioner")

    def caption(self, images: Sequence[Image.Image]) -> list[str]: ...

    # optional: `last_cut`, a list of bools per caption of the last call (True: cut at the token limit, unfinished)


@dataclass(frozen=True)
class GenerationSettings:
    """How captions are generated: the paper's zero-shot prompt and greedy decoding by default."""

    prompt: str = ZERO_SHOT_PROMPT
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    batch_size: int = 16
    # prefill through torch.compile'd layers (`models/compiled_layers.py`): None = on CUDA. 1.23x the captions per
    # second on LLaVA-1.5-7B / 1.6-7B (H200, bench/RESULTS.md) for ~10 s of compiling once per process and shape;
    # the Compare tab, which captions one image at a time for a person waiting, turns it off
    compile_prefill: bool | None = None


def default_batch_size(device: str | None = None) -> int:
    """Images per generate() batch: large on a GPU (plain generate at batch 64 ran 1.5x faster than at 32 on
    an H200, shared/reference/baseline_h200.md), small on the CPU where batching buys little."""
    on_gpu = torch.cuda.is_available() if device is None else str(device).startswith("cuda")
    return 64 if on_gpu else 16


class SharedBase:
    """One frozen base model with several strategies attached; `activate(key)` picks which one acts."""

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.model = loaded.model
        self.strategies: dict[str, Strategy] = {}

    def attach(self, strategy: Strategy, artifact: Path | None) -> None:
        if artifact is None:
            self.model = strategy.apply(self.model, self.loaded.spec, self.loaded.tokenizer)
        else:
            self.model = strategy.load(self.model, self.loaded.spec, Path(artifact), self.loaded.tokenizer)
        self.model.eval()
        self.strategies[strategy.name] = strategy

    def activate(self, key: str) -> None:
        for name, strategy in self.strategies.items():
            if name != key:
                strategy.set_enabled(self.model, False)
        if hasattr(self.model, "base_model") and hasattr(self.model.base_model, "disable_adapter_layers"):
            if key in self.strategies and hasattr(self.strategies[key], "adapter_name"):
                self.model.base_model.enable_adapter_layers()
            else:
                self.model.base_model.disable_adapter_layers()
        if key in self.strategies:
            self.strategies[key].set_enabled(self.model, True)


class LlavaCaptioner:
    """Captions images with a LLaVA model under one strategy (greedy, KV cache, batched)."""

    def __init__(self, base: SharedBase | LoadedModel, strategy: Strategy,
                 settings: GenerationSettings = GenerationSettings()):
        self.base = base if isinstance(base, SharedBase) else None
        self.loaded = base.loaded if isinstance(base, SharedBase) else base
        self.strategy = strategy
        self.settings = settings
        self.key = strategy.name
        self.name = strategy.label
        self._decoder: GreedyDecoder | None = None
        self.last_cut: list[bool] = []  # per caption of the last caption() call: cut at max_new_tokens

    @property
    def model(self) -> torch.nn.Module:
        return self.base.model if self.base is not None else self.loaded.model

    @property
    def decoder(self) -> GreedyDecoder:
        if self._decoder is None or self._decoder.model is not self.model:
            compile_prefill = self.settings.compile_prefill
            if compile_prefill is None:
                compile_prefill = self.loaded.device.type == "cuda"
            self._decoder = GreedyDecoder(self.model, compile_prefill=compile_prefill)
        return self._decoder

    def release(self) -> None:
        """Free the decoding buffers kept for the last batch shape (the KV cache: large on a 7B model)."""
        if self._decoder is not None:
            self._decoder.release()

    @torch.inference_mode()
    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        if self.base is not None:
            self.base.activate(self.key)
        processor = self.loaded.processor
        tokenizer = processor.tokenizer
        prompt = build_prompt(self.loaded.spec, self.settings.prompt, self.strategy.prefix_slots,
                              self.loaded.spec.family.prefix_placeholder(tokenizer))
        captions: list[str] = []
        self.last_cut = []
        for start in range(0, len(images), self.settings.batch_size):
            batch = [image.convert("RGB") for image in images[start:start + self.settings.batch_size]]
            inputs = processor(images=batch, text=[prompt] * len(batch), return_tensors="pt", padding=True)
            inputs = {k: v.to(self.loaded.device) for k, v in inputs.items()}
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(self.loaded.dtype)
            new_tokens = self.decoder(inputs, max_new_tokens=self.settings.max_new_tokens,
                                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            captions.extend(text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
            self.last_cut.extend(cut_short(new_tokens, self.settings.max_new_tokens, tokenizer.eos_token_id))
        return captions


def cut_short(new_tokens: torch.Tensor, max_new_tokens: int, eos_token_id: int | None) -> list[bool]:
    """Per row of `new_tokens` (the decoder's output): True where the caption used all `max_new_tokens` without an
    end token, so it was cut, not finished (a cap that cuts many captions changes BLEU's brevity penalty and CIDEr-D's
    length penalty: evaluations count them)."""
    if new_tokens.shape[1] < max_new_tokens or eos_token_id is None:
        return [False] * new_tokens.shape[0]
    return [bool(x) for x in (new_tokens != eos_token_id).all(dim=1).tolist()]


def load_captioners(spec: ModelSpec, artifacts: dict[str, Path | None], settings: GenerationSettings = GenerationSettings(),
                    device: str | None = None, failures: dict[str, str] | None = None) -> dict[str, LlavaCaptioner]:
    """Captioners for the given strategies (key -> artifact folder; None for zero-shot) on one shared base.

    failures: when given, a strategy that fails to load is left out and why is put there (key -> the file and
    the reason) instead of failing them all; the shared base is then rebuilt without it, since a half-attached
    strategy could change the others' captions."""
    base = SharedBase(load_model(spec, device=device))
    captioners: dict[str, LlavaCaptioner] = {}
    ordered = sorted(artifacts, key=lambda k: PAPER_STRATEGIES.index(k) if k in PAPER_STRATEGIES else 99)
    for key in ordered:
        strategy = get_strategy(key)
        try:
            if strategy.own_weights:  # full fine-tuning: its own copy of the weights, not an adapter on the base
                full = load_model(spec, device=device)
                full.model = strategy.load(full.model, spec, Path(artifacts[key]), full.tokenizer)
                captioners[key] = LlavaCaptioner(full, strategy, settings)
                continue
            if strategy.needs_artifact():  # zero-shot is the base as is
                base.attach(strategy, artifacts[key])
        except Exception as exc:
            if failures is None:
                raise
            failures[key] = describe_load_failure(artifacts[key], exc)
            if not strategy.own_weights:
                shared = {k: c for k, c in captioners.items() if c.base is not None}
                base = _rebuilt_base(spec, device, {k: artifacts[k] for k in shared})
                captioners.update({k: LlavaCaptioner(base, base.strategies.get(k, c.strategy), settings)
                                   for k, c in shared.items()})
            continue
        captioners[key] = LlavaCaptioner(base, strategy, settings)
    return captioners


def _rebuilt_base(spec: ModelSpec, device: str | None, attached: dict[str, Path | None]) -> SharedBase:
    base = SharedBase(load_model(spec, device=device))
    for key, artifact in attached.items():
        strategy = get_strategy(key)
        if strategy.needs_artifact():  # zero-shot is the base as is
            base.attach(strategy, artifact)
    return base
