"""Training throughput per strategy: the plain per-caption loop against captionlab's step with prefix sharing.

plain       one sequence per (image, caption) pair, `plain_batch` pairs per step, the model's own loss
            (`model(..., labels=labels).loss`, as a transformers + peft user writes it), backward, SGD step.
            LoRA/DoRA are peft adapters; prompt learning and prefix tuning (which peft does not offer in the
            paper's form) use captionlab's strategy hooks, so their "plain" row isolates the batching.
captionlab  `packed_images` images per step, each with all its captions packed after one copy of its
            image+prompt prefix (`captionlab.training.prefix_sharing`), summed caption-token loss / tokens,
            backward, SGD step: the same loss and gradients as the per-caption step on the same captions.
            DoRA's plain row runs peft's own DoRA forward, captionlab's the short-way row norms
            (`captionlab.strategies.dora_fast`: same outputs and gradients).

Both use the same model, strategy and SGD (plain SGD, no momentum, as the paper); captions/s, J/caption
(`EnergyMeter`) and peak memory (`torch.cuda.max_memory_allocated`, CUDA only) per method. Trainable weights
loaded in half precision (full fine-tuning of the bf16 7B models) are kept in float32 under bf16 autocast in both
rows, as captionlab's trainer keeps them (`captionlab.training.master_weights`). Before timing, each strategy's plain loss and
packed loss are computed on the same captions (`loss_plain`, `loss_captionlab`, `loss_rel_diff` on the captionlab
row): "the same loss" is checked in the run, not only assumed from the CPU tests.

    python -m bench.train_throughput --device cuda --model llava-1.5-7b --out bench/out
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch

from bench.common import (REGISTRY_MODELS, TINY_MODELS, TRAIN_STRATEGIES, Setup, add_timing_flags, bench_parser,
                          comparisons, environment, free_memory, measure, preset_with_overrides, print_comparisons,
                          start_bench, with_oom_fallback, write_report)
from captionlab.training.batching import IGNORE_INDEX
from captionlab.training.master_weights import autocast_to, keep_float32_masters
from captionlab.training.prefix_sharing import pack_sequences, packed_loss_sum

PRESETS = {
    # images in the pool, captions per image, caption tokens (incl. EOS), plain pairs per step, packed images per step
    "llava-1.5-7b": dict(images=8, captions_per_image=5, caption_tokens=16, plain_batch=8, packed_images=4,
                         larger_packed_images=8),
    "llava-1.6-7b": dict(images=2, captions_per_image=5, caption_tokens=16, plain_batch=2, packed_images=1),
    # issue #21's families (no GPU run yet: first guesses; out of memory halves the batch and says so)
    "qwen2.5-vl-3b": dict(images=8, captions_per_image=5, caption_tokens=16, plain_batch=8, packed_images=4),
    "qwen2.5-vl-7b": dict(images=8, captions_per_image=5, caption_tokens=16, plain_batch=8, packed_images=4),
    "smolvlm-256m": dict(images=8, captions_per_image=5, caption_tokens=16, plain_batch=8, packed_images=4),
    "smolvlm-2.2b": dict(images=8, captions_per_image=5, caption_tokens=16, plain_batch=8, packed_images=4),
    "llava-onevision-0.5b": dict(images=4, captions_per_image=5, caption_tokens=16, plain_batch=4, packed_images=2),
    "llava-onevision-7b": dict(images=2, captions_per_image=5, caption_tokens=16, plain_batch=2, packed_images=1),
    "tiny": dict(images=4, captions_per_image=5, caption_tokens=16, plain_batch=8, packed_images=2),
    "tiny-next": dict(images=4, captions_per_image=5, caption_tokens=16, plain_batch=8, packed_images=2),
    "tiny-576": dict(images=4, captions_per_image=5, caption_tokens=16, plain_batch=5, packed_images=1),
}
LEARNING_RATE = 1e-5


def attach(setup: Setup, name: str):
    """(model, strategy) with strategy `name` applied to the setup's base model, in train mode."""
    from captionlab.strategies import get_strategy

    strategy = get_strategy(name)
    model = strategy.apply(setup.model, setup.spec, setup.tokenizer)
    if name == "prompt_learning" and setup.tokenizer is None:
        # without a tokenizer the prompt has only its shape (torch.empty): give it values
        from captionlab.models.prompting import unwrap
        from captionlab.strategies.prompt_learning import CONTROLLER

        with torch.no_grad():
            getattr(unwrap(model), CONTROLLER).prompt.normal_(0.0, 0.02)
    model.train()
    return model, strategy


def forward_context(setup: Setup, precision: tuple):
    """The forward's context for `precision` (from `attach_with_sgd`): autocast where master weights are kept."""
    return autocast_to(precision[0], torch.device(setup.device).type)


