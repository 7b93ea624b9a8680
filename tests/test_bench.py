"""The benchmark scripts run on the CPU with tiny models (the same code the GPU comparison runs) and report
every row with finite positive numbers; the processor-free LLaVA-NeXT inputs have the processor's token counts."""

from __future__ import annotations

import json
import math

import pytest
from PIL import Image

from bench.common import TRAIN_STRATEGIES, llava_next_image_tokens


def check_rows(report, model, works, strategies):
    rows = {(r["model"], r["work"], r["strategy"], r["method"]): r for r in report["rows"]}
    expected = []
    if "caption" in works:
        expected += [(model, "caption", "zero_shot", m) for m in ("plain", "captionlab")]
    if "train" in works:
        expected += [(model, "train", s, m) for s in strategies for m in ("plain", "captionlab")]
    for key in expected:
        assert key in rows, key
        row = rows[key]
        for field in ("per_s", "seconds", "joules", "j_per_unit", "units", "batch"):
            assert isinstance(row[field], (int, float)) and math.isfinite(row[field]) and row[field] > 0, (key, field)
        assert row["peak_gib"] is None  # CUDA only
    pairs = {(c["model"], c["work"], c["strategy"]) for c in report["comparisons"]}
    assert pairs == {k[:3] for k in expected if k[0] == model} | {p for p in pairs if p[0] != model}
    for c in report["comparisons"]:
        assert math.isfinite(c["speedup"]) and c["speedup"] > 0
    # training at equal loss: both ways' losses on the same captions agree (fp32 on the CPU: to rounding)
    for key in expected:
        if key[1] == "train" and key[3] == "captionlab":
            row = rows[key]
            assert row["loss_tokens"] > 0 and row["loss_rel_diff"] < 1e-5, (key, row["loss_plain"], row["loss_captionlab"])


def test_run_all_on_the_cpu_with_tiny_models(tmp_path):
    from bench import run_all

    out = tmp_path / "out"
    report = run_all.main(["--device", "cpu", "--models", "tiny,tiny-next", "--out", str(out), "--warmup", "0",
                           "--iters", "1"])
    check_rows(report, "tiny", ("caption", "train"), TRAIN_STRATEGIES)
    check_rows(report, "tiny-next", ("caption", "train"), TRAIN_STRATEGIES)
    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(report["rows"]))
    assert saved["environment"]["device"] == "cpu" and saved["environment"]["energy"]["method"]
    table = (out / "results.md").read_text()
    assert table.count("| tiny | train |") == 2 * len(TRAIN_STRATEGIES) + len(TRAIN_STRATEGIES)
    assert "speed-up" in table and "energy" in table
    assert saved["models"]["tiny-next"]["prefix_tokens"] > saved["models"]["tiny"]["prefix_tokens"]


