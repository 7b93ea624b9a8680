"""The trainer on tiny models: every strategy learns, resume after kill -9 is exact, DDP equals one process."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import free_port

from captionlab.paths import PROJECT_ROOT
from captionlab.training.checkpoint import CheckpointError, checkpoint_step, latest_good_checkpoint, load_checkpoint
from captionlab.training.config import ConfigError, resolve_config, save_config
from captionlab.training.run_folder import RunFolder
from captionlab.training.trainer import cosine_lr, train_run


def make_run(tmp_path: Path, model_dir: Path, world: Path, name: str = "run", **overrides) -> Path:
    values = dict(model=str(model_dir), dataset="coco", datasets_config=str(world), epochs=2, batch_size=16,
                  micro_batch_size=8, lr_max=0.5, lr_min=0.01, max_train_images=12, max_val_images=4,
                  checkpoint_every_steps=100, seed=0, device="cpu")
    values.update(overrides)
    run_dir = tmp_path / name
    run_dir.mkdir()
    save_config(resolve_config(None, values), run_dir / "config.yaml")
    return run_dir


def train_losses(run_dir: Path) -> list[float]:
    return [row["loss"] for row in RunFolder(run_dir).read_metrics() if "loss" in row]


def val_losses(run_dir: Path) -> list[float]:
    return [row["val_loss"] for row in RunFolder(run_dir).read_metrics() if row.get("event") == "val"]


@pytest.mark.parametrize("strategy", ["prompt_learning", "prefix_tuning", "lora", "dora", "full"])
def test_every_strategy_lowers_validation_loss(tmp_path, tiny_llava_dir, tiny_world, strategy):
    lr = {"full": 0.2, "lora": 0.5, "dora": 0.5}.get(strategy, 2.0)
    run_dir = make_run(tmp_path, tiny_llava_dir, tiny_world, strategy=strategy, lr_max=lr)
    assert train_run(run_dir) == 0
    run = RunFolder(run_dir)
    status = run.read_status()
    assert status["state"] == "finished", status
    losses = val_losses(run_dir)
    assert len(losses) == 3  # before training, then after each epoch
    assert min(losses[1:]) < losses[0]
    assert status["best_val_loss"] == pytest.approx(min(losses[1:]))
    for folder in (run.last_dir, run.best_dir):
        state, trainable, _ = load_checkpoint(folder)
        assert (folder / "artifact" / "strategy.json").exists()
    energy = run.read_energy()
    assert energy["method"] and energy["processes"] == 1 and energy["trainable_parameters"] > 0
    # the untrained model's validation pass is told apart: the epochs hold only what the paper's protocol runs
    assert energy["initial_validation_kwh"] > 0 and "not in the epochs" in energy["initial_validation_note"]
    first_row = next(r for r in run.read_metrics() if r.get("event") == "val" and r["epoch"] == 0)
    assert energy["initial_validation_kwh"] * 3.6e6 == pytest.approx(first_row["energy_j"], rel=0.05)
    after_epochs = run.read_metrics()[-1]["energy_j"] - first_row["energy_j"]  # the last row: the last validation
    assert energy["kwh_all_epochs"] * 3.6e6 == pytest.approx(after_epochs, rel=0.05)
    rows = [r for r in run.read_metrics() if "loss" in r]
    for key in ("step", "epoch", "loss", "lr", "grad_norm", "samples_per_s", "elapsed_s", "energy_j"):
        assert key in rows[-1]
    assert (run_dir / "config.yaml").exists()


def test_cosine_schedule_runs_from_lr_max_to_lr_min():
    assert cosine_lr(0, 100, 2e-2, 1e-5) == pytest.approx(2e-2)
    assert cosine_lr(100, 100, 2e-2, 1e-5) == pytest.approx(1e-5)
    assert cosine_lr(50, 100, 2e-2, 1e-5) == pytest.approx((2e-2 + 1e-5) / 2)


def trainer_process(run_dir: Path, resume: bool = False) -> subprocess.Popen:
    command = [sys.executable, "-m", "train", "run", "--run-dir", str(run_dir)] + (["--resume"] if resume else [])
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)


@pytest.mark.parametrize("packing", [{}, {"epoch_unit": "image_captions", "share_prefix": True}],
                         ids=["per_caption", "share_prefix"])
def test_kill_9_then_resume_gives_the_same_losses(tmp_path, tiny_llava_dir, tiny_world, packing):
    settings = dict(strategy="lora", batch_size=8, micro_batch_size=4, max_train_images=24, checkpoint_every_steps=3,
                    momentum=0.9, lr_max=0.2, **packing)
    reference = make_run(tmp_path, tiny_llava_dir, tiny_world, "reference", **settings)
    assert train_run(reference) == 0

    killed = make_run(tmp_path, tiny_llava_dir, tiny_world, "killed", **settings)
    process = trainer_process(killed)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and len(train_losses(killed)) < 8 and process.poll() is None:
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    done = len(train_losses(killed))
    total = len(train_losses(reference))
    assert 3 <= done < total, f"the kill must land mid-run (after {done} of {total} steps)"
    assert RunFolder(killed).read_status()["state"] == "running"  # what a crash leaves behind

    assert train_run(killed, resume=True) == 0
    resumed = {row["step"]: row["loss"] for row in RunFolder(killed).read_metrics() if "loss" in row}
    expected = {row["step"]: row["loss"] for row in RunFolder(reference).read_metrics() if "loss" in row}
    assert sorted(resumed) == sorted(expected)
    for step, loss in expected.items():
        assert resumed[step] == pytest.approx(loss, rel=1e-5, abs=1e-6), step
    assert val_losses(killed)[-1] == pytest.approx(val_losses(reference)[-1], rel=1e-5)


def test_corrupt_checkpoint_falls_back_to_the_previous_one(tmp_path, tiny_llava_dir, tiny_world):
    run_dir = make_run(tmp_path, tiny_llava_dir, tiny_world, strategy="prompt_learning", checkpoint_every_steps=1,
                       epochs=1, lr_max=1.0)
    assert train_run(run_dir) == 0
    last = run_dir / "last" / "trainable.safetensors"
    last.write_bytes(last.read_bytes()[:-7] + b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(run_dir / "last")
    passed_over: list[str] = []
    folder, (state, _, _) = latest_good_checkpoint(run_dir, passed_over)
    assert folder.name == "previous" and passed_over == [f"{run_dir / 'last'}: trainable.safetensors is missing or "
                                                        f"corrupt (checksum mismatch)"]
    (run_dir / "last" / "COMPLETE").unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        load_checkpoint(run_dir / "last")


def test_a_resume_that_falls_back_to_previous_logs_why(tmp_path, tiny_llava_dir, tiny_world, capsys):
    run_dir = make_run(tmp_path, tiny_llava_dir, tiny_world, strategy="prompt_learning", checkpoint_every_steps=1,
                       epochs=1, lr_max=1.0)
    assert train_run(run_dir) == 0
    (run_dir / "last" / "COMPLETE").unlink()  # killed while last/ was written
    capsys.readouterr()
    assert train_run(run_dir, resume=True) == 0
    out = capsys.readouterr().out
    assert f"checkpoint not used: {run_dir / 'last'}: incomplete checkpoint" in out
    assert out.index("checkpoint not used") < out.index("resumed from previous/")


def test_resume_drops_the_metrics_rows_written_after_its_checkpoint(tmp_path, tiny_llava_dir, tiny_world):
    """A crash between checkpoints: the resumed run redoes those steps, and each appears once in metrics.jsonl."""
    run_dir = make_run(tmp_path, tiny_llava_dir, tiny_world, strategy="lora", epochs=1, checkpoint_every_steps=3)
    assert train_run(run_dir) == 0
    run = RunFolder(run_dir)
    total = run.read_status()["total_steps"]
    restart = json.loads((run_dir / "previous" / "trainer_state.json").read_text())["step"]
    assert 0 < restart < total
    shutil.rmtree(run_dir / "last")  # the crash came before the last checkpoint: resume from previous/
    with run.metrics_path.open("a") as handle:
        handle.write('{"step": 99, "loss": 1.')  # and cut a row short
    assert train_run(run_dir, resume=True) == 0
    rows = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]  # every line whole
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, total + 1))
    assert [r["step"] for r in rows if r.get("event") == "val"] == [0, total]


def test_a_kill_right_after_an_epochs_checkpoint_still_gives_best_and_its_validation_row(tmp_path, tiny_llava_dir,
                                                                                       tiny_world, monkeypatch):
    """Between the epoch-end checkpoint and copying it to best/: the resumed run finishes that epoch's bookkeeping."""
    from captionlab.training import trainer as trainer_module

    class Killed(BaseException):
        """Stands for SIGKILL: nothing after it runs, no handler sees it."""

    def killed(self, checkpoint):
        raise Killed

    run_dir = make_run(tmp_path, tiny_llava_dir, tiny_world, strategy="prompt_learning", epochs=1, lr_max=1.0)
    monkeypatch.setattr(trainer_module.Trainer, "_publish_epoch", killed)
    with pytest.raises(Killed):
        train_run(run_dir)
    run = RunFolder(run_dir)
    total = checkpoint_step(run.last_dir)
    assert total and not run.best_dir.exists() and val_losses(run_dir)[1:] == []
    monkeypatch.undo()
    assert train_run(run_dir, resume=True) == 0
    assert checkpoint_step(run.best_dir) == total and (run.best_dir / "artifact" / "strategy.json").exists()
    assert [r["step"] for r in run.read_metrics() if r.get("event") == "val"] == [0, total]
    status = run.read_status()
    assert (status["state"], status["best_epoch"]) == ("finished", 1)
    assert status["best_val_loss"] == pytest.approx(val_losses(run_dir)[-1])
    assert run.read_energy()["best_epoch"] == 1


