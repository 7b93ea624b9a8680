"""The grid as a job array (`evaluation/slurm_grid.py`), through submitit's local executor: cells run, the status
says done / failed with the failed cell's log, and submitting again sends only what is missing."""

from __future__ import annotations

import time

import pytest

from captionlab.cli import main
from captionlab.evaluation import slurm_grid


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTIONLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CAPTIONLAB_OPENCLIP_WEIGHTS", str(tmp_path / "no-clip-here.safetensors"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return tmp_path / "home"


def _settled(selection, timeout_s: float = 500.0) -> dict[str, slurm_grid.CellState]:
    deadline = time.monotonic() + timeout_s
    while True:
        cells = {cell.name: cell for cell in slurm_grid.grid_status(selection)}
        if not any(cell.state in ("running", "pending") for cell in cells.values()):
            return cells
        assert time.monotonic() < deadline, {name: cell.state for name, cell in cells.items()}
        time.sleep(1.0)


def test_cells_run_as_an_array_and_only_the_missing_are_submitted_again(home, tiny_llava_dir, tiny_world):
    # "nosuch" is not a dataset of the world: its cell fails, and its log says so
    selection = slurm_grid.GridSelection(model=str(tiny_llava_dir), strategies=("zero_shot", "lora"),
                                         datasets=("coco", "nosuch"), config=str(tiny_world), limit=1,
                                         max_new_tokens=3)
    settings = slurm_grid.SlurmSettings(time_min=10, batch_size=1)
    first = slurm_grid.submit_grid(selection, settings, cluster="local")
    assert sorted(first.submitted) == ["zero_shot--coco", "zero_shot--nosuch"]
    assert "lora" in first.skipped and not first.kept  # no lora checkpoint anywhere

    cells = _settled(selection)
    done, failed = cells["zero_shot--coco"], cells["zero_shot--nosuch"]
    assert done.state == "done" and done.detail.startswith("1 images") and not done.log_tail
    assert failed.state == "failed" and "exited with 2" in failed.detail
    assert any("unknown dataset 'nosuch'" in line for line in failed.log_tail), failed.log_tail
    assert not any("Traceback" in line for line in failed.log_tail)  # submitit's own report is cut off
    from captionlab.evaluation.results import list_results

    assert [(r.strategy, r.dataset, r.n_images) for r in list_results()] == [("zero_shot", "coco", 1)]

    again = slurm_grid.submit_grid(selection, settings, cluster="local")
    assert again.submitted == ["zero_shot--nosuch"] and again.kept == {"zero_shot--coco": "done"}
    assert again.folder == first.folder
    cells = _settled(selection)
    assert cells["zero_shot--nosuch"].job_id != failed.job_id and cells["zero_shot--nosuch"].state == "failed"


def test_status_and_slurm_from_the_command_line(home, tiny_llava_dir, tiny_world, capsys, monkeypatch):
    grid = ["evaluate", "--grid", "--model", str(tiny_llava_dir), "--strategies", "zero_shot", "--datasets", "coco",
            "--config", str(tiny_world)]
    assert main([*grid, "--status"]) == 2
    assert "has not been submitted" in capsys.readouterr().err
    monkeypatch.setattr(slurm_grid.shutil, "which", lambda name: None)
    assert main([*grid, "--slurm", "--partition", "gpu"]) == 2
    assert "`sbatch` is not on PATH" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tiny_llava_dir), "--strategy", "zero_shot", "--dataset", "coco",
                 "--slurm"]) == 2
    assert "--slurm and --status are for --grid" in capsys.readouterr().err


def test_a_cell_is_the_evaluate_command_line_of_its_selection():
    selection = slurm_grid.GridSelection(model="m", strategies=("lora",), datasets=("coco",), config="/w/d.yaml",
                                         limit=5, max_new_tokens=20, skip_broken=True)
    argv = slurm_grid.cell_argv(selection, {"strategy": "lora", "dataset": "coco", "checkpoint": "/c/lora"}, 8)
    assert argv == ["evaluate", "--model", "m", "--strategy", "lora", "--dataset", "coco",
                    "--max-new-tokens", "20", "--json", "--checkpoint", "/c/lora", "--config", "/w/d.yaml",
                    "--limit", "5", "--batch-size", "8", "--skip-broken"]
    other = slurm_grid.GridSelection(model="m", strategies=("lora",), datasets=("coco",), limit=6)
    assert slurm_grid.grid_folder(selection) != slurm_grid.grid_folder(other)
    same = slurm_grid.GridSelection(model="m", strategies=("lora",), datasets=("coco",), config="/w/d.yaml",
                                    limit=5, max_new_tokens=20, skip_broken=True)
    assert slurm_grid.grid_folder(same) == slurm_grid.grid_folder(selection)