def test_caption_script_alone(tmp_path):
    from bench import caption_throughput

    report = caption_throughput.main(["--device", "cpu", "--model", "tiny", "--out", str(tmp_path), "--images", "4",
                                      "--plain-batch", "2", "--batch", "4", "--new-tokens", "2", "--warmup", "0"])
    check_rows(report, "tiny", ("caption",), [])
    methods = [r["method"] for r in report["rows"]]
    assert methods == ["plain", "plain-large-batch", "captionlab-eager", "captionlab-uncompiled",
                       "captionlab-masked-steps", "captionlab-compiled-steps", "captionlab"]
    rows = {r["method"]: r for r in report["rows"]}
    for method in ("captionlab-masked-steps", "captionlab-compiled-steps", "captionlab"):
        compiled = rows[method]
        assert compiled["first_call_s"] > 0 and "note" not in compiled  # compiled (no eager fallback) and timed apart
        assert compiled["per_s"] > 0 and math.isfinite(compiled["per_s"])
    # the decoder's steps: exact-length by default on these unpadded batches, masked where the row asks for it
    assert {m: r["decoding_steps"] for m, r in rows.items() if m.startswith("captionlab")} == {
        "captionlab-eager": "exact-length", "captionlab-uncompiled": "exact-length",
        "captionlab-masked-steps": "masked", "captionlab-compiled-steps": "exact-length", "captionlab": "exact-length"}
    assert "masked steps" in rows["captionlab-masked-steps"]["setting"]
    assert "through the compiled layers" in rows["captionlab-compiled-steps"]["setting"]
    assert "exact-length steps" in rows["captionlab"]["setting"]
    # the decoder's tokens are plain generate()'s (fp32 on the CPU: exactly), both step kinds
    assert all(r["tokens_equal_plain"] is True for r in report["rows"] if r["method"].startswith("captionlab"))
    assert "tokens = plain generate's" in (tmp_path / "caption_throughput.md").read_text()
    assert all(r["tokens_agreement"] == 1.0 and r["first_differing_token"] is None
               for r in report["rows"] if r["method"].startswith("captionlab"))
    # the speed-up over plain at plain's batch, and over plain at captionlab's own batch (the batch alone)
    (c,) = report["comparisons"]
    assert (c["plain_batch"], c["captionlab_batch"]) == (2, 4)
    assert c["speedup"] == rows["captionlab"]["per_s"] / rows["plain"]["per_s"]
    assert c["speedup_same_batch"] == rows["captionlab"]["per_s"] / rows["plain-large-batch"]["per_s"]
    assert "speed-up vs plain at our batch" in (tmp_path / "caption_throughput.md").read_text()


def test_prefill_profile_splits_the_time_and_compares_the_compiled_prefill(tmp_path):
    from bench import prefill_profile

    report = prefill_profile.main(["--device", "cpu", "--model", "tiny", "--batch", "2", "--new-tokens", "8",
                                   "--repeats", "3", "--out", str(tmp_path)])
    timing, kernels = report["timing"], report["kernels"]
    assert 0 < timing["prefill_s"] < timing["caption_s"] and 0 < timing["prefill_share"] < 1
    assert kernels["ms_by_kind"]["matmul"] > 0 and kernels["ms_by_kind"]["attention"] > 0
    assert abs(sum(kernels["share_by_kind"].values()) - 1) < 1e-9 and kernels["top"]
    # FLOPs counted from the nn.Linear calls: at least the language model's layers over every prompt token
    from bench.common import make_setup

    setup = make_setup("tiny", "cpu")
    config = setup.model.config.text_config
    per_token_layer = 2 * config.hidden_size * (2 * config.hidden_size + 3 * config.intermediate_size)  # q, o, MLP
    lower = 2 * report["tokens_per_image"] * config.num_hidden_layers * per_token_layer  # batch 2
    assert report["matmul"]["linear_tflop_per_prefill"] * 1e12 >= lower
    assert report["compiled"]["error"] is None and report["compiled"]["prefill_s"] > 0
    # one decoding step of each kind, timed and split by kernel kind (the caption's kernels less the prefill's)
    steps = report["decoding_steps"]
    assert timing["decoding_steps"] == "exact-length"  # the decoder's default on this unpadded batch
    for kind in ("masked", "exact-length", "exact-length, compiled"):
        one = steps[kind]
        assert one["ran"] == one["asked"] == kind.split(",")[0] and one["steps"] == 7
        assert one["graph_error"] is None and one["compile_error"] is None
        # a step's time is the fastest caption less the fastest prefill; None where that fell under the timing noise
        assert (one["step_ms"] is None or one["step_ms"] > 0) and set(one["kernels"]["ms_by_kind"]) == {"matmul", "attention", "other"}
        # every step runs each layer's attention once, and its products (calls counted, unlike times, are exact)
        attention = [k for k in one["kernels"]["top"] if k["kind"] == "attention"]
        assert attention and attention[0]["calls"] == config.num_hidden_layers
        assert any(k["kind"] == "matmul" for k in one["kernels"]["top"])
    assert any(steps[kind]["step_ms"] for kind in prefill_profile.STEP_KINDS)  # 7 steps: one kind at least measured
    for ratio, (top, bottom) in {"exact_over_masked": ("exact-length", "masked"),
                                 "compiled_over_exact": ("exact-length, compiled", "exact-length")}.items():
        top_ms, bottom_ms = steps[top]["step_ms"], steps[bottom]["step_ms"]
        assert steps[ratio] == (top_ms / bottom_ms if top_ms and bottom_ms else None)
    text = (tmp_path / "prefill_profile-tiny.md").read_text()
    assert "prefill kernels" in text and "compiled prefill" in text
    assert "decoding step, masked" in text and "decoding step, exact-length" in text
    assert "decoding step, exact-length, compiled" in text


