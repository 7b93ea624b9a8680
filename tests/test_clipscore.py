"""captionlab.evaluation.clipscore: CLIP-S and RefCLIP-S exactly as defined (Hessel et al.),
checked by hand on a fixed-vector encoder and on a tiny random transformers CLIPModel saved in
HF format and loaded through HFClipEncoder; open_clip without weights fails fast and clearly."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from captionlab.evaluation import clipscore
from captionlab.evaluation.clipscore import (
    ClipEncoder,
    ClipWeightsNotFound,
    HFClipEncoder,
    OpenClipEncoder,
    clip_score,
)

CLIP_SCORE_PREFIX = "A photo depicts "  # Hessel et al.'s prefix, spelled out: the module must use it
WORDS = ("a photo depicts dog cat red blue ball on the grass sofa sitting running with two "
         "small big car street tree").split()


class FixedEncoder(ClipEncoder):
    """Returns chosen unit vectors, so every cosine is known exactly; records what it was asked."""

    name = "fixed-test-encoder"

    def __init__(self, image_vectors: dict, text_vectors: dict):
        self.image_vectors, self.text_vectors, self.texts_seen = image_vectors, text_vectors, []

    def encode_images(self, images):
        return torch.nn.functional.normalize(torch.tensor([self.image_vectors[im.info["key"]] for im in images],
                                                          dtype=torch.float64), dim=-1)

    def encode_texts(self, texts):
        self.texts_seen.extend(texts)
        return torch.nn.functional.normalize(torch.tensor([self.text_vectors[t] for t in texts],
                                                          dtype=torch.float64), dim=-1)


def _keyed_image(key: str) -> Image.Image:
    image = Image.new("RGB", (8, 8))
    image.info["key"] = key
    return image


def test_formula_on_known_cosines_including_negative_clip_and_refclip():
    assert clipscore.CLIP_SCORE_PREFIX == CLIP_SCORE_PREFIX and clipscore.CLIP_SCORE_WEIGHT == 2.5
    p = CLIP_SCORE_PREFIX
    encoder = FixedEncoder(
        image_vectors={"i1": [1.0, 0.0], "i2": [1.0, 0.0], "i3": [1.0, 0.0]},
        text_vectors={p + "good": [0.6, 0.8], p + "bad": [-0.6, 0.8],  # cos with image: 0.6 and -0.6
                      p + "ref a": [0.0, 1.0], p + "ref b": [0.6, 0.8], p + "ref c": [0.6, -0.8],
                      p + "ref d": [-0.6, -0.8]},
    )
    report = clip_score(encoder, {"x": _keyed_image("i1"), "y": _keyed_image("i2"), "z": _keyed_image("i3")},
                        {"x": "good", "y": "bad", "z": "good"},
                        {"x": ["ref a", "ref b"], "y": ["ref c"], "z": ["ref d"]})
    assert report.per_image["x"] == pytest.approx(2.5 * 0.6)
    assert report.per_image["y"] == 0.0  # negative cosine clips to 0
    assert report.clip_score == pytest.approx((1.5 + 0.0 + 1.5) / 3)
    # x: text-text max(cos(good, ref a)=0.8, cos(good, ref b)=1.0) = 1.0; H-mean(1.5, 1.0) = 1.2
    assert report.per_image_ref["x"] == pytest.approx(2 * 1.5 * 1.0 / 2.5)
    # y: CLIP-S 0 and max cos(bad, ref c) = -0.36-0.64 = -1 clipped to 0: H-mean(0, 0) = 0
    assert report.per_image_ref["y"] == 0.0
    # z: CLIP-S 1.5 but cos(good, ref d) = -1, clipped to 0 before the harmonic mean: 0 (not -6)
    assert report.per_image_ref["z"] == 0.0
    assert report.ref_clip_score == pytest.approx(1.2 / 3)
    assert all(t.startswith(CLIP_SCORE_PREFIX) for t in encoder.texts_seen)  # candidates and references
    assert report.encoder_name == "fixed-test-encoder"
    assert report.paper_scale_metrics() == {"CLIP-Score": report.clip_score, "RefCLIP-Score": report.ref_clip_score}


def test_images_without_references_and_bad_inputs():
    p = CLIP_SCORE_PREFIX
    encoder = FixedEncoder({"i": [1.0, 0.0]}, {p + "c": [1.0, 0.0], p + "r": [1.0, 0.0]})
    images = [_keyed_image("i"), _keyed_image("i")]
    report = clip_score(encoder, images, ["c", "c"], [["r"], []])
    assert report.per_image == {0: 2.5, 1: 2.5} and set(report.per_image_ref) == {0}
    assert report.n_images_with_references == 1 and report.ref_clip_score == pytest.approx(2 * 2.5 * 1 / 3.5)
    no_refs = clip_score(encoder, images, ["c", "c"])
    assert no_refs.ref_clip_score is None and "RefCLIP-Score" in no_refs.unavailable
    with pytest.raises(ValueError, match="2 images for 1 captions"):
        clip_score(encoder, images, ["c"])


# ---- a tiny random CLIPModel in Hugging Face format -------------------------------------------

def _save_tiny_clip(folder, flip_image_sign_for=None):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
    vocab = {tok: i for i, tok in enumerate(specials + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", vocab["[BOS]"]), ("[EOS]", vocab["[EOS]"])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                        bos_token="[BOS]", eos_token="[EOS]")
    tokenizer.backend_tokenizer.normalizer = None
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, pad_token_id=0,
                         bos_token_id=vocab["[BOS]"], eos_token_id=vocab["[EOS]"]),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2),
        projection_dim=16,
    )
    model = CLIPModel(config).eval()
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    if flip_image_sign_for is not None:  # make the cosine of this (image, caption) pair negative
        image, caption = flip_image_sign_for
        if _hand_cosines(model, tokenizer, processor, [image], [CLIP_SCORE_PREFIX + caption])[0] > 0:
            with torch.no_grad():
                model.visual_projection.weight.mul_(-1)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, tokenizer, processor


def _unit(output):
    features = output if isinstance(output, torch.Tensor) else output.pooler_output
    return features / features.norm(dim=-1, keepdim=True)


@torch.no_grad()
def _hand_text(model, tokenizer, texts):
    tokens = tokenizer(texts, padding=True, truncation=True, max_length=16, return_tensors="pt")
    return _unit(model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]))


@torch.no_grad()
def _hand_cosines(model, tokenizer, processor, images, texts):
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    return (_unit(model.get_image_features(pixel_values=pixels)) * _hand_text(model, tokenizer, texts)).sum(-1).tolist()


def _scenes():
    red = Image.new("RGB", (40, 40), (220, 30, 30))
    blue = Image.new("RGB", (48, 36), (20, 40, 210))
    noisy = Image.fromarray((torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(1)) * 255)
                            .to(torch.uint8).numpy())
    return [red, blue, noisy], ["a red ball on the grass", "a blue car on the street", "two small dog sitting"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-clip")
    images, captions = _scenes()
    model, tokenizer, processor = _save_tiny_clip(folder, flip_image_sign_for=(images[0], captions[0]))
    return folder, model, tokenizer, processor


def test_hf_encoder_clip_score_matches_hand_computation(tiny_clip):
    folder, model, tokenizer, processor = tiny_clip
    images, captions = _scenes()
    encoder = HFClipEncoder(folder, name=clipscore.EMBEDDED_CLIP_NAME)
    report = clip_score(encoder, images, captions, batch_size=2)  # batches of 2: exercises batching
    cosines = _hand_cosines(model, tokenizer, processor, images, [CLIP_SCORE_PREFIX + c for c in captions])
    assert cosines[0] < 0, "the fixture makes the first pair's cosine negative"
    expected = [2.5 * max(c, 0.0) for c in cosines]
    assert report.per_image[0] == 0.0
    for i, value in enumerate(expected):
        assert report.per_image[i] == pytest.approx(value, abs=1e-5)
    assert report.clip_score == pytest.approx(sum(expected) / 3, abs=1e-5)
    assert report.encoder_name == "embedded-tiny-clip" and report.n_images == 3
    # the prefix is what is scored: without it the numbers differ
    unprefixed = [2.5 * max(c, 0.0) for c in _hand_cosines(model, tokenizer, processor, images, captions)]
    assert any(abs(a - b) > 1e-4 for a, b in zip(unprefixed, expected))


def test_hf_encoder_refclip_score_matches_hand_computation(tiny_clip):
    folder, model, tokenizer, processor = tiny_clip
    images, captions = _scenes()
    references = {"r": ["a red ball", "the ball on the grass"], "b": ["a blue car"], "n": ["two dog running", "a cat"]}
    keyed_images, keyed_captions = dict(zip("rbn", images)), dict(zip("rbn", captions))
    report = clip_score(HFClipEncoder(folder), keyed_images, keyed_captions, references)
    cosines = _hand_cosines(model, tokenizer, processor, images, [CLIP_SCORE_PREFIX + c for c in captions])
    for key, cosine, caption in zip("rbn", cosines, captions):
        clip_s = 2.5 * max(cosine, 0.0)
        cand = _hand_text(model, tokenizer, [CLIP_SCORE_PREFIX + caption])
        refs = _hand_text(model, tokenizer, [CLIP_SCORE_PREFIX + r for r in references[key]])
        text_s = max(float((refs @ cand.T).max()), 0.0)
        expected = 2 * clip_s * text_s / (clip_s + text_s) if clip_s + text_s > 0 else 0.0
        assert report.per_image[key] == pytest.approx(clip_s, abs=1e-5)
        assert report.per_image_ref[key] == pytest.approx(expected, abs=1e-5), key
    assert report.per_image_ref["r"] == 0.0  # CLIP-S 0 (negative cosine) makes the harmonic mean 0
    assert report.ref_clip_score == pytest.approx(sum(report.per_image_ref.values()) / 3)
    assert report.encoder_name == f"hf-clip:{folder.name}"


def test_images_may_be_paths(tiny_clip, tmp_path):
    folder = tiny_clip[0]
    images, captions = _scenes()
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        image.save(paths[-1])
    encoder = HFClipEncoder(folder)
    assert clip_score(encoder, paths, captions).per_image == pytest.approx(clip_score(encoder, images, captions).per_image)


def test_open_clip_without_weights_fails_fast_with_instructions(tmp_path, monkeypatch, no_network):
    monkeypatch.delenv(clipscore.OPENCLIP_WEIGHTS_ENV, raising=False)
    encoder = OpenClipEncoder(cache_dir=tmp_path, device="cpu")  # construction loads nothing
    with pytest.raises(ClipWeightsNotFound) as error:
        encoder.encode_texts(["a dog"])
    assert no_network == []  # it never tried the network: nothing to wait for
    message = str(error.value)
    assert "pretrained='openai'" in message and clipscore.OPENCLIP_WEIGHTS_ENV in message
    monkeypatch.setenv(clipscore.OPENCLIP_WEIGHTS_ENV, str(tmp_path / "nope.safetensors"))
    with pytest.raises(ClipWeightsNotFound, match="nope.safetensors does not exist"):
        OpenClipEncoder(device="cpu").encode_images([Image.new("RGB", (4, 4))])


def test_trained_embedded_clip_prefers_the_caption_of_its_own_scene():
    """With the embedded world's trained tiny CLIP, a scene's own reference caption must score
    above another scene's on (nearly) every held-out gallery scene."""
    folder = clipscore.embedded_clip_folder()
    if not (folder / "config.json").is_file():
        pytest.skip(f"the trained embedded tiny CLIP is not built yet ({folder})")
    from captionlab.world import sample_gallery

    gallery = sample_gallery(10, seed=0)  # evaluation-split scenes, cycling through the five domains
    images = [image for image, _, _ in gallery]
    own = [references[0] for _, _, references in gallery]
    mismatched = own[1:] + own[:1]
    encoder = clipscore.embedded_clip_encoder()
    assert encoder.name == "embedded-tiny-clip"
    own_scores = clip_score(encoder, images, own).per_image
    mismatched_scores = clip_score(encoder, images, mismatched).per_image
    wins = sum(own_scores[i] > mismatched_scores[i] for i in range(len(gallery)))
    assert wins >= 8, f"own caption beat a mismatched one on only {wins}/10 scenes"
