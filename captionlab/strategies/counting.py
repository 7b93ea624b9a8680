"""Trainable parameters per strategy, counted without any weights (the model built on the meta device).

    count_trainable("llava-1.5-7b")  # {"total": ..., "zero_shot": 0, "prompt_learning": 196608, ...}

Counting belongs to the strategies (each says what it trains); `python -m captionlab params` prints
these and the Energy tab's service reads them. Prompt learning's count is its prompt's length in
tokens: from the registry (the 7B models), else from the tokenizer beside the weights (the embedded
model), as the trainer gets it. LoRA and DoRA are counted twice: on the LLM's seven projections
(what captionlab trains, Table 4's count) and with `lora_targets: all_linear` (the method text's "all
fully connected layers": keys `lora:all_linear`, `dora:all_linear`).
"""

from __future__ import annotations

ALL_LINEAR = "all_linear"
ALL_LINEAR_STRATEGIES = ("lora", "dora")


def prompt_tokenizer(spec):
    """The tokenizer that tells prompt learning its prompt's length, or None where the registry knows it.

    Only the tokenizer files are read (never the weights); a model without them gives None, and
    prompt learning then says it needs one.
    """
    from captionlab.models.loading import weights_folder
    from captionlab.models.registry import ModelNotFoundError

    if spec.prompt_token_count is not None:
        return None
    try:
        folder = weights_folder(spec)
    except ModelNotFoundError:
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError):  # a weights folder without tokenizer files
        return None


def count_trainable(model_name: str) -> dict[str, int]:
    """Trainable parameters of each paper strategy (and the model's total) on the meta device."""
    from captionlab.models.loading import build_random_model
    from captionlab.models.registry import get_model_spec
    from captionlab.strategies import PAPER_STRATEGIES, get_strategy

    spec = get_model_spec(model_name)
    tokenizer = prompt_tokenizer(spec)
    counts: dict[str, int] = {"total": sum(p.numel() for p in build_random_model(spec, "meta").parameters())}
    for name in PAPER_STRATEGIES:
        if name == "prompt_learning" and tokenizer is None and spec.prompt_token_count is None:
            continue  # its length is the prompt's in tokens: without the tokenizer, not counted (`uncounted`)
        strategy = get_strategy(name)
        model = strategy.apply(build_random_model(spec, "meta"), spec, tokenizer)
        counts[name] = sum(p.numel() for _, p in strategy.trainable_parameters(model))
    for name in ALL_LINEAR_STRATEGIES:
        strategy = get_strategy(name, targets=ALL_LINEAR)
        model = strategy.apply(build_random_model(spec, "meta"), spec, tokenizer)
        counts[f"{name}:{ALL_LINEAR}"] = sum(p.numel() for _, p in strategy.trainable_parameters(model))
    return counts


def uncounted(counts: dict[str, int]) -> dict[str, str]:
    """The paper strategies `counts` lacks, with why (prompt learning on a model whose tokenizer is not here)."""
    from captionlab.strategies import PAPER_STRATEGIES

    why = ("its count is the prompt's length in tokens, which needs the model's tokenizer: put the weights in the "
           "Hugging Face cache (or a local folder) to count it")
    return {name: why for name in PAPER_STRATEGIES if name not in counts}


def count_label(key: str) -> str:
    """A count's row label: the strategy's, with `(all linear)` for the all_linear counts."""
    from captionlab.strategies import STRATEGIES

    name, _, targets = key.partition(":")
    label = STRATEGIES[name].label if name in STRATEGIES else name
    return f"{label} (all linear)" if targets == ALL_LINEAR else label