def attach_with_sgd(setup: Setup, name: str):
    """(model, strategy, trainable params, plain SGD over them, the image+prompt prefix ids, precision) for strategy
    `name`; precision = (autocast dtype or None, params to put back in half precision), from
    `captionlab.training.master_weights.keep_float32_masters`, as the trainer keeps them."""
    model, strategy = attach(setup, name)
    params = [p for _, p in strategy.trainable_parameters(model)]
    precision = keep_float32_masters(params)
    optimizer = torch.optim.SGD(params, lr=LEARNING_RATE, momentum=0.0)
    return model, strategy, params, optimizer, setup.prefix_ids(strategy.prefix_slots), precision


def precision_setting(precision: tuple) -> str:
    dtype, restore = precision
    if dtype is None:
        return ""
    return (f", {sum(p.numel() for p, _ in restore):,} trainable weights in float32 (master weights, as captionlab's "
            f"trainer keeps them), forward under {str(dtype).removeprefix('torch.')} autocast")


def detach(setup: Setup, model, strategy, precision: tuple | None = None) -> None:
    """Remove the strategy again, leaving the (frozen, eval-mode) base model in `setup.model`, its weights back in
    the dtype they were loaded in."""
    from captionlab.models.prompting import unwrap
    from captionlab.strategies.base import freeze

    for param, dtype in (precision[1] if precision else []):
        with torch.no_grad():
            param.data = param.data.to(dtype)

    if strategy.name in ("lora", "dora"):
        base = model.unload()  # peft: the base model with the adapter layers taken out (not merged)
    else:
        base = unwrap(model)
        for attr in ("captionlab_prompt_learning", "captionlab_prefix_tuning"):
            controller = getattr(base, attr, None)
            if controller is not None:
                for handle in controller._handles:
                    handle.remove()
                delattr(base, attr)
    freeze(base)
    base.eval()
    setup.model = base


def per_caption_batch(setup: Setup, prefix: torch.Tensor, pixels: torch.Tensor, captions, pairs: int) -> dict:
    """The plain layout: one sequence per (image, caption) pair, the first `pairs` pairs, right-padded."""
    chosen = [(i, cap) for i, caps in enumerate(captions) for cap in caps][:pairs]
    length = max(len(prefix) + len(cap) for _, cap in chosen)
    ids = torch.full((len(chosen), length), setup.pad_id, dtype=torch.long)
    labels = torch.full((len(chosen), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(chosen), length), dtype=torch.long)
    for row, (_, cap) in enumerate(chosen):
        n = len(prefix) + len(cap)
        ids[row, :n] = torch.cat([prefix, cap])
        labels[row, len(prefix):n] = cap
        mask[row, :n] = 1
    index = torch.tensor([i for i, _ in chosen])
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels, **setup.image_inputs(pixels[index]),
             **setup.token_inputs(ids)}
    return {k: v.to(setup.device) for k, v in batch.items()}


def packed_batch(setup: Setup, prefix: torch.Tensor, pixels: torch.Tensor, captions, images: int) -> dict:
    batch = pack_sequences([prefix] * images, captions[:images], setup.pad_id,
                           pad_to_multiple_of=16 if setup.device.type == "cuda" else 1)
    batch |= setup.image_inputs(pixels[:images])
    batch |= setup.token_inputs(batch["input_ids"])  # the prefix's image tokens; captions hold none
    return {k: v.to(setup.device) for k, v in batch.items()}


def run_train(setup: Setup, meter, strategies: list[str], *, images: int, captions_per_image: int, caption_tokens: int,
              plain_batch: int, packed_images: int, warmup: int = 1, iters: int = 2, min_seconds: float = 0.0,
              seed: int = 0, larger_packed_images: int | None = None, larger_for: tuple = ("lora",)) -> list[dict]:
    """Rows per strategy: plain, captionlab; and for `larger_for` strategies a `captionlab-larger` row with
    `larger_packed_images` images per step (does a larger packed micro-batch pay?)."""
    generator = torch.Generator().manual_seed(seed)
    pixels = setup.random_pixels(images, generator)
    captions = setup.random_captions(images, captions_per_image, caption_tokens, generator)
    rows = []
    for name in strategies:
        model, strategy, params, optimizer, prefix, precision = attach_with_sgd(setup, name)
        try:
            rows += _strategy_rows(setup, meter, name, model, params, optimizer, prefix, precision, pixels, captions,
                                   captions_per_image=captions_per_image, plain_batch=plain_batch,
                                   packed_images=packed_images, warmup=warmup, iters=iters, min_seconds=min_seconds,
                                   larger_packed_images=larger_packed_images if name in larger_for else None,
                                   images=images)
        finally:  # a failed strategy (out of memory at batch 1...) must not leave its adapter on the shared base model
            optimizer.zero_grad(set_to_none=True)
            del optimizer, params
            detach(setup, model, strategy, precision)
            del model
            free_memory(setup.device)
    return rows


