"""`weights status|fetch`: the Hugging Face cache read offline (a cache laid out in tmp_path as huggingface_hub
writes it), the memory estimate's arithmetic, and fetch's offline message. No test opens a connection."""

from __future__ import annotations

import json
from pathlib import Path

from captionlab.cli import main
from captionlab.models.registry import get_model_spec
from captionlab.models.weights_cache import cache_status
from captionlab.strategies.memory import estimate_per_strategy, estimate_training_bytes

COMMIT = "a" * 40


def _cache(root: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """A hub cache holding `files` of one snapshot: blobs, a snapshot of symlinks to them, refs/main."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    for index, (name, data) in enumerate(files.items()):
        blob = repo / "blobs" / f"{index:040d}"
        blob.write_bytes(data)
        (snapshot / name).symlink_to(blob)
    return root


def test_a_partly_cached_model_names_its_missing_shards(tmp_path, no_network):
    index = {"weight_map": {"a.weight": "model-00001-of-00002.safetensors",
                            "b.weight": "model-00002-of-00002.safetensors"}}
    cache = _cache(tmp_path, "llava-hf/llava-1.5-7b-hf", {
        "config.json": b"{}", "model.safetensors.index.json": json.dumps(index).encode(),
        "model-00001-of-00002.safetensors": b"x" * 100})
    status = cache_status(get_model_spec("llava-1.5-7b"), cache_dir=cache)
    assert status.present and not status.complete and status.revision == COMMIT
    assert status.missing == ["model-00002-of-00002.safetensors"]
    assert status.size_bytes == 100 + 2 + len(json.dumps(index))
    assert no_network == []


def test_a_fully_cached_model_is_complete_and_an_absent_one_is_not_present(tmp_path, no_network):
    cache = _cache(tmp_path, "llava-hf/llava-1.5-7b-hf", {"config.json": b"{}", "model.safetensors": b"w" * 10})
    assert cache_status(get_model_spec("llava-1.5-7b"), cache_dir=cache).complete
    absent = cache_status(get_model_spec("llava-1.6-7b"), cache_dir=cache)
    assert not absent.present and absent.missing == ["config.json"]
    assert not cache_status(get_model_spec("llava-1.6-7b"), cache_dir=tmp_path / "no-cache-here").present


def test_the_estimate_counts_frozen_bf16_and_trainable_float32_with_gradients():
    assert estimate_training_bytes(1000, 0, trains_own_weights=False) == 2000
    assert estimate_training_bytes(1000, 100, trains_own_weights=False) == 2000 + 800  # an adapter beside the model
    assert estimate_training_bytes(1000, 900, trains_own_weights=True) == 200 + 7200  # the model's own weights
    assert estimate_training_bytes(1000, 100, trains_own_weights=False, momentum=True) == 2000 + 1200
    counts = {"total": 1000, "zero_shot": 0, "lora": 100, "full": 900, "lora:all_linear": 150}
    estimates = estimate_per_strategy(counts)
    assert estimates == {"zero_shot": 2000, "lora": 2800, "full": 7400, "lora:all_linear": 3200}


def test_status_prints_the_cache_state_and_the_estimate_says_it_is_one(monkeypatch, capsys, no_network):
    from captionlab.strategies import counting

    monkeypatch.setattr(counting, "count_trainable", lambda name: {"total": 7 * 10**9, "lora": 3 * 10**8})
    assert main(["weights", "status", "llava-1.5-7b", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (model,) = report["models"]
    assert model["source"] == "llava-hf/llava-1.5-7b-hf"
    assert model["estimated_training_bytes"] == {"lora": 14 * 10**9 + 24 * 10**8}
    assert "estimate" in report["memory_note"] and "activations" in report["memory_note"]
    assert main(["weights", "status", "no-such-model"]) == 2
    assert no_network == []


def test_fetch_offline_says_what_to_do_instead(monkeypatch, capsys, no_network):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert main(["weights", "fetch", "llava-1.5-7b"]) == 2
    message = capsys.readouterr().err
    assert "offline" in message and "hf download llava-hf/llava-1.5-7b-hf" in message
    assert no_network == []


def test_fetch_online_downloads_the_registry_id(monkeypatch, capsys, tmp_path):
    import huggingface_hub
    from huggingface_hub import constants

    asked = []
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id: asked.append(repo_id) or str(tmp_path))
    assert main(["weights", "fetch", "llava-1.6-7b"]) == 0
    assert asked == ["llava-hf/llava-v1.6-vicuna-7b-hf"] and str(tmp_path) in capsys.readouterr().out


def test_fetch_of_a_local_model_says_it_is_not_on_the_hub(capsys, no_network):
    assert main(["weights", "fetch", "embedded"]) == 2
    assert "not on the Hub" in capsys.readouterr().err