def test_train_profile_compares_strategies_step_by_step(tmp_path):
    from bench import train_profile

    report = train_profile.main(["--device", "cpu", "--model", "tiny", "--strategies", "lora,dora", "--repeats", "1",
                                 "--out", str(tmp_path)])
    lora, dora = report["steps"]["lora"], report["steps"]["dora"]
    assert lora["step_s"] > 0 and lora["captions_per_step"] == dora["captions_per_step"] > 0
    against = dora["against_lora"]
    assert against["step_ratio"] == dora["step_s"] / lora["step_s"]
    assert set(against["extra_ms_by_kind"]) == {"matmul", "attention", "other"} and against["grown_kernels"]
    assert "x the lora step" in (tmp_path / "train_profile-tiny.md").read_text()


def test_a_failing_section_is_recorded_and_the_others_kept(tmp_path, monkeypatch):
    from bench import run_all, train_throughput

    def broken(*args, **kwargs):
        raise RuntimeError("planted failure")

    monkeypatch.setattr(train_throughput, "run_train", broken)
    out = tmp_path / "out"
    report = run_all.main(["--device", "cpu", "--models", "tiny", "--out", str(out), "--warmup", "0", "--iters", "1",
                           "--keep-going"])
    check_rows(report, "tiny", ("caption",), [])
    assert report["errors"] == [{"model": "tiny", "work": f"train {s}", "error": "RuntimeError: planted failure"}
                                for s in TRAIN_STRATEGIES]
    assert "planted failure" in (out / "results.md").read_text()
    with pytest.raises(RuntimeError, match="planted"):  # without --keep-going the failure stops the run
        run_all.main(["--device", "cpu", "--models", "tiny", "--out", str(out), "--warmup", "0", "--iters", "1"])


@pytest.mark.parametrize("size", [(64, 64), (48, 32), (32, 64), (40, 90)])
def test_llava_next_image_token_count_matches_the_processor(tiny_llava_next_dir, size):
    from captionlab.models.loading import load_model
    from captionlab.models.registry import get_model_spec

    spec = get_model_spec(tiny_llava_next_dir)
    processor = load_model(spec, device="cpu").processor
    width, height = size
    inputs = processor(images=[Image.new("RGB", size)], text=["<image>"], return_tensors="pt")
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    tokens, tiles = llava_next_image_tokens(spec.config, height, width)
    assert tokens == int((inputs["input_ids"] == image_id).sum())
    assert tiles <= inputs["pixel_values"].shape[1]


def test_llava_16_reference_shape():
    from captionlab.models.registry import get_model_spec

    # the reference measurement: one 672x672 image = 2,928 image tokens, 5 tiles of 336 px
    assert llava_next_image_tokens(get_model_spec("llava-1.6-7b").config, 672, 672) == (2928, 5)


