"""`python -m train zoo`: rebuild the whole embedded study from nothing, with progress.

Steps (each skipped when its output already exists; delete a folder to redo it):
  world          generate the embedded caption world (workspace/world)
  clip           train the tokenizer and the tiny CLIP             -> <out>/clip
  probe          linear probes of the CLIP's vision tower (and of the raw pixels) -> <out>/results/vision_probe.json
  base           pretrain the tiny LLaVA: brief captions, then verbose descriptions -> <out>/base
  personalize    train every strategy on the coco domain (the real trainer, paper recipe)
                                                                   -> <out>/strategies/<name>, <out>/runs/<name>
  clip_captioner train the CLIP-Captioner baseline: cross-entropy   -> <out>/clip_captioner_xe, then SCST from it
                                                                   -> <out>/clip_captioner
  evaluate       caption and score all seven captioners on all five domains -> <out>/results
  checks         CLIP-Score of each captioner's coco test captions against a shuffled pairing
                                                                   -> <out>/results/<key>/coco/shuffled_clip_score.json
  report         write the embedded study's tables (<out>/results/tables.md) and the gallery

`python -m train study --model embedded` is the same study through the real study's command (captionlab/study/):
it runs this module's world, clip and base steps where their output is missing (the shipped clip/ and base/ are
used as they are), then the same recipes, grid and report into the workspace (<workspace>/studies/embedded),
resumably; this command alone rebuilds the shipped folder.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from captionlab import paths
from captionlab.names import CLIP_CAPTIONER, COMPARE_ORDER, TRAINABLE_STRATEGIES

STEPS = ["world", "clip", "probe", "base", "personalize", "clip_captioner", "evaluate", "checks", "report"]
CLIP_EPOCHS = 6  # over 9000 images (coco train and both pretraining pools): 426 steps
# At 2e-3 contrastive training discarded object kind: a linear probe of the patch tokens LLaVA's projector reads
# named the first object's kind for 29% of coco val+test images, against 45% for an untrained tower and 46% from
# raw pixels, and the personalised captions repeated a likely kind. At 5e-4 the probe gets 43%
# (bench/clip_probe.py, bench/RESULTS.md "Tiny CLIP").
CLIP_LR = 5e-4
# The caption-words objective beside InfoNCE (captionlab.embedded.clip.caption_words_loss): see bench/RESULTS.md
# "Tiny CLIP, world v3" for what it does to the probe.
CLIP_WORD_WEIGHT = 1.0
PERSONALIZED = TRAINABLE_STRATEGIES
CLIP_CAPTIONER_XE = "clip_captioner_xe"  # the CLIP-Captioner's cross-entropy stage; its SCST stage ships as clip_captioner


def _say(message: str) -> None:
    print(f"[zoo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def world_config() -> Path:
    return paths.world_dir() / "datasets.yaml"


def step_world(out: Path) -> None:
    from captionlab.world import write_world

    if world_config().exists():
        _say(f"world: exists at {paths.world_dir()}")
        return
    started = time.monotonic()
    write_world(paths.world_dir(), seed=0, scale=1.0)
    _say(f"world: written in {time.monotonic() - started:.0f}s")


def _world_texts_and_pairs():
    """Texts for the tokenizer (every domain's captions and both pretraining sets) and (image, captions) pairs
    for the CLIP (coco train and the two pretraining pools only: no evaluation image is seen in training)."""
    from captionlab.data.datasets import load_records

    config = world_config()
    texts, pairs = [], []
    for name in ("coco", "nocaps", "cc3m", "vizwiz", "textcaps"):
        split = "train" if name == "coco" else None
        for record in load_records(name, split=split, config=config):
            texts.extend(record.references)
            if name == "coco":
                pairs.append((record.image_path, list(record.references)))
    conversations = load_conversations()
    for path, prompt, answer in [*conversations, *load_conversations("pretrain_brief")]:
        texts.extend([prompt, answer])
        pairs.append((path, [answer]))
    from captionlab.models.registry import VICUNA_TEMPLATE
    from captionlab.models.tiny import TINY_SYSTEM_PROMPT

    texts.extend([TINY_SYSTEM_PROMPT, VICUNA_TEMPLATE] * 50)
    return texts, pairs, conversations


def load_conversations(key: str = "pretrain") -> list[tuple[Path, str, str]]:
    """One of the world's pretraining sets (LLaVA conversation format) as (image, prompt, answer) triples:
    "pretrain" (verbose answers) or "pretrain_brief" (short captions under brief-description instructions)."""
    import yaml

    spec = yaml.safe_load(world_config().read_text())[key]
    root = world_config().parent
    items = json.loads((root / spec["annotations"]).read_text())
    triples = []
    for item in items:
        human, gpt = item["conversations"][0]["value"], item["conversations"][1]["value"]
        triples.append((root / spec["images"] / item["image"], human.replace("<image>", "").strip(), gpt))
    return triples


def step_clip(out: Path) -> None:
    from captionlab.embedded.clip import train_clip
    from captionlab.embedded.shapes import VOCAB_SIZE
    from captionlab.embedded.tokenizers import build_llava_tokenizer, clip_tokenizer_from

    if (out / "clip" / "config.json").exists():
        _say("clip: exists")
        return
    texts, pairs, _ = _world_texts_and_pairs()
    tokenizer = build_llava_tokenizer(texts, VOCAB_SIZE)
    tokenizer.save_pretrained(out / "tokenizer")
    _say(f"tokenizer: {len(tokenizer)} tokens; training the tiny CLIP on {len(pairs)} images")
    train_clip(pairs, clip_tokenizer_from(tokenizer), out / "clip", epochs=CLIP_EPOCHS, lr=CLIP_LR,
               word_weight=CLIP_WORD_WEIGHT, progress=_say)


def step_probe(out: Path) -> None:
    """What the vision tower reads (captionlab.embedded.probe), beside the same probe on the raw pixels."""
    import transformers

    from captionlab.embedded.probe import load_probe_images, probe_vision_tower
    from captionlab.embedded.shapes import LLAVA_SHAPE

    target = out / "results" / "vision_probe.json"
    if target.exists():
        _say("probe: exists")
        return
    clip = transformers.CLIPModel.from_pretrained(out / "clip", use_safetensors=True)
    size = LLAVA_SHAPE.image_size
    loaded = load_probe_images(paths.world_dir(), size)
    tower = probe_vision_tower(clip, paths.world_dir(), size, loaded=loaded)
    pixels = probe_vision_tower(None, paths.world_dir(), size, pixels=True, loaded=loaded)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({"tower": tower, "raw_pixels": pixels, "image_size": size,
                                  "features": "patch tokens of hidden_states[-2], flattened (what LLaVA's projector "
                                              "reads)"}, indent=1, sort_keys=True) + "\n")
    _say(f"probe: main object's kind on coco val+test {tower['kind/coco']:.1%} (raw pixels {pixels['kind/coco']:.1%})")


def step_base(out: Path) -> None:
    from transformers import AutoTokenizer

    from captionlab.embedded.base import pretrain_base

    if (out / "base" / "model.safetensors").exists():
        _say("base: exists")
        return
    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    brief, verbose = load_conversations("pretrain_brief"), load_conversations("pretrain")
    _say(f"base: pretraining the tiny LLaVA on {len(brief)} brief captions, then {len(verbose)} verbose conversations")
    pretrain_base(brief, verbose, tokenizer, out / "clip", out / "base", progress=_say)


def build_zoo(out: Path, steps: list[str] | None = None) -> int:
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    chosen = steps or STEPS
    unknown = [s for s in chosen if s not in STEPS]
    if unknown:
        print(f"error: unknown zoo step(s) {unknown}; steps are {STEPS}")
        return 2
    started = time.monotonic()
    for name in STEPS:
        if name in chosen:
            _say(f"step {name}")
            globals()[f"step_{name}"](out)
    _say(f"done in {(time.monotonic() - started) / 60:.1f} min")
    return 0


def _train_recipe(recipe: str, run_dir: Path, overrides: dict | None = None) -> Path:
    """Run one recipe through the real trainer into run_dir (resuming a half-done run)."""
    from captionlab.training.config import resolve_config, save_config
    from captionlab.training.run_folder import RunFolder
    from captionlab.training.trainer import train_run

    run = RunFolder(run_dir)
    if run.read_status().get("state") == "finished":
        return run_dir
    resume = (run_dir / "last" / "COMPLETE").exists()
    if not resume:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        save_config(resolve_config(recipe, overrides or {}), run_dir / "config.yaml")
    if train_run(run_dir, resume=resume) != 0 or run.read_status().get("state") != "finished":
        raise RuntimeError(f"training {recipe} failed: {run.read_status().get('message')} (log: {run_dir})")
    return run_dir


def _ship_run(run_dir: Path, artifact_target: Path, runs_target: Path) -> None:
    """Copy the best artifact (fp16 where it saves space) and the run's record (no checkpoints)."""
    from captionlab.training.run_folder import RunFolder

    if artifact_target.exists():
        shutil.rmtree(artifact_target)
    shutil.copytree(run_dir / "best" / "artifact", artifact_target)
    _to_fp16(artifact_target)
    runs_target.mkdir(parents=True, exist_ok=True)
    for name in ("config.yaml", "metrics.jsonl", "status.json", "energy.json"):
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, runs_target / name)
    RunFolder(runs_target).write_status(note="shipped record of the embedded study's run; checkpoints in "
                                        f"{artifact_target.relative_to(paths.PROJECT_ROOT)}")


