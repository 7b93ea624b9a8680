"""Evaluation shared out over processes (`evaluation/sharding.py`): two gloo processes under `accelerate launch`
make the captions one process makes, in the same predictions.jsonl, and the same scores; a share stopped mid-way
resumes from its shard without captioning again what it wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port

from captionlab.cli import main
from captionlab.data.records import CaptionRecord
from captionlab.evaluation import sharding

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TIMINGS = ("seconds", "joules")  # measurements of the batch that made a line: they differ between any two runs


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTIONLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CAPTIONLAB_OPENCLIP_WEIGHTS", str(tmp_path / "no-clip-here.safetensors"))
    return tmp_path / "home"


def _args(model_dir, world, out, batch_size: int) -> list[str]:
    return ["evaluate", "--model", str(model_dir), "--strategy", "zero_shot", "--dataset", "coco", "--config",
            str(world), "--max-new-tokens", "5", "--batch-size", str(batch_size), "--no-record", "--json",
            "--device", "cpu", "--out", str(out)]


def _one_process(args, capsys) -> dict:
    assert main(args) == 0
    return json.loads(capsys.readouterr().out)


def _two_processes(args) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--main_process_port", str(free_port()), "--mixed_precision", "no",
               "--dynamo_backend", "no", "-m", "captionlab", *args]
    return subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})


def _without_timings(path: Path) -> list[bytes]:
    """Each line re-encoded without its timings, in the file's order (the rest must match byte for byte)."""
    lines = []
    for raw in path.read_bytes().splitlines():
        row = json.loads(raw)
        lines.append(json.dumps({k: v for k, v in row.items() if k not in TIMINGS}, ensure_ascii=False).encode())
    return lines


def test_two_processes_write_the_predictions_and_scores_of_one(home, tmp_path, tiny_llava_dir, tiny_world, capsys):
    single = _one_process(_args(tiny_llava_dir, tiny_world, tmp_path / "one", 2), capsys)
    launched = _two_processes(_args(tiny_llava_dir, tiny_world, tmp_path / "two", 2))
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    double = json.loads(launched.stdout)  # the main process alone prints: one JSON document
    assert double["metrics"] == single["metrics"] and double["RefCLIP-Score"] == single["RefCLIP-Score"]
    assert double["n_images"] == single["n_images"] == single["generated"] == double["generated"] >= 4
    one, two = tmp_path / "one" / "predictions.jsonl", tmp_path / "two" / "predictions.jsonl"
    assert _without_timings(two) == _without_timings(one)
    assert not sharding.shards_dir(two).exists()  # gathered, then removed
    assert (two.with_name("predictions.jsonl.meta.json").read_bytes()
            == one.with_name("predictions.jsonl.meta.json").read_bytes())


def test_a_share_stopped_mid_way_resumes_without_captioning_again(home, tmp_path, tiny_llava_dir, tiny_world,
                                                                   capsys):
    single = _one_process(_args(tiny_llava_dir, tiny_world, tmp_path / "one", 1), capsys)
    reference = tmp_path / "one" / "predictions.jsonl"
    order = [json.loads(raw)["image_id"] for raw in reference.read_bytes().splitlines()]
    # batches of one image: process 0 takes images 1, 3, 5 of the order, process 1 images 2 and 4. Image 4's file
    # keeps its header (the plan reads it) but cannot be decoded, so process 1 stops after writing image 2.
    from captionlab.data.datasets import resolve_dataset

    records = resolve_dataset("coco", config_path=tiny_world).read(split="test")
    broken = next(r.image_path for r in records if r.image_id == order[3])
    intact = broken.read_bytes()
    out = tmp_path / "two"
    try:
        broken.write_bytes(intact[:120])
        stopped = _two_processes(_args(tiny_llava_dir, tiny_world, out, 1))
    finally:
        broken.write_bytes(intact)
    # each process says why (exit 2); the launcher then exits 1
    assert stopped.returncode != 0 and "error: process 1 of 2" in stopped.stderr and str(broken) in stopped.stderr
    predictions = out / "predictions.jsonl"
    shard = sharding.shard_path(predictions, 1)
    written = [json.loads(raw) for raw in shard.read_bytes().splitlines()]
    assert [row["image_id"] for row in written] == [order[1]]
    # what a kill leaves: the shard's complete lines and a torn one; the mark shows whether a line is read back
    written[0]["seconds"] = 12345.0
    shard.write_bytes(b"".join(json.dumps(row).encode() + b"\n" for row in written) + b'{"image_id": "x", "cap')

    resumed = _two_processes(_args(tiny_llava_dir, tiny_world, out, 1))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    result = json.loads(resumed.stdout)
    assert (result["resumed"], result["generated"]) == (4, 1)  # only image 4 was captioned again
    assert result["metrics"] == single["metrics"]
    assert _without_timings(predictions) == _without_timings(reference)
    rows = {json.loads(raw)["image_id"]: json.loads(raw) for raw in predictions.read_bytes().splitlines()}
    assert rows[order[1]]["seconds"] == 12345.0


def _record(folder: Path, image_id: str, size: tuple[int, int]) -> CaptionRecord:
    from PIL import Image

    path = folder / f"{image_id}.png"
    Image.new("RGB", size).save(path)
    return CaptionRecord(image_id=image_id, image_path=path, references=("a cat",), split="test",
                         domain="coco")


def test_the_plan_deals_one_process_batches_in_turn_and_skips_what_is_written(tmp_path):
    from captionlab.evaluation.generation import bucket_order, image_shape

    sizes = [(32, 32), (64, 32), (32, 64), (48, 48), (32, 32), (64, 32), (40, 20)]
    records = [_record(tmp_path, f"i{n}", size) for n, size in enumerate(sizes)]
    out = tmp_path / "eval" / "predictions.jsonl"
    plan = sharding._plan(records, out, batch_size=2, world=3, skip_broken=False, meta={"m": 1})
    ordered = [r.image_id for r in bucket_order(records, {r.image_id: image_shape(r.image_path) for r in records})]
    batches = [ordered[i:i + 2] for i in range(0, len(ordered), 2)]
    assert plan.shares == [batches[0] + batches[3], batches[1], batches[2]]
    assert plan.order == ordered and plan.resumed == 0

    sharding.shard_path(out, 4).parent.mkdir(parents=True)  # a shard of an earlier launch of 5 processes
    sharding.shard_path(out, 4).write_text(json.dumps({"image_id": ordered[0], "caption": "c"}) + "\n")
    again = sharding._plan(records, out, batch_size=2, world=3, skip_broken=False, meta={"m": 1})
    rest = ordered[1:]
    assert again.shares == [rest[0:2] + rest[6:], rest[2:4], rest[4:6]] and again.resumed == 1

    other_settings = sharding._plan(records, out, batch_size=2, world=3, skip_broken=False, meta={"m": 2})
    assert other_settings.resumed == 0  # the shard made with other settings was moved aside, not mixed in
    assert (out.parent / "predictions.jsonl.shards.stale" / "rank-4.jsonl").is_file()
