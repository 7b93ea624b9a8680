"""`python -m captionlab evaluate ...`: caption a benchmark and score it, or a whole grid of them.

    evaluate --model M --strategy S [--checkpoint RUN_OR_FOLDER] --dataset NAME|FORMAT:PATH
             [--images DIR] [--config datasets.yaml] [--split S] [--limit N]
             [--batch-size B] [--max-new-tokens T] [--json]
    evaluate --grid --model M [--strategies s1,s2,...] [--datasets coco,nocaps,cc3m,vizwiz,textcaps]
             [--checkpoints DIR]
    evaluate --grid --slurm --partition P [grid options] [--gpus-per-cell G] [--time-min T]
    evaluate --grid --status [grid options]
    accelerate launch --multi_gpu --num_processes N -m captionlab evaluate ...   (any of the above but --slurm)

Single mode prints BLEU-4, METEOR, ROUGE-L, CIDEr and SPICE on the paper's x100 scale and
CLIP-Score as is; a metric without a number is shown with the reason. `--json` prints exactly
those six names under "metrics" (null where unavailable) and the reasons under "unavailable".
An interrupted evaluation started again resumes from its predictions.jsonl.

Grid mode evaluates each of --strategies (default: the paper's six; not the CLIP-Captioner or
qlora) on each of --datasets (default: the five), skipping (with the reason) strategies that
have no checkpoint: looked for in --checkpoints DIR (DIR/strategies/<key>/ or DIR/<key>/), the
embedded model's shipped checkpoints, then the workspace's newest finished run of that strategy.
It prints tables shaped like the paper's Tables 1-3.

Under `accelerate launch` the processes share each evaluation's images and the main one scores them
(`captionlab.evaluation.sharding`). `--grid --slurm` submits the cells (strategy x dataset) as a Slurm
job array, each resumable; the same command again submits only what is missing, and `--grid --status`
shows each cell (`captionlab.evaluation.slurm_grid`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from captionlab.caption_length import DEFAULT_MAX_NEW_TOKENS
from captionlab.cli import UserError
from captionlab.names import METRIC_COLUMNS

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
    parser.add_argument("--instances", type=Path, action="append", metavar="JSON",
                        help="COCO instances_*.json for CHAIR (repeatable; default: those beside a Karpathy file)")
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
    slurm = parser.add_argument_group("grid on Slurm (a job array through submitit, one task per cell)")
    slurm.add_argument("--slurm", action="store_true",
                       help="submit the grid's cells that are neither done nor running as a Slurm job array")
    slurm.add_argument("--status", action="store_true",
                       help="show the submitted grid's cells: done, running, failed (with the end of the log)")
    slurm.add_argument("--partition", help="Slurm partition for the cells")
    slurm.add_argument("--time-min", type=int, default=240, help="time limit of each cell in minutes (default 240)")
    slurm.add_argument("--gpus-per-cell", type=int, default=1,
                       help="GPUs per cell; above 1 a cell runs under accelerate launch (default 1)")
    slurm.add_argument("--cpus-per-task", type=int, help="CPUs per cell")
    slurm.add_argument("--mem-gb", type=int, help="memory per cell in GB")
    slurm.add_argument("--executor", choices=["slurm", "local"], default="slurm",
                       help="local: submitit's local executor runs the same array as processes here (a dry run "
                            "of the Slurm path; every cell at once)")
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
    """Reports to the terminal (when stderr is one) and to the job's progress.json (when the app started this)."""
    reporters = []
    progress_file = _progress_file()
    if progress_file is not None:
        reporters.append(progress_file)
    if sys.stderr.isatty():
        def report(done: int, total: int) -> None:
            print(f"\r{label}: {done}/{total} images captioned", end="" if done < total else "\n",
                  file=sys.stderr, flush=True)

        reporters.append(report)
    if not reporters:
        return None
    return lambda done, total: [report(done, total) for report in reporters]


def _progress_file():
    """A reporter writing {done, total, first_done, first_at, at} to $CAPTIONLAB_PROGRESS_FILE: the app's ETA is
    the rate measured from the first report (after loading and reading back earlier predictions)."""
    import os
    import time

    from captionlab import atomic
    from captionlab.service.jobs import PROGRESS_ENV

    path = os.environ.get(PROGRESS_ENV)
    if not path:
        return None
    first: dict = {}

    def report(done: int, total: int) -> None:
        now = time.time()
        first.setdefault("first_done", done)
        first.setdefault("first_at", now)
        try:
            atomic.write_json(Path(path), {"done": done, "total": total, **first, "at": now, "state": "running"})
        except OSError:
            pass  # progress is a courtesy: a full disk must not stop the evaluation here

    return report


