"""distributed: fsdp on the CPU: two gloo processes with FSDP2 compute what one process does, the checkpoint is
the same full-tensor format, resume under FSDP continues exactly, and misuse is refused naming the field.

accelerate keeps FSDP off for MULTI_CPU, so on gloo the trainer calls accelerate's fsdp2_prepare_model itself
(captionlab/training/fsdp.py); on GPUs accelerate's own FSDP2 path runs it (scripts/gpu_smoke_fsdp.sh).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port

from captionlab.paths import PROJECT_ROOT
from captionlab.training.checkpoint import load_checkpoint
from captionlab.training.config import ConfigError, resolve_config
from captionlab.training.run_folder import RunFolder
from captionlab.training.trainer import train_run
from test_trainer import make_run, val_losses

# momentum (optimizer state to shard and restore) and clipping (grad norm 1.3-1.9 > 1: the clip is active);
# 8 images x 5 captions / 8 = 5 steps an epoch; checkpoints at steps 4, 5 (epoch end), 8, 10 (end): previous/ is step 8
SETTINGS = dict(strategy="full", batch_size=8, micro_batch_size=2, epochs=2, max_train_images=8, lr_max=0.2,
                momentum=0.9, max_grad_norm=1.0, checkpoint_every_steps=4)


def launch_fsdp(run_dir: Path, processes: int = 2, resume: bool = False) -> None:
    """The 2-process gloo launch of test_trainer's DDP test; the run's `distributed: fsdp` picks FSDP2."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--main_process_port", str(free_port()), "--mixed_precision", "no",
               "--dynamo_backend", "no",
               "-m", "train", "run", "--run-dir", str(run_dir)] + (["--resume"] if resume else [])
    result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=240,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "FSDP2 (accelerate's fsdp2_prepare_model on a CPU mesh): 2 process(es)" in result.stdout, result.stdout[-3000:]


def step_rows(run_dir: Path) -> dict[int, dict]:
    """Training rows by step (a resumed run appends the replayed steps again: the last row wins)."""
    return {row["step"]: row for row in RunFolder(run_dir).read_metrics() if "loss" in row}


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory, tiny_llava_dir, tiny_world):
    """(one process, plain) and (two processes, FSDP2): the same full fine-tuning run."""
    root = tmp_path_factory.mktemp("fsdp")
    single = make_run(root, tiny_llava_dir, tiny_world, "single", **SETTINGS)
    assert train_run(single) == 0
    double = make_run(root, tiny_llava_dir, tiny_world, "double", distributed="fsdp", **SETTINGS)
    launch_fsdp(double)
    return single, double


def test_two_fsdp_processes_give_the_same_losses_and_checkpoint_as_one(fsdp_runs):
    single, double = fsdp_runs
    assert RunFolder(double).read_status()["state"] == "finished"
    one, two = step_rows(single), step_rows(double)
    assert sorted(two) == sorted(one) == list(range(1, 11))
    for step in one:
        assert two[step]["loss"] == pytest.approx(one[step]["loss"], rel=1e-5), step
        assert two[step]["grad_norm"] == pytest.approx(one[step]["grad_norm"], rel=1e-4), step
    assert val_losses(double) == pytest.approx(val_losses(single), rel=1e-5)
    # the gathered checkpoint: the same names, shapes and values as the single process's, in the same format
    for name in ("last", "best", "previous"):
        state_1, trainable_1, optimizer_1 = load_checkpoint(single / name)
        state_2, trainable_2, optimizer_2 = load_checkpoint(double / name)
        assert state_2["step"] == state_1["step"]
        assert sorted(trainable_2) == sorted(trainable_1) and sorted(optimizer_2) == sorted(optimizer_1)
        assert len(optimizer_1) == len(trainable_1)  # a momentum buffer per trainable tensor
        for key in trainable_1:
            assert trainable_2[key].shape == trainable_1[key].shape
            assert (trainable_2[key] - trainable_1[key]).abs().max() < 1e-5, key
        for key in optimizer_1:
            assert (optimizer_2[key] - optimizer_1[key]).abs().max() < 1e-5, key
    from safetensors.torch import load_file

    artifact_1 = load_file(str(single / "best" / "artifact" / "model.safetensors"))
    artifact_2 = load_file(str(double / "best" / "artifact" / "model.safetensors"))
    assert sorted(artifact_2) == sorted(artifact_1)
    assert max(float((artifact_2[k] - artifact_1[k]).abs().max()) for k in artifact_1) < 1e-5
    assert RunFolder(double).read_energy()["processes"] == 2


