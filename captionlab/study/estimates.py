"""What a study's dry run counts with when it cannot measure: the benchmarks' published split sizes, and GPU hours
estimated from throughputs measured elsewhere (each estimate says what it comes from).

Throughputs are those measured with plain transformers + peft on one H200 (reference/baseline_h200.md,
2026-11-27: LLaVA-1.5-7B shape, random weights, bf16, one sequence per caption, as the 7B recipes train) and,
for prefix tuning, bench/RESULTS.md (runs 1-2, same card: prefix tuning within 0.5% of prompt learning).
They are inputs to an estimate, not results: real captions, other batch sizes and I/O change them.
"""

from __future__ import annotations

from dataclasses import dataclass

# COCO Karpathy splits (dataset_coco.json): images and captions per split.
PUBLISHED_COCO_SPLITS = {"train": (82_783, 414_113), "restval": (30_504, 152_634), "val": (5_000, 25_010),
                         "test": (5_000, 25_010)}
# Images each benchmark's evaluated split holds as published (the study evaluates COCO's Karpathy test split and
# the validation sets of the other four).
PUBLISHED_EVAL_IMAGES = {"coco": 5_000, "nocaps": 4_500, "cc3m": 15_840, "vizwiz": 7_750, "textcaps": 3_166}
PUBLISHED_SOURCE = "published split sizes (Karpathy COCO; nocaps val, CC3M validation, VizWiz val, TextCaps val)"

MEASURED_SOURCE = "reference/baseline_h200.md (plain transformers+peft, one H200, 2026-11-27)"
# Training: (image, caption) sequences per second on one H200, per model and strategy.
TRAIN_RATES = {
    "llava-1.5-7b": {"prompt_learning": (23.9, MEASURED_SOURCE),
                     "prefix_tuning": (23.9, "prompt learning's rate (bench/RESULTS.md runs 1-2: the two within "
                                             "0.5% on an H200)"),
                     "lora": (11.7, MEASURED_SOURCE), "dora": (7.5, MEASURED_SOURCE),
                     "full": (17.8, MEASURED_SOURCE + "; SGD on bf16 weights: captionlab's float32 masters are "
                                                      "slower, so a lower bound")},
}
TRAIN_RATES_SCALED_FROM = {"llava-1.6-7b": ("llava-1.5-7b", "lora", 2.4)}  # LLaVA-1.6 LoRA measured: 2.4/s
# Captioning: images per second on one H200 (plain generate, batch 32, 20 new tokens).
CAPTION_RATES = {"llava-1.5-7b": 21.1, "llava-1.6-7b": 7.8}
VALIDATION_COST = 1 / 3  # a validation forward as a share of a training step's forward + backward (estimate)


@dataclass(frozen=True)
class Hardware:
    """A GPU kind, and how its time compares with the H200 the rates were measured on."""

    name: str
    slowdown: float  # hours on this card per hour on an H200
    basis: str


HARDWARE = {
    "h200": Hardware("NVIDIA H200", 1.0, "the card the rates were measured on"),
    "h100": Hardware("NVIDIA H100", 1.0, "assumed as fast as the H200 (same bf16 peak, 989 TFLOP/s dense); its "
                                         "lower memory bandwidth makes captioning somewhat slower than this says"),
    "a100": Hardware("NVIDIA A100", 989 / 312, "H200 time x 3.2, the ratio of their bf16 peaks (989 / 312 TFLOP/s)"),
}


@dataclass(frozen=True)
class Estimate:
    """GPU hours of one step (None when nothing measured applies), and what the number comes from."""

    gpu_hours: float | None
    basis: str


def training_rate(model: str, strategy: str) -> tuple[float, str] | None:
    """(sequences per second on one H200, where the number comes from), or None when nothing applies."""
    if strategy in TRAIN_RATES.get(model, {}):
        return TRAIN_RATES[model][strategy]
    if model in TRAIN_RATES_SCALED_FROM:
        reference, anchor, measured = TRAIN_RATES_SCALED_FROM[model]
        if strategy == anchor:
            return measured, MEASURED_SOURCE
        if strategy in TRAIN_RATES.get(reference, {}):
            ratio = TRAIN_RATES[reference][strategy][0] / TRAIN_RATES[reference][anchor][0]
            return (measured * ratio, f"{model}'s measured {anchor} rate ({measured}/s, {MEASURED_SOURCE}) x "
                                      f"{strategy}/{anchor} on {reference} ({ratio:.2f})")
    return None


def estimate_training(model: str, strategy: str, sequences: int | None, val_sequences: int | None, epochs: int,
                      hardware: Hardware) -> Estimate:
    """GPU hours of a training: its sequences at the measured rate, plus a validation pass before training and
    after each epoch (a forward only, counted at a third of a training step)."""
    rate = training_rate(model, strategy)
    if rate is None:
        return Estimate(None, f"not estimated: no throughput measured for {strategy} on {model}")
    if sequences is None:
        return Estimate(None, "not estimated: the number of training sequences is unknown")
    per_second, source = rate
    validation = (val_sequences or 0) * (epochs + 1) * VALIDATION_COST
    hours = (sequences * epochs + validation) / per_second / 3600 * hardware.slowdown
    return Estimate(hours, f"estimate: {per_second:.1f} sequences/s ({source}), {hardware.basis}")


def estimate_captioning(model: str, strategy_uses_llava: bool, images: int | None, hardware: Hardware) -> Estimate:
    """GPU hours of one evaluation cell's captioning (scoring runs on the CPU and is not counted)."""
    if not strategy_uses_llava:
        return Estimate(None, "not estimated: no captioning rate measured for the CLIP-Captioner")
    if model not in CAPTION_RATES:
        return Estimate(None, f"not estimated: no captioning rate measured for {model}")
    if images is None:
        return Estimate(None, "not estimated: the number of images is unknown")
    rate = CAPTION_RATES[model]
    return Estimate(images / rate / 3600 * hardware.slowdown,
                    f"estimate: {rate} images/s ({MEASURED_SOURCE}, plain generate, batch 32), {hardware.basis}")