@torch.no_grad()
def plain_loss(setup: Setup, model, prefix: torch.Tensor, pixels: torch.Tensor, captions, images: int,
               pairs_per_pass: int, precision: tuple) -> tuple[float, int]:
    """(loss, caption tokens) the plain way on every caption of the first `images` images: `model(..., labels=...).loss`,
    one sequence per caption, `pairs_per_pass` per forward, token-weighted over the forwards."""
    flat = [(i, cap) for i in range(images) for cap in captions[i]]
    total, count = 0.0, 0
    for start in range(0, len(flat), pairs_per_pass):
        part = flat[start:start + pairs_per_pass]
        batch = per_caption_batch(setup, prefix, pixels[[i for i, _ in part]], [[cap] for _, cap in part], len(part))
        with forward_context(setup, precision):
            loss = model(**batch).loss
        tokens = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        total += float(loss) * tokens
        count += tokens
    return total / count, count


@torch.no_grad()
def packed_loss(setup: Setup, model, prefix: torch.Tensor, pixels: torch.Tensor, captions, images: int,
                precision: tuple) -> tuple[float, int]:
    """(loss, caption tokens) captionlab's way on the same captions: one packed forward, summed loss / tokens."""
    with forward_context(setup, precision):
        loss, tokens = packed_loss_sum(model, packed_batch(setup, prefix, pixels, captions, images))
    return float(loss) / float(tokens), int(tokens)


def packed_step(setup: Setup, model, optimizer, batch: dict, precision) -> Callable[[], None]:
    """One packed training step (an image's captions after one shared prefix: `prefix_sharing`), SGD included."""
    def step():
        with forward_context(setup, precision):
            loss, tokens = packed_loss_sum(model, batch)
        (loss / tokens).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _strategy_rows(setup: Setup, meter, name: str, model, params, optimizer, prefix, precision, pixels, captions, *,
                   captions_per_image: int, plain_batch: int, packed_images: int, warmup: int, iters: int,
                   min_seconds: float, larger_packed_images: int | None, images: int) -> list[dict]:
    trainable = sum(p.numel() for p in params)

    def run_plain(pairs: int) -> dict:
        batch = per_caption_batch(setup, prefix, pixels, captions, pairs)

        def step():
            with forward_context(setup, precision):
                loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        try:
            return measure(step, batch["input_ids"].shape[0], setup.device, meter, warmup, iters, min_seconds)
        finally:
            optimizer.zero_grad(set_to_none=True)

    def run_packed(count: int) -> dict:
        batch = packed_batch(setup, prefix, pixels, captions, count)
        captions_per_step = int(batch["caption_counts"].sum())
        step = packed_step(setup, model, optimizer, batch, precision)
        try:
            return measure(step, captions_per_step, setup.device, meter, warmup, iters, min_seconds)
        finally:
            optimizer.zero_grad(set_to_none=True)

    from captionlab.strategies.dora_fast import use_fast_dora, use_peft_dora

    # before any step moves the weights: both ways' losses on the same captions, each through its own forward
    # (peft's DoRA for the plain rows, the short-way norms for captionlab's)
    # (the rows train at equal loss only if these agree: recorded on the captionlab row, `loss_rel_diff`)
    use_peft_dora(model)
    loss_a, tokens_a = plain_loss(setup, model, prefix, pixels, captions, packed_images, plain_batch, precision)
    use_fast_dora(model)
    loss_b, tokens_b = packed_loss(setup, model, prefix, pixels, captions, packed_images, precision)
    assert tokens_a == tokens_b, (tokens_a, tokens_b)
    losses = {"loss_plain": loss_a, "loss_captionlab": loss_b, "loss_tokens": tokens_a,
              "loss_rel_diff": abs(loss_b - loss_a) / max(abs(loss_a), 1e-12)}
    free_memory(setup.device)

    use_peft_dora(model)  # plain: peft's own DoRA forward
    plain = with_oom_fallback(run_plain, plain_batch, setup.device)
    free_memory(setup.device)
    use_fast_dora(model)  # captionlab: DoRA's row norms the short way (captionlab.strategies.dora_fast)
    ours = with_oom_fallback(run_packed, packed_images, setup.device)
    free_memory(setup.device)
    extra = precision_setting(precision)
    common = {"model": setup.name, "work": "train", "strategy": name, "unit": "captions",
              "trainable_parameters": trainable,
              "master_weights": "float32" if precision[0] is not None else None}
    rows = [{**common, "method": "plain", "setting": f"one sequence per caption, {plain['batch']} per step{extra}",
             **plain}]
    ours_setting = (f"prefix sharing: {ours['batch']} image(s) x {captions_per_image} captions packed per step "
                    f"({ours['units'] // max(1, ours['steps'])} captions){extra}")
    rows.append({**common, "method": "captionlab", "setting": ours_setting, **ours, **losses})
    if larger_packed_images and larger_packed_images <= images:
        larger = with_oom_fallback(run_packed, larger_packed_images, setup.device)
        free_memory(setup.device)
        rows.append({**common, "method": "captionlab-larger", **larger, "setting": (
            f"prefix sharing: {larger['batch']} image(s) x {captions_per_image} captions packed per step "
            f"({larger['units'] // max(1, larger['steps'])} captions){extra}")})
    return rows


