"""The web app: it builds without torch, its service facade on a temp workspace, and the running app's API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # app.py lives at the project root

import app as app_module  # noqa: E402


def write_png(path: Path, size=(40, 30), colour=(200, 30, 30)) -> Path:
    from PIL import Image

    Image.new("RGB", size, colour).save(path)
    return path


# --- the UI builds without any model and without torch -----------------------------------------


def test_ui_imports_and_builds_without_torch(tmp_path):
    script = (
        "import sys\n"
        "import captionlab.ui.app as ui\n"
        "assert 'torch' not in sys.modules, 'importing the UI imported torch'\n"
        "from captionlab.service.settings import settings_for\n"
        f"demo = ui.build_app(settings_for({str(tmp_path / 'no-model')!r}, {str(tmp_path / 'none')!r}))\n"
        "assert 'torch' not in sys.modules, 'building the UI imported torch'\n"
        "names = [d.get('api_name') for d in demo.config['dependencies']]\n"
        "assert 'caption' in names, names\n"
        "print('ok')\n"
    )
    env = {**os.environ, "CAPTIONLAB_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")


def test_catalog_labels_match_the_strategy_registry():
    from captionlab.service import catalog
    from captionlab.strategies import PAPER_STRATEGIES, STRATEGIES

    assert catalog.PAPER_STRATEGIES == PAPER_STRATEGIES
    assert catalog.TRAINABLE_STRATEGIES == [k for k in PAPER_STRATEGIES if STRATEGIES[k].trains]
    for key, cls in STRATEGIES.items():
        assert catalog.STRATEGY_LABELS[key] == cls.label


# --- app.py ------------------------------------------------------------------------------------


def test_command_line_defaults_are_local_and_private():
    args = app_module.parse_args([])
    assert (args.host, args.port, args.share, args.auth, args.model) == ("127.0.0.1", 7860, False, None, None)
    assert app_module.parse_auth("ann:secret") == ("ann", "secret")
    with pytest.raises(SystemExit):
        app_module.parse_auth("no-colon")


def test_exposed_without_auth_warns():
    assert app_module.exposure_warning("127.0.0.1", None, False) is None
    assert "without --auth" in app_module.exposure_warning("0.0.0.0", None, False)
    assert app_module.exposure_warning("0.0.0.0", ("a", "b"), False) is None
    assert "public" in app_module.exposure_warning("127.0.0.1", None, True)


# --- compare: discovery, images ----------------------------------------------------------------


def test_missing_checkpoints_are_listed_with_what_to_do(home, tiny_llava_dir, tmp_path):
    from captionlab.service.compare import discover_strategies
    from captionlab.service.settings import settings_for

    slots = {s.key: s for s in discover_strategies(settings_for(str(tiny_llava_dir), tmp_path / "empty"))}
    assert list(slots) == ["zero_shot", "prompt_learning", "prefix_tuning", "lora", "dora", "full", "clip_captioner"]
    assert slots["zero_shot"].available
    for key in ("prompt_learning", "prefix_tuning", "lora", "dora", "full"):
        assert not slots[key].available
        assert "no trained checkpoint for" in slots[key].reason and "python -m train zoo" in slots[key].reason
    assert not slots["clip_captioner"].available and "CLIP-Captioner" in slots["clip_captioner"].reason


def test_a_missing_base_model_is_explained_for_every_strategy(home, tmp_path):
    from captionlab.service.compare import discover_strategies
    from captionlab.service.settings import settings_for

    slots = discover_strategies(settings_for(str(tmp_path / "nowhere"), tmp_path))
    assert not any(s.available for s in slots)
    assert all(s.reason for s in slots)


def test_artifacts_are_found_in_strategies_folders_and_run_folders(tmp_path):
    from captionlab.artifacts import search_artifact as find_artifact  # the one search (was compare.find_artifact)

    shipped = tmp_path / "strategies" / "lora"
    shipped.mkdir(parents=True)
    (shipped / "strategy.json").write_text(json.dumps({"strategy": "lora"}))
    run = tmp_path / "run" / "best" / "artifact"
    run.mkdir(parents=True)
    (run / "strategy.json").write_text(json.dumps({"strategy": "dora"}))
    assert find_artifact(shipped, "lora") == shipped
    assert find_artifact(tmp_path / "run", "dora") == run
    assert find_artifact(shipped, "dora") is None  # a LoRA artifact is not a DoRA one


def test_bad_uploads_get_a_clear_message(tmp_path):
    from captionlab.service.compare import ImageError, compare_images, image_labels, open_image, open_images
    from captionlab.service.settings import settings_for

    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    good = write_png(tmp_path / "ok.png")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(good.read_bytes()[:60])
    with pytest.raises(ImageError, match="notes.txt: not an image"):
        open_image(text)
    with pytest.raises(ImageError, match="cut.png"):
        open_image(truncated)
    files = [text, good, truncated]
    images, kept, errors = open_images(files)
    assert image_labels([files[index] for index in kept]) == ["ok.png"] and len(images) == 1 and len(errors) == 2
    with pytest.raises(ImageError, match="no image given"):
        compare_images(settings_for(None), [])
    with pytest.raises(ImageError, match="not an image"):
        compare_images(settings_for(None), [text])  # nothing usable: fails before loading any model


class FakePool:
    """Captions with zero-shot only, the batch in 30 ms, without any model; `cut`: the captions cut at the token
    limit; `load_seconds`: what the first call spends loading (later calls load nothing)."""

    def __init__(self, cut: list[bool] | None = None, load_seconds: float = 0.0):
        self.cut, self.load_seconds, self.loaded = cut, load_seconds, False

    def caption_details(self, images, runs=None):
        from captionlab.service.compare import Captioned

        loaded_now, self.loaded = not self.loaded, True
        return Captioned(captions={"zero_shot": [f"caption {i}" for i in range(len(images))]},
                         latency={"zero_shot": 30.0 / len(images)},
                         cut={"zero_shot": self.cut} if self.cut is not None else {},
                         load_seconds=self.load_seconds if loaded_now else 0.0)


def compare_without_models(monkeypatch, tmp_path, files, references=None, pool=None, settings=None, score=False):
    from captionlab.service import compare
    from captionlab.service.settings import settings_for

    pool = pool or FakePool()
    monkeypatch.setattr(compare, "get_pool", lambda settings: pool)
    return compare.compare_images(settings or settings_for(str(tmp_path / "no-model")), files, references,
                                  score=score)


def test_embedded_models_on_an_upload_say_what_they_know_and_grey_clip_s(home, tmp_path, monkeypatch):
    from captionlab.service import compare
    from captionlab.service.settings import embedded_settings
    from captionlab.ui.compare_tab import _embedded_note, _table

    photo = str(write_png(tmp_path / "pagoda.png", size=(64, 48)))
    result = compare_without_models(monkeypatch, tmp_path, [photo], settings=embedded_settings(), score=True)
    assert result.out_of_world == ["pagoda.png"]
    (row,) = [r for r in result.rows if r["key"] == "zero_shot"]
    assert row["CLIP-S"] is not None and row["clip_note"] == compare.EMBEDDED_CLIP_REASON  # scored, but flagged
    styled = _table(result)
    assert styled.data.loc[0, "CLIP-S"].startswith("(")
    assert "color: #9a9a9a" in styled.to_html()  # greyed
    note = _embedded_note(result)
    assert "pagoda.png" in note and "embedded caption world" in note and "CLIP-S in grey" in note


def test_served_real_weights_say_nothing_of_the_embedded_world(home, tmp_path, monkeypatch, tiny_llava_dir,
                                                               served_checkpoints):
    from captionlab.service.settings import settings_for
    from captionlab.ui.compare_tab import _embedded_note

    photo = str(write_png(tmp_path / "pagoda.png"))
    settings = settings_for(str(tiny_llava_dir), served_checkpoints, "cpu", 4)
    result = compare_without_models(monkeypatch, tmp_path, [photo], settings=settings)
    assert result.out_of_world == [] and not any(r["clip_note"] for r in result.rows)
    assert _embedded_note(result) == ""


def test_captions_cut_at_the_token_limit_are_marked_and_explained(home, tmp_path, monkeypatch):
    from captionlab.ui.compare_tab import _table

    files = [str(write_png(tmp_path / f"{name}.png")) for name in ("one", "two")]
    result = compare_without_models(monkeypatch, tmp_path, files, pool=FakePool(cut=[True, False]))
    captions = list(_table(result)["Caption"])
    assert captions[0] == "caption 0 [cut]"  # unfinished: marked where it is read
    assert "caption 1" in captions and "caption 1 [cut]" not in captions
    (note,) = [n for n in result.notes if n.startswith("[cut]")]
    from captionlab.caption_length import DEFAULT_MAX_NEW_TOKENS

    assert "Zero-shot" in note and f"{DEFAULT_MAX_NEW_TOKENS} new tokens" in note and "--max-new-tokens" in note


def test_model_loading_time_is_noted_only_on_the_request_that_loaded(home, tmp_path, monkeypatch):
    files = [str(write_png(tmp_path / "one.png"))]
    pool = FakePool(load_seconds=28.6)
    first = compare_without_models(monkeypatch, tmp_path, files, pool=pool)
    second = compare_without_models(monkeypatch, tmp_path, files, pool=pool)
    assert any("28.6 s" in note for note in first.notes)
    assert not any("loaded" in note for note in second.notes)  # it did not wait for any loading


def test_uploads_sharing_a_file_name_get_distinct_labels(home, tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_png(tmp_path / "a" / "normal.png", colour=(200, 0, 0))
    second = write_png(tmp_path / "b" / "normal.png", colour=(0, 0, 200))
    result = compare_without_models(monkeypatch, tmp_path, [str(first), str(second)], [["a red square"], None])
    assert result.names == ["normal.png", "normal.png (2)"] and result.files == [str(first), str(second)]
    assert [r["image"] for r in result.rows if r["key"] == "zero_shot"] == ["normal.png", "normal.png (2)"]
    assert result.references == {"normal.png": ["a red square"]}  # the first file's, not the second's
    from captionlab.service.compare import image_labels

    assert image_labels(["a/n.png", "n.png (2)", "b/n.png"]) == ["n.png", "n.png (2)", "n.png (3)"]


def test_latency_of_a_batch_is_labelled_as_its_mean_per_image(home, tmp_path, monkeypatch):
    from captionlab.ui.compare_tab import _table

    files = [str(write_png(tmp_path / f"{name}.png")) for name in ("one", "two")]
    result = compare_without_models(monkeypatch, tmp_path, files)
    table = _table(result)
    (latency_header,) = [h for h in table.columns if "ms" in h]
    assert latency_header == "ms per image (batch mean)"
    assert [ms for ms in table[latency_header] if ms] == ["15", "15"]  # the 30 ms batch over its 2 images
    assert any(note.startswith("ms per image (batch mean): each captioner captions the 2 images as one batch")
               for note in result.notes)


def test_gallery_is_rendered_once_from_the_embedded_world(home):
    from captionlab.service import gallery

    items, source = gallery.load_gallery(None)
    assert len(items) == gallery.DEFAULT_SIZE and "embedded caption world" in source
    assert {i.domain for i in items} == {"coco", "nocaps", "cc3m", "vizwiz", "textcaps"}
    assert all(i.path.is_file() and i.references for i in items)
    assert gallery.read_gallery(gallery.generated_gallery_dir()) == items


# --- train: the form, a run's view -------------------------------------------------------------


def form(**changes):
    from captionlab.service.runs import TrainForm

    values = {"lr_max": 0.02, "lr_min": 1e-5, "batch_size": 32, "micro_batch_size": 8, "epochs": 4,
              "max_train_images": None, "max_val_images": None}
    fields = {"model": "llava-1.5-7b", "strategy": "lora", "dataset": "coco", "gpus": 1, "name": ""}
    for key, value in changes.items():
        (values if key in values else fields)[key] = value
    return TrainForm(values=values, **fields)


def test_form_defaults_are_the_papers():
    from captionlab.service.runs import form_defaults

    defaults = form_defaults("llava-1.5-7b", "lora")
    assert (defaults["lr_max"], defaults["lr_min"], defaults["batch_size"], defaults["epochs"]) == (0.02, 1e-5, 32, 4)


def test_train_tab_names_the_recipe_its_form_starts_from_and_how_it_departs_from_the_paper(home, tmp_path):
    import gradio as gr

    from captionlab.service.runs import form_defaults
    from captionlab.ui.train_tab import _defaults_markdown

    # lr_max 0.2 in the form: it must not pass for the paper's
    embedded = _defaults_markdown("embedded", "lora", form_defaults("embedded", "lora"))
    assert "`embedded/lora`" in embedded and "max learning rate 0.2 (paper: 0.02)" in embedded
    assert "micro-batch" not in embedded  # not a paper setting: it only splits the batch for memory
    assert "the paper's settings" in _defaults_markdown("llava-1.5-7b", "lora", form_defaults("llava-1.5-7b", "lora"))
    from captionlab.service.settings import settings_for
    from captionlab.ui.train_tab import create_train_tab

    with gr.Blocks() as demo:
        create_train_tab(settings_for(str(tmp_path / "no-model"), str(tmp_path / "none")))
    texts = [b.value for b in demo.blocks.values() if isinstance(b, gr.Markdown) and isinstance(b.value, str)]
    assert any("The form starts from the recipe" in text for text in texts)
    assert not any("Defaults are the paper's" in text for text in texts)


@pytest.mark.parametrize("changes, field", [
    ({"lr_max": -1}, "max learning rate"), ({"lr_min": 0.5}, "min learning rate"), ({"batch_size": 0}, "batch size"),
    ({"micro_batch_size": 64}, "micro-batch size"), ({"epochs": 1.5}, "epochs"), ({"gpus": 0}, "GPUs"),
    ({"max_train_images": "many"}, "max training images"), ({"strategy": "zero_shot"}, "strategy"),
    ({"dataset": " "}, "dataset"),
])
def test_form_errors_name_the_field(changes, field):
    from captionlab.service.runs import FormError, validate_form

    with pytest.raises(FormError) as caught:
        validate_form(form(**changes))
    assert str(caught.value).startswith(field)


def train_form_components(tmp_path) -> dict:
    """The Train tab's components by elem_id, built as the app builds them."""
    import gradio as gr

    from captionlab.service.settings import settings_for
    from captionlab.ui.train_tab import create_train_tab

    with gr.Blocks() as demo:
        create_train_tab(settings_for(str(tmp_path / "no-model"), str(tmp_path / "none")))
    return {block.elem_id: block for block in demo.blocks.values() if getattr(block, "elem_id", None)}