def test_a_kill_during_the_last_epochs_best_copy_resumes_at_the_end_of_that_epoch(tmp_path, tiny_llava_dir,
                                                                                   tiny_world, monkeypatch, capsys):
    """Killed while the last epoch's checkpoint was copied to best/: the resume says where it is (the end of epoch 2
    of 2), not in an "epoch 3" the run does not have, and finishes best/."""
    from captionlab.training import trainer as trainer_module

    class Killed(BaseException):
        """Stands for SIGKILL during the copy."""

    copies = []

    def copy_then_die(source, target):
        copies.append(target)
        if len(copies) == 2:
            (Path(target).with_name(".best.staging")).mkdir()  # the copy had begun
            raise Killed

    run_dir = make_run(tmp_path, tiny_llava_dir, tiny_world, strategy="prompt_learning", epochs=2, lr_max=1.0)
    monkeypatch.setattr(trainer_module, "copy_checkpoint", copy_then_die)
    with pytest.raises(Killed):
        train_run(run_dir)
    assert len(copies) == 2  # both epochs improved: the kill came in the last one's copy
    monkeypatch.undo()
    capsys.readouterr()
    assert train_run(run_dir, resume=True) == 0
    out = capsys.readouterr().out
    assert "(the end of epoch 2 of 2)" in out and "epoch 3" not in out, out
    run = RunFolder(run_dir)
    assert checkpoint_step(run.best_dir) == checkpoint_step(run.last_dir) and run.read_status()["state"] == "finished"


