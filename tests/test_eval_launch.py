"""Where the app's evaluation jobs run (`service/eval_launch.py`): the number of GPUs, and Slurm where `sbatch`
exists; the Benchmarks tab only passes its form through."""

from __future__ import annotations

import sys

import pytest

from captionlab.evaluation.launch import evaluate_command
from captionlab.service import eval_launch, jobs
from captionlab.service.settings import settings_for


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTIONLAB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _tab(tmp_path):
    import gradio as gr

    from captionlab.ui.benchmarks_tab import create_benchmarks_tab

    with gr.Blocks() as demo:
        create_benchmarks_tab(settings_for(str(tmp_path / "no-model"), str(tmp_path / "none")))
    components = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    callbacks = {f.fn.__name__: f.fn for f in demo.fns.values() if f.fn is not None}
    return components, callbacks


@pytest.mark.parametrize("sbatch", [None, "/usr/bin/sbatch"])
def test_the_tab_offers_gpus_and_slurm_only_where_sbatch_exists(home, tmp_path, monkeypatch, sbatch):
    monkeypatch.setattr(eval_launch.shutil, "which", lambda name: sbatch if name == "sbatch" else None)
    components, callbacks = _tab(tmp_path)
    assert components["bench-eval-gpus"].value == 1
    assert components["bench-eval-where"].visible is (sbatch is not None)
    assert components["bench-eval-partition"].visible is (sbatch is not None)
    asked = {}
    monkeypatch.setattr(jobs, "start_evaluation", lambda *args, **kwargs: asked.update(args=args, **kwargs) or "ok")
    callbacks["on_evaluate"]("lora", "coco", "", "", 4, "Slurm", "gpu")
    assert asked["gpus"] == 4 and asked["slurm_partition"] == "gpu"
    callbacks["on_evaluate"]("lora", "coco", "", "", 2, "This machine", "gpu")
    assert asked["gpus"] == 2 and asked["slurm_partition"] is None


def test_several_gpus_start_the_evaluation_under_accelerate_launch():
    import dataclasses

    settings = dataclasses.replace(settings_for("llava-1.5-7b"), device="cuda:1")
    one = jobs.evaluation_argv(settings, "lora", "coco", None, gpus=1)
    assert one[:4] == [sys.executable, "-m", "captionlab", "evaluate"] and one[-2:] == ["--device", "cuda:1"]
    four = jobs.evaluation_argv(settings, "lora", "coco", None, gpus=4)
    assert four[:6] == [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "4"]
    assert four[8:] == one[1:-2]  # no --device: each process takes its own GPU
    assert four[6] == "--main_process_port" and int(four[7]) > 0
    with pytest.raises(ValueError):
        evaluate_command(["evaluate"], 0)


@pytest.mark.parametrize("gpus, expected", [(1, 1), ("3", 3), (None, 1), ("", 1), (1.5, "whole number"),
                                            (0, "between 1"), (65, "between 1"), ("two", "not a whole number")])
def test_gpus_are_a_whole_number_in_range(gpus, expected):
    if isinstance(expected, int):
        assert eval_launch.validate_gpus(gpus) == expected
    else:
        with pytest.raises(ValueError, match=f"^GPUs: .*{expected}"):
            eval_launch.validate_gpus(gpus)


def test_a_slurm_job_is_submitted_and_listed_with_its_state(home, monkeypatch):
    settings = settings_for("llava-1.5-7b")
    monkeypatch.setattr(eval_launch.shutil, "which", lambda name: None)
    assert "not on PATH" in jobs.start_evaluation(settings, "zero_shot", "coco", gpus=2, slurm_partition="gpu")
    monkeypatch.setattr(eval_launch.shutil, "which", lambda name: "/usr/bin/" + name)
    assert "partition" in jobs.start_evaluation(settings, "zero_shot", "coco", slurm_partition="a b")
    assert "Error: GPUs" in jobs.start_evaluation(settings, "zero_shot", "coco", gpus=0, slurm_partition="gpu")

    from captionlab import atomic
    from captionlab.evaluation import slurm_grid

    submitted = {}

    def fake_submit(argv, folder, slurm_settings, cluster="slurm"):  # what sbatch would get, without a cluster
        submitted.update(argv=argv, settings=slurm_settings)
        folder.mkdir(parents=True)
        atomic.write_json(folder / "job.json", {"job_id": "4242", "cluster": "slurm"})
        return "4242"

    monkeypatch.setattr(slurm_grid, "submit_evaluation", fake_submit)
    message = jobs.start_evaluation(settings, "zero_shot", "coco", limit="5", gpus="2", slurm_partition="gpu")
    assert "Slurm job 4242" in message, message
    assert submitted["argv"][:2] == ["evaluate", "--model"] and submitted["argv"][-1] == "--json"
    assert "--limit" in submitted["argv"] and submitted["settings"].gpus_per_cell == 2
    assert submitted["settings"].partition == "gpu"
    monkeypatch.setattr(slurm_grid.shutil, "which", lambda name: None)  # no sacct here: the state is unknown
    [row] = jobs.list_jobs()
    assert row["state"].startswith("Slurm 4242: unknown")