@pytest.mark.parametrize("elem_id, key", [("train-epochs", "epochs"), ("train-batch-size", "batch_size"),
                                          ("train-micro-batch-size", "micro_batch_size"), ("train-gpus", "gpus")])
def test_whole_number_fields_refuse_a_fraction_instead_of_rounding_it(home, tmp_path, elem_id, key):
    from captionlab.service.runs import FormError, validate_form

    typed = train_form_components(tmp_path)[elem_id].preprocess(1.5)  # what the callback receives
    assert typed == 1.5
    with pytest.raises(FormError, match=r"1\.5.*(must be|is not) a whole number"):
        validate_form(form(**{key: typed}))


def test_preview_is_the_launchers_command_with_only_the_changes():
    from captionlab.service.runs import preview

    assert preview(form()) == "python -m captionlab runs launch llava-1.5-7b/lora"
    line = preview(form(epochs=1, max_train_images="16", gpus=4, name="quick"))
    assert line == ("python -m captionlab runs launch llava-1.5-7b/lora epochs=1 max_train_images=16 "
                    "--gpus 4 --name quick")


def make_run(home: Path, run_id="r1", steps=3, total=6, energy=True) -> Path:
    from captionlab.training import runs_db
    from captionlab.training.run_folder import RunFolder

    folder = RunFolder(home / "runs" / run_id)
    folder.path.mkdir(parents=True)
    folder.write_status(state="running", step=steps, total_steps=total, best_epoch=1, best_val_loss=2.5)
    for step in range(1, steps + 1):
        folder.append_metrics({"step": step, "epoch": step / 3, "loss": 4.0 - step * 0.5, "lr": 0.02,
                               "elapsed_s": 10.0 * step, "energy_j": 3600.0 * step})
    folder.append_metrics({"event": "val", "epoch": 1, "step": 3, "val_loss": 2.5, "energy_j": 10800.0})
    if energy:
        (folder.path / "energy.json").write_text(json.dumps({
            "kwh_all_epochs": 0.003, "kwh_best": 0.003, "epochs": 1, "best_epoch": 1, "method": "estimate",
            "label": "estimate: 2 cores x 10 W assumed", "device": "cpu", "measured": False,
            "strategy": "lora", "model": "embedded", "trainable_parameters": 17408}))
    folder.log_path.write_text("line 1\nline 2\n")
    runs_db.register_run(run_id, name=run_id, run_dir=folder.path, state="running", model="embedded",
                         strategy="lora", dataset="coco", pid=None)
    return folder.path