def test_read_metrics_counts_the_broken_lines_it_skips(tmp_path):
    run = RunFolder(tmp_path)
    run.append_metrics({"step": 1, "loss": 3.0})
    with run.metrics_path.open("a") as handle:
        handle.write('{"step": 2, "lo\n\n[1, 2\n')
    run.append_metrics({"step": 3, "loss": 1.0})
    rows, skipped = run.read_metrics_counted()
    assert [r["step"] for r in rows] == [1, 3] and skipped == 2 and run.read_metrics() == rows


def test_read_metrics_keeps_the_last_row_of_a_step_written_twice(tmp_path):
    run = RunFolder(tmp_path)
    for step, loss in [(1, 3.0), (2, 2.0), (3, 1.5), (2, 2.5), (3, 1.0), (4, 0.5)]:
        run.append_metrics({"step": step, "loss": loss})
    run.append_metrics({"event": "val", "step": 4, "val_loss": 0.7})
    assert [(r["step"], r.get("loss")) for r in run.read_metrics()] == [(1, 3.0), (2, 2.5), (3, 1.0), (4, 0.5),
                                                                       (4, None)]


@pytest.mark.parametrize("packing", [
    {},
    # whole images per step, shared between the processes; their micro-batch counts differ
    {"epoch_unit": "image_captions", "share_prefix": True, "batch_size": 16, "micro_batch_size": 6},
    # one image per step (5 captions > 4): the second process gets no group and must still join the all-reduce
    {"epoch_unit": "image_captions", "batch_size": 4, "micro_batch_size": 2},
], ids=["per_caption", "share_prefix", "image_per_step"])
def test_two_processes_give_the_same_losses_as_one(tmp_path, tiny_llava_dir, tiny_world, packing):
    settings = {**dict(strategy="lora", batch_size=8, micro_batch_size=2, epochs=1, max_train_images=8, lr_max=0.5),
                **packing}
    single = make_run(tmp_path, tiny_llava_dir, tiny_world, "single", **settings)
    assert train_run(single) == 0
    double = make_run(tmp_path, tiny_llava_dir, tiny_world, "double", **settings)
    # --multi_gpu selects accelerate's torchrun launcher; the trainer's Accelerator(cpu=True) then runs DDP on gloo
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--main_process_port", str(free_port()), "--mixed_precision", "no",
               "--dynamo_backend", "no",
               "-m", "train", "run", "--run-dir", str(double)]
    result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=240,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert train_losses(double) == pytest.approx(train_losses(single), rel=1e-4)
    assert val_losses(double) == pytest.approx(val_losses(single), rel=1e-4)
    assert json.loads((double / "energy.json").read_text())["processes"] == 2