def _to_fp16(folder: Path) -> None:
    """Store float32 safetensors as float16 (the shipped checkpoints stay a few tens of MB)."""
    import torch
    from safetensors.torch import load_file, save_file

    for file in folder.rglob("*.safetensors"):
        tensors = load_file(str(file))
        if any(t.dtype == torch.float32 for t in tensors.values()):
            save_file({k: (v.half() if v.dtype == torch.float32 else v).contiguous() for k, v in tensors.items()},
                      str(file), metadata={"format": "pt"})


def step_personalize(out: Path) -> None:
    for strategy in PERSONALIZED:
        target = out / "strategies" / strategy
        if (target / "strategy.json").exists():
            _say(f"personalize {strategy}: exists")
            continue
        started = time.monotonic()
        run_dir = paths.workspace() / "zoo_runs" / strategy
        _train_recipe(f"embedded/{strategy}", run_dir)
        _ship_run(run_dir, target, out / "runs" / strategy)
        _say(f"personalize {strategy}: done in {time.monotonic() - started:.0f}s")


def step_clip_captioner(out: Path) -> None:
    """Barraco et al.'s two stages: cross-entropy (shipped as clip_captioner_xe), then SCST from that artifact."""
    target = out / "clip_captioner"
    if target.exists() and any(target.glob("*.safetensors")):
        _say("clip_captioner: exists")
        return
    for key in (CLIP_CAPTIONER_XE, CLIP_CAPTIONER):
        started = time.monotonic()
        run_dir = paths.workspace() / "zoo_runs" / key
        _train_recipe(f"embedded/{key}", run_dir)
        _ship_run(run_dir, out / key, out / "runs" / key)
        _say(f"{key}: done in {time.monotonic() - started:.0f}s")


