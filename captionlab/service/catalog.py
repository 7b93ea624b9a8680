"""Names and labels the UI shows before any model is loaded, without importing torch.

The strategy registry (`captionlab.strategies`) is the source of truth; it imports torch, so the
labels are mirrored here and `tests/test_app.py` checks that the two agree.
"""

from __future__ import annotations

PAPER_STRATEGIES = ["zero_shot", "prompt_learning", "prefix_tuning", "lora", "dora", "full"]
TRAINABLE_STRATEGIES = ["prompt_learning", "prefix_tuning", "lora", "dora", "full"]
CLIP_CAPTIONER = "clip_captioner"
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
COMPARE_ORDER = PAPER_STRATEGIES + [CLIP_CAPTIONER]

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
# Metric columns as the paper prints them (x100 except CLIP-S), with the results store's names.
METRICS = [("B-4", "BLEU-4"), ("M", "METEOR"), ("R", "ROUGE-L"), ("C", "CIDEr"), ("S", "SPICE"),
           ("CLIP-S", "CLIP-Score"), ("CHAIR-i", "CHAIR-i"), ("CHAIR-s", "CHAIR-s")]
# Object hallucination (captionlab.evaluation.chair, percent): the lower the better, unlike the paper's metrics.
LOWER_IS_BETTER = ("CHAIR-i", "CHAIR-s")


def strategy_label(key: str) -> str:
    return STRATEGY_LABELS.get(key, key.replace("_", " "))