def test_oom_fallback_halves_the_batch_and_says_so():
    import torch

    from bench.common import with_oom_fallback

    tried = []

    def run(batch):
        tried.append(batch)
        if batch > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"per_s": 1.0}

    row = with_oom_fallback(run, 8, torch.device("cpu"))
    assert tried == [8, 4, 2] and row["batch"] == 2 and row["note"] == "out of memory at batch 8; out of memory at batch 4"


@pytest.mark.parametrize("name", ["llava-1.5-7b", "llava-1.6-7b"])
def test_the_7b_code_path_on_shrunk_configs(name):
    """Real geometry (576 / 2,928 image tokens, 48 prompt tokens, no tokenizer), tiny widths: the GPU path on the CPU.

    The plain rows and the packed rows of the benchmark compute the same loss on the same captions.
    """
    import torch

    from bench.common import make_setup
    from bench.train_throughput import attach, detach, packed_batch, per_caption_batch
    from captionlab.training.prefix_sharing import packed_loss_sum

    setup = make_setup(name, "cpu", shrink=True)
    assert setup.name == f"{name}-shrunk" and setup.tokenizer is None
    assert setup.info["prefix_tokens"] == 1 + 48 + (576 if name == "llava-1.5-7b" else 2928)
    generator = torch.Generator().manual_seed(0)
    pixels = setup.random_pixels(1, generator)
    captions = setup.random_captions(1, 2, 4, generator)
    strategy_name = "prompt_learning" if name == "llava-1.5-7b" else "prefix_tuning"
    model, strategy = attach(setup, strategy_name)
    prefix = setup.prefix_ids(strategy.prefix_slots)
    with torch.no_grad():
        plain = model(**per_caption_batch(setup, prefix, pixels, captions, 2)).loss * (2 * 4)
        packed, tokens = packed_loss_sum(model, packed_batch(setup, prefix, pixels, captions, 1))
    assert tokens == 8 and abs(float(packed - plain)) < 1e-4 * abs(float(plain))
    detach(setup, model, strategy)
    assert not any(p.requires_grad for p in setup.model.parameters())


def test_clip_probe_kind_views_name_only_the_kinds_a_caption_names():
    from bench.clip_probe import kind_view

    assert kind_view("An orange bird on the street.") == "a bird"
    assert kind_view("Two red boxes and a mug in a kitchen") == "a box and a cup"  # plural and synonym
    assert kind_view("A calm lake with a big orange crown and two white trees.") == "a crown and a tree"
    assert kind_view("a sailboat on the sea") == "a boat"
    assert kind_view("a quiet evening") == "a quiet evening"  # no kind named: the caption itself


def test_prefill_profile_says_when_the_steps_were_below_the_timing_noise(tmp_path, monkeypatch):
    """A caption timed no slower than its prefill gives no step time (not a negative one) and no ratios."""
    from bench import prefill_profile

    monkeypatch.setattr(prefill_profile, "fastest", lambda fn, device, repeats: (fn(), 0.004)[1])
    report = prefill_profile.main(["--device", "cpu", "--model", "tiny", "--batch", "2", "--new-tokens", "2",
                                   "--repeats", "1", "--no-compile", "--out", str(tmp_path)])
    steps = report["decoding_steps"]
    assert all(steps[kind]["step_ms"] is None for kind in prefill_profile.STEP_KINDS)
    assert steps["exact_over_masked"] is None and steps["compiled_over_exact"] is None
    text = (tmp_path / "prefill_profile-tiny.md").read_text()
    assert text.count("not measurable (the caption was no slower than its prefill") == 3


