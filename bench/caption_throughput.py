"""Caption throughput: plain `model.generate` at batch 32 against captionlab's captioning path.

Both generate exactly `--new-tokens` tokens per image (min = max new tokens: random weights would
otherwise stop at random EOS tokens), greedy, with the KV cache, from the zero-shot prompt.
captionlab's path is what `LlavaCaptioner.caption` does (one greedy `generate` per batch, the prompt
shared by every image) fed by `generate_predictions`' shape bucketing (images of one shape and tile
count together), at a large batch; here every image has the same shape, so bucketing changes no
batch and the difference measured is the batch size.

    python -m bench.caption_throughput --device cuda --model llava-1.5-7b --out bench/out
"""

from __future__ import annotations

import argparse
import sys

import torch

from bench.common import (Setup, environment, measure, preset_with_overrides, print_comparisons, start_bench,
                          with_oom_fallback, write_report)

PRESETS = {
    # images, plain batch, captionlab batch, new tokens
    "llava-1.5-7b": dict(images=128, plain_batch=32, batch=128, new_tokens=20),
    "llava-1.6-7b": dict(images=32, plain_batch=32, batch=32, new_tokens=20),
    "tiny": dict(images=8, plain_batch=4, batch=8, new_tokens=4),
    "tiny-next": dict(images=8, plain_batch=4, batch=8, new_tokens=4),
    "tiny-576": dict(images=8, plain_batch=4, batch=8, new_tokens=4),
}


def caption_inputs(setup: Setup, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    n = pixels.shape[0]
    ids = setup.prefix_ids().unsqueeze(0).repeat(n, 1)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels.to(setup.dtype)}
    sizes = setup.image_sizes(n)
    if sizes is not None:
        inputs["image_sizes"] = sizes
    return {k: v.to(setup.device) for k, v in inputs.items()}


def bucket(sizes: list[tuple[int, int]]) -> list[int]:
    """Image order by (aspect ratio, area), as `generate_predictions` orders records (stable)."""
    return sorted(range(len(sizes)), key=lambda i: (round(sizes[i][1] / max(sizes[i][0], 1), 3), sizes[i][0] * sizes[i][1], i))


@torch.inference_mode()
def generate(setup: Setup, inputs: dict, new_tokens: int) -> torch.Tensor:
    return setup.model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                num_beams=1, pad_token_id=setup.pad_id, eos_token_id=setup.eos_id)


def run_caption(setup: Setup, meter, *, images: int, plain_batch: int, batch: int, new_tokens: int,
                warmup: int = 1, iters: int = 1, min_seconds: float = 0.0, seed: int = 0) -> list[dict]:
    """Rows for plain generate at `plain_batch` and captionlab's path at `batch` over the same `images` images."""
    generator = torch.Generator().manual_seed(seed)
    pixels = setup.random_pixels(images, generator)
    shape = setup.image_size or tuple(setup.pixel_shape[-2:])
    order = bucket([tuple(shape)] * images)
    pixels = pixels[order]
    setup.model.eval()
    rows = []
    for method, size in (("plain", plain_batch), ("captionlab", batch)):
        def run(size: int) -> dict:
            chunks = [caption_inputs(setup, pixels[s:s + size]) for s in range(0, images, size)]

            def step():
                for chunk in chunks:
                    out = generate(setup, chunk, new_tokens)
                    assert out.shape[1] == chunk["input_ids"].shape[1] + new_tokens

            result = measure(step, images, setup.device, meter, warmup=warmup, iters=iters, min_seconds=min_seconds)
            del chunks
            return result

        row = with_oom_fallback(run, size, setup.device)
        setting = (f"generate, batch {row['batch']}, {new_tokens} new tokens" if method == "plain" else
                   f"captionlab captioning path (LlavaCaptioner's generate, shape-bucketed), batch {row['batch']}, "
                   f"{new_tokens} new tokens")
        rows.append({"model": setup.name, "work": "caption", "strategy": "zero_shot", "method": method,
                     "setting": setting, "unit": "images", **row})
    return rows


def parser(defaults_from: str = "caption") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default=None, help="llava-1.5-7b, llava-1.6-7b, tiny, tiny-next, tiny-576")
    p.add_argument("--out", default="bench/out")
    p.add_argument("--images", type=int)
    p.add_argument("--plain-batch", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--new-tokens", type=int)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=1)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 gives steadier CPU timings on a machine shared with other jobs)")
    p.add_argument("--min-seconds", type=float, default=0.0)
    return p


def settings(args, model: str) -> dict:
    return preset_with_overrides(PRESETS[model], args)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    model, device, meter, setup = start_bench(args)
    rows = run_caption(setup, meter, **settings(args, model), warmup=args.warmup, iters=args.iters,
                       min_seconds=args.min_seconds)
    from bench.common import comparisons

    report = {"environment": environment(device, meter, ["bench.caption_throughput", *argv]),
              "models": {model: setup.info}, "rows": rows, "comparisons": comparisons(rows)}
    paths = write_report(report, args.out, "caption_throughput")
    print_comparisons(rows)
    print(f"wrote {paths[0]} and {paths[1]}")
    return report


if __name__ == "__main__":
    main()