def test_every_shipped_recipe_loads_and_validates():
    recipes = sorted((PROJECT_ROOT / "train" / "recipes").rglob("*.yaml"))
    assert len(recipes) >= 10
    for recipe in recipes:
        first_line = recipe.read_text().splitlines()[0]
        # the command that runs it: plain, or under accelerate for the multi-GPU (FSDP) ones
        assert first_line.startswith(("# python -m train run --recipe",
                                      "# accelerate launch --multi_gpu --num_processes")), recipe
        assert f"-m train run --recipe {recipe.parent.name}/{recipe.stem}" in first_line, recipe
        config = resolve_config(recipe, [])
        # the strategy is named by the file (llava-1.5-7b/lora.yaml) or by its folder (clip-captioner/coco.yaml)
        assert config.strategy in recipe.stem or config.strategy.replace("_", "-") in recipe.parent.name, recipe


@pytest.mark.parametrize("override, field", [
    ("lr_max=-1", "lr_max"), ("strategy=banana", "strategy"), ("strategy=zero_shot", "strategy"),
    ("epochs=0", "epochs"), ("batch_size=abc", "batch_size"), ("no_such_key=1", "no_such_key"),
    ("micro_batch_size=64", "micro_batch_size"), ("dataset=", "dataset"),
])
def test_bad_values_are_rejected_naming_the_field(override, field):
    with pytest.raises(ConfigError, match=f"^{field}"):
        resolve_config("llava-1.5-7b/lora", [override])


def test_missing_dataset_is_rejected_before_training(tmp_path, tiny_llava_dir, tiny_world):
    run_dir = make_run(tmp_path, tiny_llava_dir, tiny_world, dataset="karpathy:/nonexistent/dataset_coco.json")
    assert train_run(run_dir) == 1
    status = RunFolder(run_dir).read_status()
    assert status["state"] == "failed" and "/nonexistent/dataset_coco.json" in status["message"]


def test_image_captions_epochs_keep_each_images_captions_together_in_whole_image_steps(tiny_world):
    from captionlab.training.samples import caption_samples, epoch_groups, epoch_samples, split_steps
    from captionlab.training.trainer import load_split

    config = resolve_config(None, dict(dataset="coco", datasets_config=str(tiny_world), max_train_images=12))
    records = load_split(config, "train", 12)
    groups = epoch_groups(records, "image_captions", 0, 1)
    assert sorted(g[0].image_id for g in groups) == sorted(r.image_id for r in records if r.references)
    assert all(len({s.image_id for s in g}) == 1 for g in groups)
    assert sorted(map(repr, epoch_samples(records, "image_captions", 0, 1))) == sorted(map(repr, caption_samples(records)))
    assert epoch_groups(records, "image_captions", 0, 1) == groups  # only (seed, epoch) decide
    assert epoch_groups(records, "image_captions", 0, 2) != groups
    steps = split_steps(groups, 8)
    assert [g for step in steps for g in step] == groups
    for index, step in enumerate(steps):
        size = sum(len(g) for g in step)
        assert len(step) >= 1 and (size <= 8 or len(step) == 1)
        if index + 1 < len(steps):  # greedy: the next image would not have fitted
            assert size + len(steps[index + 1][0]) > 8
    # one sample per group for the other units: the plain split into batch_size chunks
    singles = epoch_groups(records, "caption", 0, 1)
    assert [len(step) for step in split_steps(singles, 8)] == [len(singles[i:i + 8]) for i in range(0, len(singles), 8)]


