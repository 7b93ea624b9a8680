"""The names every layer shares: strategy keys, labels and orders, the benchmarks, the metric names.

This is the bottom layer: it imports nothing (no torch, nothing of captionlab), so the UI, the
service, the report, the zoo, evaluation and the bench all read their lists here instead of typing
their own. The strategy registry (`captionlab.strategies`) holds the classes; it imports torch, so
the UI cannot ask it. Registering a strategy there (`register_strategy`) records its key and label
here too, and the UI's lists (`trainable_strategies`, `strategy_label`) read what was recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

ZERO_SHOT = "zero_shot"
CLIP_CAPTIONER = "clip_captioner"
EMBEDDED_MODEL = "embedded"  # the embedded study's model, as evaluations and results name it
ARTIFACT_CARD = "strategy.json"  # every strategy artifact's card: {"strategy": key, ...}

# The paper's six LLaVA strategies, in its table order (QLoRA is an extra; the CLIP-Captioner is the baseline).
PAPER_STRATEGIES = ["zero_shot", "prompt_learning", "prefix_tuning", "lora", "dora", "full"]
TRAINABLE_STRATEGIES = ["prompt_learning", "prefix_tuning", "lora", "dora", "full"]  # the paper's trained five
COMPARE_ORDER = PAPER_STRATEGIES + [CLIP_CAPTIONER]  # the Compare tab's and the benchmarks' columns
STUDY_ORDER = [CLIP_CAPTIONER, *PAPER_STRATEGIES]  # the embedded study's table rows (the paper's, baseline first)

STRATEGY_LABELS = {
    "zero_shot": "Zero-shot",
    "prompt_learning": "Prompt learning",
    "prefix_tuning": "Prefix tuning",
    "lora": "LoRA",
    "dora": "DoRA",
    "full": "Full fine-tuning",
    "qlora": "QLoRA (4-bit)",
    CLIP_CAPTIONER: "CLIP-Captioner",
    "none": "CLIP-Captioner",  # the paper's CSV files the baseline under strategy "none"
}

# The benchmarks, in the paper's order; COCO is in-domain (every model is trained on it).
DATASETS = ["coco", "nocaps", "cc3m", "vizwiz", "textcaps"]
DATASET_LABELS = {"coco": "COCO", "nocaps": "nocaps", "cc3m": "CC3M", "vizwiz": "VizWiz", "textcaps": "TextCaps"}
IN_DOMAIN = "coco"
OUT_OF_DOMAIN = ["nocaps", "cc3m", "vizwiz", "textcaps"]
FIG2_DATASETS = ["nocaps", "vizwiz", "textcaps"]  # the paper's Fig. 2
PAPER_TABLES = {
    "Table 1: in-domain (COCO)": ["coco"],
    "Table 2: out-of-domain (nocaps, CC3M)": ["nocaps", "cc3m"],
    "Table 3: out-of-domain (VizWiz, TextCaps)": ["vizwiz", "textcaps"],
}

# The metrics an evaluation reports, under the names the paper's tables and the results store use ...
REFERENCE_METRICS = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE")  # scored against references (pycocoevalcap)
REPORTED_METRICS = REFERENCE_METRICS + ("CLIP-Score",)
# ... and the columns the paper prints them under (x100 except CLIP-S).
METRIC_COLUMNS = [("B-4", "BLEU-4"), ("M", "METEOR"), ("R", "ROUGE-L"), ("C", "CIDEr"), ("S", "SPICE"),
                  ("CLIP-S", "CLIP-Score")]
# The Benchmarks tables add object hallucination (CHAIR, percent) to the paper's columns; lower is better there.
BENCHMARK_COLUMNS = METRIC_COLUMNS + [("CHAIR-i", "CHAIR-i"), ("CHAIR-s", "CHAIR-s")]
LOWER_IS_BETTER = ("CHAIR-i", "CHAIR-s")

@dataclass(frozen=True)
class StrategyTraits:
    """What torch-free code (the UI, the Compare tab's discovery) may ask of a strategy without importing the
    registry. The `Strategy` class is the source of truth; `captionlab.strategies.register_strategy` records
    these, and a test checks the shipped ones below agree with their classes."""

    label: str
    trains: bool = True  # it has trainable parameters, hence an artifact (zero-shot has neither)
    uses_llava_base: bool = True  # False: it brings its own model (the CLIP-Captioner), no LLaVA weights


STRATEGY_TRAITS: dict[str, StrategyTraits] = {
    "zero_shot": StrategyTraits("Zero-shot", trains=False),
    "prompt_learning": StrategyTraits("Prompt learning"),
    "prefix_tuning": StrategyTraits("Prefix tuning"),
    "lora": StrategyTraits("LoRA"),
    "dora": StrategyTraits("DoRA"),
    "full": StrategyTraits("Full fine-tuning"),
    "qlora": StrategyTraits("QLoRA (4-bit)"),
    CLIP_CAPTIONER: StrategyTraits("CLIP-Captioner", uses_llava_base=False),
}
_SHIPPED = frozenset(STRATEGY_TRAITS)
# Strategies registered beyond the shipped ones (`register_strategy` in captionlab.strategies), in order.
_REGISTERED_TRAINABLE: list[str] = []


def record_strategy(key: str, traits: StrategyTraits) -> None:
    """Record a registered strategy's traits, so the torch-free UI lists and asks it (the registry calls this)."""
    STRATEGY_TRAITS[key] = traits
    STRATEGY_LABELS.setdefault(key, traits.label)
    if traits.trains and key not in TRAINABLE_STRATEGIES and key not in _SHIPPED and key not in _REGISTERED_TRAINABLE:
        _REGISTERED_TRAINABLE.append(key)


def forget_strategy(key: str) -> None:
    """Undo `record_strategy` for a strategy that is not shipped (tests register toy ones)."""
    if key in _SHIPPED:
        return
    if key in _REGISTERED_TRAINABLE:
        _REGISTERED_TRAINABLE.remove(key)
    STRATEGY_TRAITS.pop(key, None)
    STRATEGY_LABELS.pop(key, None)


def strategy_traits(key: str) -> StrategyTraits:
    """The recorded traits of `key` (KeyError for a strategy never registered)."""
    return STRATEGY_TRAITS[key]


def trainable_strategies() -> list[str]:
    """What the Train tab offers: the paper's five, then any strategy registered since."""
    return TRAINABLE_STRATEGIES + _REGISTERED_TRAINABLE


def strategy_label(key: str) -> str:
    return STRATEGY_LABELS.get(key, key.replace("_", " "))
