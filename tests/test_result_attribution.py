"""Which checkpoint a score belongs to: the Benchmarks rows and the Energy tab's quality chart.

An evaluation of one checkpoint (or of a few images) is never shown as another's result: the
Benchmarks table keeps a row per checkpoint and per subset, and a run is plotted against energy
only with an evaluation of its own checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "checkpoints" / "embedded"


@pytest.fixture
def study(tmp_path) -> Path:
    """A checkpoints folder laid out as the zoo ships it: LoRA's artifact, its run record, its coco result,
    the result recording the path it was evaluated at on the machine that built it."""
    from captionlab.evaluation import results

    checkpoints = tmp_path / "ckpt"
    (checkpoints / "strategies" / "lora").mkdir(parents=True)
    (checkpoints / "runs" / "lora").mkdir(parents=True)
    (checkpoints / "runs" / "lora" / "energy.json").write_text(json.dumps(energy_record(0.001)))
    row = results.ResultRow(model="embedded", strategy="lora", dataset="coco", split="test", n_images=250,
                            metrics={"BLEU-4": 27.3, "CIDEr": 88.1}, checkpoint="/elsewhere/ckpt/strategies/lora",
                            extra={"limit": None})
    results.write_results_json(checkpoints / "results" / "lora" / "coco" / "results.json", row)
    return checkpoints


def energy_record(kwh: float) -> dict:
    return {"kwh_all_epochs": kwh, "kwh_best": kwh, "epochs": 1, "best_epoch": 1, "method": "estimate",
            "label": "estimate: 2 cores x 10 W assumed", "measured": False, "strategy": "lora", "model": "embedded"}


def make_run(home: Path, run_id: str) -> Path:
    """A finished LoRA run of the workspace with its energy.json and a best artifact."""
    from captionlab.training import runs_db

    folder = home / "runs" / run_id
    (folder / "best" / "artifact").mkdir(parents=True)
    (folder / "energy.json").write_text(json.dumps(energy_record(0.0005)))
    runs_db.register_run(run_id, name=run_id, run_dir=folder, state="finished", model="embedded",
                         strategy="lora", dataset="coco", pid=None)
    return folder


def evaluate(checkpoint: Path, cider: float, n_images: int, limit: int | None, dataset: str = "coco") -> None:
    """Record an evaluation as `python -m captionlab evaluate` does (checkpoint resolved, limit in extra)."""
    from captionlab.evaluation import results

    results.record_result(model="embedded", strategy="lora", dataset=dataset, split="test",
                          metrics={"BLEU-4": 14.1, "CIDEr": cider}, n_images=n_images,
                          checkpoint=checkpoint.resolve(), extra={"limit": limit, "skipped": []})


# --- Benchmarks ---------------------------------------------------------------------------------


def test_a_small_evaluation_of_another_checkpoint_is_its_own_labelled_row(home, study):
    from captionlab.service import benchmarks

    run = make_run(home, "recheck-1")
    evaluate(run / "best" / "artifact", cider=56.8, n_images=10, limit=10)
    rows = benchmarks.your_rows(study)
    assert sorted(r["metrics"]["CIDEr"] for r in rows) == [56.8, 88.1]

    _, cells, keys = benchmarks.table_rows(rows, ["coco"])
    by_strategy = {c[2]: c for c in cells}
    assert set(by_strategy) == {"LoRA", "LoRA · run recheck-1 · first 10 images"}
    assert by_strategy["LoRA"][6] == "**88.1** ★"  # the shipped result, still the best
    assert by_strategy["LoRA · run recheck-1 · first 10 images"][6] == "56.8"  # a subset is never marked best
    assert {k["label"] for k in keys} == {"", "run recheck-1 · first 10 images"}

    bars = benchmarks.cider_series(rows, ["coco"])
    assert {(b["group"], b["cider"]) for b in bars} == {("yours · embedded", 88.1),
                                                        ("yours · embedded · run recheck-1 · first 10 images", 56.8)}
    records, where = benchmarks.drilldown(next(k for k in keys if k["label"])["rows"]["coco"])
    assert where.startswith("run recheck-1 · first 10 images")


def test_the_newest_evaluation_of_the_same_checkpoint_and_images_replaces_the_older(home, study):
    from captionlab.service import benchmarks

    run = make_run(home, "r1")
    evaluate(run / "best" / "artifact", cider=50.0, n_images=250, limit=None)
    evaluate(run / "best" / "artifact", cider=60.0, n_images=250, limit=None)
    evaluate(study / "strategies" / "lora", cider=90.0, n_images=250, limit=None)  # the shipped one, again
    evaluate(study / "strategies" / "lora", cider=70.0, n_images=20, limit=20)
    rows = {(r["label"], r["metrics"]["CIDEr"]) for r in benchmarks.your_rows(study)}
    assert rows == {("", 90.0), ("run r1", 60.0), ("first 20 images", 70.0)}


def test_a_limit_past_the_end_of_the_split_is_the_whole_split(home, study):
    from captionlab.service import benchmarks

    evaluate(study / "strategies" / "lora", cider=91.0, n_images=250, limit=5000)
    (row,) = benchmarks.your_rows(study)
    assert (row["label"], row["subset"], row["metrics"]["CIDEr"]) == ("", None, 91.0)


def test_images_left_out_as_missing_or_broken_make_a_labelled_row_never_marked_best(home, study):
    """--skip-missing and --skip-broken score part of the split: not to be set beside the paper's whole splits."""
    from captionlab.evaluation import results
    from captionlab.service import benchmarks

    checkpoint = (study / "strategies" / "lora").resolve()
    results.record_result(model="embedded", strategy="lora", dataset="coco", split="test", metrics={"CIDEr": 120.0},
                          n_images=240, checkpoint=checkpoint,
                          extra={"limit": None, "split_images": 250, "missing_images": 7,
                                 "skipped": [{"image_id": str(i), "path": f"{i}.jpg", "reason": "broken"}
                                             for i in range(3)]})
    rows = benchmarks.your_rows(study)
    assert {(r["label"], r["metrics"]["CIDEr"]) for r in rows} == {("", 88.1), ("240 of 250 images (7 missing, 3 broken)",
                                                                               120.0)}
    _, cells, _ = benchmarks.table_rows(rows, ["coco"])
    by_strategy = {c[2]: c[6] for c in cells}
    assert by_strategy == {"LoRA": "**88.1** ★", "LoRA · 240 of 250 images (7 missing, 3 broken)": "120.0"}