def _mark_job(state: str) -> None:
    """The evaluation's last word in its progress file (finished / failed), for an app that is not its parent."""
    import os

    from captionlab import atomic
    from captionlab.service.jobs import PROGRESS_ENV

    path = os.environ.get(PROGRESS_ENV)
    if not path:
        return
    try:
        progress = json.loads(Path(path).read_text()) if Path(path).exists() else {}
        atomic.write_json(Path(path), {**progress, "state": state})
    except (OSError, ValueError):
        pass


def run_evaluate(args: argparse.Namespace) -> int:
    try:
        code = _run_evaluate(args)
    except BaseException:
        _mark_job("failed")
        raise
    _mark_job("finished" if code == 0 else "failed")
    return code


def _run_evaluate(args: argparse.Namespace) -> int:
    import sqlite3

    from captionlab import write_errors

    try:
        return _evaluate_or_grid(args)
    except (OSError, sqlite3.Error) as exc:
        if write_errors.is_disk_full(exc):  # "no space left on device", not "disk I/O error" or a traceback
            raise UserError(write_errors.describe(exc)) from None
        raise


def _evaluate_or_grid(args: argparse.Namespace) -> int:
    from captionlab.evaluation import sharding

    try:  # under `accelerate launch`, each process captions on its own device
        args.device = sharding.process_device(args.device)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    settings = _settings(args)
    errors = _user_errors()
    try:
        _ensure_worlds(args)
        if args.grid:
            return _run_grid(args, settings)
        if args.slurm or args.status:
            raise UserError("--slurm and --status are for --grid")
        if not args.strategy or not args.dataset:
            raise UserError("give --strategy and --dataset (or --grid for every strategy on every dataset)")
        from captionlab.evaluation.evaluator import evaluate

        result = evaluate(args.model, args.strategy, args.dataset, checkpoint=args.checkpoint, images=args.images,
                          config_path=args.config, split=args.split, limit=args.limit, out_dir=args.out,
                          settings=settings, record=not args.no_record, device=args.device,
                          skip_broken=args.skip_broken, instances=args.instances,
                          progress=_progress(f"{args.strategy} on {args.dataset}"))
    except errors as exc:
        raise UserError(str(exc)) from None
    if result is None:  # another process of a distributed launch: the main one prints the scores
        return 0
    if args.json:
        print(json.dumps(result.to_json(), indent=2, ensure_ascii=False))
    else:
        print(format_result(result))
    return 0


def _ensure_worlds(args: argparse.Namespace) -> None:
    """The embedded world generated once, by the main process of a distributed launch, before the others read it."""
    from captionlab.data.datasets import ensure_embedded_world
    from captionlab.evaluation import sharding
    from captionlab.evaluation.evaluator import DEFAULT_DATASETS

    if not sharding.distributed_launch():
        return  # evaluate() generates it on first use
    names = (_split_list(args.datasets) or list(DEFAULT_DATASETS)) if args.grid else [args.dataset or ""]
    with sharding.main_process_first():
        for name in names:
            ensure_embedded_world(name, args.config)


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
    names += ["CHAIR-i", "CHAIR-s", "Object-Recall"]
    for name in names:
        value = result.metrics.get(name)
        if value is not None:
            suffix = f"   ({result.clip_encoder})" if name in ("CLIP-Score", "RefCLIP-Score") else ""
            lines.append(f"{name:<14}{_fmt(value, name):>9}{suffix}")
        else:
            reason = result.unavailable.get(name, "not computed")
            lines.append(f"{name:<14}{'n/a':>9}   unavailable: {reason}")
    lines.append("scale: BLEU-4, METEOR, ROUGE-L, CIDEr, SPICE x100 (as in the paper); CLIP-Score as is; "
                 "CHAIR-i, CHAIR-s (lower is better) and Object-Recall in percent")
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
    if args.slurm or args.status:
        from captionlab.cli.evaluate_slurm import run_slurm_grid

        return run_slurm_grid(args, datasets)
    from captionlab.evaluation.sharding import is_main_process

    quiet = args.json or not is_main_process()  # under a distributed launch the main process speaks for all

    def on_skip(what: str, reason: str) -> None:
        if is_main_process():
            print(f"skipped {what}: {reason}", file=sys.stderr if quiet else sys.stdout, flush=True)

    def on_result(result) -> None:
        if not quiet:
            cider = result.metrics.get("CIDEr")
            print(f"done {result.strategy} on {result.dataset} ({result.split}): {result.n_images} images, "
                  f"CIDEr {_fmt(cider, 'CIDEr')}", flush=True)

    grid = evaluate_grid(args.model, _split_list(args.strategies), datasets, checkpoints=args.checkpoints,
                         config_path=args.config, limit=args.limit, settings=settings, record=not args.no_record,
                         device=args.device, skip_broken=args.skip_broken, on_skip=on_skip, on_result=on_result)
    if not is_main_process():
        return 0
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
