"""What the benchmarks share: the models (real shapes with random weights, or tiny ones), synthetic
inputs built directly as tensors, timing/energy/memory measurement, and the JSON + markdown report.

Models (`--model`):
  llava-1.5-7b   the registry config, random weights (`build_random_model`), bf16 on CUDA: CLIP ViT-L/14-336
                 + Vicuna-7B, 576 image tokens per image.
  llava-1.6-7b   the registry config (LLaVA-NeXT, vicuna-7b pinpoints), random weights; one 672x672 image
                 per sample: 5 tiles (base + 2x2), 2,928 image tokens, as the reference measurement did.
  tiny           a tiny LLaVA of the real classes (`save_tiny_llava` + a locally trained tokenizer), 16 image tokens.
  tiny-next      the same as LLaVA-NeXT, one 64x64 image = 5 tiles.
  tiny-576       tiny widths, but LLaVA-1.5's token layout: 576 image tokens (96 px, 4 px patches), so the
                 share of the sequence that the image+prompt prefix takes is the real one.
  qwen2.5-vl-3b, qwen2.5-vl-7b, smolvlm-256m, smolvlm-2.2b, llava-onevision-0.5b, llava-onevision-7b
                 issue #21's families from their registry configs, random weights, one 480 x 640 image (a COCO
                 photo) each: Qwen2.5-VL 391 image tokens (resized to 476 x 644, image_grid_thw (1, 34, 46), 3-D
                 rotary positions from mm_token_type_ids), SmolVLM 64 / 81 (the unsplit global image, an all-true
                 pixel_attention_mask), LLaVA-OneVision 2,929 (5 tiles, anyres_max_9). No GPU numbers exist for them
                 yet (`bash bench/gpu_session_perf.sh` with FAMILIES=1 is the ready command).
  --shrink       (run_all; `make_setup(shrink=True)`) any registry model with tiny widths and depths but its own
                 geometry, vocabulary and token layout, named "<model>-shrunk": the GPU path on the CPU.

No processor or tokenizer exists offline for the registry models, so every input is made as tensors, the
same way for every model: input_ids = BOS, [prefix-tuning placeholder], prompt text, N image tokens,
prompt text (P prompt tokens in all: the registry's 48 random ones for the LLaVA 7B models, 32 random ones standing
in for the template's where the registry states no count (the new families: said so in the report), the real
prompt's tokens for tiny ones, so prompt learning finds exactly its P tokens), then caption tokens ending in EOS;
random text ids that are never a special token; random pixel values. Each family's image inputs and token count come
from its `ModelFamily.image_layout` (config only), computed the way its processor computes them and checked against
the processor classes in `tests/test_bench.py`.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as _dt
import gc
import json
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from captionlab.models.families.base import ImageLayout
from captionlab.models.registry import ModelSpec
from captionlab.models.tiny import TINY_TEXTS
from captionlab.names import TRAINABLE_STRATEGIES

TINY_MODELS = ("tiny", "tiny-next", "tiny-576")
REAL_MODELS = ("llava-1.5-7b", "llava-1.6-7b")
# issue #21's families: built from their registry configs like the LLaVA ones (no GPU numbers exist for them yet)
FAMILY_MODELS = ("qwen2.5-vl-3b", "qwen2.5-vl-7b", "smolvlm-256m", "smolvlm-2.2b", "llava-onevision-0.5b",
                 "llava-onevision-7b")
REGISTRY_MODELS = REAL_MODELS + FAMILY_MODELS
TRAIN_STRATEGIES = TRAINABLE_STRATEGIES
# The image a registry model's inputs stand for where its token count depends on the image: a COCO photo's usual
# 640 x 480 (height, width), the paper's data; LLaVA-NeXT keeps the reference measurement's 672 x 672 (see below).
COCO_IMAGE = (480, 640)
# Prompt tokens of a registry model that states no count (no tokenizer offline): a stand-in, said so in the report.
STAND_IN_PROMPT_TOKENS = 32


@dataclass
class Setup:
    """A model ready to benchmark, and how to make inputs for it."""

    name: str
    spec: ModelSpec
    model: torch.nn.Module  # the zero-shot base model (strategies are attached to and removed from it)
    tokenizer: object | None
    device: torch.device
    dtype: torch.dtype
    layout: ImageLayout  # one image's tokens and input shapes (its family's `image_layout`)
    image_size: tuple[int, int]  # (height, width) of the image the inputs stand for
    prompt_text: torch.Tensor  # the P prompt text token ids (random, fixed per setup)
    bos_id: int
    eos_id: int
    pad_id: int
    image_id: int
    placeholder_id: int  # prefix tuning's slot token (<unk>)
    text_ids: torch.Tensor  # ids that random text may use
    workdir: Path | None = None
    info: dict = field(default_factory=dict)

    @property
    def image_tokens(self) -> int:  # per image
        return self.layout.tokens

    @property
    def pixel_shape(self) -> tuple:  # per image: (3, S, S), (tiles, 3, S, S), (patches, values)
        return self.layout.pixel_shape

    def prefix_ids(self, prefix_slots: int = 0) -> torch.Tensor:
        """One image's image+prompt prefix (1D): BOS, placeholders, prompt text, image tokens, prompt text."""
        split = (3 * len(self.prompt_text)) // 4  # system prompt + "USER:" before the image, the request after
        parts = [torch.tensor([self.bos_id] + [self.placeholder_id] * prefix_slots), self.prompt_text[:split],
                 torch.full((self.image_tokens,), self.image_id), self.prompt_text[split:]]
        return torch.cat(parts).long()

    def random_text(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.text_ids[torch.randint(len(self.text_ids), (n,), generator=generator)]

    def random_captions(self, images: int, per_image: int, length: int, generator: torch.Generator) -> list[list[torch.Tensor]]:
        """`per_image` captions of `length` tokens (the last one EOS) for each image."""
        return [[torch.cat([self.random_text(length - 1, generator), torch.tensor([self.eos_id])])
                 for _ in range(per_image)] for _ in range(images)]

    def random_pixels(self, images: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn((images, *self.pixel_shape), generator=generator)

    def image_inputs(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model's image inputs for one image per row (`pixels`: (rows, *pixel_shape), from `random_pixels`), as
        the family's processor batches them: pixel_values stacked (or their rows concatenated, Qwen2.5-VL), and each
        of the layout's other inputs once per row (image_sizes, image_grid_thw, pixel_attention_mask)."""
        rows = pixels.shape[0]
        values = pixels.flatten(0, 1) if self.layout.rows_concatenated else pixels
        inputs = {"pixel_values": values.to(self.dtype)}
        inputs |= {key: torch.tensor([value] * rows) for key, value in self.layout.values.items()}
        inputs |= {key: torch.ones((rows, *shape), dtype=torch.bool) for key, shape in self.layout.masks.items()}
        return inputs

    def token_inputs(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """The family's per-token inputs beside input_ids (`ModelFamily.token_input_keys`): Qwen2.5-VL's
        mm_token_type_ids, 1 on image tokens and 0 elsewhere, as the processor marks them (its 3-D rotary positions
        are computed from them: without them the model would count positions as 1-D text)."""
        inputs = {}
        for key in self.spec.family.token_input_keys:
            if key != "mm_token_type_ids":
                raise ValueError(f"{self.name}: the bench cannot make the per-token input {key!r}")
            inputs[key] = (input_ids == self.image_id).long()
        return inputs


def llava_next_image_tokens(config: dict, height: int, width: int) -> tuple[int, int]:
    """(image tokens, tiles) of one height x width image for a LLaVA-NeXT config, as LlavaNextProcessor counts them."""
    from captionlab.models.families import family_for

    layout = family_for("llava_next").image_layout(config, height, width)
    return layout.tokens, layout.tiles


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def shrink_config(config: dict) -> dict:
    """A real model's config with tiny widths and depths but the same image geometry, vocabulary and token layout.

    For checking the real-model code path (no tokenizer, the real image token counts, prompt tokens) on the CPU.
    The LLM's fields are in `text_config`, or at the top level of a flat config (Qwen2.5-VL's); Qwen2.5-VL's vision
    tower names its depth and heads `depth` / `num_heads`, and its M-RoPE sections are scaled to the smaller head.
    """
    import copy

    config = copy.deepcopy(config)
    vision = config["vision_config"]
    vision.update(hidden_size=32, intermediate_size=64)
    for key, value in (("num_hidden_layers", 2), ("depth", 2), ("num_attention_heads", 2), ("num_heads", 2),
                       ("projection_dim", 32)):
        if key in vision or key in ("num_hidden_layers", "num_attention_heads") and "depth" not in vision:
            vision[key] = value
    text = config.get("text_config") or config
    text.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=4, head_dim=16)
    if "out_hidden_size" in vision:  # the merger projects onto the LLM's width
        vision.update(out_hidden_size=64, fullatt_block_indexes=[1])
    for rope in (text.get("rope_scaling"), text.get("rope_parameters")):
        if isinstance(rope, dict) and "mrope_section" in rope:  # (t, h, w) split of the rotary half of a head: 8
            rope["mrope_section"] = [2, 3, 3]
    return config


def bench_image(spec: ModelSpec) -> tuple[int, int]:
    """(height, width) of the image the inputs stand for: LLaVA-NeXT's 2 x 2 tiles as the reference measurement
    (672 x 672 on LLaVA-1.6), else a COCO photo's 480 x 640 (fixed-square families resize it: no matter there)."""
    if spec.architecture == "llava_next":
        size = int(spec.config["vision_config"]["image_size"])
        return 2 * size, 2 * size
    return COCO_IMAGE


def make_setup(name: str, device: str | torch.device, seed: int = 0, dtype: torch.dtype | None = None,
               shrink: bool = False, image: tuple[int, int] | None = None) -> Setup:
    """Build the model `name` on `device` (random weights) and the facts needed to make its inputs.

    `shrink` (registry models only): tiny widths, real geometry (see `shrink_config`); the setup is named
    "<name>-shrunk". `image`: the (height, width) the inputs stand for, instead of `bench_image`'s.
    """
    device = torch.device(device)
    dtype = dtype or default_dtype(device)
    workdir = None
    prompt_note = None
    if name in TINY_MODELS:
        from captionlab.models.loading import load_model
        from captionlab.models.registry import get_model_spec
        from captionlab.models.tiny import TinyShape, save_tiny_llava
        from captionlab.models.tokenizer import train_tokenizer
        from captionlab.strategies.prompt_learning import prompt_token_ids

        tokenizer = train_tokenizer(TINY_TEXTS, vocab_size=320)
        shape = TinyShape(image_size=96, patch_size=4) if name == "tiny-576" else TinyShape()
        workdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        atexit.register(shutil.rmtree, workdir, True)
        folder = save_tiny_llava(workdir, tokenizer, shape=shape, seed=seed,
                                 architecture="llava_next" if name == "tiny-next" else "llava")
        spec = get_model_spec(folder)
        loaded = load_model(spec, device=device, dtype=dtype)
        model, tokenizer = loaded.model, loaded.tokenizer
        real_prompt = torch.tensor(prompt_token_ids(spec, tokenizer))  # prompt learning checks it sees these
        prompt_count = len(real_prompt)
        specials = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id,
                    tokenizer.convert_tokens_to_ids(spec.family.image_token)}
        vocab = len(tokenizer)
        bos, eos, pad, unk = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id
    elif name in REGISTRY_MODELS:
        real_prompt = None  # no tokenizer offline: random text ids of the registry's prompt length
        from dataclasses import replace

        from captionlab.models.loading import build_random_model
        from captionlab.models.registry import get_model_spec

        spec = get_model_spec(name)
        if spec.prompt_token_count is None:  # prompt learning learns this many (it needs a count without a tokenizer)
            spec = replace(spec, prompt_token_count=STAND_IN_PROMPT_TOKENS)
            prompt_note = (f"{STAND_IN_PROMPT_TOKENS} random prompt tokens stand in for the template's (no tokenizer "
                           "offline, and the registry states no count for this model)")
        if shrink:
            spec = replace(spec, config=shrink_config(spec.config), name=f"{name}-shrunk")
        model = build_random_model(spec, device=device, seed=seed, dtype=dtype)
        model.eval()
        tokenizer = None
        prompt_count = int(spec.prompt_token_count)
        text = spec.text_config
        bos, eos, unk = int(text.get("bos_token_id", 1)), int(text.get("eos_token_id", 2)), 0
        pad = spec.config.get("pad_token_id", text.get("pad_token_id"))
        pad = eos if pad is None else int(pad)  # Qwen's configs name no pad token: any id works (never attended)
        vocab = int(text["vocab_size"])
        image_id = spec.family.image_token_id(model.config)
        # the ids the processor's own tokens take: added after the text vocabulary (<image>, <|image_pad|>, ...)
        added = [int(v) for k, v in spec.config.items()
                 if k.endswith(("_token_id", "_token_index")) and isinstance(v, int) and int(v) >= image_id - 16]
        specials = {bos, eos, pad, unk, image_id} | set(range(min([image_id, *added]), vocab))
    else:
        raise SystemExit(f"unknown --model {name!r}: choose from {', '.join(REGISTRY_MODELS + TINY_MODELS)}")
    config = spec.config
    image_id = spec.family.image_token_id(model.config)
    image_size = tuple(image) if image else bench_image(spec)
    layout = spec.family.image_layout(config, *image_size)
    generator = torch.Generator().manual_seed(seed)
    text_ids = torch.tensor([i for i in range(vocab) if i not in specials])
    prompt_text = text_ids[torch.randint(len(text_ids), (prompt_count,), generator=generator)]
    if real_prompt is not None:
        prompt_text = real_prompt
    setup = Setup(name=spec.name if (shrink and name in REGISTRY_MODELS) else name, spec=spec, model=model,
                  tokenizer=tokenizer, device=device, dtype=dtype, layout=layout, image_size=image_size,
                  prompt_text=prompt_text, bos_id=bos, eos_id=eos, pad_id=pad, image_id=image_id, placeholder_id=unk,
                  text_ids=text_ids, workdir=workdir)
    setup.info = {
        "model": setup.name, "architecture": spec.architecture, "parameters": sum(p.numel() for p in model.parameters()),
        "image_tokens": layout.tokens, "prompt_tokens": prompt_count, "prefix_tokens": len(setup.prefix_ids()),
        "pixel_shape": list(layout.pixel_shape), "image_size": list(image_size),
        "image_inputs": ["pixel_values", *layout.values, *layout.masks, *spec.family.token_input_keys],
        "dtype": str(dtype).replace("torch.", ""),
        "attention": getattr(model.config, "_attn_implementation", None),
        "weights": ("random tiny model" if name in TINY_MODELS else
                    "random, shrunk widths (CPU check of the real-model path)" if shrink else
                    "random (architecture from the registry config)"),
    }
    if prompt_note:
        setup.info["prompt_note"] = prompt_note
    return setup


# --- measurement ---------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    if device.type == "cuda":  # (a full gc.collect costs ~0.5 s with transformers loaded: not worth it on the CPU)
        gc.collect()
        torch.cuda.empty_cache()


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def measure(step: Callable[[], None], units_per_step: int, device: torch.device, meter, warmup: int = 1,
            iters: int = 3, min_seconds: float = 0.0, max_iters: int = 1000) -> dict:
    """Run `step` `warmup` times untimed, then at least `iters` times and `min_seconds`; throughput, energy, peak memory."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        step()
    synchronize(device)
    joules0, start = meter.joules(), time.perf_counter()
    done = 0
    while done < iters or (time.perf_counter() - start < min_seconds and done < max_iters):
        step()
        done += 1
        if min_seconds:
            synchronize(device)
    synchronize(device)
    seconds = time.perf_counter() - start
    joules = meter.joules() - joules0
    units = units_per_step * done
    return {
        "steps": done, "units": units, "seconds": seconds, "per_s": units / seconds,
        "joules": joules, "j_per_unit": joules / units if units else float("nan"),
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }


def with_oom_fallback(run: Callable[[int], dict], batch: int, device: torch.device) -> dict:
    """`run(batch)`, halving the batch after an out-of-memory error (the row records what ran and why)."""
    notes = []
    while True:
        try:
            row = run(batch)
            row["batch"] = batch
            if notes:
                row["note"] = "; ".join(notes)
            return row
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not is_oom(exc) or batch <= 1:
                raise
        # out of the except block: the exception's traceback (and the activations its frames hold) is gone
        notes.append(f"out of memory at batch {batch}")
        batch //= 2
        free_memory(device)


# --- report ----------------------------------------------------------------------------------------------
def environment(device: torch.device, meter=None, argv: list[str] | None = None) -> dict:
    import peft
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    env = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU: {cpu}",
        "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "peft": peft.__version__, "cuda": torch.version.cuda if device.type == "cuda" else None,
        "command": "python -m " + " ".join(argv) if argv is not None else None,
    }
    if meter is not None:
        env["energy"] = meter.describe()
    return env


def comparisons(rows: list[dict]) -> list[dict]:
    """captionlab / plain for each (model, work, strategy): speed-up, energy and memory ratios."""
    out = []
    keys = []
    for row in rows:
        key = (row["model"], row["work"], row["strategy"])
        if key not in keys:
            keys.append(key)
    for key in keys:
        group = [r for r in rows if (r["model"], r["work"], r["strategy"]) == key]
        plain = next((r for r in group if r["method"] == "plain"), None)
        ours = next((r for r in group if r["method"] == "captionlab"), None)
        if plain is None or ours is None:
            continue
        ratio = {"model": key[0], "work": key[1], "strategy": key[2], "unit": ours["unit"],
                 "plain_per_s": plain["per_s"], "captionlab_per_s": ours["per_s"],
                 "speedup": ours["per_s"] / plain["per_s"],
                 "energy_ratio": (ours["j_per_unit"] / plain["j_per_unit"]) if plain["j_per_unit"] else None,
                 "memory_ratio": (ours["peak_gib"] / plain["peak_gib"]) if ours["peak_gib"] and plain["peak_gib"] else None,
                 "plain_batch": plain.get("batch"), "captionlab_batch": ours.get("batch")}
        # plain at captionlab's own batch, where it ran: how much of the speed-up is the batch alone
        same = next((r for r in group if r["method"] == "plain-large-batch"), None)
        if same is not None and same.get("batch") == ours.get("batch"):
            ratio["speedup_same_batch"] = ours["per_s"] / same["per_s"]
            ratio["energy_ratio_same_batch"] = (ours["j_per_unit"] / same["j_per_unit"]) if same["j_per_unit"] else None
        notes = [f"{r['method']}: {r['note']}" for r in (plain, ours) if r.get("note")]
        if notes:  # out of memory fell back to a smaller batch: the ratio is not at the batch asked for
            ratio["note"] = "; ".join(notes)
        out.append(ratio)
    return out


def _fmt(value, digits=3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _tokens_note(row: dict) -> str:
    """What a decoder row's tokens are against plain generate's on the first batch: equal, or how far they agree
    (a cause is not claimed: bf16 rounding on near-tied random logits is the suspect, a decoding bug the alternative)."""
    equal = row.get("tokens_equal_plain")
    if equal is None:
        return ""
    if equal:
        return "tokens = plain generate's"
    agreement, first = row.get("tokens_agreement"), row.get("first_differing_token")
    detail = ", ".join(filter(None, [f"{agreement:.0%} of tokens equal" if agreement is not None else "",
                                     f"first difference at new token {first}" if first is not None else ""]))
    return "tokens differ from plain generate's" + (f" ({detail})" if detail else "")


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# captionlab vs plain transformers + peft ({env['device_name']}, {env['date']})", "",
             f"torch {env['torch']}, transformers {env['transformers']}, peft {env['peft']}, python {env['python']}; "
             f"energy: {env.get('energy', {}).get('label', 'n/a')}", ""]
    if env.get("command"):
        lines += [f"Command: `{env['command']}`", ""]
    for name, info in report.get("models", {}).items():
        lines.append(f"- {name}: {info['parameters']:,} parameters, {info['dtype']}, attention {info['attention']}, "
                     f"{info['prefix_tokens']} prefix tokens per image ({info['image_tokens']} image tokens), {info['weights']}"
                     + (f"; {info['prompt_note']}" if info.get("prompt_note") else ""))
    lines += ["", "| model | work | strategy | method | setting | batch | throughput | J/unit | peak GiB | note |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        note = "; ".join(filter(None, [r.get("note", ""), _tokens_note(r)]))
        lines.append(f"| {r['model']} | {r['work']} | {r['strategy']} | {r['method']} | {r['setting']} | {r['batch']} | "
                     f"{_fmt(r['per_s'])} {r['unit']}/s | {_fmt(r['j_per_unit'])} | {_fmt(r['peak_gib'])} | {note} |")
    lines += ["", "| model | work | strategy | plain /s | captionlab /s | speed-up | speed-up vs plain at our batch | "
              "energy per unit (ours/plain) | peak memory (ours/plain) | batches (plain, ours) | note |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in report["comparisons"]:
        same = f"{_fmt(c['speedup_same_batch'])}x" if c.get("speedup_same_batch") else "n/a"
        lines.append(f"| {c['model']} | {c['work']} | {c['strategy']} | {_fmt(c['plain_per_s'])} | {_fmt(c['captionlab_per_s'])} | "
                     f"{_fmt(c['speedup'])}x | {same} | {_fmt(c['energy_ratio'])} | {_fmt(c['memory_ratio'])} | "
                     f"{_fmt(c.get('plain_batch'))}, {_fmt(c.get('captionlab_batch'))} | {c.get('note', '')} |")
    if report.get("errors"):
        lines += ["", "Sections that failed (their rows are missing above):", ""]
        lines += [f"- {e['model']} {e['work']}: {e['error']}" for e in report["errors"]]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: Path, stem: str, render: Callable[[dict], str] | None = None) -> tuple[Path, Path]:
    """<stem>.json and <stem>.md (the markdown from `render`, by default the comparison tables)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=2, allow_nan=True))
    md_path.write_text((render or markdown)(report))
    return json_path, md_path