def step_evaluate(out: Path) -> None:
    """All seven captioners on all five domains; results.json + predictions shipped under results/."""
    from captionlab.evaluation.evaluator import DEFAULT_DATASETS, evaluate_grid

    results_dir = out / "results"
    db_path = paths.workspace() / "zoo_results.db"
    grid = evaluate_grid(
        "embedded", strategies=COMPARE_ORDER, datasets=DEFAULT_DATASETS,
        checkpoints=out, config_path=world_config(), db_path=db_path,
        on_skip=lambda what, why: _say(f"evaluate: skipped {what}: {why}"),
        on_result=lambda r: _say(f"evaluate {r.strategy} on {r.dataset}: CIDEr {r.metrics.get('CIDEr')}"),
    )
    if grid.failed:
        raise RuntimeError(f"evaluations failed: {grid.failed}")
    for result in grid.results:
        target = results_dir / result.strategy / result.dataset
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(result.predictions_path, target / "predictions.jsonl")
        data = json.loads(Path(result.results_path).read_text())
        # the shipped copy points at the shipped predictions, relative to the project
        data["result"]["predictions_path"] = str((target / "predictions.jsonl").relative_to(paths.PROJECT_ROOT))
        (target / "results.json").write_text(json.dumps(data, indent=1, sort_keys=True, default=str))
    _say(f"evaluate: {len(grid.results)} evaluations written to {results_dir}")


