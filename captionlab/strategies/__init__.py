"""The registry of personalization strategies: adding one is one module and one line below.

Zero-shot and full fine-tuning are strategies too, so the trainer, the evaluator and the app
never branch on a strategy's name.
"""

from __future__ import annotations

from captionlab.strategies.base import Strategy, StrategyError
from captionlab.strategies.full import FullFineTuning
from captionlab.strategies.lora import DoRA, LoRA, QLoRA
from captionlab.strategies.prefix_tuning import PrefixTuning
from captionlab.strategies.prompt_learning import PromptLearning
from captionlab.strategies.zero_shot import ZeroShot

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (ZeroShot, PromptLearning, PrefixTuning, LoRA, DoRA, FullFineTuning, QLoRA)
}
# The paper's six, in its table order (QLoRA is an extra).
PAPER_STRATEGIES = ["zero_shot", "prompt_learning", "prefix_tuning", "lora", "dora", "full"]


def get_strategy(name: str, **settings) -> Strategy:
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise StrategyError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}") from None
    return cls(**settings)


__all__ = ["STRATEGIES", "PAPER_STRATEGIES", "Strategy", "StrategyError", "get_strategy"]
