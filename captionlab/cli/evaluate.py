"""`python -m captionlab evaluate ...`: caption a benchmark and score it, or a whole grid of them.

    evaluate --model M --strategy S [--checkpoint RUN_OR_FOLDER] --dataset NAME|FORMAT:PATH
             [--images DIR] [--config datasets.yaml] [--split S] [--limit N]
             [--batch-size B] [--max-new-tokens T] [--json]
    evaluate --grid --model M [--strategies s1,s2,...] [--datasets coco,nocaps,cc3m,vizwiz,textcaps]
             [--checkpoints DIR]

Single mode prints BLEU-4, METEOR, ROUGE-L, CIDEr and SPICE on the paper's x100 scale and
CLIP-Score as is; a metric without a number is shown with the reason. `--json` prints exactly
those six names under "metrics" (null where unavailable) and the reasons under "unavailable".
An interrupted evaluation started again resumes from its predictions.jsonl.

Grid mode evaluates each of --strategies (default: the paper's six; not the CLIP-Captioner or
qlora) on each of --datasets (default: the five), skipping (with the reason) strategies that
have no checkpoint: looked for in --checkpoints DIR (DIR/strategies/<key>/ or DIR/<key>/), the
embedded model's shipped checkpoints, then the workspace's newest finished run of that strategy.
It prints tables shaped like the paper's Tables 1-3.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from captionlab.caption_length import DEFAULT_MAX_NEW_TOKENS
from captionlab.cli import UserError

METRIC_COLUMNS = [("B-4", "BLEU-4"), ("M", "METEOR"), ("R", "ROUGE-L"), ("C", "CIDEr"), ("S", "SPICE"),
                  ("CLIP-S", "CLIP-Score")]
TABLES = [("Table 1: in-domain", ["coco"]), ("Table 2: out-of-domain", ["nocaps", "cc3m"]),
          ("Table 3: out-of-domain", ["vizwiz", "textcaps"])]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("evaluate", help="caption a benchmark and score it (or a grid of them)",
                                   description=__doc__.splitlines()[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--model", default="embedded",
                        help="registry name, local folder or cached Hugging Face id (default: embedded)")
    parser.add_argument("--strategy", help="zero_shot, prompt_learning, prefix_tuning, lora, dora, full, "
                                           "qlora or clip_captioner")
    parser.add_argument("--checkpoint", help="run folder, run id (or a unique prefix of one) or artifact folder of "
                                             "the strategy (the CLIP-Captioner's folder for clip_captioner)")
    parser.add_argument("--dataset", help="a name from the dataset config, or FORMAT:PATH")
    parser.add_argument("--images", type=Path, help="image folder (replaces the config's)")
    parser.add_argument("--config", type=Path, help="dataset config YAML (default: the embedded world's)")
    parser.add_argument("--split", help="split to evaluate (default: the config's, test for COCO Karpathy)")
    parser.add_argument("--limit", type=int, help="only the first N images")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per generate() batch (default: 64 on a GPU, 16 on the CPU)")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                        help=f"longest caption in tokens (default {DEFAULT_MAX_NEW_TOKENS}: LLaVA ends its captions "
                             "itself; the count of captions cut at the limit is reported)")
    parser.add_argument("--compile-prefill", choices=["auto", "on", "off"], default="auto",
                        help="prefill through torch.compile'd layers: ~1.2x faster captioning on a GPU for ~10 s of "
                             "compiling once (default auto: on CUDA only)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--out", type=Path, help="output folder (default: workspace/evaluations/...)")
    parser.add_argument("--skip-broken", "--skip-missing", dest="skip_broken", action="store_true",
                        help="leave out (and count) missing or broken image files instead of stopping")
    parser.add_argument("--no-record", action="store_true", help="do not add a row to the results database")
    parser.add_argument("--json", action="store_true", help="print JSON")
    grid = parser.add_argument_group("grid mode")
    grid.add_argument("--grid", action="store_true",
                      help="the paper's six strategies (or --strategies) on the five datasets (or --datasets)")
    grid.add_argument("--strategies", help="comma-separated strategies (default: the paper's six)")
    grid.add_argument("--datasets", help="comma-separated datasets (default: coco,nocaps,cc3m,vizwiz,textcaps)")
    grid.add_argument("--checkpoints", type=Path, help="folder with strategies/<key>/ (or <key>/) checkpoints")
    parser.set_defaults(func=run_evaluate)


def _settings(args: argparse.Namespace):
    from captionlab.captioner import GenerationSettings, default_batch_size

    if args.batch_size is None:
        args.batch_size = default_batch_size(args.device)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1, got {args.limit}")
    compile_prefill = {"auto": None, "on": True, "off": False}[getattr(args, "compile_prefill", "auto")]
    return GenerationSettings(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                              compile_prefill=compile_prefill)


def _user_errors():
    """The exceptions that are the user's input at fault: shown as one line, exit 2."""
    from captionlab.data.errors import DatasetError
    from captionlab.evaluation.evaluator import EvaluationError
    from captionlab.models.registry import ModelNotFoundError
    from captionlab.strategies import StrategyError

    return (EvaluationError, DatasetError, ModelNotFoundError, StrategyError)


