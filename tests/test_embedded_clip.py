"""The tiny CLIP's caption-words objective and the vision-tower probe (captionlab/embedded/clip.py, probe.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from captionlab.embedded.clip import build_clip, caption_words_loss, train_clip
from captionlab.embedded.probe import probe, probe_vision_tower
from captionlab.embedded.tokenizers import clip_tokenizer_from
from captionlab.world import write_world
from captionlab.world.domains import split_sizes

SHIPPED_TOKENIZER = Path(__file__).resolve().parent.parent / "checkpoints" / "embedded" / "tokenizer"


@pytest.fixture(scope="module")
def tokenizer():
    return clip_tokenizer_from(transformers.AutoTokenizer.from_pretrained(SHIPPED_TOKENIZER))


def test_caption_words_targets_are_the_captions_tokens_without_special_ones(tokenizer):
    texts = ["a red bird on the beach", "two blue cups in a kitchen with a long caption"]
    tokens = tokenizer(texts, padding=True, return_tensors="pt")
    vocab = len(tokenizer)
    present = torch.zeros(2, vocab)
    for row, ids in enumerate(tokens["input_ids"]):
        for i, keep in zip(ids.tolist(), tokens["attention_mask"][row].tolist()):
            if keep and i not in tokenizer.all_special_ids:
                present[row, i] = 1.0
    assert present.sum(1).min() >= 4
    head = torch.nn.Linear(8, vocab)
    patches = torch.zeros(2, 3, 8)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-20.0)
    # a head that says "no word" everywhere pays only for the caption's own tokens
    loss = caption_words_loss(head, patches, tokens, tokenizer)
    assert float(loss.detach()) == pytest.approx(20.0 * float(present.sum()) / present.numel(), rel=1e-3)
    # told the right words (per image, through its patches) the loss vanishes; specials are never targets
    with torch.no_grad():
        head = torch.nn.Linear(2, vocab)
        head.weight.copy_((present.T * 40.0))
        head.bias.fill_(-20.0)
    one_hot = torch.eye(2).unsqueeze(1).expand(2, 3, 2)
    assert float(caption_words_loss(head, one_hot, tokens, tokenizer)) < 1e-6


def test_training_with_caption_words_saves_a_plain_clip_the_llava_tower_loads(tokenizer, tmp_path):
    config = write_world(tmp_path / "world", seed=0, scale=0.02)
    from captionlab.data.datasets import load_records

    pairs = [(Path(r.image_path), list(r.references)) for r in load_records("coco", split="train", config=config)]
    before = build_clip(tokenizer).vision_model.state_dict()
    out = train_clip(pairs, tokenizer, tmp_path / "clip", epochs=1, batch_size=16, lr=1e-3, word_weight=1.0,
                     progress=lambda m: None)
    saved = transformers.CLIPModel.from_pretrained(out, use_safetensors=True)
    assert not any(name.startswith("word") for name in saved.state_dict())  # the head is not kept
    after = saved.vision_model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_the_probe_reads_a_separable_label_and_not_noise():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (600,), generator=generator)
    features = torch.nn.functional.one_hot(labels, 4).float() + 0.1 * torch.randn(600, 4, generator=generator)
    noise = torch.randn(600, 16, generator=generator)
    (separable,) = probe(features[:500], labels[:500], [features[500:]], 4)
    (random_guess,) = probe(noise[:500], labels[:500], [noise[500:]], 4)
    assert float((separable == labels[500:]).float().mean()) == 1.0
    assert float((random_guess == labels[500:]).float().mean()) < 0.5


def test_probe_vision_tower_scores_every_benchmark_from_the_worlds_scenes(tmp_path):
    write_world(tmp_path / "world", seed=0, scale=0.05)
    result = probe_vision_tower(None, tmp_path / "world", image_size=16, pixels=True)
    for key in ("kind/coco", "kind/nocaps", "kind/cc3m", "kind/vizwiz", "kind/textcaps", "colour/coco",
                "setting/coco", "word/textcaps"):
        assert 0.0 <= result[key] <= 1.0, key
    sizes = split_sizes(0.05)
    assert result["n/coco"] == sizes["coco"]["val"] + sizes["coco"]["test"]
    assert result["n/textcaps"] == sizes["textcaps"]["val"]
