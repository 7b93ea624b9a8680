"""What of a registry model's weights is on this machine: the Hugging Face cache read offline, or its local folder.

    cache_status(get_model_spec("llava-1.5-7b"))   # WeightsStatus(present=True, complete=False, missing=[...])

Nothing here opens a connection: `huggingface_hub.scan_cache_dir` lists the cached repos and revisions, and
`try_to_load_from_cache` says which files of the cached snapshot are there. A model is complete when its
config and every weight file its safetensors index names (or its single `model.safetensors`) are cached.
`fetch_weights` is the one function that goes online, through `huggingface_hub.snapshot_download`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

WEIGHTS_INDEX = "model.safetensors.index.json"
SINGLE_WEIGHTS = "model.safetensors"


@dataclass
class WeightsStatus:
    """Where a model's weights are and whether all of them are."""

    name: str
    source: str  # the HF id, or the local folder
    present: bool = False
    complete: bool = False
    size_bytes: int = 0
    revision: str = ""
    missing: list[str] = field(default_factory=list)


def cache_status(spec, cache_dir: Path | str | None = None) -> WeightsStatus:
    """The weights of `spec` (a registry ModelSpec) as this machine has them; never goes online."""
    if spec.weights_dir is not None:
        return _folder_status(spec.name, Path(spec.weights_dir))
    if not spec.hf_id:
        return WeightsStatus(spec.name, "(no Hugging Face id and no folder)")
    return _hub_status(spec.name, spec.hf_id, cache_dir)


def _folder_status(name: str, folder: Path) -> WeightsStatus:
    status = WeightsStatus(name, str(folder), present=(folder / "config.json").exists())
    if status.present:
        status.size_bytes = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        status.missing = _missing_weight_files(lambda file: folder / file if (folder / file).exists() else None)
        status.complete = not status.missing
    else:
        status.missing = ["config.json"]
    return status


def _hub_status(name: str, hf_id: str, cache_dir: Path | str | None) -> WeightsStatus:
    from huggingface_hub import scan_cache_dir, try_to_load_from_cache
    from huggingface_hub.errors import CacheNotFound

    status = WeightsStatus(name, hf_id)
    try:
        repos = [repo for repo in scan_cache_dir(cache_dir).repos
                 if repo.repo_id == hf_id and repo.repo_type == "model"]
    except CacheNotFound:
        repos = []
    if not repos:
        status.missing = ["config.json"]
        return status
    repo = repos[0]
    status.present, status.size_bytes = True, repo.size_on_disk
    status.revision = max(repo.revisions, key=lambda r: r.last_modified).commit_hash if repo.revisions else ""

    def cached(file: str) -> Path | None:
        found = try_to_load_from_cache(hf_id, file, cache_dir=cache_dir)
        return Path(found) if isinstance(found, str) else None

    status.missing = _missing_weight_files(cached)
    status.complete = not status.missing
    return status


def _missing_weight_files(locate) -> list[str]:
    """The config and weight files `locate(file) -> path or None` does not find (the index names the shards)."""
    if locate("config.json") is None:
        return ["config.json"]
    index = locate(WEIGHTS_INDEX)
    if index is None:
        return [] if locate(SINGLE_WEIGHTS) is not None else [f"{SINGLE_WEIGHTS} (or {WEIGHTS_INDEX})"]
    shards = sorted(set(json.loads(Path(index).read_text(encoding="utf-8")).get("weight_map", {}).values()))
    return [shard for shard in shards if locate(shard) is None]


class OfflineError(Exception):
    """Weights asked for while this process may not go online; the message says what to do instead."""


def fetch_weights(spec) -> Path:
    """Download the weights of `spec` into the Hugging Face cache (online only); returns the snapshot folder."""
    from huggingface_hub import constants, snapshot_download

    if spec.weights_dir is not None:
        raise OfflineError(f"{spec.name!r} is not on the Hub: its weights are the folder {spec.weights_dir}"
                           + (" (build it with `python -m train zoo`)" if spec.name == "embedded" else ""))
    if not spec.hf_id:
        raise OfflineError(f"{spec.name!r} names no Hugging Face id to fetch")
    if constants.HF_HUB_OFFLINE:
        raise OfflineError(f"offline (HF_HUB_OFFLINE is set): cannot fetch {spec.hf_id}; on a machine with internet "
                           f"run `python -m captionlab weights fetch {spec.name}` (or `hf download {spec.hf_id}`) "
                           f"and copy its Hugging Face cache here")
    return Path(snapshot_download(spec.hf_id))
