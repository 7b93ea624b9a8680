"""The whole comparison in one run on one device: caption throughput and training throughput for every strategy,
captionlab against the plain transformers + peft way, written as JSON + markdown and printed as ratios.

    python -m bench.run_all --device cuda --out bench/out      # GPU: LLaVA-1.5-7B (all), LLaVA-1.6-7B (captioning, LoRA)
    python -m bench.run_all --device cpu --out /tmp/bench       # CPU smoke run on tiny models (seconds)
    python -m bench.run_all --device cpu --shrink --out /tmp/bench-shrunk   # the 7B code path, tiny widths, on the CPU
    python -m bench.run_all --device cpu --shrink --models qwen2.5-vl-3b,smolvlm-256m --works train \
        --strategies lora --out /tmp/bench-families     # issue #21's families, shrunk, on the CPU

Every model is built once (random weights) and each strategy is attached to it and removed again.
The report is rewritten after every section, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback

import torch

from bench import caption_throughput, train_throughput
from bench.common import (TRAIN_STRATEGIES, comparisons, environment, free_memory, make_setup, print_comparisons,
                          write_report)

# what each model runs by default: (works, training strategies)
PLAN = {
    "llava-1.5-7b": (("caption", "train"), TRAIN_STRATEGIES),
    "llava-1.6-7b": (("caption", "train"), ["lora"]),  # captioning at plain's batch 32 (69 GiB): the decoder alone
    "tiny": (("caption", "train"), TRAIN_STRATEGIES),
    "tiny-next": (("caption", "train"), TRAIN_STRATEGIES),
    "tiny-576": (("train",), TRAIN_STRATEGIES),
}
DEFAULT_MODELS = {"cuda": "llava-1.5-7b,llava-1.6-7b", "cpu": "tiny,tiny-next,tiny-576"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", default=None, help="comma-separated; default: " + str(DEFAULT_MODELS))
    p.add_argument("--works", default=None, help="caption,train (default: each model's plan)")
    p.add_argument("--strategies", default=None, help="training strategies (default: each model's plan)")
    p.add_argument("--out", default="bench/out")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=None, help="timed repetitions (default: 2 on CUDA, 1 on CPU)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 gives steadier CPU timings on a machine shared with other jobs)")
    p.add_argument("--min-seconds", type=float, default=None, help="minimum timed seconds per row (default: 2 on CUDA, 0 on CPU)")
    p.add_argument("--stem", default="results")
    p.add_argument("--keep-going", action="store_true",
                   help="after a section fails, record its error in the report and go on with the next one")
    p.add_argument("--shrink", action="store_true",
                   help="real models with tiny widths (same geometry, no tokenizer) and tiny sizes: checks the GPU path on the CPU")
    return p


def main(argv: list[str] | None = None) -> dict:
    from captionlab.training.energy import EnergyMeter

    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    iters = args.iters if args.iters is not None else (2 if cuda else 1)
    min_seconds = args.min_seconds if args.min_seconds is not None else (2.0 if cuda else 0.0)
    models = [m for m in (args.models or DEFAULT_MODELS["cuda" if (cuda or args.shrink) else "cpu"]).split(",") if m]
    meter = EnergyMeter(str(device)).start()
    report = {"environment": environment(device, meter, ["bench.run_all", *argv]), "models": {}, "rows": [],
              "comparisons": [], "errors": []}
    started = time.perf_counter()
    for name in models:
        works, strategies = PLAN.get(name, (("caption", "train"), TRAIN_STRATEGIES))
        works = args.works.split(",") if args.works else works
        if not works or set(works) - {"caption", "train"}:  # else no section would run, and nothing would be written
            raise SystemExit(f"--works: {args.works!r} is not caption, train or both (comma-separated)")
        strategies = args.strategies.split(",") if args.strategies else strategies
        tick = time.perf_counter()
        setup = make_setup(name, device, shrink=args.shrink)
        report["models"][setup.name] = setup.info
        sizes = "tiny" if args.shrink else name
        print(f"[{time.perf_counter() - started:6.1f}s] {name}: built in {time.perf_counter() - tick:.1f}s "
              f"({setup.info['parameters']:,} parameters, {setup.info['prefix_tokens']} prefix tokens)", flush=True)
        sections = []
        if "caption" in works:
            sections.append(("caption", lambda: caption_throughput.run_caption(
                setup, meter, **caption_throughput.PRESETS[sizes], warmup=args.warmup, iters=iters,
                min_seconds=min_seconds)))
        if "train" in works:  # one section per strategy: one that fails (out of memory at batch 1) loses only its rows
            for strategy in strategies:
                sections.append((f"train {strategy}", lambda strategy=strategy: train_throughput.run_train(
                    setup, meter, [strategy], **train_throughput.PRESETS[sizes], warmup=args.warmup, iters=iters,
                    min_seconds=min_seconds)))
        for work, section in sections:
            try:
                rows = section()
            except Exception as error:  # noqa: BLE001 - one failed section must not lose the others' numbers
                if not args.keep_going:
                    raise
                traceback.print_exc()
                report["errors"].append({"model": name, "work": work, "error": f"{type(error).__name__}: {error}"})
                rows = []
            report["rows"] += rows
            print_comparisons(rows)
            free_memory(device)
            # after every section, as the docstring promises: a run killed by its time box keeps what it measured
            report["comparisons"] = comparisons(report["rows"])
            report["environment"]["seconds"] = time.perf_counter() - started
            paths = write_report(report, args.out, args.stem)
        print(f"[{time.perf_counter() - started:6.1f}s] {name} done; wrote {paths[0]} and {paths[1]}", flush=True)
        del setup
        free_memory(device)
    return report


if __name__ == "__main__":
    main()
