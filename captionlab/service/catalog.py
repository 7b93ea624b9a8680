"""Names and labels the UI shows before any model is loaded, without importing torch.

They live in `captionlab.names` (the one names module every layer reads); this module is the
service's face on them, so the UI keeps importing from `service/` only.
"""

from __future__ import annotations

from captionlab.names import (CLIP_CAPTIONER, COMPARE_ORDER, DATASET_LABELS, DATASETS, FIG2_DATASETS, IN_DOMAIN,
                              OUT_OF_DOMAIN, PAPER_STRATEGIES, PAPER_TABLES, STRATEGY_LABELS, TRAINABLE_STRATEGIES,
                              strategy_label, trainable_strategies)
from captionlab.names import BENCHMARK_COLUMNS as METRICS
from captionlab.names import LOWER_IS_BETTER

__all__ = ["CLIP_CAPTIONER", "COMPARE_ORDER", "DATASETS", "DATASET_LABELS", "FIG2_DATASETS", "IN_DOMAIN", "LOWER_IS_BETTER",
           "METRICS",
           "OUT_OF_DOMAIN", "PAPER_STRATEGIES", "PAPER_TABLES", "STRATEGY_LABELS", "TRAINABLE_STRATEGIES",
           "strategy_label", "trainable_strategies"]
