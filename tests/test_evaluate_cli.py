"""`python -m captionlab evaluate` on a tiny random LLaVA and the tiny world."""

from __future__ import annotations

import json

import pytest
import torch

from captionlab.cli import main

SIX = ["BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE", "CLIP-Score"]


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTIONLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CAPTIONLAB_OPENCLIP_WEIGHTS", str(tmp_path / "no-clip-here.safetensors"))
    return tmp_path / "home"


def _evaluate(*args):
    return main(["evaluate", *map(str, args)])


def test_json_prints_exactly_the_six_metrics(home, tiny_llava_dir, tiny_world, capsys):
    args = ["--model", tiny_llava_dir, "--strategy", "zero_shot", "--dataset", "coco", "--config", tiny_world,
            "--limit", 4, "--max-new-tokens", 6, "--batch-size", 2]
    assert _evaluate(*args, "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["metrics"]) == SIX
    for name in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr"):
        assert isinstance(out["metrics"][name], float)
    for name, value in out["metrics"].items():
        assert (value is None) == (name in out["unavailable"])
    assert out["metrics"]["CLIP-Score"] is None and "no-clip-here" in out["unavailable"]["CLIP-Score"]
    assert out["n_images"] == 4 and out["split"] == "test" and out["generated"] == 4
    # CHAIR beside them, from the tiny world's scenes (percent; lower is better)
    assert all(0.0 <= out[name] <= 100.0 for name in ("CHAIR-s", "Object-Recall"))
    assert out["CHAIR_unavailable"] is None

    # the same evaluation again resumes from its predictions and prints the readable table
    assert _evaluate(*args) == 0
    text = capsys.readouterr().out
    assert "CIDEr" in text and "x100" in text and "unavailable:" in text
    assert "resumed: 4 caption(s)" in text


def _lora_artifact(model_dir, folder):
    from captionlab.models.loading import load_model
    from captionlab.models.registry import get_model_spec
    from captionlab.strategies import get_strategy

    torch.manual_seed(0)
    loaded = load_model(get_model_spec(model_dir), device="cpu")
    strategy = get_strategy("lora")
    model = strategy.apply(loaded.model, loaded.spec, loaded.tokenizer)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, p in strategy.trainable_parameters(model):
            p.add_(torch.randn(p.shape, generator=generator) * 0.5)
    strategy.save(model, folder)
    return folder


def test_grid_runs_every_strategy_with_a_checkpoint(home, tmp_path, tiny_llava_dir, tiny_world, capsys):
    checkpoints = tmp_path / "ckpt"
    _lora_artifact(tiny_llava_dir, checkpoints / "strategies" / "lora")
    code = _evaluate("--grid", "--model", tiny_llava_dir, "--strategies", "zero_shot,lora,dora",
                     "--datasets", "coco,vizwiz", "--config", tiny_world, "--checkpoints", checkpoints,
                     "--limit", 2, "--max-new-tokens", 4)
    assert code == 0
    out = capsys.readouterr().out
    assert "Table 1" in out and "Table 3" in out and "Table 2" not in out
    assert "Zero-shot" in out and "LoRA" in out
    assert "skipped DoRA" in out or "skipped dora" in out
    assert "CLIP-Score unavailable" in out
    from captionlab.evaluation.results import list_results

    rows = list_results()
    assert sorted((r.strategy, r.dataset) for r in rows) == [("lora", "coco"), ("lora", "vizwiz"),
                                                            ("zero_shot", "coco"), ("zero_shot", "vizwiz")]
    assert all(r.n_images == 2 for r in rows)
    assert {r.checkpoint for r in rows if r.strategy == "lora"} == {str((checkpoints / "strategies" / "lora").resolve())}


@pytest.mark.parametrize("case", ["dataset", "checkpoint", "model", "clip_captioner"])
def test_user_errors_exit_2_naming_the_path(home, tmp_path, tiny_llava_dir, tiny_world, capsys, case):
    missing = tmp_path / "does" / "not" / "exist.json"
    if case == "clip_captioner":  # an existing folder that holds no CLIP-Captioner
        missing.mkdir(parents=True)
    args = {"dataset": ["--model", tiny_llava_dir, "--strategy", "zero_shot", "--dataset", f"karpathy:{missing}"],
            "checkpoint": ["--model", tiny_llava_dir, "--strategy", "lora", "--checkpoint", missing,
                           "--dataset", "coco", "--config", tiny_world],
            "clip_captioner": ["--model", tiny_llava_dir, "--strategy", "clip_captioner", "--checkpoint", missing,
                               "--dataset", "coco", "--config", tiny_world, "--limit", 1],
            "model": ["--model", missing.parent, "--strategy", "zero_shot", "--dataset", "coco",
                      "--config", tiny_world]}[case]
    assert _evaluate(*args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert str(missing.parent if case == "model" else missing) in err


def test_a_named_dataset_on_a_fresh_workspace_generates_the_embedded_world(tmp_path, monkeypatch):
    """The README's `evaluate --dataset nocaps` works on a fresh machine: the world is made on first use."""
    from captionlab.data import datasets

    monkeypatch.setenv("CAPTIONLAB_HOME", str(tmp_path))
    made = []
    monkeypatch.setattr("captionlab.world.write_world", lambda out, seed=0, scale=1.0: made.append((out, seed, scale)))
    datasets.ensure_embedded_world("nocaps", None)
    assert made == [(tmp_path / "world", 0, 1.0)]
    datasets.ensure_embedded_world("karpathy:/x/dataset_coco.json", None)  # FORMAT:PATH never triggers it
    datasets.ensure_embedded_world("nocaps", tmp_path / "datasets.yaml")  # nor an explicit config
    assert len(made) == 1


def test_readme_and_help_say_what_grid_mode_runs(capsys):
    """The paper's six strategies on the five datasets: not every strategy (the CLIP-Captioner, qlora)."""
    from captionlab.evaluation.evaluator import DEFAULT_DATASETS
    from captionlab.paths import PROJECT_ROOT
    from captionlab.strategies import PAPER_STRATEGIES

    assert len(PAPER_STRATEGIES) == 6 and "qlora" not in PAPER_STRATEGIES and len(DEFAULT_DATASETS) == 5
    readme = (PROJECT_ROOT / "README.md").read_text()
    line = next(line for line in readme.splitlines() if "evaluate --grid" in line)
    assert "the paper's six strategies on the five datasets" in line and "every strategy" not in line
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--grid the paper's six strategies" in help_text


@pytest.mark.parametrize("error", ["enospc", "sqlite-full", "sqlite-io-on-a-full-disk"])
def test_a_full_disk_is_named_as_one(monkeypatch, capsys, error):
    """Issue 17.5: a full disk says "no space left on device", never a traceback, "disk I/O error" or "Error"."""
    import errno
    import os
    import sqlite3

    from captionlab import write_errors
    from captionlab.evaluation import evaluator

    raised = {"enospc": OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
              "sqlite-full": sqlite3.OperationalError("database or disk is full"),
              "sqlite-io-on-a-full-disk": sqlite3.OperationalError("disk I/O error")}[error]

    def evaluate(*args, **kwargs):
        raise raised

    monkeypatch.setattr(evaluator, "evaluate", evaluate)
    monkeypatch.setattr(write_errors, "_nearly_full", lambda where: True)  # no disk is filled for this
    code = main(["evaluate", "--strategy", "zero_shot", "--dataset", "coco", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "no space left on device" in err and "Traceback" not in err
    assert "disk I/O error" not in err