def step_checks(out: Path) -> None:
    """No-collapse check: captions must match their own image better than another image's (CLIP-S)."""
    from captionlab.data.datasets import load_records
    from captionlab.evaluation.clipscore import HFClipEncoder, clip_score

    encoder = HFClipEncoder(out / "clip", name="embedded-tiny-clip")
    records = {r.image_id: r for r in load_records("coco", split="test", config=world_config())}
    for predictions_file in sorted((out / "results").glob("*/coco/predictions.jsonl")):
        rows = [json.loads(line) for line in predictions_file.read_text().splitlines() if line.strip()]
        captions = {str(r["image_id"]): r["caption"] for r in rows if "image_id" in r and str(r["image_id"]) in records}
        ids = sorted(captions)
        images = [records[i].image_path for i in ids]
        matched = clip_score(encoder, images, [captions[i] for i in ids]).clip_score
        shifted = ids[1:] + ids[:1]  # every image paired with another image's caption
        shuffled = clip_score(encoder, images, [captions[i] for i in shifted]).clip_score
        summary = {"clip_score": matched, "clip_score_shuffled": shuffled, "n_images": len(ids),
                   "encoder": "embedded-tiny-clip", "pairing": "each image with the next image's caption"}
        (predictions_file.parent / "shuffled_clip_score.json").write_text(json.dumps(summary, indent=1) + "\n")
        _say(f"checks {predictions_file.parent.parent.name}: CLIP-S {matched:.3f} vs shuffled {shuffled:.3f}")


def step_report(out: Path) -> None:
    from captionlab import report
    from captionlab.service.gallery import write_gallery

    if not (out / "gallery" / "gallery.json").exists():
        write_gallery(out / "gallery", n=10, seed=0)
    report.main(["--checkpoints", str(out), "--readme", str(paths.PROJECT_ROOT / "README.md")])
    write_manifest(out)


def recipe_hash(recipe: str) -> str:
    """Hash of a recipe's resolved config (what a shipped run must have been trained with)."""
    import hashlib

    from captionlab.training.config import resolve_config

    config = resolve_config(recipe, {}).to_dict()
    config.pop("recipe", None)
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def write_manifest(out: Path) -> Path:
    """manifest.json: every shipped file's sha256 and, per trained run, the hash of its recipe."""
    import hashlib

    files = {}
    for file in sorted(out.rglob("*")):
        if file.is_file() and file.name != "manifest.json":
            files[str(file.relative_to(out))] = hashlib.sha256(file.read_bytes()).hexdigest()
    recipes = {s: {"recipe": f"embedded/{s}", "config_sha256": recipe_hash(f"embedded/{s}")}
               for s in [*PERSONALIZED, CLIP_CAPTIONER_XE, CLIP_CAPTIONER]
               if (out / "runs" / s / "config.yaml").exists()}
    manifest = out / "manifest.json"
    manifest.write_text(json.dumps({"files": files, "recipes": recipes}, indent=1, sort_keys=True) + "\n")
    return manifest
