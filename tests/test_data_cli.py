"""`python -m captionlab data ...`: stats on the fixture datasets, errors as one line and exit 2."""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import pytest

from captionlab.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "datasets"
CONFIG = FIXTURES / "datasets.yaml"
COCO = ["--format", "karpathy", "--annotations", str(FIXTURES / "coco/dataset_coco.json"),
        "--images", str(FIXTURES / "coco/images")]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["data", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def table(out: str) -> dict[str, list[str]]:
    """The stats table's rows by split name."""
    return {cells[0]: cells[1:] for cells in (line.split() for line in out.splitlines()[2:]) if len(cells) == 4}


def test_stats_prints_images_captions_and_words_per_split(capsys):
    code, out, err = run(capsys, "stats", *COCO)
    assert (code, err) == (0, "")
    rows = table(out)
    assert rows["test"][:2] == ["2", "8"]
    assert rows["train"][:2] == ["1", "3"]
    assert rows["all"][:2] == ["5", "15"]
    assert float(rows["all"][2]) > 5


def test_stats_split_filter_as_json(capsys):
    code, out, _ = run(capsys, "stats", *COCO, "--split", "test", "--json")
    assert code == 0
    stats = json.loads(out)
    assert list(stats["splits"]) == ["test"]
    assert stats["total"]["images"] == 2 and stats["total"]["captions"] == 8
    assert stats["format"] == "karpathy" and stats["missing_images_skipped"] == 0


def test_stats_by_config_name_reports_what_vizwiz_dropped(capsys):
    code, out, _ = run(capsys, "stats", "--dataset", "vizwiz", "--config", str(CONFIG))
    assert code == 0
    assert table(out)["val"][:2] == ["2", "7"]
    assert "note: dropped 8 caption(s) (rejected or pre-canned)" in out
    assert "note: dropped 1 image(s) left with no caption" in out


def test_stats_by_format_colon_path(capsys):
    code, out, _ = run(capsys, "stats", "--dataset", f"textcaps:{FIXTURES / 'textcaps/TextCaps_0.1_val.json'}",
                       "--images", str(FIXTURES / "textcaps/images"), "--json")
    total = json.loads(out)["total"]
    assert code == 0 and (total["images"], total["captions"]) == (2, 8)  # duplicates kept


def test_bad_annotation_path_exits_2_naming_it(capsys, tmp_path):
    missing = tmp_path / "dataset_coco.json"
    code, out, err = run(capsys, "stats", "--format", "karpathy", "--annotations", str(missing),
                         "--images", str(tmp_path))
    assert code == 2 and out == ""
    assert str(missing) in err and err.startswith("error: ") and err.count("\n") == 1


def test_missing_images_exit_2_then_skip_missing_reports_them(capsys, tmp_path):
    shutil.copytree(FIXTURES / "nocaps", tmp_path / "nocaps")
    (tmp_path / "nocaps/images/0013ea2087020901.jpg").unlink()
    argv = ["stats", "--format", "nocaps", "--annotations", str(tmp_path / "nocaps/nocaps_val_4500_captions.json"),
            "--images", str(tmp_path / "nocaps/images")]
    code, _, err = run(capsys, *argv)
    assert code == 2 and "1 of 3 image(s)" in err and "--skip-missing" in err
    code, out, _ = run(capsys, *argv, "--skip-missing")
    assert code == 0 and table(out)["val"][:2] == ["2", "6"]
    assert "note: skipped 1 record(s) whose image file is missing" in out


@pytest.mark.parametrize("argv, message", [
    (["stats"], "say which dataset"),
    (["stats", "--dataset", "coco", "--format", "karpathy"], "not both"),
    (["stats", "--dataset", "imagenet", "--config", str(CONFIG)], "unknown dataset 'imagenet'"),
])
def test_usage_errors_exit_2(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err


def test_world_calls_the_generator_with_out_and_seed(capsys, tmp_path, monkeypatch):
    calls = []
    fake = types.ModuleType("captionlab.world")
    fake.write_world = lambda out_dir, seed=0: calls.append((out_dir, seed)) or out_dir
    monkeypatch.setitem(sys.modules, "captionlab.world", fake)
    code, out, _ = run(capsys, "world", "--out", str(tmp_path), "--seed", "3")
    assert code == 0 and calls == [(tmp_path, 3)] and str(tmp_path) in out


def test_stats_by_name_on_a_fresh_workspace_generates_the_embedded_world(capsys, tmp_path, monkeypatch):
    """As `train run` and `evaluate` do; the note goes to stderr so that --json stays parseable."""
    import captionlab.world

    real = captionlab.world.write_world
    monkeypatch.setenv("CAPTIONLAB_HOME", str(tmp_path))
    monkeypatch.setattr(captionlab.world, "write_world", lambda out, seed=0, scale=1.0: real(out, seed, scale=0.02))
    code, out, err = run(capsys, "stats", "--dataset", "coco", "--json")
    assert code == 0 and "generating the embedded caption world" in err
    stats = json.loads(out)
    assert stats["total"]["images"] > 0 and stats["annotations"].startswith(str(tmp_path / "world"))


def test_skip_missing_with_every_image_missing_is_an_error(capsys, tmp_path):
    shutil.copytree(FIXTURES / "nocaps", tmp_path / "nocaps")
    for image in (tmp_path / "nocaps/images").iterdir():
        image.unlink()
    code, out, err = run(capsys, "stats", "--format", "nocaps", "--skip-missing", "--images",
                         str(tmp_path / "nocaps/images"), "--annotations",
                         str(tmp_path / "nocaps/nocaps_val_4500_captions.json"))
    assert code == 2 and out == ""
    assert "error: nothing readable" in err and "every one of its 3 record(s)" in err


def test_stats_counts_nocaps_images_per_domain(capsys):
    nocaps = ["--format", "nocaps", "--annotations", str(FIXTURES / "nocaps/nocaps_val_4500_captions.json"),
              "--images", str(FIXTURES / "nocaps/images")]
    code, out, _ = run(capsys, "stats", *nocaps)
    rows = table(out)
    assert code == 0 and [rows[name][0] for name in ("in-domain", "near-domain", "out-domain")] == ["1", "1", "1"]
    code, out, _ = run(capsys, "stats", *nocaps, "--json")
    domains = json.loads(out)["domains"]
    assert list(domains) == ["in-domain", "near-domain", "out-domain"]
    assert [d["images"] for d in domains.values()] == [1, 1, 1]


def test_stats_counts_the_embedded_worlds_nocaps_per_domain(capsys, tiny_world):
    code, out, _ = run(capsys, "stats", "--dataset", "nocaps", "--config", str(tiny_world), "--json")
    stats = json.loads(out)
    assert code == 0 and list(stats["domains"]) == ["in-domain", "near-domain", "out-domain"]
    assert all(d["images"] > 0 for d in stats["domains"].values())
    assert sum(d["images"] for d in stats["domains"].values()) == stats["total"]["images"]


def test_stats_of_a_benchmark_without_domains_has_none(capsys):
    code, out, _ = run(capsys, "stats", *COCO, "--json")
    assert code == 0 and json.loads(out)["domains"] == {}