@pytest.mark.parametrize("strategy", ["lora", "prompt_learning"])
def test_share_prefix_gives_the_same_losses_as_one_sequence_per_caption(tmp_path, tiny_llava_dir, tiny_world, strategy):
    settings = dict(strategy=strategy, epoch_unit="image_captions", epochs=1, batch_size=12, micro_batch_size=6,
                    max_train_images=8, max_val_images=3, momentum=0.0, lr_max=0.5 if strategy == "lora" else 2.0)
    per_caption = make_run(tmp_path, tiny_llava_dir, tiny_world, "per_caption", share_prefix=False, **settings)
    shared = make_run(tmp_path, tiny_llava_dir, tiny_world, "shared", share_prefix=True, **settings)
    assert train_run(per_caption) == 0 and train_run(shared) == 0
    assert len(train_losses(shared)) >= 2
    assert train_losses(shared) == pytest.approx(train_losses(per_caption), rel=1e-5)
    assert val_losses(shared) == pytest.approx(val_losses(per_caption), rel=1e-5)
    # the run really moved: a step changed the loss, and the epoch ended below where it started
    assert val_losses(shared)[-1] != pytest.approx(val_losses(shared)[0], rel=1e-4)


@pytest.mark.parametrize("overrides", [
    ["share_prefix=true"],  # the recipe's epoch_unit is caption
    ["share_prefix=true", "epoch_unit=image"],
    ["share_prefix=maybe", "epoch_unit=image_captions"],
])
def test_share_prefix_needs_image_captions_epochs(overrides):
    with pytest.raises(ConfigError, match="^share_prefix:"):
        resolve_config("llava-1.5-7b/lora", overrides)
    assert resolve_config("llava-1.5-7b/lora", ["share_prefix=true", "epoch_unit=image_captions"]).share_prefix is True


def test_share_prefix_is_rejected_for_the_clip_captioner():
    with pytest.raises(ConfigError, match="^share_prefix:.*clip_captioner"):
        resolve_config("embedded/clip_captioner", ["share_prefix=true", "epoch_unit=image_captions"])


def test_a_diverging_run_fails_saying_so_and_keeps_no_nan_checkpoint(tmp_path, tiny_llava_dir, tiny_world):
    """At lr 1e6 the loss turns NaN: the run used to train on, pick the NaN epoch as best and say "finished"."""
    import math

    import torch

    run_dir = make_run(tmp_path, tiny_llava_dir, tiny_world, strategy="full", lr_max=1e6, lr_min=1e6, epochs=3,
                       checkpoint_every_steps=1)
    assert train_run(run_dir) == 1
    run = RunFolder(run_dir)
    status = run.read_status()
    assert status["state"] == "failed" and "the run diverged" in status["message"], status
    assert "lower lr_max (now 1e+06)" in status["message"] and "max_grad_norm" in status["message"]
    assert status.get("best_val_loss") is None  # no NaN epoch was taken as the best
    assert not run.best_dir.exists()
    rows = run.read_metrics()
    assert all(math.isfinite(row.get("loss", 0.0)) and math.isfinite(row.get("val_loss", 0.0)) for row in rows)
    if run.last_dir.exists():  # what was checkpointed came before the divergence
        _, trainable, _ = load_checkpoint(run.last_dir)
        assert all(bool(torch.isfinite(t).all()) for t in trainable.values())


@pytest.mark.parametrize("packing", [{}, {"epoch_unit": "image_captions", "share_prefix": True}],
                         ids=["per_caption", "share_prefix"])
