"""An estimate of each strategy's training memory on the GPU, from parameter counts alone (no weights, no GPU).

    estimate_training_bytes(counts, strategies)   # counts: captionlab.strategies.counting.count_trainable(...)

How captionlab trains (captionlab/training/master_weights.py): the frozen weights are loaded in bf16 (2 bytes
each); the trainable ones are kept as float32 masters (4 bytes) with a float32 gradient (4 bytes) and, where the
recipe sets SGD momentum, a float32 momentum buffer (4 bytes; the paper's plain SGD keeps none). A strategy
that trains the model's own weights (full fine-tuning) turns part of the bf16 weights into masters; the others
add their trainable parameters (adapters, prompts) beside the frozen model. Activations, the CUDA context and
the allocator's slack are not counted: it is an estimate of the floor, which batch size and sequence length
raise (see bench/ for measured numbers).
"""

from __future__ import annotations

FROZEN_BYTES = 2  # bf16
MASTER_BYTES = 4  # float32 trainable weight
GRADIENT_BYTES = 4
MOMENTUM_BYTES = 4


def estimate_training_bytes(total_parameters: int, trainable: int, *, trains_own_weights: bool,
                            momentum: bool = False) -> int:
    """Bytes of weights, gradients and optimizer state while training (activations not included)."""
    frozen = total_parameters - trainable if trains_own_weights else total_parameters
    per_trainable = MASTER_BYTES + GRADIENT_BYTES + (MOMENTUM_BYTES if momentum else 0)
    return frozen * FROZEN_BYTES + trainable * per_trainable


def estimate_per_strategy(counts: dict[str, int], momentum: bool = False) -> dict[str, int]:
    """Each counted strategy's estimate; `counts` as `count_trainable` returns it ("total" and one key each)."""
    from captionlab.strategies import STRATEGIES

    total = counts["total"]
    estimates = {}
    for key, trainable in counts.items():
        if key == "total":
            continue
        strategy = STRATEGIES.get(key.partition(":")[0])
        own = bool(strategy is not None and strategy.own_weights)
        estimates[key] = estimate_training_bytes(total, trainable, trains_own_weights=own, momentum=momentum)
    return estimates
