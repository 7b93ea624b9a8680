"""LoRA and DoRA through peft (paper Sec. 3.2, 4.2), and QLoRA as an extra where CUDA is present.

r=128, alpha=256 on every fully connected layer of the LLM (q, k, v, o, gate, up, down); the
vision tower and the projector are untouched: 319,815,680 trainable parameters on LLaVA-1.5-7B,
321,175,552 with DoRA's magnitudes, Table 4's 319.8M / 321.2M. That is a choice: the method text
(Sec. 3.2) says "all fully connected layers of the MLLMs", which the printed counts do not match.
`targets="all_linear"` (a recipe's `lora_targets: all_linear`) is that literal reading: every
linear layer of the model, the vision tower's, the projector's and lm_head included. DoRA is
LoRA with `use_dora=True`, as in peft. Artifacts are standard peft adapter folders
(adapter_config.json + adapter_model.safetensors) that plain peft can load, plus captionlab's
strategy.json. DoRA layers compute their row norms the short way
(`dora_fast.py`: peft's outputs and gradients without materialising B·A and W + s·B·A every forward).
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from captionlab.models.families.llava import LlavaFamily
from captionlab.models.prompting import unwrap
from captionlab.strategies.base import Strategy, StrategyError, freeze

# bitsandbytes (imported by peft) warns at import on CPU-only machines about optional kernels.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

# Which layers: the model family's (`ModelFamily.lora_target_modules`): LLaVA's are every linear layer of the LLM
# (q,k,v,o,gate,up,down), and only the LLM's: the CLIP vision tower also has q/k/v projections, which stay frozen.
LLM_LINEAR_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TARGET_MODULES = LlavaFamily.lora_target_modules
# Which layers LoRA/DoRA adapt: "llm" (the default, the count Table 4 prints) or "all_linear" (the method text's
# "all fully connected layers of the MLLMs").
LORA_TARGETS: dict[str, str] = {
    "llm": "the LLM's seven projections (q, k, v, o, gate, up, down), as Table 4's 319.8M / 321.2M count",
    "all_linear": "every linear layer: the LLM's, the vision tower's, the projector's and lm_head",
}
DEFAULT_TARGETS = "llm"


def target_modules(model: torch.nn.Module, targets: str, family_targets: str = TARGET_MODULES) -> str | list[str]:
    """peft's `target_modules` for `targets` (see LORA_TARGETS) on `model`; the default is the model family's
    (`family_targets`, its `lora_target_modules`)."""
    if targets not in LORA_TARGETS:
        raise StrategyError(f"unknown lora_targets {targets!r}; choose one of {', '.join(LORA_TARGETS)}")
    if targets == DEFAULT_TARGETS:
        return family_targets
    from peft.tuners.lora import LoraLayer

    # every linear layer by its full name (peft's own "all-linear" leaves the output layer, lm_head, out); on a base
    # that already holds another adapter, its LoRA layers count once, not their inner base_layer / lora_A / lora_B
    names: list[str] = []
    adapted: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in adapted):
            continue
        if isinstance(module, LoraLayer):
            adapted.append(name)
            names.append(name)
        elif isinstance(module, torch.nn.Linear):
            names.append(name)
    return names


@contextmanager
def quiet_checkpointing_alias():
    """peft (0.21) wraps a model after reading its `is_gradient_checkpointing`, an alias transformers 5 deprecated
    with a FutureWarning, so every LoRA/DoRA run and evaluation log opened with it; silence that one warning
    around peft's wrapping only (peft reads the flag; nothing of ours does)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.* is deprecated",
                                category=FutureWarning)
        yield


def lora_config(rank: int, alpha: int, use_dora: bool, init: str | bool = True,
                modules: str | list[str] = TARGET_MODULES):
    """`init`: how A starts (B starts at zero either way): "gaussian" as the paper (and LoRA) describe it, the
    registry's setting for the 7B models; True is peft's default, Kaiming-uniform, which the embedded study used.
    `modules`: peft's target_modules (`target_modules()` gives them for a LORA_TARGETS choice)."""
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, target_modules=modules, lora_dropout=0.0, bias="none",
                      use_dora=use_dora, init_lora_weights=init)


