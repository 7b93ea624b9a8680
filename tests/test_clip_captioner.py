"""The CLIP-Captioner baseline: it learns through the real trainer, beam search, the feature cache, its artifact.

A tiny random transformers CLIPModel (with a tokenizer trained on the world's captions) stands in
for ViT-L/14@336. The world is a little bigger than conftest's `tiny_world`: with 5 test images
the most frequent training caption happens to score CIDEr 0.44, with 12 it scores a fairer 0.27.
"""

from __future__ import annotations

import collections
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from captionlab.baseline.captioner import beam_search, greedy_decode, load_clip_captioner
from captionlab.baseline.features import (ClipEncoderNotFound, GridFeatureExtractor, HFGridEncoder,
                                          OpenClipGridEncoder, load_grid_encoder, open_clip_weights_file)
from captionlab.baseline.model import SMALL_SIZES, CaptionModelConfig, ClipCaptionModel
from captionlab.baseline.training import ClipCaptionerStrategy, encode_captions
from captionlab.data.datasets import load_records, resolve_dataset
from captionlab.paths import RECIPES_DIR
from captionlab.training.config import resolve_config, save_config
from captionlab.training.run_folder import RunFolder
from captionlab.training.trainer import train_run

IMAGE_SIZE, PATCH = 32, 8  # a 4 x 4 grid: enough for colours and settings, cheap on 2 shared cores


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one thread beats several on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from captionlab.world import write_world

    return write_world(tmp_path_factory.mktemp("world"), seed=0, scale=0.05)


def coco(world: Path, split: str):
    return load_records(resolve_dataset("coco", None, world), split=split)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory, world) -> Path:
    """A tiny random transformers CLIPModel folder with its image processor and a locally trained tokenizer."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from captionlab.models.tokenizer import train_tokenizer

    tokenizer = train_tokenizer([c for r in coco(world, "train") for c in r.references], vocab_size=600)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_attention_heads=2,
                         num_hidden_layers=1, max_position_embeddings=64, **ids),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=3,
                           image_size=IMAGE_SIZE, patch_size=PATCH),
        projection_dim=32)
    folder = tmp_path_factory.mktemp("tiny-clip")
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                       crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


class EncodeCounter:
    """Counts the images that really go through a CLIP encoder."""

    def __init__(self, monkeypatch, cls=HFGridEncoder):
        self.images = 0
        original = cls.encode

        def counting(encoder, images):
            self.images += len(images)
            return original(encoder, images)

        monkeypatch.setattr(cls, "encode", counting)


def cider(references: list[tuple[str, ...]], predictions: list[str]) -> float:
    from pycocoevalcap.cider.cider import Cider

    def words(text: str) -> str:
        return " ".join(re.findall(r"[a-z0-9]+", text.lower()))

    gts = {i: [words(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [words(p)] for i, p in enumerate(predictions)}
    return float(Cider().compute_score(gts, res)[0])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, world, clip_dir):
    """One run of the real trainer (strategy=clip_captioner), with the encoder's calls counted."""
    home = tmp_path_factory.mktemp("home")
    run_dir = home / "run"
    run_dir.mkdir()
    values = dict(model=str(clip_dir), strategy="clip_captioner", dataset="coco", datasets_config=str(world),
                  epochs=3, batch_size=16, micro_batch_size=16, lr_max=0.1, lr_min=0.001, momentum=0.9,
                  max_grad_norm=1.0, checkpoint_every_steps=1000, seed=0, device="cpu")
    save_config(resolve_config(None, values), run_dir / "config.yaml")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("CAPTIONLAB_HOME", str(home))
        counter = EncodeCounter(monkeypatch)
        assert train_run(run_dir) == 0
    cached = len(list((home / "feature_cache").rglob("*.safetensors")))
    return run_dir, counter.images, home, cached


def test_training_learns_and_beats_the_most_frequent_caption(trained, world):
    run_dir, encoded, home, _ = trained
    run = RunFolder(run_dir)
    assert run.read_status()["state"] == "finished"
    val = [row["val_loss"] for row in run.read_metrics() if row.get("event") == "val"]
    assert len(val) == 4 and val[-1] < val[0] - 1.0, val
    artifact = run_dir / "best" / "artifact"
    assert {p.name for p in artifact.iterdir()} >= {"strategy.json", "captioner_config.json", "model.safetensors",
                                                    "tokenizer"}
    assert not list(artifact.rglob("*.bin")) and not list(artifact.rglob("*.pt"))  # no pickle

    test = coco(world, "val") + coco(world, "test")  # 24 images: 12 made one lucky constant caption win (world v3)
    images = [Image.open(r.image_path).convert("RGB") for r in test]
    captioner = load_clip_captioner(artifact, device="cpu", beam_size=3, cache_root=home / "feature_cache")
    assert (captioner.key, captioner.name) == ("clip_captioner", "CLIP-Captioner")
    predictions = captioner.caption(images)
    train_captions = [c for r in coco(world, "train") for c in r.references]
    most_frequent = collections.Counter(train_captions).most_common(1)[0][0]
    model_cider = cider([r.references for r in test], predictions)
    trivial_cider = cider([r.references for r in test], [most_frequent] * len(test))
    print(f"\nCIDEr on {len(test)} coco val+test images: CLIP-Captioner {model_cider:.3f}, "
          f"most frequent caption {trivial_cider:.3f} ({most_frequent!r}); e.g. {predictions[:3]}")
    assert model_cider > trivial_cider + 0.15, (model_cider, trivial_cider, predictions)
    assert all(p and p != most_frequent for p in predictions[:3])