def test_one_failing_strategy_loses_only_its_rows_and_leaves_the_base_clean(tmp_path, monkeypatch):
    """A strategy that fails mid-way (out of memory at batch 1 on a GPU) costs only its own rows, and its adapter does
    not stay on the shared base model for the strategies after it."""
    from bench import run_all, train_throughput

    real = train_throughput.plain_loss

    def failing_for_lora(setup, model, *args, **kwargs):
        if any("lora_" in name for name, _ in model.named_modules()):
            raise RuntimeError("planted failure")
        return real(setup, model, *args, **kwargs)

    monkeypatch.setattr(train_throughput, "plain_loss", failing_for_lora)
    report = run_all.main(["--device", "cpu", "--models", "tiny", "--works", "train", "--strategies", "lora,full",
                           "--out", str(tmp_path), "--warmup", "0", "--iters", "1", "--keep-going"])
    assert report["errors"] == [{"model": "tiny", "work": "train lora", "error": "RuntimeError: planted failure"}]
    full = {r["method"]: r for r in report["rows"] if r["strategy"] == "full"}
    assert set(full) == {"plain", "captionlab"}
    # full fine-tuning trained the base itself (projector + LLM), not a base still wrapped in the failed LoRA
    from bench.common import make_setup

    base = make_setup("tiny", "cpu").model
    expected = sum(p.numel() for n, p in base.named_parameters() if "vision_tower" not in n)
    assert full["captionlab"]["trainable_parameters"] == expected


def test_an_interrupted_run_keeps_the_sections_it_finished(tmp_path, monkeypatch):
    """The report is written after every section: a run killed by its time box (gpu_session_perf.sh) keeps them."""
    from bench import run_all, train_throughput

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # what a time box's kill looks like from inside: not an Exception, never kept going

    monkeypatch.setattr(train_throughput, "run_train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_all.main(["--device", "cpu", "--models", "tiny", "--out", str(tmp_path), "--warmup", "0", "--iters", "1",
                      "--keep-going"])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert {r["method"] for r in saved["rows"] if r["work"] == "caption"} >= {"plain", "captionlab"}


def test_full_fine_tuning_rows_keep_float32_master_weights_as_the_trainer_does(tmp_path):
    """On a GPU the base is bf16; captionlab's trainer keeps full fine-tuning's weights in float32 under bf16 autocast
    (`Trainer._keep_float32_masters`). Both rows train that way, and the base is bf16 again afterwards."""
    import torch

    from bench.common import make_setup
    from bench.train_throughput import attach_with_sgd, detach, run_train

    setup = make_setup("tiny", "cpu", dtype=torch.bfloat16)
    model, strategy, params, optimizer, prefix, precision = attach_with_sgd(setup, "full")
    assert params and all(p.dtype == torch.float32 for p in params) and precision[0] == torch.bfloat16
    detach(setup, model, strategy, precision)
    assert {p.dtype for p in setup.model.parameters()} == {torch.bfloat16}
    # LoRA's adapters are float32 already (peft): nothing to keep, no autocast
    model, strategy, params, optimizer, prefix, precision = attach_with_sgd(setup, "lora")
    assert precision[0] is None
    detach(setup, model, strategy, precision)

    from captionlab.training.energy import EnergyMeter

    rows = run_train(setup, EnergyMeter("cpu").start(), ["full"], images=2, captions_per_image=2, caption_tokens=4,
                     plain_batch=2, packed_images=1, warmup=0, iters=1)
    assert [r["method"] for r in rows] == ["plain", "captionlab"]
    for row in rows:
        assert row["master_weights"] == "float32" and "float32 (master weights" in row["setting"]
    assert rows[1]["loss_rel_diff"] < 2e-2  # bf16 autocast: the same loss to bf16 rounding
    assert {p.dtype for p in setup.model.parameters()} == {torch.bfloat16}


def test_tokens_note_reports_agreement_without_claiming_a_cause():
    from bench.common import _tokens_note

    assert _tokens_note({}) == ""
    assert _tokens_note({"tokens_equal_plain": True}) == "tokens = plain generate's"
    note = _tokens_note({"tokens_equal_plain": False, "tokens_agreement": 0.25, "first_differing_token": 3})
    assert note == "tokens differ from plain generate's (25% of tokens equal, first difference at new token 3)"


