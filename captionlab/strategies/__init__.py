"""The registry of personalization strategies: adding one is one module and one line below.

Zero-shot, full fine-tuning and the CLIP-Captioner baseline are strategies too, so the trainer, the
evaluator and the app ask a strategy's capabilities (`Strategy`'s class attributes) instead of
branching on its name. `register_strategy` adds one at run time (a plugin, a test's toy one) and
records its torch-free traits in `captionlab.names`, which is what the UI lists.
"""

from __future__ import annotations

from captionlab import names
from captionlab.strategies.base import Strategy, StrategyError
from captionlab.strategies.clip_captioner import ClipCaptionerStrategy
from captionlab.strategies.full import FullFineTuning
from captionlab.strategies.lora import DoRA, LoRA, QLoRA
from captionlab.strategies.prefix_tuning import PrefixTuning
from captionlab.strategies.prompt_learning import PromptLearning
from captionlab.strategies.zero_shot import ZeroShot

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (ZeroShot, PromptLearning, PrefixTuning, LoRA, DoRA, FullFineTuning, QLoRA, ClipCaptionerStrategy)
}
# The paper's six, in its table order (QLoRA is an extra, the CLIP-Captioner the baseline).
PAPER_STRATEGIES = names.PAPER_STRATEGIES


def traits_of(cls: type[Strategy]) -> names.StrategyTraits:
    """What the torch-free UI may ask of `cls` (see `captionlab.names.StrategyTraits`)."""
    return names.StrategyTraits(cls.label, trains=cls.trains, uses_llava_base=cls.uses_llava_base)


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Add `cls` to the registry (and its traits to the names the UI lists); returns it, so it decorates."""
    STRATEGIES[cls.name] = cls
    names.record_strategy(cls.name, traits_of(cls))
    return cls


def unregister_strategy(name: str) -> None:
    """Remove a strategy added with `register_strategy` (the shipped ones stay)."""
    names.forget_strategy(name)  # keeps the shipped ones' traits
    if name not in names.STRATEGY_TRAITS:
        STRATEGIES.pop(name, None)


def get_strategy(name: str, **settings) -> Strategy:
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise StrategyError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}") from None
    return cls(**settings)


def strategy_class(name: str) -> type[Strategy]:
    """The registered class of `name` (StrategyError naming the choices for an unknown one)."""
    if name not in STRATEGIES:
        raise StrategyError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


__all__ = ["STRATEGIES", "PAPER_STRATEGIES", "Strategy", "StrategyError", "get_strategy", "register_strategy",
           "strategy_class", "traits_of", "unregister_strategy"]
