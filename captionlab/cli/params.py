"""`python -m captionlab params --model M`: trainable parameters per strategy, without any weights.

The model is built on the meta device from its shipped config, each strategy applied in turn
(`captionlab.strategies.counting`, which the Energy tab's service reads too).
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
    "full fine-tuning trains the LLM and the projector; the vision tower stays frozen",
)


def run(args: argparse.Namespace) -> int:
    import warnings

    from captionlab.cli import UserError
    from captionlab.models.registry import ModelNotFoundError
    from captionlab.strategies import STRATEGIES, StrategyError
    from captionlab.strategies.counting import count_trainable

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
    print(f"{'strategy':<18}{'trainable':>16}{'share':>10}")
    for name, n in counts.items():
        print(f"{STRATEGIES[name].label:<18}{n:>16,}{n / total:>10.4%}")
    for note in NOTES:
        print(f"note: {note}")
    return 0