def test_an_older_result_gives_its_missing_count_from_its_note(home, study):
    from captionlab.evaluation import results
    from captionlab.service import benchmarks

    results.record_result(model="embedded", strategy="lora", dataset="coco", split="test", metrics={"CIDEr": 95.0},
                          n_images=1200, checkpoint=(study / "strategies" / "lora").resolve(),
                          extra={"limit": None, "skipped": [],
                                 "notes": ["skipped 3800 record(s) whose image file is missing"]})
    labels = {r["label"] for r in benchmarks.your_rows(study)}
    assert labels == {"", "1,200 of 5,000 images (3,800 missing)"}


def shipped_cider(strategy: str) -> float:
    """The coco CIDEr in the shipped study's own results.json (rounded as the tables print it)."""
    document = json.loads((SHIPPED / "results" / strategy / "coco" / "results.json").read_text())
    return round(document["result"]["metrics"]["CIDEr"], 1)


def test_the_shipped_study_keeps_one_unlabelled_row_per_strategy_and_dataset(home):
    from captionlab.service import benchmarks

    rows = benchmarks.your_rows(SHIPPED)
    assert len(rows) == 7 * 5 and all(r["label"] == "" for r in rows)
    lora = next(r for r in rows if (r["strategy"], r["dataset"]) == ("lora", "coco"))
    assert round(lora["metrics"]["CIDEr"], 1) == shipped_cider("lora")
    assert Path(lora["checkpoint_key"]) == (SHIPPED / "strategies" / "lora").resolve()


# --- Energy -------------------------------------------------------------------------------------


def run_of(point: dict) -> str:
    """The run a quality point is drawn for ("yours · r1 (CIDEr on the first 10 images)" -> "r1")."""
    return point["source"].removeprefix("yours · ").split(" (")[0]


