"""`python -m train study`: the plan of the paper's protocol for one model (dry run: trainings, step counts, cells,
labelled estimates), and the study run end to end on the CPU with the embedded model on a tiny world: interrupted
during its training and resumed, rerun without redoing anything, its status, its report, its results where the
Benchmarks and Energy tabs read them; and once with two gloo processes (--gpus 2).

The end-to-end runs keep the study small through the command's own options: one trained strategy (LoRA) and the
coco benchmark (`--strategies`, `--benchmarks`), a few images (`--set max_train_images=...`, `--limit`) and short
captions (`--max-new-tokens`); the full 7 x 5 grid is the same code with more cells.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from captionlab.study import estimates
from captionlab.study.plan import PlanError, build_plan
from train.__main__ import main as train_main

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PAPER_TRAININGS = ["prompt_learning", "prefix_tuning", "lora", "dora", "full", "clip_captioner"]


# --- the plan (dry run) ----------------------------------------------------------------------------------------


def test_dry_run_of_llava_without_datasets_yaml_assumes_published_sizes(home, capsys):
    assert train_main(["study", "--model", "llava-1.5-7b", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "6 training(s), 35 evaluation cell(s) (7 captioners x 5 benchmarks)" in text
    assert "step counts and image counts assume the published split sizes" in text
    # LoRA: 566,747 Karpathy train+restval captions, batch 32 -> 17,711 steps an epoch, 4 epochs
    lora = next(line for line in text.splitlines() if line.startswith("lora "))
    assert lora.split()[1:5] == ["llava-1.5-7b/lora", "4", "566,747", "70,844"]
    expected_hours = (566_747 * 4 + 25_010 * 5 / 3) / 11.7 / 3600
    assert f"{expected_hours:.2f}" in lora
    assert "clip-captioner/coco" in text and "not estimated: no throughput measured for clip_captioner" in text
    assert "lora--textcaps" in text and "3,166" in text and "zero_shot--cc3m" in text
    assert "estimated" in text.splitlines()[-2] and "GPU hours on NVIDIA H200" in text
    assert "reference/baseline_h200.md" in text
    assert not (home / "studies").exists()  # a dry run writes nothing


def test_plan_data_and_totals():
    plan = build_plan("llava-1.5-7b")
    assert [t.strategy for t in plan.trainings] == PAPER_TRAININGS
    assert len(plan.cells) == 35 and {c.dataset for c in plan.cells} == {"coco", "nocaps", "cc3m", "vizwiz",
                                                                           "textcaps"}
    assert [c.needs_training for c in plan.cells if c.dataset == "coco"] == [None, *PAPER_TRAININGS]
    total, missing = plan.total_gpu_hours()
    estimated = [t.estimate.gpu_hours for t in plan.trainings] + [c.estimate.gpu_hours for c in plan.cells]
    assert total == pytest.approx(sum(h for h in estimated if h is not None))
    assert len(missing) == 1 + 5  # the CLIP-Captioner's training and its five cells: nothing measured applies
    a100 = build_plan("llava-1.5-7b", hardware="a100")
    assert a100.total_gpu_hours()[0] == pytest.approx(total * 989 / 312)


def test_llava_16_estimates_are_scaled_from_its_measured_lora_rate():
    rate, basis = estimates.training_rate("llava-1.6-7b", "dora")
    assert rate == pytest.approx(2.4 * 7.5 / 11.7) and "measured lora rate" in basis
    assert estimates.training_rate("llava-1.6-7b", "lora")[0] == 2.4
    assert estimates.training_rate("smolvlm-256m", "lora") is None


def test_bad_choices_are_refused_with_what_to_do(tmp_path, capsys):
    with pytest.raises(PlanError, match="models with recipes: .*llava-1.5-7b"):
        build_plan("no-such-model")
    with pytest.raises(PlanError, match="--strategies: qlora not in this study"):
        build_plan("llava-1.5-7b", strategies=["qlora"])
    with pytest.raises(PlanError, match="does not exist"):
        build_plan("llava-1.5-7b", datasets_config=tmp_path / "missing.yaml")
    assert train_main(["study", "--model", "llava-1.5-7b"]) == 2  # running the real study needs the data
    assert "give --datasets" in capsys.readouterr().err


def test_step_counts_from_a_datasets_yaml_are_the_trainers(home, tiny_world):
    from captionlab.data.datasets import load_records

    plan = build_plan("embedded", datasets_config=tiny_world, strategies=["zero_shot", "lora"], datasets=["coco"],
                      overrides=["max_train_images=20", "batch_size=8", "micro_batch_size=8"])
    (training,) = plan.trainings
    images = min(20, len(load_records("coco", split="train", config=tiny_world)))
    assert training.steps == math.ceil(images / 8) * training.epochs  # the embedded recipe: one caption per image
    assert "counted from" in training.counted.source and plan.preparation == ("clip", "base")
    assert [c.name for c in plan.cells] == ["zero_shot--coco", "lora--coco"]


def test_status_before_any_study_and_of_a_study_not_started(home, tiny_world, capsys):
    from captionlab.service.study import study_status_markdown
    from captionlab.study.runner import _write_study_json

    assert train_main(["study", "status"]) == 1
    assert "no study yet" in capsys.readouterr().err
    assert study_status_markdown().startswith("No study yet")
    plan = build_plan("embedded", datasets_config=tiny_world, strategies=["zero_shot", "lora"], datasets=["coco"])
    plan.out.mkdir(parents=True)
    _write_study_json(plan)  # what a study writes first
    assert train_main(["study", "status", "--model", "embedded"]) == 0
    text = capsys.readouterr().out
    assert "Study of embedded" in text and "4 pending" in text  # a training, two cells, the report
    assert [line.split()[:3] for line in text.splitlines()[2:]][2:] == [
        ["train", "lora", "pending"], ["evaluate", "zero_shot--coco", "pending"], ["evaluate", "lora--coco", "pending"],
        ["report", "tables", "and"]]
    assert "| evaluate | lora--coco | · pending |" in study_status_markdown()


def test_dry_run_as_json(home, capsys):
    assert train_main(["study", "--model", "llava-1.6-7b", "--dry-run", "--json", "--benchmarks", "coco"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [t["strategy"] for t in plan["trainings"]] == PAPER_TRAININGS
    assert [c["name"] for c in plan["cells"]] == ["zero_shot--coco", *[f"{s}--coco" for s in PAPER_TRAININGS]]
    assert plan["trainings"][2]["estimate"]["basis"].startswith("estimate: 2.4 sequences/s")


# --- the study, run ----------------------------------------------------------------------------------------------


def _study(home: Path, world: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "train", "study", "--model", "embedded", "--datasets", str(world),
            "--strategies", "zero_shot,lora", "--benchmarks", "coco", "--limit", "3", "--max-new-tokens", "6",
            "--set", "max_val_images=2", *extra]


def _env(home: Path) -> dict:
    return {**os.environ, "CAPTIONLAB_HOME": str(home), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _run(command: list[str], home: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=PROJECT_ROOT, env=_env(home), capture_output=True, text=True, timeout=timeout)
    return done


def _wait_for(predicate, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {predicate}")


@pytest.mark.slow
def test_a_study_interrupted_in_training_resumes_then_reruns_without_redoing_anything(home, tiny_world):
    study = home / "studies" / "embedded"
    # 60 images, 4 a step, 1 epoch: 15 steps, a checkpoint after each, so the interruption lands mid-training
    command = _study(home, tiny_world, "--set", "batch_size=4", "--set", "micro_batch_size=4", "--set", "epochs=1",
                     "--set", "checkpoint_every_steps=1")
    first = subprocess.Popen(command, cwd=PROJECT_ROOT, env=_env(home), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(lambda: list((home / "runs").glob("study-embedded-lora-*/last/COMPLETE")))
        first.send_signal(signal.SIGTERM)  # as a killed study: it stops its trainer, which checkpoints
        output, _ = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, output
    assert "interrupted; stopping the trainer" in output
    status = _run([sys.executable, "-m", "train", "study", "status", "--model", "embedded"], home)
    assert status.returncode == 0
    lora_line = next(line for line in status.stdout.splitlines() if line.startswith("train ") and " lora " in line)
    assert " failed " in lora_line and "stopped" in lora_line and "resumes it from its last checkpoint" in lora_line

    second = _run(command, home)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "train lora (embedded/lora): resuming from its last checkpoint" in second.stdout
    run_dir = Path(json.loads((study / "trainings" / "lora.json").read_text())["run_dir"])
    run_status = json.loads((run_dir / "status.json").read_text())
    assert run_status["state"] == "finished" and "resumed from last/ at step" in (run_dir / "log.txt").read_text()
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if '"step"' in line and '"loss"' in line]
    assert steps[-1] == run_status["total_steps"] == 15
    for name in ("zero_shot--coco", "lora--coco"):
        assert json.loads((study / "cells" / name / "done.json").read_text())["n_images"] == 3
    tables = (study / "results" / "tables.md").read_text()
    assert "#### Table 1: in-domain (coco test)" in tables and "| embedded tiny LLaVA | LoRA |" in tables
    assert "#### Table 4" in tables and "| LoRA |" in tables.split("#### Table 4")[1]
    assert (study / "results" / "fig2_cider.svg").read_text().startswith("<svg")

    stamps = {p: p.stat().st_mtime_ns for p in [*study.glob("cells/*/done.json"), study / "results" / "tables.md"]}
    third = _run(command, home)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert "train lora (embedded/lora): finished earlier" in third.stdout
    assert third.stdout.count("recorded earlier") == 2 and "in this process" not in third.stdout
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps and "report: up to date" in third.stdout
    assert (run_dir / "log.txt").read_text().count("[launcher") == 2  # started once, resumed once, never again

    status = _run([sys.executable, "-m", "train", "study", "status"], home)
    assert "Study of embedded" in status.stdout and "6 finished" in status.stdout

    from captionlab.service.benchmarks import your_rows
    from captionlab.service.energy import run_energy_rows
    from captionlab.service.study import study_status_markdown

    rows = [(r["strategy"], r["dataset"]) for r in your_rows() if r["model"] == "embedded"]
    assert ("zero_shot", "coco") in rows and ("lora", "coco") in rows  # the Benchmarks tab's rows
    assert any(str(run_dir.name) in str(r.values()) for r in run_energy_rows())  # the Energy tab's
    assert "| train | lora | ✅ finished |" in study_status_markdown()


@pytest.mark.slow
def test_a_study_on_two_gloo_processes(home, tiny_world):
    command = _study(home, tiny_world, "--gpus", "2", "--strategies", "lora", "--set", "epochs=1",
                     "--set", "max_train_images=8")
    done = _run(command, home)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "evaluate lora on coco: on 2 processes" in done.stdout
    run_dir = Path(json.loads((home / "studies" / "embedded" / "trainings" / "lora.json").read_text())["run_dir"])
    log = (run_dir / "log.txt").read_text()
    assert "--num_processes 2" in log and json.loads((run_dir / "status.json").read_text())["state"] == "finished"
    cell = json.loads((home / "studies" / "embedded" / "cells" / "lora--coco" / "done.json").read_text())
    assert cell["n_images"] == 3 and Path(cell["results_path"]).is_file()


@pytest.mark.slow
def test_with_slurm_the_study_submits_what_is_ready_and_a_rerun_finishes_it(home, tiny_world, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no sbatch here: the trainings' submission says so
    command = _study(home, tiny_world, "--slurm", "--executor", "local")
    first = _run(command, home)
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]
    assert "train lora (embedded/lora): could not start: Slurm is not available here" in first.stdout
    assert "evaluate zero_shot on coco: submitted as job" in first.stdout
    assert "evaluate lora on coco: waiting for the lora training (pending)" in first.stdout
    done = home / "studies" / "embedded" / "cells" / "zero_shot--coco" / "done.json"
    _wait_for(done.exists, timeout=240)
    second = _run([*command, "--strategies", "zero_shot"], home)
    assert second.returncode == 0 and "evaluate zero_shot on coco: recorded earlier" in second.stdout
    assert (home / "studies" / "embedded" / "results" / "tables.md").exists()


def test_one_study_process_per_study_folder(home, tiny_world):
    import fcntl

    from captionlab.study.runner import StudyError, run_study

    plan = build_plan("embedded", datasets_config=tiny_world, strategies=["zero_shot"], datasets=["coco"])
    plan.out.mkdir(parents=True)
    with (plan.out / "study.lock").open("a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running `train study` holds it
        held.write("pid 4242")
        held.flush()
        with pytest.raises(StudyError, match="being run by pid 4242"):
            run_study(plan, say=lambda _: None)
    assert not (plan.out / "cells").exists()  # refused before doing anything


def test_a_training_the_registry_lost_and_no_process_runs_is_failed_not_waited_for(home, tmp_path):
    from captionlab import atomic
    from captionlab.study import state

    out, run_dir = tmp_path / "study", tmp_path / "run"
    run_dir.mkdir(parents=True)
    atomic.write_json(run_dir / "status.json", {"state": "running", "pid": 2**22 + 12345, "step": 3, "total_steps": 9})
    atomic.write_json(out / "trainings" / "lora.json", {"run_id": "gone", "run_dir": str(run_dir)})
    found = state.training_state(out, "lora")
    assert (found.state, found.progress) == ("failed", "step 3/9")
    assert "crashed" in found.detail and "starts it again" in found.detail  # no checkpoint to resume from
    atomic.write_json(run_dir / "status.json", {"state": "running", "pid": os.getpid(), "step": 3, "total_steps": 9})
    assert state.training_state(out, "lora").state == "running"  # a live trainer the registry does not know
