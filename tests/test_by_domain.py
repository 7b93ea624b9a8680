"""nocaps by domain: each domain scored on its own images, recorded by every evaluation of a benchmark with
domains, and added to the shipped study's results from its shipped predictions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from captionlab.evaluation import evaluator as ev
from captionlab.evaluation.by_domain import score_by_domain
from captionlab.evaluation.metrics import score_captions

FIXTURES = Path(__file__).parent / "fixtures" / "datasets"
NOCAPS = FIXTURES / "nocaps" / "nocaps_val_4500_captions.json"

PREDICTIONS = {"a": "a dog on a red sofa", "b": "a cat on a sofa", "c": "a tram on a bridge", "d": "a blue tram"}
REFERENCES = {"a": ["a dog lying on a red sofa", "a brown dog on a couch"],
              "b": ["a cat sleeping on a sofa", "a grey cat on a couch"],
              "c": ["a red tram crossing a bridge", "a tram on a river bridge"],
              "d": ["a blue tram in the street", "a tram at a stop"]}
DOMAINS = {"a": "in-domain", "b": "in-domain", "c": "out-domain", "d": "out-domain"}


def test_each_domain_is_scored_on_its_own_images():
    by_domain = score_by_domain(PREDICTIONS, REFERENCES, DOMAINS,
                                {"CLIP-Score": {"a": 0.5, "b": 0.7, "c": 0.2, "d": 0.4}})
    assert list(by_domain) == ["in-domain", "out-domain"]  # a domain without images has no row
    subset = score_captions({k: PREDICTIONS[k] for k in "ab"}, {k: REFERENCES[k] for k in "ab"}).paper_scale()
    assert by_domain["in-domain"]["CIDEr"] == pytest.approx(subset["CIDEr"])
    # CIDEr's document frequencies are the domain's, not the whole split's: the per-image CIDEr of the whole run,
    # averaged over the domain, is another number
    whole = score_captions(PREDICTIONS, REFERENCES).per_image_paper_scale()["CIDEr"]
    assert by_domain["in-domain"]["CIDEr"] != pytest.approx((whole["a"] + whole["b"]) / 2)
    assert by_domain["out-domain"]["CLIP-Score"] == pytest.approx(0.3)
    assert by_domain["in-domain"]["n_images"] == 2


class SizeCaptioner:
    key, name = "lora", "LoRA"

    def caption(self, images):
        return [f"a photo of a thing {im.size[0]}" for im in images]


def test_an_evaluation_of_nocaps_records_its_domains(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTIONLAB_HOME", str(tmp_path / "home"))
    result = ev.evaluate("embedded", "lora", f"nocaps:{NOCAPS}", images=FIXTURES / "nocaps/images",
                         captioner=SizeCaptioner(), clip_encoder=False, record=False)
    summary = result.to_json()
    assert list(summary["by_domain"]) == ["in-domain", "near-domain", "out-domain"]
    assert all(row["n_images"] == 1 and "CIDEr" in row for row in summary["by_domain"].values())
    assert "own images" in summary["by_domain_scope"]
    assert sorted(result.extra["image_domains"].values()) == ["in-domain", "near-domain", "out-domain"]
    assert summary["max_new_tokens"] == result.extra["settings"]["max_new_tokens"]
    stored = json.loads(result.results_path.read_text())
    assert stored["result"]["extra"]["by_domain"] == summary["by_domain"]
    from captionlab.cli.evaluate import format_result

    text = format_result(result)
    assert "by domain" in text and "near-domain" in text and "max_new_tokens=" in text


def test_a_benchmark_without_domains_records_none(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTIONLAB_HOME", str(tmp_path / "home"))
    result = ev.evaluate("embedded", "lora", f"cc3m:{FIXTURES / 'cc3m/Validation_GCC-1.1.0-Validation.tsv'}",
                         images=FIXTURES / "cc3m/images", captioner=SizeCaptioner(), clip_encoder=False, record=False)
    assert result.to_json()["by_domain"] is None and "image_domains" not in result.extra


def test_the_shipped_nocaps_results_are_shown_by_domain():
    """The embedded study's nocaps results carry by_domain, re-scored from the shipped predictions."""
    from captionlab import paths
    from captionlab.service import domains

    shipped = sorted((paths.CHECKPOINTS_DIR / "embedded" / "results").glob("*/nocaps/results.json"))
    assert len(shipped) == 7
    for path in shipped:
        extra = json.loads(path.read_text())["result"]["extra"]
        assert list(extra["by_domain"]) == ["in-domain", "near-domain", "out-domain"]
        assert sum(row["n_images"] for row in extra["by_domain"].values()) == 250
    rows = [{"source": "yours", "dataset": "nocaps", "strategy": "lora", "model": "embedded", "n_images": 250,
             "metrics": {}, "results_json": str(shipped[0])}]
    assert [line["Domain"] for line in domains.domain_rows(rows)] == ["overall", "in-domain", "near-domain",
                                                                      "out-domain"]
    from captionlab.service import benchmarks

    drill, _ = benchmarks.drilldown({**rows[0], "predictions_path": str(shipped[0].parent / "predictions.jsonl")})
    assert len(drill) == 250 and {line["domain"] for line in drill} == {"in-domain", "near-domain", "out-domain"}