def test_runs_are_plotted_only_with_their_own_evaluation(home, study):
    from captionlab.service import benchmarks, energy

    evaluated = make_run(home, "r1")
    make_run(home, "r10-nan")  # diverged: never evaluated; its id starts with r1's
    evaluate(evaluated / "best" / "artifact", cider=56.8, n_images=10, limit=10)
    runs = energy.run_energy_rows(study)
    results = benchmarks.your_rows(study)
    points = {run_of(p): p for p in energy.quality_points([], runs, results)}
    assert set(points) == {"r1", "lora"}
    assert points["r1"]["cider"] == 56.8 and "first 10 images" in points["r1"]["source"]
    assert points["lora"]["cider"] == 88.1  # the shipped run keeps its shipped result
    assert [r["Run"] for r in energy.unevaluated_runs(runs, results)] == ["r10-nan"]
    assert "r10-nan" in energy.quality_note(runs, results)


def test_the_shipped_runs_are_plotted_with_their_shipped_results(home):
    from captionlab.service import benchmarks, energy

    runs = energy.run_energy_rows(SHIPPED)
    results = benchmarks.your_rows(SHIPPED)
    points = {run_of(p): round(p["cider"], 1) for p in energy.quality_points([], runs, results)}
    coco = {r["strategy"]: round(r["metrics"]["CIDEr"], 1) for r in results if r["dataset"] == "coco"}
    assert points == {key: coco[key] for key in ("prompt_learning", "prefix_tuning", "lora", "dora", "full",
                                                   "clip_captioner")}
    assert points["lora"] == shipped_cider("lora") and energy.unevaluated_runs(runs, results) == []


def test_clip_scores_of_another_clip_are_marked_and_ranked_only_among_themselves(home, tmp_path):
    """The embedded tiny CLIP scores ~1.5 where ViT-B/32 gives ~0.8: one star across both would compare scales."""
    from captionlab.evaluation import results
    from captionlab.service import benchmarks

    for strategy, clip, value in (("lora", "open_clip:ViT-B-32/openai", 0.81), ("dora", "embedded-tiny-clip", 1.52),
                                  ("full", "embedded-tiny-clip", 1.49)):
        results.record_result(model="embedded", strategy=strategy, dataset="coco", split="test", n_images=250,
                              metrics={"CIDEr": 80.0, "CLIP-Score": value}, clip_encoder=clip, extra={"limit": None})
    rows = benchmarks.your_rows(tmp_path / "no-checkpoints")
    _, cells, _ = benchmarks.table_rows(rows, ["coco"])
    clip_s = {c[2]: c[8] for c in cells}
    assert clip_s == {"LoRA": "**0.810** ★", "DoRA": "**1.520** ★ †", "Full fine-tuning": "1.490 †"}
    note = benchmarks.clip_encoder_note(rows)
    assert note.startswith("† CLIP-S computed with embedded-tiny-clip (the embedded world's 48-pixel CLIP), not the "
                           "paper's ViT-B/32")
    assert benchmarks.clip_encoder_note([r for r in rows if r["strategy"] == "lora"]) == ""


def test_a_run_continuing_another_counts_its_earlier_stage_which_is_not_a_captioner_of_its_own(home):
    """The shipped CLIP-Captioner is XE then SCST (init_from): its figures include the XE stage's energy once."""
    from captionlab.service import energy

    runs = {r["Run"]: r for r in energy.run_energy_rows(SHIPPED)}
    xe, scst = runs["clip_captioner_xe"], runs["clip_captioner"]
    own = json.loads((SHIPPED / "runs/clip_captioner/energy.json").read_text())["kwh_all_epochs"]
    assert scst["kWh all epochs"] == pytest.approx(own + xe["kWh all epochs"])
    assert xe["stage_of"] == "clip_captioner" and "clip_captioner_xe" in scst["Covers"]
    assert "yours · clip_captioner_xe" not in {b["source"] for b in energy.energy_bars([], list(runs.values()))}


def test_the_earlier_stage_of_a_workspace_run_is_found_through_its_checkpoint(tmp_path):
    from captionlab.training.stages import earlier_stages

    first, second = tmp_path / "xe", tmp_path / "scst"
    (first / "best" / "artifact").mkdir(parents=True)
    (first / "energy.json").write_text(json.dumps({"kwh_all_epochs": 0.5}))
    second.mkdir()
    (second / "config.yaml").write_text(f"init_from: {first / 'best' / 'artifact'}\n")
    assert [(name, energy) for name, _, energy in earlier_stages(second)] == [("xe", {"kwh_all_epochs": 0.5})]
    (second / "config.yaml").write_text("strategy: lora\n")
    assert earlier_stages(second) == []
