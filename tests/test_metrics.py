"""captionlab.evaluation.metrics and .spice: same numbers as pycocoevalcap, safe on edge cases,
SPICE honestly unavailable when its jars are missing.

The reference numbers come from pycocoevalcap called the standard way (its COCO evaluation:
PTBTokenizer on references and on predictions, then each scorer's compute_score). Java runs are
the slow part (METEOR's JVM takes several seconds and ~1 GB to load), so each fixture is scored
once per module, and the standard computation calls `compute_score` on the same pycocoevalcap
`Meteor` object captionlab keeps alive (`metrics.meteor_session()`) instead of loading a second.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from captionlab.evaluation import metrics, spice
from captionlab.evaluation.metrics import METRIC_NAMES, score_captions

FIXTURES = Path(__file__).parent / "fixtures" / "metrics"
SCORED = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


def _load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="module", autouse=True)
def _isolated_workspace(tmp_path_factory):
    """Keep the default SPICE jar folder (inside the workspace) out of the project tree."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CAPTIONLAB_HOME", str(tmp_path_factory.mktemp("home")))
    mp.delenv("CAPTIONLAB_SPICE_JARS", raising=False)
    yield
    mp.undo()


def _standard_pycocoevalcap(predictions: dict, references: dict, meteor) -> dict:
    """pycocoevalcap the way its COCOEvalCap does it: tokenize gts and res, then each scorer."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    gts = {k: [{"caption": c} for c in refs] for k, refs in references.items()}
    res = {k: [{"caption": predictions[k]}] for k in references}
    tokenizer = PTBTokenizer()
    gts, res = tokenizer.tokenize(gts), tokenizer.tokenize(res)
    ids = list(gts)
    bleu, bleu_per_image = Bleu(4).compute_score(gts, res, verbose=0)
    out = {"BLEU-4": (bleu[3], bleu_per_image[3])}
    out["METEOR"] = meteor.compute_score(gts, res)
    out["ROUGE-L"] = Rouge().compute_score(gts, res)
    out["CIDEr"] = Cider().compute_score(gts, res)
    return {name: (float(corpus), dict(zip(ids, map(float, per_image)))) for name, (corpus, per_image) in out.items()}


@pytest.fixture(scope="module")
def fixture_captions() -> dict:
    return _load("captions.json")


@pytest.fixture(scope="module")
def standard_and_ours(fixture_captions):
    ours = score_captions(fixture_captions["predictions"], fixture_captions["references"])
    with metrics.meteor_session() as meteor:  # a pycocoevalcap Meteor, already loaded
        standard = _standard_pycocoevalcap(fixture_captions["predictions"], fixture_captions["references"], meteor)
    return standard, ours


@pytest.fixture(scope="module")
def edge_report():
    data = _load("edge_cases.json")
    return data, score_captions(data["predictions"], data["references"])


@pytest.mark.parametrize("name", SCORED)
def test_corpus_and_per_image_equal_standard_pycocoevalcap(standard_and_ours, name):
    standard, ours = standard_and_ours
    corpus, per_image = standard[name]
    assert ours.corpus[name] == pytest.approx(corpus, abs=1e-6)
    assert ours.per_image[name].keys() == per_image.keys()
    for image_id, value in per_image.items():
        assert ours.per_image[name][image_id] == pytest.approx(value, abs=1e-6), image_id


def test_report_shape_scale_and_lengths(standard_and_ours, fixture_captions):
    _, ours = standard_and_ours
    assert ours.n_images == ours.n_predictions == 6 and ours.excluded_no_references == []
    assert set(ours.corpus) >= set(SCORED) and set(ours.corpus) | set(ours.unavailable) == set(METRIC_NAMES)
    assert ours.paper_scale()["CIDEr"] == pytest.approx(100 * ours.corpus["CIDEr"])
    # CIDEr-D corpus score is the mean of its per-image scores; so are METEOR's per-image ones in range
    assert ours.corpus["CIDEr"] == pytest.approx(sum(ours.per_image["CIDEr"].values()) / 6)
    assert all(0 <= v <= 1 for v in ours.per_image["METEOR"].values())
    # lengths: PTB words without punctuation, e.g. "A man riding a bike down a dirt road next to a mountain."
    assert ours.lengths.prediction_words["391895"] == 13
    n_refs = sum(len(r) for r in fixture_captions["references"].values())
    assert ours.lengths.n_references == n_refs == 30
    assert 8 < ours.lengths.mean_reference_words < 16 and ours.lengths.mean_prediction_words == pytest.approx(65 / 6)
    json.dumps(ours.to_dict())  # JSON-friendly


def test_spice_reported_unavailable_with_reason_and_fix_or_scored(standard_and_ours):
    _, ours = standard_and_ours
    status = spice.spice_status()
    jars_really_absent = spice.find_jar_dir() is None
    assert status.available is not jars_really_absent
    if jars_really_absent:
        assert "SPICE" not in ours.corpus and "SPICE" not in ours.per_image
        reason = ours.unavailable["SPICE"]
        assert "stanford-corenlp-3.6.0-models.jar" in reason and "captionlab.evaluation.spice fetch" in reason
        assert status.fix and "CAPTIONLAB_SPICE_JARS" in status.fix
    else:  # jars present on this machine: SPICE must be a real number per image
        assert 0 <= ours.corpus["SPICE"] <= 1 and len(ours.per_image["SPICE"]) == 6


def test_spice_configured_folder_is_checked_for_both_jars(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTIONLAB_SPICE_JARS", str(tmp_path))
    status = spice.spice_status()
    assert not status.available and str(tmp_path) in status.reason
    (tmp_path / "stanford-corenlp-3.6.0.jar").write_text("<html>404 page saved as a jar</html>")
    assert "stanford-corenlp-3.6.0.jar" in spice.spice_status().reason  # not a zip: still missing
    # With jars configured but not runnable, score_captions still reports SPICE as unavailable.
    report = score_captions({"a": "a dog"}, {"a": ["a dog runs"]}, metrics=["SPICE", "BLEU-4"])
    assert "SPICE" in report.unavailable and str(tmp_path) in report.unavailable["SPICE"]
    assert "BLEU-4" in report.corpus


def test_spice_fetch_offline_is_one_line_saying_where_to_put_the_jars(tmp_path, monkeypatch, capsys):
    import socket
    import urllib.error

    def offline(url, timeout=None):
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))

    monkeypatch.setattr(spice.urllib.request, "urlopen", offline)
    assert spice.main(["fetch", "--dest", str(tmp_path)]) != 0
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: cannot download from repo1.maven.org")
    for hint in ("Name or service not known", *spice.CORENLP_JARS, str(tmp_path), "CAPTIONLAB_SPICE_JARS",
                 "spice status"):
        assert hint in captured.err
    assert not list(tmp_path.iterdir())  # no half jar left behind


def test_spice_heap_cap_is_sane(monkeypatch):
    monkeypatch.delenv("CAPTIONLAB_SPICE_XMX", raising=False)
    cap = spice.java_heap_cap()
    assert cap.endswith("G") and 1 <= int(cap[:-1]) <= 8
    monkeypatch.setenv("CAPTIONLAB_SPICE_XMX", "3G")
    assert spice.java_heap_cap() == "3G"


def test_empty_prediction_is_scored_zero(edge_report):
    _, report = edge_report
    for name in SCORED:
        assert report.per_image[name]["empty"] == 0.0
        assert report.per_image[name]["punctuation_only"] == 0.0
        assert math.isfinite(report.corpus[name])
    assert report.lengths.prediction_words["empty"] == 0


def test_image_without_references_is_excluded_and_counted(edge_report):
    data, report = edge_report
    assert report.excluded_no_references == ["no_refs"] and report.n_excluded == 1
    assert report.n_images == len(data["predictions"]) - 1 and report.n_predictions == len(data["predictions"])
    assert all("no_refs" not in scores for scores in report.per_image.values())
    assert report.lengths.prediction_words["no_refs"] == 6  # still counted in the length statistics
    assert any("without references" in note for note in report.notes)
    # the blank "   " reference is dropped: 12 non-blank references remain
    assert report.lengths.n_references == 12


def test_unicode_emoji_and_line_breaks_do_not_crash_or_misalign(edge_report):
    _, report = edge_report
    assert report.per_image["METEOR"]["emoji"] > 0.2 and report.per_image["CIDEr"]["emoji"] > 0
    assert report.lengths.prediction_words["cjk"] >= 4
    # "\r" and U+2028 inside a caption stay inside it: the caption after it still gets its own words
    assert report.lengths.prediction_words["line_breaks"] == 11
    assert report.per_image["ROUGE-L"]["plain"] > 0.5


def test_ptb_tokenize_matches_pycocoevalcap_and_keeps_alignment():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    captions = ["A Man's DOG, running.", "Two cats -- on a mat!", "(A) {b} [c]?", "It's 5:30 p.m."]
    standard = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(captions)})
    assert metrics.ptb_tokenize(captions) == [standard[i][0] for i in range(len(captions))]
    tricky = ["first", "x\ry", "", "🐶🐱", "a\u2028b\x85c\x0cd", "last"]
    assert metrics.ptb_tokenize(tricky) == ["first", "x y", "", "", "a b c d", "last"]


def test_mismatched_ids_and_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="ids differ.*'b'"):
        score_captions({"a": "x", "b": "y"}, {"a": ["x"]})
    with pytest.raises(ValueError, match="ids differ"):
        score_captions({"a": "x"}, {"a": ["x"], "c": ["z"]})
    with pytest.raises(TypeError, match="list of str"):
        score_captions({"a": "x"}, {"a": "x"})
    with pytest.raises(ValueError, match="unknown metric"):
        score_captions({"a": "x"}, {"a": ["x"]}, metrics=["BLEU"])
    with pytest.raises(ValueError, match="no predictions"):
        score_captions({}, {})


def test_no_image_with_references_reports_every_metric_unavailable():
    report = score_captions({"a": "a dog", "b": "a cat"}, {"a": [], "b": [""]}, metrics=["BLEU-4", "CIDEr"])
    assert report.corpus == {} and report.n_images == 0 and report.n_excluded == 2
    assert report.unavailable == {"BLEU-4": "no image has references", "CIDEr": "no image has references"}
    assert report.lengths.mean_reference_words is None and report.lengths.mean_prediction_words == 2


def test_run_spice_command_and_output_parsing(tmp_path, monkeypatch):
    """The Java call SPICE would get (class path with the configured jars, heap cap, flags) and
    the reading of its output, with subprocess.run faked: the real jars are not here."""
    for name in spice.CORENLP_JARS:
        import zipfile

        with zipfile.ZipFile(tmp_path / name, "w") as jar:
            jar.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\n")
    monkeypatch.setenv("CAPTIONLAB_SPICE_JARS", str(tmp_path))
    monkeypatch.setenv("CAPTIONLAB_SPICE_XMX", "2G")
    assert spice.spice_status().available
    seen = {}
    import subprocess

    real_run = subprocess.run

    def fake_run(command, **kwargs):
        if spice.SPICE_MAIN_CLASS not in command:  # the PTB tokenizer runs for real
            return real_run(command, **kwargs)
        seen["command"] = command
        payload = json.loads(Path(command[command.index(spice.SPICE_MAIN_CLASS) + 1]).read_text())
        out = Path(command[command.index("-out") + 1])
        f_by_test = {"a dog runs": 0.5, "a cat": "NaN"}
        out.write_text(json.dumps([{"image_id": item["image_id"], "scores": {"All": {"f": f_by_test[item["test"]]}}}
                                   for item in payload]))
        return subprocess.CompletedProcess(command, 0, b"", b"")

    monkeypatch.setattr(spice.subprocess, "run", fake_run)
    report = score_captions({"x": "A dog runs.", "y": "A cat", "z": "..."},
                            {"x": ["a dog is running"], "y": ["a cat sits"], "z": ["a bird"]}, metrics=["SPICE"])
    command = seen["command"]
    assert "-Xmx2G" in command and "-subset" in command and "-cache" not in command
    class_path = command[command.index("-cp") + 1]
    assert "spice-1.0.jar" in class_path and str(tmp_path / "stanford-corenlp-3.6.0-models.jar") in class_path
    assert report.per_image["SPICE"] == {"x": 0.5, "y": 0.0, "z": 0.0}  # NaN and empty count as 0
    assert report.corpus["SPICE"] == pytest.approx(0.5 / 3) and len(report.notes) == 2


def test_meteor_process_is_shared_then_closed_when_idle():
    with metrics.meteor_session() as first:
        pass
    with metrics.meteor_session() as second:
        assert second is first and second.meteor_p.poll() is None  # one JVM, reused
    metrics._SHARED_METEOR.close_if_idle()
    assert first.meteor_p.poll() is not None  # the Java process is gone
