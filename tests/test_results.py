"""captionlab.evaluation.results (SQLite store, atomic results.json) and .reference_data (the
paper's Tables 1-4 shipped with the package)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from captionlab.evaluation import reference_data, results
from captionlab.evaluation.metrics import CaptionLengths, MetricReport


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "captionlab.db"


def _record(db_path, **overrides) -> int:
    values = dict(model="LLaVA-v1.5-7B", strategy="lora", dataset="coco", split="test",
                  metrics={"BLEU-4": 36.1, "CIDEr": 105.7, "CLIP-Score": 0.777},
                  unavailable={"SPICE": "jars missing. Fix: fetch them"}, n_images=5000, db_path=db_path)
    values.update(overrides)
    return results.record_result(**values)


def test_record_and_read_back_every_field(db_path, tmp_path):
    result_id = _record(db_path, checkpoint="runs/lora-0001/best", seconds=12.5, energy_j=3.6e6,
                        energy_method="nvml", clip_encoder="open_clip:ViT-B-32/openai",
                        predictions_path=tmp_path / "predictions.json", extra={"mean_prediction_words": 9.8})
    row = results.get_result(result_id, db_path=db_path)
    assert row.id == result_id and row.created_at
    assert (row.model, row.strategy, row.dataset, row.split) == ("LLaVA-v1.5-7B", "lora", "coco", "test")
    assert row.metrics == {"BLEU-4": 36.1, "CIDEr": 105.7, "CLIP-Score": 0.777}
    assert row.unavailable == {"SPICE": "jars missing. Fix: fetch them"}
    assert row.checkpoint == "runs/lora-0001/best" and row.n_images == 5000 and row.seconds == 12.5
    assert (row.energy_j, row.energy_method) == (3.6e6, "nvml") and row.clip_encoder.startswith("open_clip")
    assert row.predictions_path == str(tmp_path / "predictions.json") and row.extra == {"mean_prediction_words": 9.8}
    with pytest.raises(KeyError):
        results.get_result(result_id + 1, db_path=db_path)


def test_list_filters_and_latest_per_setting(db_path):
    first = _record(db_path, metrics={"CIDEr": 100.0})
    second = _record(db_path, metrics={"CIDEr": 105.7})
    _record(db_path, strategy="dora", metrics={"CIDEr": 106.1})
    _record(db_path, dataset="nocaps", metrics={"CIDEr": 86.2})
    _record(db_path, model="LLaVA-v1.6-7B", metrics={"CIDEr": 108.6})
    _record(db_path, split="val", metrics={"CIDEr": 99.0})
    assert len(results.list_results(db_path=db_path)) == 6
    lora_coco = results.list_results(strategy="lora", dataset="coco", split="test", model="LLaVA-v1.5-7B",
                                     db_path=db_path)
    assert [r.id for r in lora_coco] == [second, first]  # newest first
    assert len(results.list_results(limit=2, db_path=db_path)) == 2
    latest = results.latest_results(db_path=db_path)
    assert len(latest) == 5 and second in {r.id for r in latest} and first not in {r.id for r in latest}
    only_v15_test = results.latest_results("LLaVA-v1.5-7B", split="test", db_path=db_path)
    assert {(r.strategy, r.dataset) for r in only_v15_test} == {("lora", "coco"), ("dora", "coco"), ("lora", "nocaps")}
    assert results.list_results(model="nobody", db_path=db_path) == []


def test_record_rejects_unknown_names_made_up_numbers_and_unlabelled_energy(db_path):
    with pytest.raises(ValueError, match="unknown metric"):
        _record(db_path, metrics={"CIDEr-D": 1.0})
    with pytest.raises(ValueError, match="finite"):
        _record(db_path, metrics={"SPICE": math.nan}, unavailable={})
    with pytest.raises(ValueError, match="both"):
        _record(db_path, metrics={"SPICE": 20.0})
    with pytest.raises(ValueError, match="reason"):
        _record(db_path, unavailable={"SPICE": ""})
    with pytest.raises(ValueError, match="energy_method"):
        _record(db_path, energy_j=10.0)
    assert results.list_results(db_path=db_path) == []


def test_collect_metrics_puts_reports_on_the_paper_scale():
    from captionlab.evaluation.clipscore import ClipScoreReport

    report = MetricReport(corpus={"BLEU-4": 0.361, "CIDEr": 1.057}, per_image={}, n_images=2, n_predictions=2,
                          unavailable={"SPICE": "no jars"}, excluded_no_references=[],
                          lengths=CaptionLengths(10.0, 11.0, 2, 10), seconds=1.0)
    clip = ClipScoreReport(encoder_name="embedded-tiny-clip", clip_score=0.777, per_image={}, n_images=2,
                           unavailable={"RefCLIP-Score": "no references given"})
    metrics, unavailable = results.collect_metrics(report, clip)
    assert metrics == pytest.approx({"BLEU-4": 36.1, "CIDEr": 105.7, "CLIP-Score": 0.777})
    assert unavailable == {"SPICE": "no jars", "RefCLIP-Score": "no references given"}


def test_results_json_round_trip_next_to_predictions(db_path, tmp_path):
    predictions = tmp_path / "run" / "predictions.json"
    predictions.parent.mkdir()
    predictions.write_text("{}")
    row = results.get_result(_record(db_path, predictions_path=predictions), db_path=db_path)
    target = results.results_json_path(predictions)
    assert target == predictions.parent / "results.json"
    per_image = {"CIDEr": {391895: 1.2, "a": 0.3}}
    written = results.write_results_json(target, row, per_image=per_image)
    loaded = results.load_results_json(written)
    assert loaded.result == row
    assert loaded.per_image == {"CIDEr": {"391895": 1.2, "a": 0.3}}
    assert "x100" in loaded.metrics_scale
    assert results.load_results_json(predictions.parent).result == row  # a folder means its results.json
    assert [p.name for p in predictions.parent.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_results_json_write_is_atomic(tmp_path, monkeypatch):
    row = results.ResultRow(model="m", strategy="zero_shot", dataset="coco", split="test",
                            metrics={"CIDEr": 50.0}, n_images=3)
    path = results.write_results_json(tmp_path, row)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(results.os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        results.write_results_json(path, results.ResultRow(**{**row.to_dict(), "metrics": {"CIDEr": 99.0}}))
    assert path.read_bytes() == before  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # and no temp file remains
    with pytest.raises(ValueError, match="not a captionlab results file"):
        (tmp_path / "other.json").write_text(json.dumps({"format": "x"}))
        results.load_results_json(tmp_path / "other.json")


def test_results_and_reference_data_do_not_import_torch():
    code = ("import sys, captionlab.evaluation.results, captionlab.evaluation.reference_data; "
            "sys.exit('torch' in sys.modules or 'pycocoevalcap' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent).returncode == 0


# ---- the paper's numbers -------------------------------------------------------------------------

def test_paper_results_tables_1_to_3():
    rows = reference_data.paper_results()
    # 5 datasets x (CLIP-Captioner + 2 LLaVA versions x 6 strategies) = 65 rows (66 lines with the header)
    assert len(rows) == 65
    assert sorted({r["dataset"] for r in rows}) == ["cc3m", "coco", "nocaps", "textcaps", "vizwiz"]
    assert len({(r["model"], r["strategy"], r["dataset"]) for r in rows}) == 65
    assert all(set(r["metrics"]) == {"BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE", "CLIP-Score"} for r in rows)
    by_key = {(r["model"], r["strategy"], r["dataset"]): r for r in rows}
    lora = by_key[("LLaVA-v1.5-7B", "lora", "coco")]
    assert lora["metrics"] == {"BLEU-4": 36.1, "METEOR": 23.2, "ROUGE-L": 56.0, "CIDEr": 105.7, "SPICE": 24.7,
                               "CLIP-Score": 0.777}
    assert lora["table"] == "Table 1"
    clip_captioner = by_key[("CLIP-Captioner", "none", "coco")]["metrics"]
    assert clip_captioner["BLEU-4"] is None and clip_captioner["CIDEr"] == 126.2  # not reported -> None
    assert by_key[("LLaVA-v1.6-7B", "full", "coco")]["metrics"]["CIDEr"] == 112.3
    assert by_key[("LLaVA-v1.6-7B", "zero_shot", "textcaps")]["metrics"]["CLIP-Score"] == 0.765
    assert by_key[("LLaVA-v1.5-7B", "prompt_learning", "vizwiz")]["table"] == "Table 3"
    assert sum(r["metrics"][m] is None for r in rows for m in r["metrics"]) == 1


def test_paper_energy_table_4_with_both_parameter_counts():
    rows = {r["strategy"]: r for r in reference_data.paper_energy()}
    assert list(rows) == ["prompt_learning", "prefix_tuning", "lora", "dora", "full"]
    prompt, prefix = rows["prompt_learning"], rows["prefix_tuning"]
    assert prompt["trainable_params_printed"] == "19.7k" and prompt["trainable_params_method"] == 48 * 4096 == 196_608
    assert prefix["trainable_params_printed"] == "13.1k" and prefix["trainable_params_method"] == 32 * 4096 == 131_072
    assert "10x below" in prompt["note"] and "10x below" in prefix["note"]
    assert rows["lora"]["trainable_params_method"] == 319_815_680 and "matches" in rows["lora"]["note"]
    assert rows["dora"]["trainable_params_method"] == 321_175_552
    assert rows["full"]["trainable_params_method"] is None and rows["full"]["trainable_params_printed"] == "7B"
    assert (rows["lora"]["kwh_all_epochs"], rows["lora"]["kwh_best"]) == (59.5, 28.5)
    assert (rows["dora"]["kwh_all_epochs"], rows["dora"]["kwh_best"]) == (58.2, 14.5)
    assert (prompt["kwh_all_epochs"], prompt["kwh_best"]) == (12.4, 3.1)
    assert rows["full"]["kwh_all_epochs"] == 64.3 and all(r["model"] == "LLaVA-v1.5-7B" for r in rows.values())



def test_paper_results_csv_equals_every_number_the_paper_prints():
    """Each of the 65 rows, value by value, against Tables 1-3 as the paper's text prints them (a copy in fixtures)."""
    strategies = {"-": "zero_shot", "Prompt Learning": "prompt_learning", "Prefix Tuning": "prefix_tuning",
                  "LoRA": "lora", "DoRA": "dora", "Full Fine-tuning": "full"}
    metric_names = ["BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE", "CLIP-Score"]
    table_datasets = [("coco",), ("nocaps", "cc3m"), ("vizwiz", "textcaps")]
    printed, table, model = {}, -1, None
    text = (Path(__file__).parent / "fixtures" / "paper_tables_1_3.txt").read_text(encoding="utf-8")
    for line in text.splitlines()[1:]:
        cells = line.replace("<u>", "").replace("</u>", "").split("\t")
        if cells[0] == "Model":
            table += 1
            continue
        if not cells[0] and (len(cells) < 2 or cells[1] not in strategies):
            continue  # a table's second header line (the metric names)
        if cells[0]:
            model = cells[0].split(" [")[0]
        strategy = "none" if model == "CLIP-Captioner" else strategies[cells[1]]
        values = [None if v == "." else float(v) for v in cells[2:] if v != ""]
        for position, dataset in enumerate(table_datasets[table]):
            printed[(model, strategy, dataset)] = dict(zip(metric_names, values[6 * position:6 * position + 6]))
    assert len(printed) == 65
    shipped = {(r["model"], r["strategy"], r["dataset"]): r["metrics"] for r in reference_data.paper_results()}
    assert shipped == printed