def test_run_view_reads_progress_curves_energy_and_log(home):
    from captionlab.service.runs import format_duration, run_view

    make_run(home)
    view = run_view("r1")
    assert (view.step, view.total_steps, view.fraction) == (3, 6, 0.5)
    assert view.eta_s == pytest.approx(30.0)  # 10 s per step, 3 steps to go
    assert view.train_curve == [(1, 3.5), (2, 3.0), (3, 2.5)] and view.val_curve == [(3, 2.5)]
    assert view.energy_kwh == pytest.approx(0.003) and "estimate" in view.energy_method
    assert view.log_tail.endswith("line 2") and view.running and not view.resumable
    assert format_duration(30) == "30s" and format_duration(3725) == "1h02m"


def test_broken_metrics_lines_are_counted_where_the_run_is_shown(home):
    from captionlab.service.runs import run_view
    from captionlab.ui.train_tab import _stats_markdown

    folder = make_run(home)
    with (folder / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 4, "loss": 2.\nnot json at all\n\n{"step": 5, "loss": 1.5}\n')
    view = run_view("r1")
    assert view.train_curve[-1] == (5, 1.5) and len(view.train_curve) == 4  # the good rows still drawn
    assert view.skipped_metrics_lines == 2  # the blank line is not a broken one
    assert "2 broken line(s) of metrics.jsonl skipped" in _stats_markdown(view)


def test_a_finished_run_counts_the_initial_validation_pass_in_its_energy_but_not_in_its_epochs(home):
    from captionlab.service import runs
    from captionlab.training.run_folder import RunFolder
    from captionlab.ui.train_tab import _stats_markdown

    folder = RunFolder(make_run(home))  # the metrics' last row: 10800 J = 0.003 kWh
    energy = json.loads(folder.energy_path.read_text())
    # as the trainer writes it: the untrained model's validation pass (0.0005 kWh) is kept out of the epochs
    energy.update(kwh_all_epochs=0.0025, kwh_best=0.0025, initial_validation_kwh=0.0005)
    folder.energy_path.write_text(json.dumps(energy))
    folder.write_status(state="finished", step=3)
    view = runs.run_view("r1")
    assert view.energy.so_far_kwh == pytest.approx(0.003) and view.energy.through_step is None
    assert view.energy.completed_kwh == pytest.approx(0.0025) and not view.energy.has_partial_epoch
    (listed,) = runs.runs_table(runs.list_runs())
    assert listed["kWh"].startswith("0.003 ")
    stats = _stats_markdown(view)
    assert "**energy:** 0.003 kWh (" in stats and "completed epochs" not in stats
    assert "validation pass, 0.0005 kWh, which Table 4 leaves out" in stats


def test_a_run_stopped_mid_epoch_shows_one_energy_so_far_and_labels_the_completed_epochs(home):
    from captionlab.service import runs
    from captionlab.training.run_folder import RunFolder
    from captionlab.ui.train_tab import _stats_markdown

    folder = RunFolder(make_run(home))  # epoch 1 ended at step 3 with 0.003 kWh (energy.json)
    folder.append_metrics({"step": 4, "epoch": 4 / 3, "loss": 2.0, "lr": 0.02, "elapsed_s": 40.0, "energy_j": 18000.0})
    folder.write_status(state="stopped", step=4)
    view = runs.run_view("r1")
    assert (view.energy.so_far_kwh, view.energy.through_step) == (pytest.approx(0.005), 4)
    assert (view.energy.completed_kwh, view.energy.completed_epochs) == (pytest.approx(0.003), 1)
    (listed,) = runs.runs_table(runs.list_runs())
    assert listed["kWh"].startswith("0.005 ")  # the same figure as the stats line, not energy.json's 0.003
    stats = _stats_markdown(view)
    assert "**energy so far:** 0.005 kWh through step 4" in stats
    assert "**in completed epochs (1):** 0.003 kWh" in stats
    # and `python -m captionlab runs` (launcher.run_with_status) lists the same energy so far
    from captionlab.cli.runs import format_energy
    from captionlab.training import launcher, runs_db

    assert format_energy(launcher.run_with_status(runs_db.get_run("r1"))).startswith("~0.005 kWh")


# --- benchmarks, energy -------------------------------------------------------------------------


def test_paper_table_1_marks_the_best_per_model():
    from captionlab.service.benchmarks import paper_rows, table_rows

    columns, cells, keys = table_rows(paper_rows(), ["coco"])
    assert columns[:3] == ["Source", "Model", "Strategy"] and columns[6] == "C"
    by_line = {(c[1], c[2]): c for c in cells}
    assert by_line[("LLaVA-v1.5-7B", "Full fine-tuning")][6] == "**111.4**"
    assert by_line[("LLaVA-v1.5-7B", "LoRA")][6] == "105.7"
    assert by_line[("CLIP-Captioner", "—")][6] == "126.2 ★"  # overall best, not bold (its own model)
    assert by_line[("LLaVA-v1.5-7B", "Zero-shot")][8] == "**0.806** ★"  # CLIP-S
    assert len(cells) == 13 and all(k["source"] == "paper" for k in keys)


def test_your_results_sit_beside_the_papers_and_drill_down(home, tmp_path):
    from captionlab.evaluation import results
    from captionlab.service import benchmarks

    predictions = tmp_path / "eval" / "predictions.jsonl"
    predictions.parent.mkdir()
    predictions.write_text("\n".join(json.dumps({"image_id": f"img{i}", "caption": f"a red ball {i}",
                                                 "references": ["a red ball"]}) for i in range(3)))
    row_id = results.record_result(model="embedded", strategy="lora", dataset="coco", split="test",
                                   metrics={"CIDEr": 80.0, "BLEU-4": 20.0}, n_images=3,
                                   predictions_path=predictions)
    stored = results.get_result(row_id)
    results.write_results_json(predictions.parent, stored, per_image={"CIDEr": {"img0": 90.0, "img1": 70.0}})
    rows = benchmarks.paper_rows() + benchmarks.your_rows(None)
    _, cells, keys = benchmarks.table_rows(rows, ["coco"])
    mine = [i for i, k in enumerate(keys) if k["source"] == "yours"]
    assert len(mine) == 1 and cells[mine[0]][6] == "**80.0** ★"
    records, where = benchmarks.drilldown(keys[mine[0]]["rows"]["coco"])
    assert [r["image"] for r in records] == ["img0", "img1", "img2"]
    assert records[0]["caption"] == "a red ball 0" and records[0]["CIDEr (image)"] == 90.0
    assert records[2]["CIDEr (image)"] is None and "do not average to the table's corpus scores" in where
    assert mine == [0]  # your rows come first, above the paper's
    paper_line = next(k for k in keys if k["source"] == "paper")
    assert benchmarks.drilldown(paper_line["rows"]["coco"])[0] == []  # the paper has no per-image data


def test_an_unreadable_results_source_is_named_and_the_other_kept(home, monkeypatch):
    """What the Benchmarks and Energy tabs show: a source that fails is said, never silently dropped."""
    from captionlab.service import benchmarks

    def broken(checkpoints=None, problems=None):
        raise OSError("database disk image is malformed")

    rows, problems = benchmarks.all_rows(None)
    assert problems == [] and {r["source"] for r in rows} == {"paper"}
    monkeypatch.setattr(benchmarks, "your_rows", broken)
    rows, problems = benchmarks.all_rows(None)
    assert rows == benchmarks.paper_rows()
    assert problems == ["your results are unavailable: OSError: database disk image is malformed"]


def benchmarks_tab(tmp_path):
    """The Benchmarks tab built as the app builds it: (components by elem_id, callbacks by function name)."""
    import gradio as gr

    from captionlab.service.settings import settings_for
    from captionlab.ui.benchmarks_tab import create_benchmarks_tab

    with gr.Blocks() as demo:
        create_benchmarks_tab(settings_for(str(tmp_path / "no-model"), str(tmp_path / "none")))
    components = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    callbacks = {f.fn.__name__: f.fn for f in demo.fns.values() if f.fn is not None}
    return components, callbacks


def test_evaluation_limit_starts_empty_and_empty_means_the_whole_split(home, tmp_path):
    from captionlab.service.jobs import validate_evaluation

    limit = benchmarks_tab(tmp_path)[0]["bench-eval-limit"]
    # a gr.Number drawn empty shows 0 in the browser and submits it, which the job refuses (at least 1)
    assert not isinstance(limit, __import__("gradio").Number)
    assert limit.value == "" and validate_evaluation("zero_shot", "coco", None, limit.preprocess(""))[3] is None


def test_drilldown_of_a_paper_row_and_no_jobs_keep_their_column_names(home, tmp_path):
    import gradio as gr

    from captionlab.service import benchmarks
    from captionlab.service.catalog import PAPER_TABLES

    components, callbacks = benchmarks_tab(tmp_path)
    _, _, keys = benchmarks.table_rows(benchmarks.paper_rows(), PAPER_TABLES[list(PAPER_TABLES)[0]])
    row = next(i for i, k in enumerate(keys) if k["strategy"] == "zero_shot")
    event = gr.SelectData(None, {"index": [row, 6], "value": "", "selected": True})
    title, html = callbacks["on_select"](event, list(PAPER_TABLES)[0], keys)
    assert "No per-image captions" in html
    assert "Zero-shot" in title and "publishes corpus scores only" in title  # the table's label, not zero_shot
    assert list(callbacks["on_jobs_tick"]([], list(PAPER_TABLES)[0], "Yours")[0].columns) == [
        "job", "state", "progress", "ETA", "last log line"]
    assert list(components["bench-jobs"].value["headers"]) == ["job", "state", "progress", "ETA", "last log line"]


def test_fig2_and_tradeoff_data_from_the_paper():
    from captionlab.service.benchmarks import cider_series, generalisation_points, paper_rows
    from captionlab.ui import charts

    rows = paper_rows()
    bars = cider_series(rows, ["nocaps", "vizwiz", "textcaps"])
    assert {b["group"] for b in bars} == {"paper · LLaVA-v1.5-7B", "paper · LLaVA-v1.6-7B"}
    assert len([b for b in bars if b["strategy"] == "CLIP-Captioner"]) == 6  # drawn in both panels
    points = {(p["model"], p["strategy"]): p for p in generalisation_points(rows)}
    full = points[("LLaVA-v1.5-7B", "Full fine-tuning")]
    assert full["in_domain"] == 111.4 and full["out_of_domain"] == pytest.approx((86.8 + 20.8 + 43.7 + 39.3) / 4)
    assert len(charts.cider_bars(bars).data) > 0 and len(charts.generalisation_scatter(list(points.values())).data) > 0
    assert charts.cider_bars([]).layout.annotations  # an empty chart says why


def test_energy_shows_both_parameter_counts_and_your_runs(home):
    from captionlab.service import benchmarks, energy

    paper = {r["key"]: r for r in energy.paper_table()}
    assert paper["prompt_learning"]["Params (printed)"] == "19.7k"
    assert paper["prompt_learning"]["Params (method text)"] == "196,608"
    assert paper["prefix_tuning"]["Params (method text)"] == "131,072" and "10x" in paper["prefix_tuning"]["Note"]
    make_run(home)
    runs = energy.run_energy_rows(None)
    assert len(runs) == 1 and runs[0]["Method"].startswith("ESTIMATE") and runs[0]["kWh all epochs"] == 0.003
    bars = energy.energy_bars(list(paper.values()), runs)
    assert bars[0]["source"].startswith("paper") and bars[-1]["source"] == "yours · r1"
    points = energy.quality_points(list(paper.values()), runs, benchmarks.paper_rows())
    assert {p["strategy"] for p in points} == {"Prompt learning", "Prefix tuning", "LoRA", "DoRA", "Full fine-tuning"}


# --- the running app answers gradio_client ------------------------------------------------------


@pytest.fixture(scope="module")
def served_checkpoints(tmp_path_factory, tiny_llava_dir):
    """Artifacts of every trainable strategy for the tiny model, laid out as --checkpoints expects."""
    import torch

    from captionlab.models.loading import load_model
    from captionlab.models.registry import get_model_spec
    from captionlab.strategies import get_strategy

    root = tmp_path_factory.mktemp("checkpoints")
    for seed, key in enumerate(["prompt_learning", "prefix_tuning", "lora", "dora", "full"]):
        torch.manual_seed(seed)
        loaded = load_model(get_model_spec(tiny_llava_dir), device="cpu")
        strategy = get_strategy(key)
        model = strategy.apply(loaded.model, loaded.spec, loaded.tokenizer)
        strategy.save(model, root / "strategies" / key)
    return root


# what an app that could not serve on its port says before it exits: another process took the free port between
# free_port() and the app's bind, or gradio's 3-second check of its own URL timed out on a loaded machine
START_RACES = ("address already in use", "localhost is not accessible", "Cannot find empty port")


def start_app(args: list[str], home: Path, timeout_s: float = 120, env: dict | None = None,
              attempts: int = 3) -> tuple[subprocess.Popen, str]:
    """`python app.py ARGS` on 127.0.0.1 and a free port; returns (process, url) once it answers. An app that exits
    for one of the START_RACES is started again on another port (up to `attempts` times)."""
    import urllib.request

    for attempt in range(1, attempts + 1):
        port = free_port()
        log_path = home / "app.log"
        log = log_path.open("wb")
        environment = {**os.environ, "CAPTIONLAB_HOME": str(home), "HF_HUB_OFFLINE": "1",
                       "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})}
        process = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(port),
                                    *args], cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        log.close()  # the child has its own handle
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                text = log_path.read_text(errors="replace")
                if attempt < attempts and any(race in text for race in START_RACES):
                    break  # try again on another port
                raise RuntimeError(f"the app exited: {text[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        return process, url
            except OSError:
                time.sleep(0.5)
        else:
            stop_app(process)
            raise TimeoutError(f"the app did not answer within {timeout_s}s: {log_path.read_text()[-3000:]}")
    raise AssertionError("unreachable")


def stop_app(process: subprocess.Popen) -> None:
    import signal

    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.mark.slow
def test_running_app_captions_through_gradio_client(tmp_path, tiny_llava_dir, served_checkpoints):
    from gradio_client import Client, handle_file

    home = tmp_path / "home"
    home.mkdir()
    process, url = start_app(["--model", str(tiny_llava_dir), "--checkpoints", str(served_checkpoints),
                              "--device", "cpu", "--max-new-tokens", "4"], home)
    try:
        client = Client(url, verbose=False)
        captions = client.predict(handle_file(str(write_png(tmp_path / "red.png"))), api_name="/caption")
        assert sorted(captions) == sorted(["zero_shot", "prompt_learning", "prefix_tuning", "lora", "dora", "full"])
        assert all(isinstance(text, str) for text in captions.values())
        bad = tmp_path / "bad.png"
        bad.write_text("this is not a png")
        with pytest.raises(Exception, match="not an image"):
            client.predict(handle_file(str(bad)), api_name="/caption")
    finally:
        stop_app(process)


def api_refusal(client, data, endpoint: str = "caption", more: tuple = ()) -> str:
    """What the running app's caption API answers to `data` through plain HTTP: the SSE stream's error text."""
    event = client.post(f"/gradio_api/call/{endpoint}", json={"data": [data, *more]})
    assert event.status_code == 200, event.text
    stream = client.get(f"/gradio_api/call/{endpoint}/{event.json()['event_id']}").text
    assert "event: error" in stream and "zero_shot" not in stream, stream
    return stream.split("event: error", 1)[1]


@pytest.mark.slow
def test_the_caption_api_opens_only_files_uploaded_to_it(tmp_path, tiny_llava_dir):
    """A server path given as a string, as {"path": ...} or as a FileData the app never received is refused with one
    message that says nothing about it (exists or not, image or not); an upload still captions."""
    import httpx
    from gradio_client import Client, handle_file

    from captionlab.paths import CHECKPOINTS_DIR
    from captionlab.safety.uploads import NOT_AN_UPLOAD

    home = tmp_path / "home"
    home.mkdir()
    server_images = [str(next((CHECKPOINTS_DIR / "embedded" / "gallery").glob("*.png"))),
                     str(write_png(tmp_path / "server.png", size=(640, 480)))]
    missing = [str(tmp_path / "missing.png"), "/no/such/folder/image.png"]
    process, url = start_app(["--model", str(tiny_llava_dir), "--checkpoints", str(tmp_path / "none"),
                              "--device", "cpu", "--max-new-tokens", "4"], home)
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            answers = {}
            for path in [*server_images, *missing, str(ROOT / "app.py"), str(tmp_path)]:
                for form in (path, {"path": path}, {"path": path, "orig_name": "x.png", "size": 5}):
                    answers[(path, json.dumps(form))] = api_refusal(client, form)
            assert len(set(answers.values())) == 1, set(answers.values())  # one message for every path and form
            message = next(iter(answers.values()))
            assert NOT_AN_UPLOAD in message
            for path in [*server_images, *missing]:
                assert Path(path).name not in message
            # as a FileData, gradio refuses it before the function runs: the same answer whether it exists or not
            as_file_data = {api_refusal(client, {"path": path, "meta": {"_type": "gradio.FileData"}})
                            for path in [*server_images, *missing]}
            assert len(as_file_data) == 1, as_file_data
            assert not any(Path(path).name in text for path in [*server_images, *missing] for text in as_file_data)
            # the endpoint that also takes workspace runs opens nothing else either
            assert {api_refusal(client, path, "caption_with_runs", ([],)) for path in server_images} == {message}
        captions = Client(url, verbose=False).predict(handle_file(server_images[1]), api_name="/caption")
        assert isinstance(captions.get("zero_shot"), str)
        with_runs = Client(url, verbose=False).predict(handle_file(server_images[1]), [],
                                                       api_name="/caption_with_runs")
        assert with_runs == captions  # no run chosen: the served strategies' captions, the same greedy ones
    finally:
        stop_app(process)


def test_a_broken_checkpoint_is_named_and_the_other_strategies_still_caption(home, tmp_path, tiny_llava_dir,
                                                                              served_checkpoints):
    import shutil

    from captionlab.service import compare
    from captionlab.service.settings import settings_for

    image = write_png(tmp_path / "red.png")
    clean = compare.caption_image(settings_for(str(tiny_llava_dir), served_checkpoints, "cpu", 4), image)
    damaged = tmp_path / "damaged"
    shutil.copytree(served_checkpoints, damaged)
    weights = damaged / "strategies" / "lora" / "adapter_model.safetensors"
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}" + weights.read_bytes()[200:])
    settings = settings_for(str(tiny_llava_dir), damaged, "cpu", 4)

    answer = compare.caption_image(settings, image)
    errors = answer.pop(compare.API_ERRORS_KEY)
    assert list(errors) == ["lora"] and str(weights) in errors["lora"] and "safetensors" in errors["lora"], errors
    # every other strategy captions, as it does when nothing is broken (the shared base was rebuilt without LoRA)
    assert answer == {key: text for key, text in clean.items() if key != "lora"}
    rows = compare.compare_images(settings, [image], score=False).rows
    lora_row = next(row for row in rows if row["key"] == "lora")
    assert str(weights) in lora_row["caption"] and lora_row["words"] is None  # named in the Compare table


def test_shipped_files_that_differ_from_the_manifest_are_named_and_not_served(home, tmp_path):
    import os
    import shutil

    from captionlab.paths import CHECKPOINTS_DIR
    from captionlab.safety import manifest
    from captionlab.service import compare
    from captionlab.service.settings import settings_for

    shipped = tmp_path / "embedded"
    shutil.copytree(CHECKPOINTS_DIR / "embedded", shipped, ignore=shutil.ignore_patterns("results", "runs"))
    assert manifest.manifest_problems(shipped).keys() == {k for k in json.loads(
        (shipped / "manifest.json").read_text())["files"] if k.split("/")[0] in ("results", "runs")}
    weights = shipped / "strategies" / "lora" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x55  # one flipped byte in the last float: still loads, as a weight file damaged on disk would
    weights.write_bytes(bytes(data))

    computed = manifest.digests_computed()
    problems = manifest.manifest_problems(shipped)
    assert "differs" in problems["strategies/lora/adapter_model.safetensors"]
    assert manifest.digests_computed() == computed + 1  # only the changed file is hashed again: size+mtime cache
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    manifest.manifest_problems(shipped)
    assert manifest.digests_computed() == computed + 2

    answer = compare.caption_image(settings_for(None, shipped, "cpu", 4), write_png(tmp_path / "red.png"))
    why = answer.pop(compare.API_ERRORS_KEY)["lora"]
    assert str(weights) in why and "differs from" in why and "manifest.json" in why, why
    assert "lora" not in answer and {"zero_shot", "dora", "full", "clip_captioner"} <= set(answer)


def test_cider_of_a_caption_uses_the_gallery_as_its_corpus():
    from captionlab.service.scoring import cider_scores

    references = [["a red ball on the grass", "a red ball lying on green grass"], None]
    corpus = {"a": ["two blue cups on a table", "blue cups on a kitchen table"],
              "b": ["a small tree next to a house", "a house with a tree"],
              "target": references[0]}  # the target's own entry leaves the corpus
    captions = {"good": ["a red ball on the grass", "anything"], "bad": ["two blue cups", "anything"]}
    scores, notes = cider_scores(captions, references, corpus)
    assert scores["good"][0] > 100 and scores["bad"][0] < scores["good"][0]
    assert scores["good"][1] is None  # no references: no CIDEr
    assert "3 images" in notes[0]


def test_evaluation_jobs_run_the_evaluate_cli_without_a_shell(home, monkeypatch):
    from captionlab.service import jobs
    from captionlab.service.settings import settings_for

    settings = settings_for("llava-1.5-7b", None, "cuda", 30)
    argv = jobs.evaluation_argv(settings, "lora", "coco", "/runs/r1", limit=50)
    assert argv[1:] == ["-m", "captionlab", "evaluate", "--model", "llava-1.5-7b", "--strategy", "lora", "--dataset",
                        "coco", "--max-new-tokens", "30", "--checkpoint", "/runs/r1", "--limit", "50",
                        "--device", "cuda"]
    assert "Error: limit" in jobs.start_evaluation(settings, "lora", "coco", limit=0)
    monkeypatch.setattr(jobs, "evaluate_available", lambda: False)
    assert "not part of this version" in jobs.start_evaluation(settings, "lora", "coco")
    assert jobs.list_jobs() == []


def test_an_evaluation_checkpoint_is_a_run_id_or_prefix_and_an_unknown_word_is_no_run(home):
    from captionlab.service import jobs
    from captionlab.service.settings import settings_for

    for run_id in ("lora-20260101-120000", "lora-20260102-090000"):
        make_run(home, run_id)
    with pytest.raises(ValueError) as caught:
        jobs.validate_evaluation("lora", "coco", "no-such-run", None)
    assert str(caught.value) == "checkpoint: no run with id 'no-such-run' (and not a folder)"
    _, _, checkpoint, _ = jobs.validate_evaluation("lora", "coco", "lora-20260102", None)
    assert checkpoint == str((home / "runs" / "lora-20260102-090000").resolve())
    with pytest.raises(ValueError, match=r"^checkpoint: 'lora-2026' matches 2 runs: .*give more of the id"):
        jobs.validate_evaluation("lora", "coco", "lora-2026", None)
    message = jobs.start_evaluation(settings_for("llava-1.5-7b"), "lora", "coco", "no-such-run", None)
    assert message == "Error: checkpoint: no run with id 'no-such-run' (and not a folder)" and jobs.list_jobs() == []


def test_shipped_results_are_read_with_their_predictions(home, tmp_path):
    from captionlab.evaluation import results
    from captionlab.service import benchmarks

    shipped = tmp_path / "ckpt" / "results" / "dora" / "nocaps"
    shipped.mkdir(parents=True)
    (shipped / "predictions.jsonl").write_text(json.dumps({"image_id": "n1", "caption": "a crown on a lake"}) + "\n")
    row = results.ResultRow(model="embedded", strategy="dora", dataset="nocaps", split="val",
                            metrics={"CIDEr": 42.0}, n_images=1,
                            predictions_path="checkpoints/embedded/results/dora/nocaps/predictions.jsonl")
    results.write_results_json(shipped, row, per_image={"CIDEr": {"n1": 42.0}})
    (found,) = benchmarks.your_rows(tmp_path / "ckpt")
    assert found["origin"] == "shipped" and found["metrics"]["CIDEr"] == 42.0
    records, _ = benchmarks.drilldown(found)
    assert records == [{"image": "n1", "caption": "a crown on a lake", "CIDEr (image)": 42.0, "references": []}]


def test_a_damaged_shipped_results_file_is_named_and_the_rest_kept(home, tmp_path):
    from captionlab.evaluation import results
    from captionlab.service import benchmarks

    shipped = tmp_path / "ckpt" / "results"
    good = shipped / "lora" / "coco"
    good.mkdir(parents=True)
    results.write_results_json(good, results.ResultRow(model="embedded", strategy="lora", dataset="coco", split="test",
                                                       metrics={"CIDEr": 80.0}, n_images=1))
    (shipped / "dora" / "coco").mkdir(parents=True)
    (shipped / "dora" / "coco" / results.RESULTS_JSON_NAME).write_text("{not json")
    (shipped / "old.db").write_bytes(b"this is not an sqlite database" * 100)
    rows, problems = benchmarks.all_rows(tmp_path / "ckpt")
    assert [r["strategy"] for r in rows if r["source"] != "paper"] == ["lora"]
    assert len(problems) == 2 and all(p.startswith("shipped results ") and " skipped: " in p for p in problems)
    assert any("old.db" in p for p in problems) and any("dora" in p for p in problems)


def test_a_run_launched_from_the_form_is_watched_from_its_folder(home):
    from captionlab.service import runs
    from captionlab.training.launcher import LaunchError

    fake_trainer = [sys.executable, str(ROOT / "tests" / "fixtures" / "fake_trainer.py")]
    run_id = runs.launch(form(name="from form", epochs=1), trainer_cmd=fake_trainer)
    deadline = time.monotonic() + 60
    while runs.run_view(run_id).state != "finished" and time.monotonic() < deadline:
        time.sleep(0.2)
    view = runs.run_view(run_id)
    assert run_id.startswith("from-form") and view.state == "finished" and view.fraction == 1.0
    assert len(view.train_curve) == 20 and view.energy_kwh == pytest.approx(720 / 3.6e6)
    assert not view.running and not view.resumable
    table = runs.runs_table(runs.list_runs())
    assert table[0]["run"] == run_id and table[0]["state"] == "finished" and table[0]["progress"] == "20/20"
    with pytest.raises(LaunchError, match="not running"):
        runs.stop(run_id)
    with pytest.raises(LaunchError, match="only a stopped, crashed or failed run"):
        runs.resume(run_id)


def register_finished_run(home: Path, run_id: str, artifact: Path, strategy: str, model: str) -> Path:
    """A finished run of the workspace whose best checkpoint holds a copy of `artifact`."""
    import shutil

    from captionlab.training import runs_db
    from captionlab.training.run_folder import CHECKPOINT_COMPLETE

    folder = home / "runs" / run_id
    shutil.copytree(artifact, folder / "best" / "artifact")
    (folder / "best" / CHECKPOINT_COMPLETE).write_text("")
    runs_db.register_run(run_id, name=run_id.split("-2026")[0], run_dir=folder, state="finished", model=model,
                         strategy=strategy, dataset="coco", pid=None)
    return folder


@pytest.mark.slow
def test_compare_captions_with_a_workspace_run_labelled_by_its_name(home, tmp_path, tiny_llava_dir,
                                                                    served_checkpoints):
    from captionlab.service import compare
    from captionlab.service.settings import settings_for

    run_id = "my-lora-20261207-101500"
    register_finished_run(home, run_id, served_checkpoints / "strategies" / "lora", "lora", str(tiny_llava_dir))
    (listed,) = compare.discover_runs()
    assert listed.run_id == run_id and listed.label == "my-lora (run, LoRA)"
    settings = settings_for(str(tiny_llava_dir), served_checkpoints, "cpu", 4)
    photo = str(write_png(tmp_path / "photo.png"))
    result = compare.compare_images(settings, [photo], score=False, runs=[run_id])
    (row,) = [r for r in result.rows if r["key"] == f"run:{run_id}"]
    assert row["strategy"] == "my-lora (run, LoRA)" and row["caption"] and row["latency_ms"] > 0
    captions = compare.caption_image(settings, photo, [run_id])
    assert captions[f"run:{run_id}"] == row["caption"]  # the API takes the same choice
    assert captions["lora"] == result.captions["lora"][0]  # the served LoRA is still itself beside the run
    with pytest.raises(compare.ImageError, match="no finished run"):
        compare.caption_image(settings, photo, ["nobody"])


@pytest.mark.slow
def test_compare_captions_several_images_and_scores_gallery_ones(home, tmp_path, tiny_llava_dir, served_checkpoints):
    from captionlab.service import compare, gallery
    from captionlab.service.settings import settings_for

    settings = settings_for(str(tiny_llava_dir), served_checkpoints, "cpu", 4)
    items, _ = gallery.load_gallery(settings.checkpoints)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 broken jpeg")
    files = [str(items[0].path), str(write_png(tmp_path / "upload.png")), str(bad)]
    result = compare.compare_images(settings, files, [list(items[0].references), None, None],
                                    {i.id: list(i.references) for i in items})
    assert result.names == [items[0].path.name, "upload.png"] and result.skipped[0].startswith("bad.jpg")
    assert len(result.rows) == 2 * 7 and set(result.captions) == set(compare.COMPARE_ORDER) - {"clip_captioner"}
    gallery_rows = [r for r in result.rows if r["image"] == items[0].path.name and r["key"] != "clip_captioner"]
    assert all(r["CIDEr"] is not None and r["latency_ms"] > 0 and r["words"] is not None for r in gallery_rows)
    assert all(r["CIDEr"] is None for r in result.rows if r["image"] == "upload.png")
    assert list(result.references) == [items[0].path.name]


def test_compare_table_formats_each_column_one_way_and_wraps_names_between_parts(home, tmp_path, monkeypatch):
    from captionlab.ui.compare_tab import _cell

    row = {"image": "pagoda_photo-of_a_temple.jpg", "latency_ms": 1811.94, "CIDEr": 12.0, "CLIP-S": 1.0,
           "clip_note": ""}
    assert _cell(row, "image") == "pagoda_\u200bphoto-\u200bof_\u200ba_\u200btemple.jpg"
    assert [_cell(row, c) for c in ("latency_ms", "CIDEr", "CLIP-S")] == ["1812", "12.0", "1.000"]
    assert _cell({**row, "latency_ms": 68}, "latency_ms") == "68" and _cell({**row, "CLIP-S": None}, "CLIP-S") == ""