class LoRA(Strategy):
    name = "lora"
    label = "LoRA"
    use_dora = False
    takes_lora_settings = True

    def __init__(self, rank: int | None = None, alpha: int | None = None, targets: str | None = None):
        self.rank, self.alpha, self.targets = rank, alpha, targets or DEFAULT_TARGETS

    @property
    def adapter_name(self) -> str:
        # peft warns when an adapter name is contained in its parameter prefix "lora_"
        return f"captionlab_{self.name}"

    def _settings(self, spec) -> tuple[int, int]:
        return int(self.rank or spec.lora["r"]), int(self.alpha or spec.lora["alpha"])

    def apply(self, model, spec, tokenizer=None):
        from peft import PeftModel, get_peft_model

        rank, alpha = self._settings(spec)
        freeze(model)
        config = lora_config(rank, alpha, self.use_dora, spec.lora.get("init", True),
                             target_modules(unwrap_peft(model), self.targets, spec.family.lora_target_modules))
        if isinstance(model, PeftModel):  # a shared base that already holds other adapters
            model.add_adapter(self.adapter_name, config)
            model.set_adapter(self.adapter_name)
            return self._fast(model)
        with quiet_checkpointing_alias():
            wrapped = get_peft_model(model, config, adapter_name=self.adapter_name)
        return self._fast(wrapped)

    def _fast(self, model):
        if self.use_dora:
            from captionlab.strategies.dora_fast import use_fast_dora

            use_fast_dora(model)
        return model

    def set_enabled(self, model, enabled):
        if enabled:
            model.set_adapter(self.adapter_name)
            model.base_model.enable_adapter_layers()

    def save(self, model, directory):
        directory = Path(directory)
        rank, alpha = model.peft_config[self.adapter_name].r, model.peft_config[self.adapter_name].lora_alpha
        model.save_pretrained(directory, selected_adapters=[self.adapter_name])
        # peft writes non-default adapters in a sub-folder named after them; keep the standard layout.
        nested = directory / self.adapter_name
        if nested.is_dir():
            for item in nested.iterdir():
                item.replace(directory / item.name)
            nested.rmdir()
        self.write_card(directory, rank=rank, alpha=alpha, use_dora=self.use_dora,
                        **({} if self.targets == DEFAULT_TARGETS else {"targets": self.targets}))

    def load(self, model, spec, directory, tokenizer=None):
        from peft import PeftModel

        card = self.check_card(directory)
        if not (Path(directory) / "adapter_model.safetensors").exists():
            raise StrategyError(f"{directory}: adapter_model.safetensors is missing")
        if isinstance(model, PeftModel):
            model.load_adapter(str(directory), adapter_name=self.adapter_name)
            model.set_adapter(self.adapter_name)
            return self._fast(model)
        freeze(model)
        with quiet_checkpointing_alias():
            loaded = PeftModel.from_pretrained(model, str(directory), adapter_name=self.adapter_name)
        if bool(card.get("use_dora")) != self.use_dora:
            raise StrategyError(f"{directory}: use_dora={card.get('use_dora')} does not match {self.name}")
        return self._fast(loaded)


def unwrap_peft(model: torch.nn.Module) -> torch.nn.Module:
    """The model under a peft wrapper (the base whose layers are named as in the HF model), else the model."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


class DoRA(LoRA):
    name = "dora"
    label = "DoRA"
    use_dora = True


class QLoRA(LoRA):
    """LoRA on a 4-bit (NF4) base model: load the model with `load_in_4bit=True` first."""

    name = "qlora"
    label = "QLoRA (4-bit)"
    needs_cuda = True
    loads_4bit_base = True

    def apply(self, model, spec, tokenizer=None):
        if not torch.cuda.is_available():
            raise StrategyError("QLoRA needs a CUDA GPU (bitsandbytes 4-bit); none is present on this machine")
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(unwrap(model), use_gradient_checkpointing=False)
        return super().apply(model, spec, tokenizer)
