"""`python -m captionlab weights ...`: which model weights this machine has, what training needs, and fetching them.

    weights status [MODEL] [--json] [--no-memory] [--momentum]
    weights fetch MODEL

`status` reads the Hugging Face cache offline (or the local folder of a model such as `embedded`) for each
registry model, or the one named: cached or not, complete or which files are missing, size on disk. Under it,
an ESTIMATE of each strategy's training memory from the model's config (parameters x bytes, plus gradients and
optimizer state for the trainable part; activations not included: captionlab/strategies/memory.py).
`fetch` downloads a registry model with huggingface_hub.snapshot_download; offline it says what to do instead.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from captionlab.cli import UserError

ESTIMATE_NOTE = ("an estimate from the config: bf16 frozen weights, float32 trainable weights and gradients "
                 "(and momentum with --momentum), unsharded on one GPU; activations, batch and sequence length "
                 "not included")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("weights", help="model weights: what is cached, what training needs, fetch",
                                   description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="weights_command", required=True)
    status = commands.add_parser("status", help="cached weights and estimated training memory per strategy")
    status.add_argument("model", nargs="?", help="a registry model (default: all of them)")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.add_argument("--no-memory", action="store_true", help="skip the memory estimate (builds each model "
                                                                  "on the meta device: a minute for a 7B model)")
    status.add_argument("--momentum", action="store_true", help="estimate with an SGD momentum buffer")
    status.set_defaults(func=run_status)
    fetch = commands.add_parser("fetch", help="download a registry model's weights into the Hugging Face cache")
    fetch.add_argument("model", help="a registry model")
    fetch.set_defaults(func=run_fetch)


def _specs(model: str | None) -> list:
    from captionlab.models.registry import ModelNotFoundError, get_model_spec, list_models

    names = list_models() if model is None else [model]
    if model is not None and model not in list_models():
        raise UserError(f"unknown registry model {model!r}; registry models: {', '.join(list_models())}")
    specs = []
    for name in names:
        try:
            specs.append(get_model_spec(name))
        except ModelNotFoundError as exc:
            if model is not None:
                raise UserError(str(exc)) from None
            print(f"{name}: {exc}")
    return specs


def run_status(args: argparse.Namespace) -> int:
    from captionlab.models.weights_cache import cache_status
    from captionlab.strategies import counting
    from captionlab.strategies.memory import estimate_per_strategy

    report = []
    for spec in _specs(args.model):
        status = cache_status(spec)
        memory = {} if args.no_memory else estimate_per_strategy(counting.count_trainable(spec.name),
                                                                 momentum=args.momentum)
        report.append({**asdict(status), "estimated_training_bytes": memory})
    if args.json:
        print(json.dumps({"models": report, "memory_note": ESTIMATE_NOTE}, indent=2))
        return 0
    for entry in report:
        state = ("complete" if entry["complete"] else "incomplete, missing " + ", ".join(entry["missing"])
                 ) if entry["present"] else "not on this machine"
        size = f", {entry['size_bytes'] / 1e9:.2f} GB" if entry["present"] else ""
        print(f"{entry['name']} ({entry['source']}): {state}{size}")
        for key, count in entry["estimated_training_bytes"].items():
            print(f"  {_label(key):<22}~{_bytes(count):>12}")
    if not args.no_memory:
        print(f"note: memory is {ESTIMATE_NOTE}")
    return 0


def _bytes(count: int) -> str:
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.2f} MiB"


def _label(key: str) -> str:
    from captionlab.strategies.counting import count_label

    return count_label(key)


def run_fetch(args: argparse.Namespace) -> int:
    from captionlab.models.weights_cache import OfflineError, fetch_weights

    (spec,) = _specs(args.model)
    try:
        folder = fetch_weights(spec)
    except OfflineError as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:  # no route, DNS, a refused connection: huggingface_hub's errors are OSErrors
        raise UserError(f"could not fetch {spec.hf_id}: {exc}") from None
    print(f"{spec.name}: weights in {folder}")
    return 0