def print_comparisons(rows: list[dict]) -> None:
    for c in comparisons(rows):
        same = f" ({c['speedup_same_batch']:.2f}x plain at batch {c['captionlab_batch']})" if c.get("speedup_same_batch") else ""
        print(f"  {c['model']:>13} {c['work']:>7} {c['strategy']:>15}: plain {c['plain_per_s']:.3g} (batch {c['plain_batch']}) "
              f"-> captionlab {c['captionlab_per_s']:.3g} {c['unit']}/s (batch {c['captionlab_batch']}) = {c['speedup']:.2f}x"
              f"{same}; J/{c['unit'][:-1]} x{_fmt(c['energy_ratio'])}; peak memory x{_fmt(c['memory_ratio'])}"
              + (f"; {c['note']}" if c.get("note") else ""), flush=True)


def preset_with_overrides(preset: dict, args) -> dict:
    """A model's preset sizes, each replaced by the command-line value of the same name when one was given."""
    values = dict(preset)
    for key in values:
        value = getattr(args, key, None)
        if value is not None:
            values[key] = value
    return values


def start_bench(args) -> tuple[str, torch.device, object, "Setup"]:
    """What a single-script benchmark starts with: threads, the model (LLaVA-1.5-7B on a GPU, tiny on the
    CPU by default), the device, a running energy meter and the model's setup."""
    from captionlab.training.energy import EnergyMeter

    if args.threads:
        torch.set_num_threads(args.threads)
    model = args.model or ("llava-1.5-7b" if args.device.startswith("cuda") else "tiny")
    device = torch.device(args.device)
    meter = EnergyMeter(str(device)).start()
    return model, device, meter, make_setup(model, device)


# --- the scripts' shared command line --------------------------------------------------------------------------


def bench_parser(doc: str | None, model_help: str) -> argparse.ArgumentParser:
    """The flags every bench script takes: --device (CUDA when present), --model, --out."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default=None, help=model_help)
    p.add_argument("--out", default="bench/out")
    return p


def add_timing_flags(p: argparse.ArgumentParser, iters: int) -> argparse.ArgumentParser:
    """--warmup, --iters, --threads and --min-seconds: how the throughput scripts time their rows."""
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=iters)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 gives steadier CPU timings on a machine shared with other jobs)")
    p.add_argument("--min-seconds", type=float, default=0.0)
    return p