def _gpu_session_commands():
    """Every `python3 -m bench.X ...` line of the one-command GPU scripts, as (script, module, argv)."""
    import re
    import shlex
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for script in ("gpu_session.sh", "gpu_session_perf.sh"):
        text = (root / "bench" / script).read_text().replace("\\\n", " ")
        for line in text.splitlines():
            found = re.search(r"python3 -m (bench\.\w+)(.*)", line.split("#", 1)[0])
            if found:
                args = re.split(r"\s(?:2>&1|\||>)", found.group(2))[0].replace('"$out"', "OUT").replace('"$@"', "")
                yield script, found.group(1), shlex.split(args)


@pytest.mark.parametrize("script, module, argv", list(_gpu_session_commands()),
                         ids=lambda v: v if isinstance(v, str) else None)
def test_the_gpu_session_scripts_call_the_bench_with_flags_and_names_it_knows(script, module, argv, monkeypatch):
    """A lent GPU gives one 15-minute session: a misspelt flag, model or strategy in the one command would spend
    it on an error. Each command's arguments go through its own parser (stopped right after parsing), and its model
    and strategy names through the registry and the bench's list."""
    import argparse
    import importlib

    from bench.common import TINY_MODELS
    from captionlab.models.registry import get_model_spec

    class Parsed(Exception):
        pass

    real_parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise Parsed(real_parse(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    with pytest.raises(Parsed) as parsed:
        importlib.import_module(module).main(argv)
    args = vars(parsed.value.args[0])
    models = [m for key in ("models", "model") for m in (args.get(key) or "").split(",") if m]
    if not models and module == "bench.run_all":
        from bench.run_all import DEFAULT_MODELS

        models = DEFAULT_MODELS["cuda"].split(",")
    for model in models:
        assert model in TINY_MODELS or get_model_spec(model)
    for strategy in (args.get("strategies") or "").split(","):
        assert not strategy or strategy in TRAIN_STRATEGIES, f"{script}: unknown strategy {strategy!r}"
    for work in (args.get("works") or "").split(","):
        assert not work or work in ("caption", "train"), f"{script}: unknown work {work!r}"


# --- issue #21's families: Qwen2.5-VL, SmolVLM (Idefics3), LLaVA-OneVision -------------------------------------------
# one size of each on shrunk configs (tiny widths, the registry config's geometry and vocabulary); (model, strategy
# trained, image, captions per image). Smaller images than the GPU rows' 480 x 640 keep each test a few seconds on two
# CPUs (the real vocabularies' logits dominate): Qwen2.5-VL 112 x 112 = 16 image tokens; LLaVA-OneVision 384 x 384 =
# 2 tiles (base + 1), 1,485 image tokens (its fewest: 480 x 640 is 5 tiles, 2,929), one caption.
SHRUNK_FAMILIES = [("qwen2.5-vl-3b", "lora", (112, 112), 2), ("smolvlm-256m", "prefix_tuning", None, 2),
                   ("llava-onevision-0.5b", "prompt_learning", (384, 384), 1)]


@pytest.mark.parametrize("name, strategy, image, captions", SHRUNK_FAMILIES, ids=[m[0] for m in SHRUNK_FAMILIES])
def test_the_new_families_bench_on_shrunk_configs(name, strategy, image, captions):
    """The bench builds each family's own inputs (image_grid_thw + mm_token_type_ids, pixel_attention_mask,
    image_sizes) without a processor; the plain and packed training rows compute the same loss (Qwen2.5-VL: with its
    3-D positions on both), and GreedyDecoder's tokens are plain generate()'s."""
    import torch

    from bench.caption_throughput import run_caption
    from bench.common import make_setup
    from bench.train_throughput import run_train
    from captionlab.training.energy import EnergyMeter

    torch.manual_seed(0)
    setup = make_setup(name, "cpu", shrink=True, image=image)
    assert setup.name == f"{name}-shrunk" and setup.tokenizer is None
    assert setup.info["prefix_tokens"] == 1 + 32 + setup.image_tokens and "stand in" in setup.info["prompt_note"]
    ids = setup.prefix_ids().unsqueeze(0)
    inputs = setup.image_inputs(setup.random_pixels(2, torch.Generator().manual_seed(0)))
    assert set(inputs) | set(setup.token_inputs(ids)) == set(setup.info["image_inputs"])
    meter = EnergyMeter("cpu").start()
    rows = run_train(setup, meter, [strategy], images=1, captions_per_image=captions, caption_tokens=4,
                     plain_batch=captions, packed_images=1, warmup=0, iters=1)
    assert [r["method"] for r in rows] == ["plain", "captionlab"]
    assert rows[1]["loss_tokens"] == 4 * captions and rows[1]["loss_rel_diff"] < 1e-5, rows[1]
    assert all(r["per_s"] > 0 and math.isfinite(r["per_s"]) for r in rows)
    rows = run_caption(setup, meter, images=captions, plain_batch=captions, batch=captions, new_tokens=3, warmup=0,
                       methods=("plain", "captionlab-eager"))
    assert [r["method"] for r in rows] == ["plain", "captionlab-eager"]
    assert rows[1]["tokens_equal_plain"] is True and rows[1]["per_s"] > 0
    assert not any(p.requires_grad for p in setup.model.parameters())  # the strategy came off again


def test_qwen_inputs_carry_the_image_grid_and_token_types_its_3d_positions_come_from():
    """Without mm_token_type_ids Qwen2.5-VL silently counts 1-D positions; the bench's inputs give it the grid and
    the image tokens, so text after the image counts on from the image's largest side (not from its token count)."""
    import torch

    from bench.common import make_setup

    setup = make_setup("qwen2.5-vl-3b", "cpu", shrink=True)
    assert setup.image_tokens == 17 * 23 and setup.pixel_shape == (34 * 46, 3 * 2 * 14 * 14)  # 476 x 644 resized
    ids = setup.prefix_ids().unsqueeze(0)
    types = setup.token_inputs(ids)["mm_token_type_ids"]
    assert int(types.sum()) == setup.image_tokens
    grid = setup.image_inputs(setup.random_pixels(1, torch.Generator()))["image_grid_thw"]
    assert grid.tolist() == [[1, 34, 46]]
    positions = setup.spec.family.prompt_position_ids(setup.model, {"input_ids": ids, "mm_token_type_ids": types,
                                                                     "image_grid_thw": grid,
                                                                     "attention_mask": torch.ones_like(ids)})
    assert positions.shape == (3, 1, ids.shape[1])
    assert int(positions.max()) == ids.shape[1] - setup.image_tokens + 23 - 1  # the image spans max(17, 23) positions


@pytest.mark.parametrize("name, image, tokens", [("qwen2.5-vl-7b", (480, 640), 391), ("smolvlm-256m", (480, 640), 64),
                                                 ("smolvlm-2.2b", (480, 640), 81),
                                                 ("llava-onevision-7b", (480, 640), 2929),
                                                 ("llava-onevision-0.5b", (384, 384), 1485)])
def test_the_published_configs_image_token_counts(name, image, tokens):
    """The counts the bench's GPU rows are built with, from each registry config (the processor checks are below)."""
    from captionlab.models.registry import get_model_spec

    spec = get_model_spec(name)
    assert spec.family.image_layout(spec.config, *image).tokens == tokens


@pytest.fixture(scope="module")
def tiny_family_folders(tmp_path_factory, tiny_tokenizer):
    from captionlab.models.tiny import save_tiny_llava

    return {arch: save_tiny_llava(tmp_path_factory.mktemp(arch), tiny_tokenizer, architecture=arch, seed=0)
            for arch in ("qwen2_5_vl", "idefics3", "llava_onevision")}


@pytest.mark.parametrize("architecture", ["qwen2_5_vl", "idefics3", "llava_onevision"])
def test_each_family_image_layout_matches_its_processor(tiny_family_folders, architecture):
    """`ModelFamily.image_layout` (config only) against the family's real processor class (built offline, as the tiny
    models ship it) on images of several sizes and shapes: the image tokens it writes, the pixel_values' shape per
    image and the other image inputs (image_grid_thw, image_sizes)."""
    from captionlab.models.loading import load_model
    from captionlab.models.registry import get_model_spec

    spec = get_model_spec(tiny_family_folders[architecture])
    processor = load_model(spec, device="cpu").processor
    family = spec.family
    image_id = processor.tokenizer.convert_tokens_to_ids(family.image_token)
    settings = {}
    if architecture == "qwen2_5_vl":
        size = processor.image_processor.size
        settings = {"min_pixels": size["shortest_edge"], "max_pixels": size["longest_edge"]}
    for width, height in [(64, 64), (48, 32), (32, 64), (40, 90), (100, 30)]:
        inputs = processor(images=[Image.new("RGB", (width, height))], text=[family.image_token], return_tensors="pt")
        layout = family.image_layout(spec.config, height, width, **settings)
        assert layout.tokens == int((inputs["input_ids"] == image_id).sum()), (width, height)
        pixels = inputs["pixel_values"]
        assert tuple(pixels.shape if layout.rows_concatenated else pixels.shape[1:]) == layout.pixel_shape, (width, height)
        for key, value in layout.values.items():
            assert inputs[key].tolist() == [value], (key, width, height)
        for key, shape in layout.masks.items():
            assert tuple(inputs[key].shape[1:]) == shape and bool(inputs[key].all()), key


@pytest.mark.parametrize("name", ["llava-onevision-7b", "qwen2.5-vl-7b"])
def test_the_published_geometry_counts_match_the_processor_class(tiny_tokenizer, name):
    """The registry config's own geometry in the family's processor class (built offline: a tiny tokenizer, the
    published image settings): large and lopsided images too, where LLaVA-OneVision's anyres_max_9 cap scales the
    tiles' features down and Qwen2.5-VL's resize snaps to 28-pixel multiples."""
    import transformers

    from captionlab.models.families.qwen2_5_vl import MAX_PIXELS, MIN_PIXELS
    from captionlab.models.registry import get_model_spec

    spec = get_model_spec(name)
    family, config = spec.family, spec.config
    tokenizer = family.tiny_tokenizer(tiny_tokenizer)
    if spec.architecture == "llava_onevision":
        size = {"height": 384, "width": 384}
        processor = transformers.LlavaOnevisionProcessor(
            image_processor=transformers.LlavaOnevisionImageProcessor(
                size=size, image_grid_pinpoints=config["image_grid_pinpoints"]),
            video_processor=transformers.LlavaOnevisionVideoProcessor(size=size), tokenizer=tokenizer,
            num_image_tokens=729, vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9")
    else:
        sizes = dict(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, patch_size=14, merge_size=2, temporal_patch_size=2)
        processor = transformers.Qwen2_5_VLProcessor(image_processor=transformers.Qwen2VLImageProcessor(**sizes),
                                                     video_processor=transformers.Qwen2VLVideoProcessor(**sizes),
                                                     tokenizer=tokenizer)
    image_id = tokenizer.convert_tokens_to_ids(family.image_token)
    for width, height in [(640, 480), (1500, 1500), (2000, 500), (300, 900)]:
        inputs = processor(images=[Image.new("RGB", (width, height))], text=[family.image_token], return_tensors="pt")
        layout = family.image_layout(config, height, width)
        assert layout.tokens == int((inputs["input_ids"] == image_id).sum()), (width, height)
        pixels = inputs["pixel_values"]
        assert tuple(pixels.shape if layout.rows_concatenated else pixels.shape[1:]) == layout.pixel_shape