def test_each_image_is_encoded_once_across_epochs(trained, world):
    _, encoded, _, cached = trained
    distinct = {r.image_path.read_bytes() for split in ("train", "val") for r in coco(world, split)}
    assert encoded == len(distinct)  # three epochs and four validations, one CLIP pass per image
    assert cached == len(distinct)


def test_save_then_load_gives_identical_captions(trained, world, tmp_path):
    run_dir, _, home, _ = trained
    images = [Image.open(r.image_path).convert("RGB") for r in coco(world, "test")[:6]]
    first = load_clip_captioner(run_dir / "best" / "artifact", device="cpu", beam_size=3, use_cache=False)
    first.save(tmp_path / "copy")
    second = load_clip_captioner(tmp_path / "copy", device="cpu", beam_size=3, use_cache=False)
    for name, tensor in first.model.state_dict().items():
        assert torch.equal(tensor, second.model.state_dict()[name]), name
    assert first.caption(images) == second.caption(images)


def test_the_artifact_finds_its_encoder_by_content_not_by_path(trained, clip_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from captionlab.baseline.features import ClipCaptionerError

    artifact = trained[0] / "best" / "artifact"
    moved = shutil.copytree(clip_dir, tmp_path / "moved-clip")
    image = [Image.new("RGB", (64, 64), (250, 120, 0))]
    same = load_clip_captioner(artifact, "cpu", encoder=str(moved), use_cache=False)
    assert same.caption(image) == load_clip_captioner(artifact, "cpu", use_cache=False).caption(image)
    weights = load_file(str(moved / "model.safetensors"))
    weights = {k: v + 0.01 if k.endswith("patch_embedding.weight") else v for k, v in weights.items()}
    save_file(weights, str(moved / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ClipCaptionerError, match="retrain"):
        load_clip_captioner(artifact, "cpu", encoder=str(moved))


def test_beam_one_is_greedy_token_for_token(trained, world):
    run_dir, _, home, _ = trained
    captioner = load_clip_captioner(run_dir / "best" / "artifact", device="cpu", cache_root=home / "feature_cache")
    images = [Image.open(r.image_path).convert("RGB") for r in coco(world, "test")]
    with torch.no_grad():
        memory = captioner.model.encode(captioner.extractor(images))
        greedy = greedy_decode(captioner.model, memory, max_length=20)
        beam = beam_search(captioner.model, memory, beam_size=1, max_length=20)
    assert torch.equal(greedy, beam)
    assert (greedy == captioner.model.config.eos_id).any(dim=1).all()  # the trained model stops by itself

    torch.manual_seed(1)  # and an untrained one, which runs to max_length
    config = CaptionModelConfig(feature_dim=8, grid_tokens=4, vocab_size=50, bos_id=1, eos_id=2, pad_id=0,
                                max_positions=16, **SMALL_SIZES)
    model = ClipCaptionModel(config).eval()
    with torch.no_grad():
        memory = model.encode(torch.randn(5, 4, 8))
        assert torch.equal(greedy_decode(model, memory, 12), beam_search(model, memory, 1, 12))


class TableModel:
    """A fake decoder with fixed next-token probabilities: greedy takes A (0.6) then stops at 0.24 overall;
    B (0.4) then <eos> (0.9) is better, 0.36, and beam search must find it."""

    config = CaptionModelConfig(feature_dim=1, grid_tokens=1, vocab_size=5, bos_id=1, eos_id=2, pad_id=0,
                                max_positions=8)
    A, B = 3, 4
    table = {1: [0, 0, 0, 0.6, 0.4], A: [0, 0, 0.4, 0.3, 0.3], B: [0, 0, 0.9, 0.05, 0.05]}

    def decode(self, tokens, memory):
        rows = [self.table.get(t, [1.0, 0, 0, 0, 0]) for t in tokens[:, -1].tolist()]
        return torch.tensor(rows).clamp_min(1e-9).log()[:, None].expand(-1, tokens.shape[1], -1)


def test_beam_search_finds_what_greedy_misses():
    model, memory = TableModel(), torch.zeros(2, 1, 1)
    assert greedy_decode(model, memory, 5)[0, :2].tolist() == [TableModel.A, 2]
    assert beam_search(model, memory, beam_size=2, max_length=5)[:, :2].tolist() == [[TableModel.B, 2]] * 2


def test_feature_cache_is_reused_and_a_corrupt_entry_recomputed(clip_dir, tmp_path, monkeypatch):
    counter = EncodeCounter(monkeypatch)
    encoder = load_grid_encoder(str(clip_dir), "cpu")
    images = [Image.new("RGB", (40, 30), colour) for colour in ((200, 30, 30), (20, 40, 220), (10, 200, 10))]
    first = GridFeatureExtractor(encoder, cache_root=tmp_path)(images + [images[0].copy()])
    assert counter.images == 3 and first.shape == (4, (IMAGE_SIZE // PATCH) ** 2, 32)
    assert torch.equal(first[0], first[3])

    again = GridFeatureExtractor(encoder, cache_root=tmp_path)  # a new process would find the same files
    assert torch.equal(again(images), first[:3]) and counter.images == 3

    from captionlab.baseline.features import image_key

    garbage, wrong_shape = again.cache.path(image_key(images[0])), again.cache.path(image_key(images[1]))
    garbage.write_bytes(garbage.read_bytes()[:40] + b"not a tensor")
    from safetensors.torch import save_file

    save_file({"features": torch.zeros(2, 2, dtype=torch.float16)}, str(wrong_shape))
    assert torch.equal(again(images), first[:3])
    assert counter.images == 5 and again.cache.corrupt_entries == 2
    assert torch.equal(again(images), first[:3]) and counter.images == 5  # rewritten: good again


def test_grid_features_are_the_penultimate_patch_tokens(clip_dir):
    import open_clip

    images = [Image.new("RGB", (32, 32), (90, 160, 20)), Image.new("RGB", (48, 32), (10, 10, 240))]
    hf = load_grid_encoder(str(clip_dir), "cpu")
    vision = hf.model  # transformers 5's CLIPVisionModel: embeddings, pre_layrnorm, encoder.layers
    with torch.no_grad():
        pixels = hf.processor(images=images, return_tensors="pt")["pixel_values"]
        x = vision.pre_layrnorm(vision.embeddings(pixels))
        for layer in vision.encoder.layers[:-1]:
            x = layer(x, None)  # returns a tensor in transformers 5
    assert torch.allclose(hf.encode(images), x[:, 1:], atol=1e-5)

    torch.manual_seed(0)
    model = open_clip.model.CLIP(32, dict(image_size=32, patch_size=8, width=32, layers=3, head_width=16),
                                 dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1))
    preprocess = open_clip.transform.image_transform(32, is_train=False)
    encoder = OpenClipGridEncoder(model, preprocess, "tiny")
    with torch.no_grad():
        pixels = torch.stack([preprocess(im) for im in images])
        x = model.visual._embeds(pixels)
        for block in model.visual.transformer.resblocks[:-1]:
            x = block(x)
    assert (encoder.grid_tokens, encoder.feature_dim) == (16, 32)
    assert torch.allclose(encoder.encode(images), x[:, 1:], atol=1e-5)


def test_missing_encoders_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.delenv("CAPTIONLAB_CAPTIONER_CLIP_WEIGHTS", raising=False)
    with pytest.raises(ClipEncoderNotFound, match="never downloads.*ViT-L-14-336"):
        open_clip_weights_file("ViT-L-14-336", cache_dir=tmp_path)
    monkeypatch.setenv("CAPTIONLAB_CAPTIONER_CLIP_WEIGHTS", str(tmp_path / "nope.safetensors"))
    with pytest.raises(ClipEncoderNotFound, match="is not a file"):
        open_clip_weights_file("ViT-L-14-336")
    with pytest.raises(ClipEncoderNotFound, match="config.json missing"):
        load_grid_encoder(str(tmp_path / "no-clip-here"), "cpu")


def test_captions_become_bos_caption_eos_with_labels_on_the_caption(clip_dir):
    from captionlab.baseline.features import HFCaptionTokenizer

    tokenizer = HFCaptionTokenizer.from_folder(clip_dir)
    input_ids, labels = encode_captions(tokenizer, ["a red ball", "two blue cups on a kitchen table"])
    short = len(tokenizer.encode("a red ball")) + 2
    assert input_ids[0, 0] == tokenizer.bos_id and input_ids[0, short - 1] == tokenizer.eos_id
    assert (input_ids[0, short:] == tokenizer.pad_id).all() and (labels[0, short:] == -100).all()
    assert labels[0, 0] == -100 and torch.equal(labels[0, 1:short], input_ids[0, 1:short])
    assert ClipCaptionerStrategy.name == "clip_captioner" and ClipCaptionerStrategy.prefix_slots == 0


@pytest.mark.parametrize("recipe", ["embedded/clip_captioner", "clip-captioner/coco", "clip-captioner/coco_scst"])
def test_recipes_load_and_start_with_their_command(recipe):
    path = RECIPES_DIR / f"{recipe}.yaml"
    assert path.read_text().splitlines()[0].startswith(f"# python -m train run --recipe {recipe}")
    config = resolve_config(recipe)
    assert config.strategy == "clip_captioner"
