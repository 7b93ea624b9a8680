"""The model registry, offline resolution and the `params` command."""

from __future__ import annotations

import pytest

from captionlab.cli import main
from captionlab.models.registry import ModelNotFoundError, get_model_spec, list_models


def test_registry_ships_both_llava_versions():
    assert {"llava-1.5-7b", "llava-1.6-7b"} <= set(list_models())
    assert get_model_spec("llava-1.6-7b").architecture == "llava_next"


def test_unknown_hf_id_fails_fast_with_how_to_get_it(no_network):
    with pytest.raises(ModelNotFoundError, match="hf download someone/not-a-model"):
        get_model_spec("someone/not-a-model")
    assert no_network == []  # it never tried the network: nothing to wait for


def test_missing_weights_of_registry_model_say_how_to_get_them():
    from captionlab.models.loading import weights_folder

    with pytest.raises(ModelNotFoundError, match="llava-hf/llava-1.5-7b-hf"):
        weights_folder(get_model_spec("llava-1.5-7b"))


@pytest.fixture(scope="module")
def llava_15_params() -> str:
    """`params --model llava-1.5-7b`'s output, computed once for the tests that read it (~25 s on 2 cores)."""
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["params", "--model", "llava-1.5-7b"]) == 0
    return buffer.getvalue()


def test_params_prints_the_paper_counts_for_llava_15(llava_15_params):
    out = llava_15_params
    for number in ["196,608", "131,072", "319,815,680", "321,175,552", "7,063,427,072"]:
        assert number in out
    # lora_targets: all_linear, the method text's literal reading: + vision tower (24 x 2,359,296), projector
    # (655,360 + 1,048,576) and lm_head (128 x (4096 + 32064)) at r=128; DoRA adds each layer's output magnitudes
    assert "LoRA (all linear)          382,771,200" in out and "DoRA (all linear)          384,392,512" in out


def test_params_llava_16_and_bad_model(capsys):
    assert main(["params", "--model", "llava-1.6-7b", "--json"]) == 0
    assert '"lora": 319815680' in capsys.readouterr().out
    assert main(["params", "--model", "no-such-model"]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_a_registry_name_cannot_escape_the_configs_folder(tmp_path):
    (tmp_path / "evil.json").write_text('{"name": "evil", "architecture": "llava", "config": {}}')
    relative = "../../../../../../../../" + str(tmp_path / "evil").lstrip("/")
    with pytest.raises(ModelNotFoundError):
        get_model_spec(relative)


def test_params_of_the_embedded_model_match_its_shipped_runs(capsys):
    """Prompt learning's count needs the prompt's length, which the embedded model's tokenizer gives."""
    import json

    from captionlab.paths import CHECKPOINTS_DIR

    shipped = {strategy: json.loads((CHECKPOINTS_DIR / "embedded/runs" / strategy / "energy.json").read_text())
               ["trainable_parameters"] for strategy in ("prompt_learning", "prefix_tuning", "lora", "dora", "full")}
    for model in ("embedded", str(CHECKPOINTS_DIR / "embedded/base")):
        assert main(["params", "--model", model, "--json"]) == 0
        counts = json.loads(capsys.readouterr().out)["trainable_parameters"]
        assert {strategy: counts[strategy] for strategy in shipped} == shipped
    assert shipped["prompt_learning"] == 7_296 and shipped["full"] == 1_148_544  # README's Table 4


def test_params_say_what_the_counts_mean(llava_15_params):
    out = llava_15_params
    assert "method text" in out and "19.7k" in out and "13.1k" in out
    assert "vision tower stays frozen" in out
    assert "LLM's seven projections" in out and "all fully connected layers of the MLLMs" in out
