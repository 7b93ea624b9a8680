"""`python -m captionlab params --model M`: trainable parameters per strategy, without any weights.

The model is built on the meta device from its shipped config, each strategy applied in turn.
"""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    parser = subparsers.add_parser("params", help="trainable parameters per strategy (no weights needed)")
    parser.add_argument("--model", default="llava-1.5-7b", help="registry name, local folder or cached HF id")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def count_trainable(model_name: str) -> dict[str, int]:
    """Trainable parameters of each paper strategy (and the model's total) on the meta device."""
    from captionlab.models.loading import build_random_model
    from captionlab.models.registry import get_model_spec
    from captionlab.strategies import PAPER_STRATEGIES, get_strategy

    spec = get_model_spec(model_name)
    counts: dict[str, int] = {"total": sum(p.numel() for p in build_random_model(spec, "meta").parameters())}
    for name in PAPER_STRATEGIES:
        strategy = get_strategy(name)
        model = strategy.apply(build_random_model(spec, "meta"), spec)
        counts[name] = sum(p.numel() for _, p in strategy.trainable_parameters(model))
    return counts


def run(args: argparse.Namespace) -> int:
    import warnings

    from captionlab.cli import UserError
    from captionlab.models.registry import ModelNotFoundError
    from captionlab.strategies import STRATEGIES

    warnings.filterwarnings("ignore")
    try:
        counts = count_trainable(args.model)
    except ModelNotFoundError as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print(json.dumps({"model": args.model, "trainable_parameters": counts}, indent=2))
        return 0
    total = counts.pop("total")
    print(f"{args.model}: {total:,} parameters in all")
    print(f"{'strategy':<18}{'trainable':>16}{'share':>10}")
    for name, n in counts.items():
        print(f"{STRATEGIES[name].label:<18}{n:>16,}{n / total:>10.4%}")
    return 0