def test_validation_builds_one_global_batch_at_a_time(tmp_path, tiny_llava_dir, tiny_world, packing):
    """A whole split's micro-batches on the device at once would not fit at real scale (Karpathy val's pixels alone
    are ~34 GB on LLaVA-1.5): validation builds a batch_size of captions, runs it and lets it go, to the same loss."""
    from captionlab.training.samples import caption_samples, image_groups
    from captionlab.training.trainer import Trainer

    run_dir = make_run(tmp_path, tiny_llava_dir, tiny_world, strategy="lora", batch_size=5, micro_batch_size=5,
                       max_val_images=6, **packing)
    trainer = Trainer(run_dir, resume=False)
    samples = caption_samples(trainer.val_records)
    assert len(samples) == 25  # 5 validation images (the tiny world has 5) x 5 captions
    built = []
    real = trainer._batches
    trainer._batches = lambda groups: built.append(sum(len(g) for g in groups)) or real(groups)
    loss = trainer.validation_loss()
    assert sum(built) == 25 and max(built) <= 5 and len(built) == 5

    groups = image_groups(samples) if trainer.packed else [[s] for s in samples]
    with torch.no_grad():  # the whole split at once, as before
        trainer.model.eval()
        batches = real(groups)
        whole = sum(float(trainer._forward_loss_sum(b)) for b in batches) / sum(trainer._token_count(b) for b in batches)
    assert loss == pytest.approx(whole, rel=1e-5)


def test_full_fine_tuning_of_a_half_precision_model_keeps_float32_master_weights(tmp_path, tiny_llava_dir, tiny_world,
                                                                                 monkeypatch, capsys):
    """On a GPU the model loads in bf16; SGD on bf16 weights would round most small updates away."""
    from captionlab.models import loading
    from captionlab.training.samples import caption_samples
    from captionlab.training.trainer import Trainer

    monkeypatch.setattr(loading, "default_dtype", lambda device: torch.bfloat16)  # as on CUDA
    run_dir = make_run(tmp_path, tiny_llava_dir, tiny_world, strategy="full", lr_max=1e-5, lr_min=1e-5,
                       batch_size=4, micro_batch_size=4)
    trainer = Trainer(run_dir, resume=False)
    assert trainer.loaded.dtype == torch.bfloat16
    assert {p.dtype for p in trainer.params.values()} == {torch.float32}
    vision = trainer.loaded.model.model.vision_tower
    assert {p.dtype for p in vision.parameters()} == {torch.bfloat16}  # frozen parts stay as loaded
    assert "trainable parameters kept in float32 (master weights), the forward under bfloat16 autocast" in capsys.readouterr().out
    before = {name: p.detach().clone() for name, p in trainer.params.items()}
    groups = [[s] for s in caption_samples(trainer.train_records)[:4]]
    metrics = trainer.train_step(groups)
    assert math.isfinite(metrics["loss"])
    changed = [(before[n] != p.detach()) for n, p in trainer.params.items()]
    moved = sum(int(c.sum()) for c in changed)
    total = sum(c.numel() for c in changed)
    # in bf16 an update of 1e-5 x grad moves almost no weight (an audit found 99.8% of them lost); in float32 most move
    assert moved / total > 0.5, (moved, total)


@pytest.mark.parametrize("strategy", ["lora", "dora"])
def test_a_configs_lora_rank_and_alpha_reach_the_low_rank_strategies(tiny_llava_dir, strategy):
    """The strategy says it takes (rank, alpha) (`takes_lora_settings`); the trainer does not list names."""
    from captionlab.training.trainer import load_for_training

    config = resolve_config(None, dict(model=str(tiny_llava_dir), strategy=strategy, lora_rank=3, lora_alpha=5,
                                       device="cpu"))
    loaded, built = load_for_training(config, torch.device("cpu"))
    adapter = loaded.model.peft_config[built.adapter_name]
    assert (built.rank, built.alpha, adapter.r, adapter.lora_alpha) == (3, 5, 3, 5)


def test_a_starting_run_says_what_it_prepares_before_its_first_step(tmp_path, tiny_llava_dir, tiny_world, monkeypatch):
    """A queued run's status names the model load and the dataset read (a first-use world takes a while), not
    the launcher's 'launching' until the first step."""
    from captionlab.training import trainer as trainer_module

    run_dir = make_run(tmp_path, tiny_llava_dir, tiny_world, strategy="lora")
    run = RunFolder(run_dir)
    run.write_status(state="queued", message="launching")
    seen = []
    for name in ("load_for_training", "load_split"):
        real = getattr(trainer_module, name)

        def spy(*args, _real=real, **kwargs):
            seen.append(run.read_status()["message"])
            return _real(*args, **kwargs)

        monkeypatch.setattr(trainer_module, name, spy)
    trainer_module.Trainer(run_dir, resume=False).close()
    assert seen[0].startswith("loading ") and seen[0].endswith(" for lora")
    assert seen[1].startswith("reading dataset ") and "first use" in seen[1] and seen[2] == seen[1]
    assert run.read_status()["state"] == "queued"