def _progress(label: str):
    if not sys.stderr.isatty():
        return None

    def report(done: int, total: int) -> None:
        print(f"\r{label}: {done}/{total} images captioned", end="" if done < total else "\n",
              file=sys.stderr, flush=True)

    return report


def run_evaluate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    errors = _user_errors()
    try:
        if args.grid:
            return _run_grid(args, settings)
        if not args.strategy or not args.dataset:
            raise UserError("give --strategy and --dataset (or --grid for every strategy on every dataset)")
        from captionlab.evaluation.evaluator import evaluate

        result = evaluate(args.model, args.strategy, args.dataset, checkpoint=args.checkpoint, images=args.images,
                          config_path=args.config, split=args.split, limit=args.limit, out_dir=args.out,
                          settings=settings, record=not args.no_record, device=args.device,
                          skip_broken=args.skip_broken, progress=_progress(f"{args.strategy} on {args.dataset}"))
    except errors as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print(json.dumps(result.to_json(), indent=2, ensure_ascii=False))
    else:
        print(format_result(result))
    return 0


def _fmt(value: float | None, metric: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if metric in ("CLIP-Score", "RefCLIP-Score") else f"{value:.1f}"


def format_result(result) -> str:
    """A readable table: BLEU/METEOR/ROUGE/CIDEr/SPICE x100, CLIP-Score as is, reasons for the rest."""
    lines = [f"{result.model} / {result.strategy_label} on {result.dataset} ({result.split}): "
             f"{result.n_images} images" + (f", checkpoint {result.checkpoint}" if result.checkpoint else ""),
             f"{'metric':<14}{'value':>9}"]
    names = [m for _, m in METRIC_COLUMNS]
    if "CLIP-Score" in result.metrics:  # else RefCLIP-Score is unavailable for the same reason
        names.append("RefCLIP-Score")
    for name in names:
        value = result.metrics.get(name)
        if value is not None:
            suffix = f"   ({result.clip_encoder})" if name in ("CLIP-Score", "RefCLIP-Score") else ""
            lines.append(f"{name:<14}{_fmt(value, name):>9}{suffix}")
        else:
            reason = result.unavailable.get(name, "not computed")
            lines.append(f"{name:<14}{'n/a':>9}   unavailable: {reason}")
    lines.append("scale: BLEU-4, METEOR, ROUGE-L, CIDEr, SPICE x100 (as in the paper); CLIP-Score as is")
    lines += format_by_domain(result.extra.get("by_domain"))
    lines.append(generation_line(result.extra))
    energy = (f"{result.energy_j:.1f} J = {result.energy_j / 3.6e6:.3g} kWh ({result.energy_label})"
              if result.energy_j is not None else "not measured")
    lines.append(f"time {result.seconds:.1f} s, captioning energy {energy}")
    for note in result.notes:
        lines.append(f"note: {note}")
    lines.append(f"predictions: {result.predictions_path}")
    lines.append(f"results:     {result.results_path}")
    return "\n".join(lines)


def format_by_domain(by_domain: dict | None) -> list[str]:
    """nocaps' domains, one row each (empty for a benchmark without domains)."""
    if not by_domain:
        return []
    names = [m for _, m in METRIC_COLUMNS]
    lines = ["by domain (each scored on its own images, as nocaps' server does):",
             f"{'domain':<13}{'images':>7}" + "".join(f"{c:>8}" for c, _ in METRIC_COLUMNS)]
    for domain, row in by_domain.items():
        lines.append(f"{domain:<13}{row.get('n_images', 0):>7}" + "".join(f"{_fmt(row.get(m), m):>8}" for m in names))
    return lines


def generation_line(extra: dict) -> str:
    """The caption length setting beside the numbers it shapes, and how many captions it cut."""
    limit = (extra.get("settings") or {}).get("max_new_tokens")
    cut = extra.get("cut_at_max_new_tokens")
    told = "cut count not recorded" if cut is None else f"{cut} caption(s) cut at the limit unfinished"
    return f"captions: greedy, max_new_tokens={limit} ({told})"


def _split_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise UserError(f"empty list: {text!r}")
    return items


def _run_grid(args: argparse.Namespace, settings) -> int:
    from captionlab.evaluation.evaluator import DEFAULT_DATASETS, evaluate_grid, strategy_label

    if args.strategy or args.dataset or args.checkpoint:
        raise UserError("--grid takes --strategies, --datasets and --checkpoints (not --strategy, --dataset, "
                        "--checkpoint)")
    if args.out is not None:
        raise UserError("--grid writes one folder per evaluation under the workspace; --out is for one evaluation")
    if args.checkpoints is not None and not args.checkpoints.is_dir():
        raise UserError(f"checkpoints folder not found: {args.checkpoints.resolve()}")
    datasets = _split_list(args.datasets) or list(DEFAULT_DATASETS)
    quiet = args.json

    def on_skip(what: str, reason: str) -> None:
        print(f"skipped {what}: {reason}", file=sys.stderr if quiet else sys.stdout, flush=True)

    def on_result(result) -> None:
        if not quiet:
            cider = result.metrics.get("CIDEr")
            print(f"done {result.strategy} on {result.dataset} ({result.split}): {result.n_images} images, "
                  f"CIDEr {_fmt(cider, 'CIDEr')}", flush=True)

    grid = evaluate_grid(args.model, _split_list(args.strategies), datasets, checkpoints=args.checkpoints,
                         config_path=args.config, limit=args.limit, settings=settings, record=not args.no_record,
                         device=args.device, skip_broken=args.skip_broken, on_skip=on_skip, on_result=on_result)
    if args.json:
        print(json.dumps({
            "model": grid.model, "results": [r.to_json() for r in grid.results],
            "skipped": grid.skipped, "failed": [{"strategy": s, "dataset": d, "reason": why}
                                                for (s, d), why in grid.failed.items()],
        }, indent=2, ensure_ascii=False))
    else:
        print(format_grid(grid, datasets, strategy_label))
    return 0 if grid.results else 1


def format_grid(grid, datasets: list[str], label) -> str:
    """Tables shaped like the paper's Tables 1-3 (other datasets get a table of their own)."""
    cells = {(r.strategy, r.dataset): r for r in grid.results}
    strategies = list(dict.fromkeys(r.strategy for r in grid.results))
    known = {d for _, ds in TABLES for d in ds}
    tables = [(title, [d for d in ds if d in datasets]) for title, ds in TABLES]
    tables += [(f"Other: {d}", [d]) for d in datasets if d not in known]
    out = [f"Model: {grid.model}  (B-4, M, R, C, S x100; CLIP-S as is; n/a = unavailable, - = not run)"]
    encoders = sorted({r.clip_encoder for r in grid.results if r.clip_encoder and r.metrics.get("CLIP-Score") is not None})
    if encoders:
        out.append(f"CLIP-S computed with {', '.join(encoders)}")
    limits = sorted({str((r.extra.get("settings") or {}).get("max_new_tokens")) for r in grid.results})
    cut = sum(r.extra.get("cut_at_max_new_tokens") or 0 for r in grid.results)
    out.append(f"captions: greedy, max_new_tokens={', '.join(limits)} ({cut} caption(s) cut at the limit unfinished)")
    reasons: dict[str, str] = {}
    for title, table_datasets in tables:
        if not table_datasets:
            continue
        out.append("")
        out.append(f"{title} ({', '.join(table_datasets)})")
        head = f"{'Strategy':<18}" + "".join(f"| {d:^{7 * len(METRIC_COLUMNS) - 2}} " for d in table_datasets)
        sub = f"{'':<18}" + "".join("| " + "".join(f"{c:>7}" for c, _ in METRIC_COLUMNS)[2:] + " "
                                    for _ in table_datasets)
        out += [head, sub, "-" * len(head)]
        for key in strategies:
            row = f"{label(key):<18}"
            for dataset in table_datasets:
                result = cells.get((key, dataset))
                values = []
                for _, metric in METRIC_COLUMNS:
                    if result is None:
                        values.append("-")
                        continue
                    value = result.metrics.get(metric)
                    if value is None:
                        reasons.setdefault(metric, result.unavailable.get(metric, "not computed"))
                    values.append(_fmt(value, metric))
                row += "| " + "".join(f"{v:>7}" for v in values)[2:] + " "
            out.append(row)
    if reasons:
        out.append("")
        out += [f"{metric} unavailable: {why}" for metric, why in reasons.items()]
    for key, why in grid.skipped.items():
        out.append(f"skipped {label(key) if key else key}: {why}")
    for (key, dataset), why in grid.failed.items():
        out.append(f"failed {key} on {dataset}: {why}")
    return "\n".join(out)
