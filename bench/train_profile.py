"""Where a training step's time goes, strategy against strategy: captionlab's packed step (prefix sharing) for
each strategy, timed and profiled, its kernel time split into matrix products, attention and everything else,
with each strategy's extra time over the first one's by kind and the kernels that grew most.

What it is for: DoRA against LoRA (the target is DoRA <= 1.3x LoRA's step time). The steps are exactly
`bench.train_throughput`'s captionlab rows (same batch, plain SGD, fast DoRA).

    python -m bench.train_profile --device cuda --model llava-1.5-7b --strategies lora,dora --out bench/out
    python -m bench.train_profile --device cpu --model tiny --strategies lora,dora     # tiny model, CPU
"""

from __future__ import annotations

import sys

import torch

from bench.common import bench_parser, environment, free_memory, make_setup, write_report
from bench.prefill_profile import kernel_profile, timed
from bench.train_throughput import PRESETS, attach_with_sgd, detach, packed_batch, packed_step


def profile_steps(setup, strategies: list[str], *, repeats: int, seed: int = 0) -> dict:
    preset = PRESETS["tiny" if setup.name.endswith("-shrunk") else setup.name]  # shrunk: tiny sizes, as run_all
    generator = torch.Generator().manual_seed(seed)
    pixels = setup.random_pixels(preset["images"], generator)
    captions = setup.random_captions(preset["images"], preset["captions_per_image"], preset["caption_tokens"], generator)
    out = {}
    for name in strategies:
        model, strategy, params, optimizer, prefix, precision = attach_with_sgd(setup, name)
        batch = packed_batch(setup, prefix, pixels, captions, preset["packed_images"])
        step = packed_step(setup, model, optimizer, batch, precision)
        step()  # warm-up
        seconds = timed(step, setup.device, repeats)
        peak = None
        if setup.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(setup.device)
            step()
            peak = torch.cuda.max_memory_allocated(setup.device) / 2**30
        out[name] = {"step_s": seconds, "captions_per_step": int(batch["caption_counts"].sum()), "peak_gib": peak,
                     "kernels": kernel_profile(step, setup.device, top=40)}
        optimizer.zero_grad(set_to_none=True)
        del optimizer, params, batch
        detach(setup, model, strategy, precision)
        del model
        free_memory(setup.device)
    first = strategies[0]
    for name in strategies[1:]:
        a, b = out[first]["kernels"], out[name]["kernels"]
        before = {k["name"]: k["ms"] for k in a["top"]}
        grown = sorted(({"name": k["name"], "kind": k["kind"], "extra_ms": k["ms"] - before.get(k["name"], 0.0)}
                        for k in b["top"]), key=lambda k: -k["extra_ms"])
        out[name]["against_" + first] = {
            "step_ratio": out[name]["step_s"] / out[first]["step_s"],
            "extra_ms_by_kind": {kind: b["ms_by_kind"][kind] - a["ms_by_kind"][kind] for kind in a["ms_by_kind"]},
            "grown_kernels": grown[:10],
        }
    return out


def markdown(report: dict) -> str:
    lines = [f"# Training step by strategy: {report['model']} on {report['environment']['device_name']}", ""]
    steps = report["steps"]
    for name, s in steps.items():
        k = s["kernels"]
        lines.append(f"- {name}: step {s['step_s'] * 1000:.1f} ms ({s['captions_per_step']} captions), kernels "
                     + ", ".join(f"{kind} {ms:.1f} ms" for kind, ms in k["ms_by_kind"].items())
                     + (f", peak {s['peak_gib']:.1f} GiB" if s["peak_gib"] else ""))
        for key, diff in s.items():
            if key.startswith("against_"):
                lines.append(f"  - {diff['step_ratio']:.3f}x the {key.removeprefix('against_')} step; extra kernel time "
                             + ", ".join(f"{kind} {ms:+.1f} ms" for kind, ms in diff["extra_ms_by_kind"].items()))
                lines += [f"    - `{g['name']}` ({g['kind']}) {g['extra_ms']:+.2f} ms" for g in diff["grown_kernels"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    p = bench_parser(__doc__, "llava-1.5-7b (CUDA default), tiny (CPU default), ...")
    p.add_argument("--strategies", default="lora,dora")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--shrink", action="store_true", help="the real model's code path with tiny widths (CPU check)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    model = args.model or ("llava-1.5-7b" if device.type == "cuda" else "tiny")
    setup = make_setup(model, device, shrink=args.shrink)
    steps = profile_steps(setup, [s for s in args.strategies.split(",") if s], repeats=args.repeats)
    report = {"model": setup.name, "environment": environment(device, None, ["bench.train_profile", *argv]),
              "steps": steps}
    paths = write_report(report, args.out, f"train_profile-{setup.name}", render=markdown)
    print(markdown(report))
    print(f"wrote {paths[0]} and {paths[1]}")
    return report


if __name__ == "__main__":
    main()
