"""`python -m captionlab params --model M`: trainable parameters per strategy, without any weights.

The model is built on the meta device from its shipped config, each strategy applied in turn.
Prompt learning's count is its prompt's length in tokens: from the registry (the 7B models), else
from the tokenizer beside the weights (the embedded model), as the trainer gets it. LoRA and DoRA
are counted twice: on the LLM's seven projections (what captionlab trains, Table 4's count) and
with `lora_targets: all_linear` (the method text's "all fully connected layers": keys
`lora:all_linear`, `dora:all_linear`).
"""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    parser = subparsers.add_parser("params", help="trainable parameters per strategy (no weights needed)")
    parser.add_argument("--model", default="llava-1.5-7b", help="registry name, local folder or cached HF id")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


# What the counts mean, printed under the table: the paper's Table 4 prints 19.7k and 13.1k for
# prompt learning and prefix tuning, 10x below what its own method text gives (reference_data.py).
NOTES = (
    "prompt learning and prefix tuning follow the paper's method text; its Table 4 prints 10x less (19.7k, 13.1k)",
    "LoRA / DoRA: r and alpha on the LLM's seven projections (q, k, v, o, gate, up, down), the layers whose count "
    "Table 4 prints (319.8M / 321.2M on LLaVA-1.5-7B); the method text says \"all fully connected layers of the "
    "MLLMs\", which is the all_linear rows (vision tower, projector and lm_head too; recipe option "
    "`lora_targets: all_linear`)",
    "full fine-tuning trains the LLM and the projector; the vision tower stays frozen",
)
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
        strategy = get_strategy(name)
        model = strategy.apply(build_random_model(spec, "meta"), spec, tokenizer)
        counts[name] = sum(p.numel() for _, p in strategy.trainable_parameters(model))
    for name in ALL_LINEAR_STRATEGIES:
        strategy = get_strategy(name, targets=ALL_LINEAR)
        model = strategy.apply(build_random_model(spec, "meta"), spec, tokenizer)
        counts[f"{name}:{ALL_LINEAR}"] = sum(p.numel() for _, p in strategy.trainable_parameters(model))
    return counts


def count_label(key: str) -> str:
    """A count's row label: the strategy's, with `(all linear)` for the all_linear counts."""
    from captionlab.strategies import STRATEGIES

    name, _, targets = key.partition(":")
    label = STRATEGIES[name].label if name in STRATEGIES else name
    return f"{label} (all linear)" if targets == ALL_LINEAR else label


def run(args: argparse.Namespace) -> int:
    import warnings

    from captionlab.cli import UserError
    from captionlab.models.registry import ModelNotFoundError
    from captionlab.strategies import StrategyError

    warnings.filterwarnings("ignore")
    try:
        counts = count_trainable(args.model)
    except (ModelNotFoundError, StrategyError) as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print(json.dumps({"model": args.model, "trainable_parameters": counts, "notes": list(NOTES)}, indent=2))
        return 0
    total = counts.pop("total")
    print(f"{args.model}: {total:,} parameters in all")
    print(f"{'strategy':<22}{'trainable':>16}{'share':>10}")
    for name, n in counts.items():
        print(f"{count_label(name):<22}{n:>16,}{n / total:>10.4%}")
    for note in NOTES:
        print(f"note: {note}")
    return 0