def interleaved_step_times(setup: Setup, strategies: list[str], *, repeats: int, captions_per_image: int,
                           caption_tokens: int, packed_images: int, seed: int = 0, **_) -> list[dict]:
    """Per-caption and packed training steps on the *same* captions, alternated `repeats` times; median step times.

    Alternating A/B steps keeps background load (a shared machine) from favouring either side.
    """
    import statistics
    import time

    from bench.common import synchronize

    generator = torch.Generator().manual_seed(seed)
    pixels = setup.random_pixels(packed_images, generator)
    captions = setup.random_captions(packed_images, captions_per_image, caption_tokens, generator)
    pairs = packed_images * captions_per_image
    out = []
    for name in strategies:
        model, strategy, params, optimizer, prefix, precision = attach_with_sgd(setup, name)
        plain_batch = per_caption_batch(setup, prefix, pixels, captions, pairs)
        packed = packed_batch(setup, prefix, pixels, captions, packed_images)

        def plain_step():
            with forward_context(setup, precision):
                loss = model(**plain_batch).loss
            loss.backward()

        def packed_step():
            with forward_context(setup, precision):
                loss, tokens = packed_loss_sum(model, packed)
            (loss / tokens).backward()

        times = {"plain": [], "captionlab": []}
        for index in range(repeats + 1):
            for method, step in (("plain", plain_step), ("captionlab", packed_step)):
                synchronize(setup.device)
                start = time.perf_counter()
                step()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                synchronize(setup.device)
                if index:  # the first round is warm-up
                    times[method].append(time.perf_counter() - start)
        plain_s, packed_s = statistics.median(times["plain"]), statistics.median(times["captionlab"])
        out.append({"model": setup.name, "strategy": name, "captions_per_step": pairs, "repeats": repeats,
                    "plain_tokens": int(plain_batch["attention_mask"].sum()),
                    "packed_tokens": int(packed["attention_mask"].sum()),
                    "plain_step_s": plain_s, "captionlab_step_s": packed_s, "step_time_ratio": packed_s / plain_s,
                    "speedup": plain_s / packed_s})
        print(f"  {setup.name} {name}: per-caption step {plain_s * 1e3:.1f} ms, packed step {packed_s * 1e3:.1f} ms "
              f"(median of {repeats}, {pairs} captions each): {plain_s / packed_s:.2f}x", flush=True)
        del optimizer, params
        detach(setup, model, strategy, precision)
        del model
    return out


def parser() -> argparse.ArgumentParser:
    p = bench_parser(__doc__, ", ".join(REGISTRY_MODELS + TINY_MODELS))
    p.add_argument("--strategies", default=",".join(TRAIN_STRATEGIES))
    for key in ("images", "captions_per_image", "caption_tokens", "plain_batch", "packed_images"):
        p.add_argument("--" + key.replace("_", "-"), type=int, dest=key)
    add_timing_flags(p, iters=2)
    p.add_argument("--interleave", type=int, default=0, metavar="N",
                   help="instead: N alternating per-caption / packed steps on the same captions, median step times")
    return p


def settings(args, model: str) -> dict:
    return preset_with_overrides(PRESETS[model], args)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    model, device, meter, setup = start_bench(args)
    if args.interleave:
        step_times = interleaved_step_times(setup, [s for s in args.strategies.split(",") if s], repeats=args.interleave,
                                            **settings(args, model))
        report = {"environment": environment(device, meter, ["bench.train_throughput", *argv]),
                  "models": {model: setup.info}, "step_times": step_times}
        from pathlib import Path
        import json

        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "step_times.json").write_text(json.dumps(report, indent=2))
        return report
    rows = run_train(setup, meter, [s for s in args.strategies.split(",") if s], **settings(args, model),
                     warmup=args.warmup, iters=args.iters, min_seconds=args.min_seconds)
    report = {"environment": environment(device, meter, ["bench.train_throughput", *argv]),
              "models": {model: setup.info}, "rows": rows, "comparisons": comparisons(rows)}
    paths = write_report(report, args.out, "train_throughput")
    print_comparisons(rows)
    print(f"wrote {paths[0]} and {paths[1]}")
    return report


if __name__ == "__main__":
    main()
