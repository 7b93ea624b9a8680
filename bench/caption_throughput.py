"""Caption throughput: plain `model.generate` against captionlab's captioning path.

Every row generates exactly `--new-tokens` tokens per image (min = max new tokens: random weights would
otherwise stop at random EOS tokens), greedy, from the zero-shot prompt. Rows (method):

  plain              `generate` at the plain batch (32 on LLaVA-1.5: what the reference file measured)
  plain-large-batch  `generate` at captionlab's batch: how much of the gain is the batch alone
  captionlab-eager   captionlab's `GreedyDecoder` (preallocated KV cache, no per-step cache copies or
                     generate() bookkeeping) with its decoding steps run op by op
  captionlab-uncompiled  the decoder with its decoding steps replayed as CUDA graphs (op by op elsewhere),
                     the prefill through the model's eager layers
  captionlab-masked-steps  the decoder as measured in runs 3-4 (`bench/RESULTS.md`): compiled prefill, every
                     decoding step masked over the whole preallocated cache, one CUDA graph for all steps
  captionlab-compiled-steps  `captionlab` with the decoding steps' layers through the same compiled layers as the
                     prefill (`GreedyDecoder(compile_steps=True)`: norms, rotary, SiLU x up and residual adds fused
                     inside each step's CUDA graph; not yet measured on a GPU when added: off by default until a
                     GPU run shows it pays)
  captionlab         what `LlavaCaptioner.caption` runs on CUDA: the same with exact-length decoding steps
                     (these batches have no padding: each step attends to exactly the written cache, no mask,
                     one CUDA graph per step length; `captionlab/models/decoding.py`), the prefill through
                     torch.compile'd layers (`compile_prefill`, `captionlab/models/compiled_layers.py`; its first
                     call, which compiles and captures, is timed apart as `first_call_s` and not counted), at the
                     large batch, fed by `generate_predictions`' shape bucketing (here every image has one
                     shape, so bucketing changes no batch)

The decoder rows but `captionlab-masked-steps` take the decoder's default steps (exact-length, as these batches
are unpadded); each says which ran in `decoding_steps`. `captionlab` against `captionlab-masked-steps` is the
exact-length steps' gain, `captionlab-compiled-steps` against `captionlab` the compiled steps' (neither measured on
a GPU yet when added).

The speed-up printed is captionlab / plain; the other rows say where it comes from. Each captionlab row
also checks that its tokens equal plain `generate`'s for the first batch (`tokens_equal_plain`).

    python -m bench.caption_throughput --device cuda --model llava-1.5-7b --out bench/out
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from bench.common import (REGISTRY_MODELS, TINY_MODELS, Setup, add_timing_flags, bench_parser, environment,
                          free_memory, measure, preset_with_overrides, print_comparisons, start_bench, synchronize,
                          with_oom_fallback, write_report)

PRESETS = {
    # images, plain batch, captionlab batch, new tokens
    "llava-1.5-7b": dict(images=128, plain_batch=32, batch=128, new_tokens=20),
    "llava-1.6-7b": dict(images=32, plain_batch=32, batch=32, new_tokens=20),
    # issue #21's families (no GPU run yet: first guesses, out of memory halves the batch and says so); one 480 x 640
    # image each: 391 image tokens on Qwen2.5-VL, 2,929 on LLaVA-OneVision (5 tiles), 64 / 81 on SmolVLM
    "qwen2.5-vl-3b": dict(images=64, plain_batch=32, batch=64, new_tokens=20),
    "qwen2.5-vl-7b": dict(images=64, plain_batch=32, batch=64, new_tokens=20),
    "smolvlm-256m": dict(images=128, plain_batch=32, batch=128, new_tokens=20),
    "smolvlm-2.2b": dict(images=128, plain_batch=32, batch=128, new_tokens=20),
    "llava-onevision-0.5b": dict(images=32, plain_batch=32, batch=32, new_tokens=20),
    "llava-onevision-7b": dict(images=32, plain_batch=32, batch=32, new_tokens=20),
    "tiny": dict(images=8, plain_batch=4, batch=8, new_tokens=4),
    "tiny-next": dict(images=8, plain_batch=4, batch=8, new_tokens=4),
    "tiny-576": dict(images=8, plain_batch=4, batch=8, new_tokens=4),
}


def caption_inputs(setup: Setup, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    n = pixels.shape[0]
    ids = setup.prefix_ids().unsqueeze(0).repeat(n, 1)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), **setup.image_inputs(pixels),
              **setup.token_inputs(ids)}
    return {k: v.to(setup.device) for k, v in inputs.items()}


def bucket(sizes: list[tuple[int, int]]) -> list[int]:
    """Image order by (aspect ratio, area), as `generate_predictions` orders records (stable)."""
    return sorted(range(len(sizes)), key=lambda i: (round(sizes[i][1] / max(sizes[i][0], 1), 3), sizes[i][0] * sizes[i][1], i))


@torch.inference_mode()
def generate(setup: Setup, inputs: dict, new_tokens: int) -> torch.Tensor:
    """Plain `generate`: the new tokens (batch, new_tokens)."""
    out = setup.model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                               num_beams=1, pad_token_id=setup.pad_id, eos_token_id=setup.eos_id)
    return out[:, inputs["input_ids"].shape[1]:]


def decoder_for(setup: Setup, cuda_graph: bool, compile_prefill: bool = False, exact_length_steps: bool | None = None,
                compile_steps: bool = False):
    from captionlab.models.decoding import GreedyDecoder

    decoder = GreedyDecoder(setup.model, cuda_graph=cuda_graph, compile_prefill=compile_prefill,
                            exact_length_steps=exact_length_steps, compile_steps=compile_steps)

    def decode(inputs: dict, new_tokens: int) -> torch.Tensor:
        return decoder(inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, eos_token_id=setup.eos_id,
                       pad_token_id=setup.pad_id)

    return decoder, decode


# method -> (which batch, which decoder: None = plain generate, else GreedyDecoder with/without CUDA graphs,
#            compiled prefill, exact_length_steps: None = the decoder's default, exact-length for these batches,
#            compiled steps)
METHODS = {"plain": ("plain", None, False, None, False), "plain-large-batch": ("large", None, False, None, False),
           "captionlab-eager": ("large", False, False, None, False),
           "captionlab-uncompiled": ("large", True, False, None, False),
           "captionlab-masked-steps": ("large", True, True, False, False),
           "captionlab-compiled-steps": ("large", True, True, None, True),
           "captionlab": ("large", True, True, None, False)}


def steps_setting(kind: str | None, graphs: bool) -> str:
    """How a decoder row's decoding steps ran, for its setting."""
    what = {"exact-length": "exact-length steps (written cache, no mask)",
            "masked": "masked steps (whole cache, additive mask)"}.get(kind, "decoding steps")
    if not graphs:
        return f"{what}, op by op"
    return f"{what}, {'one CUDA graph per step length' if kind == 'exact-length' else 'one CUDA graph'}"