def test_fsdp_resume_from_a_mid_epoch_checkpoint_gives_the_same_losses(fsdp_runs, tmp_path):
    single, double = fsdp_runs
    resumed = tmp_path / "resumed"
    shutil.copytree(double, resumed)
    shutil.rmtree(resumed / "last")  # as if last/ were lost: previous/ (step 8, mid-epoch 2, written under FSDP)
    assert load_checkpoint(resumed / "previous")[0]["step"] == 8
    launch_fsdp(resumed, resume=True)
    replayed = step_rows(resumed)
    expected = step_rows(single)
    for step in (9, 10):
        assert replayed[step]["loss"] == pytest.approx(expected[step]["loss"], rel=1e-5), step
    assert val_losses(resumed)[-1] == pytest.approx(val_losses(single)[-1], rel=1e-5)
    _, trainable_1, _ = load_checkpoint(single / "last")
    _, trainable_2, _ = load_checkpoint(resumed / "last")
    assert max(float((trainable_2[k] - trainable_1[k]).abs().max()) for k in trainable_1) < 1e-5


@pytest.mark.parametrize("override, message", [
    ("strategy=lora", "distributed: fsdp is not supported by strategy 'lora'"),
    ("strategy=prompt_learning", "distributed: fsdp is not supported by strategy 'prompt_learning'"),
    ("strategy=clip_captioner", "distributed: fsdp is not supported by strategy 'clip_captioner'"),
])
def test_fsdp_with_a_strategy_that_does_not_support_it_is_rejected(override, message):
    with pytest.raises(ConfigError, match=f"^{message}"):
        resolve_config("llava-1.5-7b/full", [override])


def test_bad_distributed_value_is_rejected_naming_the_field():
    with pytest.raises(ConfigError, match="^distributed: must be one of ddp, fsdp"):
        resolve_config("llava-1.5-7b/full", ["distributed=deepspeed"])


def test_fsdp_without_a_distributed_launch_fails_before_loading(tmp_path, tiny_llava_dir, tiny_world, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    run_dir = make_run(tmp_path, tiny_llava_dir, tiny_world, distributed="fsdp", strategy="full")
    assert train_run(run_dir) == 1
    status = RunFolder(run_dir).read_status()
    assert status["state"] == "failed" and status["message"].startswith("ConfigError: distributed: fsdp needs a "
                                                                        "distributed launch"), status
    assert not (run_dir / "metrics.jsonl").exists() and not (run_dir / "last").exists()


def test_ddp_run_under_an_fsdp_launch_is_rejected(tmp_path, tiny_llava_dir, tiny_world, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch --use_fsdp` sets
    run_dir = make_run(tmp_path, tiny_llava_dir, tiny_world, strategy="full")
    assert train_run(run_dir) == 1
    assert RunFolder(run_dir).read_status()["message"].startswith("ConfigError: distributed: the run says ddp")


def test_the_7b_full_recipes_use_fsdp_and_say_how_to_launch_it():
    for model in ("llava-1.5-7b", "llava-1.6-7b"):
        recipe = PROJECT_ROOT / "train" / "recipes" / model / "full.yaml"
        assert resolve_config(recipe, []).distributed == "fsdp"
        first_line = recipe.read_text().splitlines()[0]
        assert first_line.startswith(f"# accelerate launch --multi_gpu --num_processes 8 -m train run --recipe {model}/full")
        assert resolve_config(f"{model}/lora", []).distributed == "ddp"


def test_launcher_starts_a_one_gpu_fsdp_run_through_accelerate():
    from captionlab.training import launcher

    one = launcher.trainer_command(Path("/runs/x"), gpus=1, fsdp=True)
    assert one[1:] == ["-m", "accelerate.commands.launch", "--use_fsdp", "--fsdp_version", "2", "--num_processes", "1",
                       "-m", "train", "run", "--run-dir", "/runs/x"]
    several = launcher.trainer_command(Path("/runs/x"), gpus=8, fsdp=True)
    assert several[1:5] == ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes"]
