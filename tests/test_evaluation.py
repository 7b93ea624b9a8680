"""Generation (bucketed, resumable) and the evaluator end to end, with stub captioners."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from captionlab.caption_length import DEFAULT_MAX_NEW_TOKENS
from captionlab.data.records import CaptionRecord
from captionlab.evaluation import evaluator as ev
from captionlab.evaluation import targets
from captionlab.evaluation.generation import (GenerationError, generate_predictions, read_predictions)
from captionlab.evaluation.results import list_results, load_results_json


class CountingCaptioner:
    """Captions every image "caption of <size>", records what it was asked, can crash mid-run."""

    key, name = "stub", "Stub"

    def __init__(self, crash_after_batches: int | None = None):
        self.batches: list[list[tuple[int, int]]] = []
        self.crash_after = crash_after_batches

    @property
    def images_captioned(self) -> int:
        return sum(len(b) for b in self.batches)

    def caption(self, images):
        if self.crash_after is not None and len(self.batches) >= self.crash_after:
            raise KeyboardInterrupt("simulated interruption")
        self.batches.append([im.size for im in images])
        return [f"a picture {im.size[0]} by {im.size[1]}" for im in images]


def _records(folder: Path, sizes: list[tuple[int, int]]) -> list[CaptionRecord]:
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for n, size in enumerate(sizes):
        path = folder / f"img{n}.png"
        Image.new("RGB", size, (n * 20 % 255, 80, 160)).save(path)
        records.append(CaptionRecord(f"id{n}", path, (f"a picture {size[0]} by {size[1]}",), "test", "coco"))
    return records


SIZES = [(32, 32), (64, 32), (32, 64), (32, 32), (64, 32), (32, 64), (32, 32), (48, 32)]


def test_batches_are_bucketed_by_shape_and_output_keyed_by_id(tmp_path):
    records = _records(tmp_path / "img", SIZES)
    stub = CountingCaptioner()
    out = generate_predictions(stub, records, tmp_path / "p.jsonl", batch_size=3)
    assert list(out) == [r.image_id for r in records]  # record order, not generation order
    assert all(out[r.image_id] == f"a picture {w} by {h}" for r, (w, h) in zip(records, SIZES))
    assert len(stub.batches) == 3
    flat = [s for b in stub.batches for s in b]
    assert flat == sorted(flat, key=lambda s: (round(s[0] / s[1], 3), s[0] * s[1]))


def test_interrupted_generation_resumes_without_recomputing(tmp_path):
    records = _records(tmp_path / "img", SIZES)
    path = tmp_path / "out" / "predictions.jsonl"
    crashing = CountingCaptioner(crash_after_batches=2)
    with pytest.raises(KeyboardInterrupt):
        generate_predictions(crashing, records, path, batch_size=3)
    assert crashing.images_captioned == 6
    done, _, _ = read_predictions(path)
    assert len(done) == 6
    # a crash in the middle of writing the last line: cut that line short
    data = path.read_bytes()
    path.write_bytes(data[:-7])
    done, _, torn = read_predictions(path)
    assert len(done) == 5 and torn == 1

    resumed = CountingCaptioner()
    out = generate_predictions(resumed, records, path, batch_size=3)
    assert resumed.images_captioned == 3  # the two never captioned and the torn one, nothing else
    assert out.resumed == 5 and out.generated == 3
    assert set(out) == {r.image_id for r in records}
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""
    rows = [json.loads(line) for line in lines[:-1]]  # every line whole again
    assert sorted(r["image_id"] for r in rows) == sorted(out)
    assert all({"image_id", "caption", "seconds"} <= set(r) for r in rows)

    again = CountingCaptioner()
    assert generate_predictions(again, records, path, batch_size=3) == out
    assert again.images_captioned == 0


def test_other_settings_do_not_mix_with_earlier_predictions(tmp_path):
    records = _records(tmp_path / "img", SIZES[:4])
    path = tmp_path / "p.jsonl"
    generate_predictions(CountingCaptioner(), records, path, batch_size=4, meta={"max_new_tokens": 8})
    stub = CountingCaptioner()
    out = generate_predictions(stub, records, path, batch_size=4, meta={"max_new_tokens": 20})
    assert stub.images_captioned == 4 and out.resumed == 0
    assert out.stale_file is not None and out.stale_file.exists()


def test_broken_and_missing_images_are_named_or_skipped(tmp_path):
    records = _records(tmp_path / "img", SIZES[:3])
    broken = tmp_path / "img" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    truncated = tmp_path / "img" / "truncated.png"
    Image.new("RGB", (40, 40), (1, 2, 3)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    bad = [CaptionRecord("broken", broken, ("x",), "test", "coco"),
           CaptionRecord("missing", tmp_path / "img" / "nope.png", ("x",), "test", "coco"),
           CaptionRecord("truncated", truncated, ("x",), "test", "coco")]
    for record in bad:
        with pytest.raises(GenerationError, match=str(record.image_path.name)):
            generate_predictions(CountingCaptioner(), records + [record], tmp_path / f"{record.image_id}.jsonl", 2)
    out = generate_predictions(CountingCaptioner(), records + bad, tmp_path / "skip.jsonl", 2, skip_broken=True)
    assert set(out) == {r.image_id for r in records}
    assert sorted(s.image_id for s in out.skipped) == ["broken", "missing", "truncated"]


class FixedCaptioner:
    """Returns fixed captions per image size: empty, emoji, a line separator, a plain one."""

    key, name = "lora", "LoRA"

    def __init__(self, by_size: dict):
        self.by_size = by_size

    def caption(self, images):
        return [self.by_size[im.size] for im in images]


class HashClip:
    """A deterministic stand-in CLIP: embeddings from hashes of the text / the image bytes."""

    name = "hash-clip"

    @staticmethod
    def _vector(key: bytes) -> torch.Tensor:
        seed = int(hashlib.sha1(key).hexdigest()[:8], 16)
        return torch.nn.functional.normalize(torch.randn(16, generator=torch.Generator().manual_seed(seed)), dim=0)

    def encode_images(self, images):
        return torch.stack([self._vector(im.tobytes()[:64]) for im in images])

    def encode_texts(self, texts):
        return torch.stack([self._vector(t.encode("utf-8")) for t in texts])


def _karpathy(tmp_path: Path) -> Path:
    folder = tmp_path / "coco"
    images = []
    entries = [((40, 30), ["a red square on a white wall", "a red box"]),
               ((30, 40), ["two blue cups on a table", "blue cups"]),
               ((50, 50), []),  # no references
               ((60, 30), ["a green tree 🌳 next to a house", "a tree by a house"])]
    for n, (size, sentences) in enumerate(entries):
        (folder / "test2014").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (n * 50, 100, 30)).save(folder / "test2014" / f"{n}.png")
        images.append({"filepath": "test2014", "filename": f"{n}.png", "imgid": n, "cocoid": 100 + n,
                       "split": "test", "sentences": [{"raw": s} for s in sentences]})
    path = folder / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}, ensure_ascii=False), encoding="utf-8")
    return path


def test_empty_caption_no_references_and_emoji_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTIONLAB_HOME", str(tmp_path / "home"))
    annotations = _karpathy(tmp_path)
    stub = FixedCaptioner({(40, 30): "", (30, 40): "two blue cups 🍵 on a table\u2028!",
                           (50, 50): "a square", (60, 30): "a green tree 🌳 next to a house"})
    result = ev.evaluate("llava-1.5-7b", "lora", f"karpathy:{annotations}", captioner=stub, clip_encoder=HashClip())

    assert result.split == "test" and result.n_images == 4
    assert set(result.reported_metrics()) == {"BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE", "CLIP-Score"}
    for name in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr"):
        assert result.metrics[name] >= 0
        assert result.per_image[name]["100"] == 0  # the empty caption scores 0
        assert "102" not in result.per_image[name]  # no references: left out of these metrics
    assert "SPICE" in result.metrics or result.unavailable["SPICE"]
    assert 0 <= result.metrics["CLIP-Score"] <= 2.5 and result.clip_encoder == "hash-clip"
    assert set(result.per_image["CLIP-Score"]) == {"100", "101", "102", "103"}
    assert "102" not in result.per_image["RefCLIP-Score"]
    assert result.extra["excluded_no_references"] == ["102"]

    # predictions round-trip exactly (emoji, U+2028 kept), one line per image
    lines = result.predictions_path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4
    captions = {row["image_id"]: row["caption"] for row in map(json.loads, lines)}
    assert captions["101"] == "two blue cups 🍵 on a table\u2028!" and captions["100"] == ""
    assert "🌳" in result.predictions_path.read_text(encoding="utf-8")

    stored = load_results_json(result.results_path)
    assert stored.result.metrics == result.metrics and stored.per_image["CLIP-Score"]
    rows = list_results(strategy="lora")
    assert len(rows) == 1 and rows[0].id == result.result_id and rows[0].unavailable == result.unavailable
    assert rows[0].predictions_path == str(result.predictions_path)

    # run again: nothing recomputed (the stub would fail on a new size), same scores
    again = ev.evaluate("llava-1.5-7b", "lora", f"karpathy:{annotations}", captioner=FixedCaptioner({}),
                        clip_encoder=HashClip(), record=False)
    assert again.resumed == 4 and again.generated == 0 and again.metrics == result.metrics


def test_an_evaluation_leaving_images_out_records_what_part_of_the_split_it_scored(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTIONLAB_HOME", str(tmp_path / "home"))
    annotations = _karpathy(tmp_path)
    (annotations.parent / "test2014" / "0.png").unlink()  # missing
    (annotations.parent / "test2014" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # broken
    stub = FixedCaptioner({(50, 50): "a square", (60, 30): "a green tree next to a house"})
    with pytest.raises(ev.EvaluationError, match="missing"):
        ev.evaluate("llava-1.5-7b", "lora", f"karpathy:{annotations}", captioner=stub, clip_encoder=HashClip())
    result = ev.evaluate("llava-1.5-7b", "lora", f"karpathy:{annotations}", captioner=stub, clip_encoder=HashClip(),
                         skip_broken=True)
    assert result.n_images == 2 and (result.extra["split_images"], result.extra["missing_images"]) == (4, 1)

    from captionlab.service import benchmarks

    [row] = [r for r in benchmarks.your_rows(tmp_path / "no-checkpoints") if r["dataset"] == result.dataset]
    assert row["label"] == "2 of 4 images (1 missing, 1 broken)"


def test_captions_cut_at_the_token_limit_are_counted_and_read_back(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTIONLAB_HOME", str(tmp_path / "home"))
    annotations = _karpathy(tmp_path)

    class CuttingCaptioner(FixedCaptioner):
        def caption(self, images):
            captions = super().caption(images)
            self.last_cut = [len(c.split()) >= 6 for c in captions]  # the long ones ran out of tokens
            return captions

    stub = CuttingCaptioner({(40, 30): "a red square", (30, 40): "two blue cups on a wooden table by",
                             (50, 50): "a square", (60, 30): "a green tree next to a house and"})
    result = ev.evaluate("llava-1.5-7b", "lora", f"karpathy:{annotations}", captioner=stub, clip_encoder=HashClip())
    assert result.extra["cut_at_max_new_tokens"] == 2
    assert any(note.startswith(f"2 of 4 caption(s) reached max_new_tokens={DEFAULT_MAX_NEW_TOKENS} unfinished")
               for note in result.notes)
    rows = [json.loads(line) for line in result.predictions_path.read_text().splitlines()]
    assert sorted(row["cut"] for row in rows) == [False, False, True, True]
    again = ev.evaluate("llava-1.5-7b", "lora", f"karpathy:{annotations}", captioner=FixedCaptioner({}),
                        clip_encoder=HashClip(), record=False)
    assert again.resumed == 4 and again.extra["cut_at_max_new_tokens"] == 2  # read back from the file
    # a captioner that does not tell leaves the count unknown, not zero
    plain = ev.evaluate("llava-1.5-7b", "dora", f"karpathy:{annotations}", captioner=FixedCaptioner(stub.by_size),
                        clip_encoder=HashClip(), record=False)
    assert plain.extra["cut_at_max_new_tokens"] is None


def test_clip_score_unavailable_is_reported_with_a_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTIONLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CAPTIONLAB_OPENCLIP_WEIGHTS", str(tmp_path / "absent.safetensors"))
    encoder, reason = ev.resolve_clip_encoder(embedded=False)
    assert encoder is None and "absent.safetensors" in reason


def test_checkpoint_resolution(tmp_path):
    target = targets.ModelTarget(label="m", embedded=False)
    run = tmp_path / "run"
    artifact = run / "best" / "artifact"
    artifact.mkdir(parents=True)
    (artifact / "strategy.json").write_text(json.dumps({"strategy": "lora"}))
    (run / "last" / "artifact").mkdir(parents=True)
    (run / "last" / "artifact" / "strategy.json").write_text(json.dumps({"strategy": "lora"}))
    (run / "last" / "COMPLETE").write_text("")
    assert targets.resolve_checkpoint(target, "lora", run) == (run / "last" / "artifact").resolve()  # best incomplete
    (run / "best" / "COMPLETE").write_text("")
    assert targets.resolve_checkpoint(target, "lora", run) == artifact.resolve()
    assert targets.resolve_checkpoint(target, "lora", artifact) == artifact.resolve()
    with pytest.raises(targets.EvaluationError, match="'lora' artifact"):
        targets.resolve_checkpoint(target, "dora", run)
    with pytest.raises(targets.EvaluationError, match=str(tmp_path / "nowhere")):
        targets.resolve_checkpoint(target, "lora", tmp_path / "nowhere")
    with pytest.raises(targets.EvaluationError, match="--checkpoint"):
        targets.resolve_checkpoint(target, "lora", None)
    assert targets.resolve_checkpoint(target, "zero_shot", None) is None


def test_a_checkpoint_may_be_a_unique_prefix_of_a_run_id(tmp_path, monkeypatch):
    """As `runs show` takes it: the registered run whose id starts with it; several -> an error naming them."""
    from captionlab.training import runs_db

    monkeypatch.setenv("CAPTIONLAB_HOME", str(tmp_path / "home"))
    target = targets.ModelTarget(label="m", embedded=False)
    artifacts = {}
    for run_id in ("launched-20250101-000000", "lora-a-1", "lora-a-2"):
        run = tmp_path / "elsewhere" / run_id
        artifacts[run_id] = run / "best" / "artifact"
        artifacts[run_id].mkdir(parents=True)
        (artifacts[run_id] / "strategy.json").write_text(json.dumps({"strategy": "lora"}))
        (run / "best" / "COMPLETE").write_text("")
        runs_db.register_run(run_id, name=run_id, run_dir=run)
    assert targets.resolve_checkpoint(target, "lora", "launched") == artifacts["launched-20250101-000000"].resolve()
    assert targets.resolve_checkpoint(target, "lora", "lora-a-1") == artifacts["lora-a-1"].resolve()
    with pytest.raises(targets.EvaluationError, match="'lora-a' matches 2 runs: .*lora-a-.*lora-a-"):
        targets.resolve_checkpoint(target, "lora", "lora-a")
    with pytest.raises(targets.EvaluationError, match="checkpoint not found"):
        targets.resolve_checkpoint(target, "lora", "nothing-like-it")


def test_each_checkpoint_is_evaluated_into_its_own_folder(tmp_path, monkeypatch):
    """A run's checkpoint never replaces the shipped checkpoint's results (which stay where the app reads them)."""
    monkeypatch.setenv("CAPTIONLAB_HOME", str(tmp_path / "home"))
    annotations = _karpathy(tmp_path)
    stub = FixedCaptioner({(40, 30): "a red box", (30, 40): "blue cups", (50, 50): "a square", (60, 30): "a tree"})
    shipped = targets._embedded_dir() / "strategies" / "lora"
    run_artifact = tmp_path / "home" / "runs" / "lora-20250101-000000" / "best" / "artifact"
    run_artifact.mkdir(parents=True)
    other = tmp_path / "elsewhere" / "lora"
    other.mkdir(parents=True)

    def evaluate(checkpoint):
        return ev.evaluate("embedded", "lora", f"karpathy:{annotations}", checkpoint=checkpoint, captioner=stub,
                           clip_encoder=False, record=False)

    first, run, elsewhere = evaluate(shipped), evaluate(run_artifact), evaluate(other)
    dataset_folder = ev.default_out_dir("embedded", "lora", first.dataset, first.split).name
    assert first.results_path.parent == tmp_path / "home" / "evaluations" / "embedded" / "lora" / dataset_folder
    assert run.results_path.parent == first.results_path.parent.parent / "lora-20250101-000000-best" / dataset_folder
    assert elsewhere.results_path.parent.parent.name.startswith("lora-")
    assert len({first.results_path, run.results_path, elsewhere.results_path}) == 3
    assert load_results_json(first.results_path).result.checkpoint == str(shipped)
    assert not list(first.results_path.parent.glob("*.stale")) and first.predictions_path.exists()
    assert evaluate(shipped).resumed == 4  # its predictions were never moved aside


def test_a_missing_embedded_checkpoint_gets_advice_that_holds(tmp_path, monkeypatch):
    """The zoo builds the study's five strategies on the CPU; QLoRA is not one of them (it needs CUDA)."""
    monkeypatch.setattr(targets, "_embedded_dir", lambda: tmp_path / "embedded")  # nothing shipped
    target = targets.ModelTarget(label="embedded", embedded=True)
    with pytest.raises(targets.EvaluationError) as lora:
        targets.resolve_checkpoint(target, "lora", None)
    assert "build the embedded study with `python -m train zoo`" in str(lora.value)
    with pytest.raises(targets.EvaluationError) as qlora:
        targets.resolve_checkpoint(target, "qlora", None)
    message = str(qlora.value)
    assert "build the embedded study" not in message and "CUDA GPU with bitsandbytes" in message
    assert "`python -m train run --recipe embedded/lora strategy=qlora device=cuda`" in message
