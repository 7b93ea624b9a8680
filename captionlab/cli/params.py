"""`python -m captionlab params --model M`: trainable parameters per strategy, without any weights.

The model is built on the meta device from its shipped config, each strategy applied in turn
(`captionlab.strategies.counting`, which the Energy tab's service reads too).
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


def run(args: argparse.Namespace) -> int:
    import warnings

    from captionlab.cli import UserError
    from captionlab.models.registry import ModelNotFoundError
    from captionlab.strategies import StrategyError
    from captionlab.strategies.counting import count_label, count_trainable, uncounted

    warnings.filterwarnings("ignore")
    try:
        counts = count_trainable(args.model)
    except (ModelNotFoundError, StrategyError) as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print(json.dumps({"model": args.model, "trainable_parameters": counts, "not_counted": uncounted(counts),
                          "notes": list(NOTES)}, indent=2))
        return 0
    missing = uncounted(counts)
    total = counts.pop("total")
    print(f"{args.model}: {total:,} parameters in all")
    print(f"{'strategy':<22}{'trainable':>16}{'share':>10}")
    for name, n in counts.items():
        print(f"{count_label(name):<22}{n:>16,}{n / total:>10.4%}")
    for name, why in missing.items():
        print(f"{count_label(name):<22}{'not counted':>16}  ({why})")
    for note in NOTES:
        print(f"note: {note}")
    return 0
