"""The embedded study shipped in checkpoints/embedded: intact, made by its recipes, loadable, reported honestly."""

from __future__ import annotations

import hashlib
import json

import pytest
import yaml

from captionlab import paths
from captionlab.report import END, START, render
from captionlab.zoo import PERSONALIZED, recipe_hash

SHIPPED = paths.CHECKPOINTS_DIR / "embedded"
MANIFEST = json.loads((SHIPPED / "manifest.json").read_text()) if (SHIPPED / "manifest.json").exists() else None


def test_the_study_is_shipped():
    assert MANIFEST is not None, "checkpoints/embedded/manifest.json is missing: run `python -m train zoo`"


@pytest.mark.skipif(MANIFEST is None, reason="no shipped study")
def test_every_shipped_file_matches_the_manifest():
    for name, digest in MANIFEST["files"].items():
        assert hashlib.sha256((SHIPPED / name).read_bytes()).hexdigest() == digest, name
    total = sum((SHIPPED / name).stat().st_size for name in MANIFEST["files"])
    assert total < 80 * 2**20, f"shipped study is {total / 2**20:.1f} MiB"


@pytest.mark.skipif(MANIFEST is None, reason="no shipped study")
@pytest.mark.parametrize("strategy", [*PERSONALIZED, "clip_captioner_xe", "clip_captioner"])
def test_shipped_runs_were_trained_by_their_recipes(strategy):
    config = yaml.safe_load((SHIPPED / "runs" / strategy / "config.yaml").read_text())
    config.pop("recipe", None)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    assert digest == recipe_hash(f"embedded/{strategy}") == MANIFEST["recipes"][strategy]["config_sha256"]
    status = json.loads((SHIPPED / "runs" / strategy / "status.json").read_text())
    assert status["state"] == "finished"


@pytest.mark.skipif(MANIFEST is None, reason="no shipped study")
def test_shipped_models_load_and_caption(tiny_images):
    from captionlab.baseline import load_clip_captioner
    from captionlab.captioner import GenerationSettings, load_captioners
    from captionlab.models.registry import get_model_spec

    artifacts = {"zero_shot": None, **{s: SHIPPED / "strategies" / s for s in PERSONALIZED}}
    captioners = load_captioners(get_model_spec("embedded"), artifacts, GenerationSettings(max_new_tokens=12), device="cpu")
    for key, captioner in captioners.items():
        captions = captioner.caption(tiny_images[:1])
        assert len(captions) == 1 and captions[0].strip(), key
    assert load_clip_captioner(SHIPPED / "clip_captioner", device="cpu").caption(tiny_images[:1])[0].strip()


@pytest.mark.skipif(MANIFEST is None, reason="no shipped study")
def test_readme_tables_are_generated_from_the_shipped_results():
    readme = (paths.PROJECT_ROOT / "README.md").read_text()
    section = readme.split(START, 1)[1].split(END, 1)[0]
    assert section.strip() == render(SHIPPED).strip()
    results = list((SHIPPED / "results").glob("*/*/results.json"))
    assert len(results) == 7 * 5