def run_caption(setup: Setup, meter, *, images: int, plain_batch: int, batch: int, new_tokens: int,
                warmup: int = 1, iters: int = 1, min_seconds: float = 0.0, seed: int = 0,
                methods: tuple[str, ...] | None = None) -> list[dict]:
    """Rows for plain generate at `plain_batch` and captionlab's path at `batch` over the same `images` images
    (`methods`: those rows of METHODS only; default all)."""
    generator = torch.Generator().manual_seed(seed)
    pixels = setup.random_pixels(images, generator)
    shape = setup.image_size or tuple(setup.pixel_shape[-2:])
    order = bucket([tuple(shape)] * images)
    pixels = pixels[order]
    setup.model.eval()
    rows = []
    for method, (which, graph, compiled, exact_steps, compiled_steps) in METHODS.items():
        if methods is not None and method not in methods:
            continue
        size = plain_batch if which == "plain" else batch
        if method == "plain-large-batch" and batch == plain_batch:
            continue
        decoder, decode = (None, None) if graph is None else decoder_for(setup, graph and setup.device.type == "cuda",
                                                                         compiled, exact_steps, compiled_steps)
        checks = {}

        def run(size: int) -> dict:
            chunks = [caption_inputs(setup, pixels[s:s + size]) for s in range(0, images, size)]
            if decode is not None:
                want = generate(setup, chunks[0], new_tokens)
                synchronize(setup.device)
                started = time.perf_counter()
                got = decode(chunks[0], new_tokens)  # for the compiled row: compiles (timed apart, as first_call_s)
                synchronize(setup.device)
                checks["first_call_s"] = time.perf_counter() - started
                checks["tokens_equal_plain"] = bool(torch.equal(got, want))
                same = got == want  # how far they agree, so that a difference can be judged, not just labelled
                checks["tokens_agreement"] = float(same.float().mean())
                differing = (~same).any(dim=0).nonzero()
                checks["first_differing_token"] = int(differing[0]) if len(differing) else None
                del want, got, same

            def step():
                for chunk in chunks:
                    out = generate(setup, chunk, new_tokens) if decode is None else decode(chunk, new_tokens)
                    assert out.shape == (chunk["input_ids"].shape[0], new_tokens), out.shape

            result = measure(step, images, setup.device, meter, warmup=warmup, iters=iters, min_seconds=min_seconds)
            del chunks
            return result

        try:
            row = with_oom_fallback(run, size, setup.device)
        finally:
            if decoder is not None:
                graph_error, compile_error = decoder.last_graph_error, decoder.last_compile_error
                checks["decoding_steps"] = decoder.last_step_kind  # "exact-length" or "masked"
                decoder.release()
        row.update(checks)
        if decoder is not None and graph and setup.device.type == "cuda" and graph_error:
            row["note"] = "; ".join(filter(None, [row.get("note"), f"CUDA graph capture failed, ran op by op: {graph_error}"]))
        if decoder is not None and (compiled or compiled_steps) and compile_error:
            row["note"] = "; ".join(filter(None, [row.get("note"), f"compiling failed, ran eagerly: {compile_error}"]))
        steps = steps_setting(checks.get("decoding_steps"), bool(graph) and setup.device.type == "cuda")
        compiled_prefill = (f"prefill through torch.compile'd layers (first call {checks.get('first_call_s', float('nan')):.0f} s, "
                            f"not timed)")
        settings = {
            "plain": f"generate, batch {row['batch']}",
            "plain-large-batch": f"generate, batch {row['batch']} (captionlab's batch)",
            "captionlab-eager": f"GreedyDecoder, preallocated KV cache, {steps}, batch {row['batch']}",
            "captionlab-uncompiled": f"GreedyDecoder, preallocated KV cache, {steps}, eager prefill, batch {row['batch']}",
            "captionlab-masked-steps": f"GreedyDecoder as in runs 3-4: {steps}, {compiled_prefill}, shape-bucketed, batch {row['batch']}",
            "captionlab-compiled-steps": (f"GreedyDecoder, {steps} through the compiled layers, {compiled_prefill}, "
                                          f"shape-bucketed, batch {row['batch']}"),
            "captionlab": (f"LlavaCaptioner's path on CUDA: GreedyDecoder, {steps}, {compiled_prefill}, shape-bucketed, "
                           f"batch {row['batch']}"),
        }
        rows.append({"model": setup.name, "work": "caption", "strategy": "zero_shot", "method": method,
                     "setting": f"{settings[method]}, {new_tokens} new tokens", "unit": "images", **row})
        free_memory(setup.device)
    return rows


def parser() -> argparse.ArgumentParser:
    p = bench_parser(__doc__, ", ".join(REGISTRY_MODELS + TINY_MODELS))
    p.add_argument("--images", type=int)
    p.add_argument("--plain-batch", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--new-tokens", type=int)
    return add_timing_flags(p, iters=1)


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
