"""Self-critical sequence training (training/scst.py) and the optimiser options the CLIP-Captioner's recipe uses.

REINFORCE gradients against a hand-computed case, CIDEr-D against pycocoevalcap's, the reward rising on a tiny
synthetic captioner, config validation, and one SCST step of the real trainer on a tiny LLaVA and on the
CLIP-Captioner (init_from a cross-entropy run).
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from captionlab.training import scst
from captionlab.training.batching import IGNORE_INDEX
from captionlab.training.config import ConfigError, resolve_config, save_config
from captionlab.training.trainer import Trainer, cosine_lr, scheduled_lr, train_run


# --- (a) gradients: the module's loss against REINFORCE computed by hand --------------------------------------
def _hand_gradient(theta: torch.Tensor, samples: list[list[int]], advantages: list[float]) -> torch.Tensor:
    """d/dtheta of -sum_i A_i log p(w_i) for a policy whose step-t logits are theta[t]:
    d log softmax(theta_t)[w] / d theta_t = onehot(w) - softmax(theta_t)."""
    grad = torch.zeros_like(theta)
    probs = torch.softmax(theta, dim=-1)
    for words, advantage in zip(samples, advantages):
        for t, w in enumerate(words):
            onehot = torch.zeros(theta.shape[1])
            onehot[w] = 1.0
            grad[t] -= advantage * (onehot - probs[t])
    return grad


@pytest.mark.parametrize("baseline", ["mean", "greedy"])
def test_loss_gradient_is_reinforce_with_the_baseline(baseline):
    torch.manual_seed(0)
    steps, vocab = 3, 5
    theta = torch.randn(steps, vocab, requires_grad=True)
    # 2 images x 3 samples; image 1's second sample is one token shorter (its last label is padding)
    samples = [[1, 2, 4], [0, 2, 4], [3, 3, 4], [1, 1, 4], [2, 4], [0, 1, 4]]
    rewards = torch.tensor([[0.9, 0.2, 0.4], [1.5, 0.0, 0.3]])
    greedy = torch.tensor([0.5, 0.6])
    if baseline == "mean":  # each sample against the mean of its image's OTHER samples
        expected_b = [[(0.2 + 0.4) / 2, (0.9 + 0.4) / 2, (0.9 + 0.2) / 2], [(0.0 + 0.3) / 2, (1.5 + 0.3) / 2,
                                                                              (1.5 + 0.0) / 2]]
    else:
        expected_b = [[0.5] * 3, [0.6] * 3]
    baselines = scst.baseline_rewards(rewards, baseline, greedy if baseline == "greedy" else None)
    assert torch.allclose(baselines, torch.tensor(expected_b))
    advantages = (rewards - baselines).reshape(-1)
    # the logits a model would give: row i, position t predicts labels[i, t + 1] (labels[:, 0] is <bos>)
    logits = theta[None].expand(len(samples), steps, vocab)
    logits = torch.cat([logits, torch.zeros(len(samples), 1, vocab)], dim=1)  # the position after the last token
    labels = torch.full((len(samples), steps + 1), IGNORE_INDEX)
    for i, words in enumerate(samples):
        labels[i, 1:1 + len(words)] = torch.tensor(words)
    loss = scst.scst_loss_sum(scst.sequence_log_probs(logits, labels), advantages)
    loss.backward()
    expected = _hand_gradient(theta.detach(), samples, advantages.tolist())
    assert torch.allclose(theta.grad, expected, atol=1e-6)
    hand_loss = -sum(a * sum(math.log(torch.softmax(theta.detach()[t], -1)[w]) for t, w in enumerate(words))
                     for words, a in zip(samples, advantages.tolist()))
    assert float(loss.detach()) == pytest.approx(hand_loss, rel=1e-5)


def test_mean_baseline_needs_two_samples_and_greedy_needs_its_rewards():
    with pytest.raises(ValueError, match="at least 2"):
        scst.baseline_rewards(torch.ones(2, 1), "mean")
    with pytest.raises(ValueError, match="greedy"):
        scst.baseline_rewards(torch.ones(2, 3), "greedy")


# --- the reward: pycocoevalcap's CIDEr-D, idf from the training references ------------------------------------
REFERENCES = [("a red ball on the grass", "a red ball lies on green grass", "red ball in a field"),
              ("a blue car on a road", "a blue car parked by the road", "the car is blue"),
              ("two dogs play in the snow", "a pair of dogs in snow", "dogs running through snow")]


def test_cider_d_equals_pycocoevalcap_when_the_corpus_is_the_batch():
    from pycocoevalcap.cider.cider import Cider

    captions = ["a red ball on grass", "a blue car", "a dog in the snow"]
    gts = {i: [scst.reward_words(r) for r in refs] for i, refs in enumerate(REFERENCES)}
    res = {i: [scst.reward_words(c)] for i, c in enumerate(captions)}
    _, expected = Cider().compute_score(gts, res)
    ours = scst.CiderD(REFERENCES).scores(captions, REFERENCES)
    assert ours.tolist() == pytest.approx(list(expected), rel=1e-5)
    assert scst.reward_words("A Red, ball.") == "a red ball"


def test_cider_d_document_frequencies_come_from_the_corpus_not_the_batch():
    reward = scst.CiderD(REFERENCES)
    alone = reward.score("a red ball on the grass", REFERENCES[0])
    # scoring in a different batch changes nothing: the idf is the corpus's
    assert reward.scores(["a red ball on the grass", "x"], [REFERENCES[0], REFERENCES[1]])[0] == pytest.approx(alone)
    # a bigger corpus where "red ball" is everywhere weighs it less
    common = scst.CiderD(REFERENCES + [("a red ball",)] * 20)
    assert common.score("a red ball", REFERENCES[0]) < reward.score("a red ball", REFERENCES[0])


# --- (b) the reward rises on a tiny synthetic captioner -------------------------------------------------------
WORDS = ["<pad>", "<bos>", "<eos>", "a", "red", "blue", "green", "ball", "car", "tree", "on", "the", "grass", "road",
         "big", "small"]
TOY_REFERENCES = [("a red ball on the grass", "a small red ball", "red ball on grass"),
                  ("a blue car on the road", "a big blue car", "blue car on road"),
                  ("a green tree on the grass", "a big green tree", "green tree")]


class ToyTokenizer:
    pad_id, bos_id, eos_id = 0, 1, 2
    vocab_size = len(WORDS)

    def encode(self, text):
        return [WORDS.index(w) for w in text.split()]

    def decode(self, ids):
        return " ".join(WORDS[i] for i in ids)


def _toy_captioner():
    from captionlab.baseline.model import CaptionModelConfig, ClipCaptionModel

    torch.manual_seed(0)
    config = CaptionModelConfig(feature_dim=8, grid_tokens=2, vocab_size=len(WORDS), bos_id=1, eos_id=2, pad_id=0,
                                d_model=32, heads=2, encoder_layers=1, decoder_layers=1, ff_dim=64, dropout=0.0,
                                max_positions=12)
    return ClipCaptionModel(config), torch.randn(len(TOY_REFERENCES), 2, 8)


def _toy_sampler(model, features, tokenizer):
    from captionlab.baseline.captioner import greedy_decode, ids_to_text, sample_decode

    def sample(images, k, max_length, greedy):
        memory = model.encode(features[images])
        ids = greedy_decode(model, memory, max_length) if greedy else sample_decode(
            model, memory.repeat_interleave(k, dim=0), max_length)
        return [ids_to_text(tokenizer, row) for row in ids.tolist()]

    return sample


@pytest.mark.parametrize("baseline", ["mean", "greedy"])
def test_scst_raises_the_cider_d_reward_on_a_tiny_captioner(baseline):
    from captionlab.baseline.training import encode_captions

    model, features = _toy_captioner()
    tokenizer = ToyTokenizer()
    reward = scst.CiderD(TOY_REFERENCES)
    sample = _toy_sampler(model, features, tokenizer)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    images, samples = [0, 1, 2], 8
    torch.manual_seed(1)
    rewards = []
    for _ in range(60):
        model.eval()
        captions, advantages, stats = scst.rollout(sample, reward, images, TOY_REFERENCES, samples, baseline, 8)
        model.train()
        input_ids, labels = encode_captions(tokenizer, captions, 12)
        logits = model(features[[i for i in images for _ in range(samples)]], input_ids).logits
        loss = scst.scst_loss_sum(scst.sequence_log_probs(logits, labels), advantages) / len(captions)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rewards.append(stats["reward_sum"] / stats["samples"])
    first, last = sum(rewards[:10]) / 10, sum(rewards[-10:]) / 10
    # CIDEr-D on pycocoevalcap's scale (x10); seeded runs go ~0.6-0.8 -> ~2.0-2.2
    assert last > first + 1.0 and last > 2 * first, (first, last)
    model.eval()
    greedy = scst.greedy_reward_sum(sample, reward, images, TOY_REFERENCES, 8) / len(images)
    assert greedy > first + 1.0


# --- (c) configuration -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ({"objective": "rl"}, "objective: must be xe (cross-entropy) or scst"),
    ({"objective": "scst", "scst_baseline": "median"}, "scst_baseline: must be greedy"),
    ({"objective": "scst", "scst_samples": 1}, "scst_samples: must be at least 2 with scst_baseline mean"),
    ({"objective": "scst", "scst_baseline": "greedy", "scst_samples": 0}, "scst_samples: must be at least 1"),
    ({"objective": "scst", "scst_max_length": 0}, "scst_max_length: must be at least 1"),
    ({"objective": "scst", "strategy": "full", "distributed": "fsdp"}, "distributed: must be ddp with objective scst"),
    ({"optimizer": "adamw"}, "optimizer: must be one of sgd, adam"),
    ({"lr_schedule": "noam"}, "warmup_steps: must be at least 1 for lr_schedule noam"),
    ({"lr_schedule": "linear"}, "lr_schedule: must be one of cosine, noam, constant"),
    ({"adam_beta2": 1.0}, "adam_beta2: must be in (0, 1)"),
])
def test_bad_settings_are_rejected_naming_the_field(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_config(None, override)


def test_new_settings_at_their_defaults_leave_a_config_as_it_was():
    values = resolve_config(None, {}).to_dict()
    for key in ("optimizer", "adam_beta2", "lr_schedule", "warmup_steps", "objective", "scst_samples",
                "scst_baseline", "scst_max_length", "init_from"):
        assert key not in values  # so the shipped runs' recipe hashes still match
    assert resolve_config(None, {"optimizer": "adam"}).to_dict()["optimizer"] == "adam"


def test_schedules_warm_up_then_decay():
    noam = resolve_config(None, {"lr_schedule": "noam", "warmup_steps": 100, "lr_max": 1e-3})
    assert scheduled_lr(0, 1000, noam) == pytest.approx(1e-5)
    assert scheduled_lr(99, 1000, noam) == pytest.approx(1e-3)  # the peak at step warmup
    assert scheduled_lr(399, 1000, noam) == pytest.approx(1e-3 * 0.5)  # inverse square root after it
    d, w = 512, 10_000  # Vaswani et al.'s form at the M2 recipe's peak
    m2 = resolve_config(None, {"lr_schedule": "noam", "warmup_steps": w, "lr_max": d ** -0.5 * w ** -0.5})
    assert scheduled_lr(2999, 10 ** 6, m2) == pytest.approx(d ** -0.5 * min(3000 ** -0.5, 3000 * w ** -1.5))
    cosine = resolve_config(None, {"lr_max": 0.02, "lr_min": 1e-5})
    assert [scheduled_lr(s, 50, cosine) for s in (0, 25, 50)] == [cosine_lr(s, 50, 0.02, 1e-5) for s in (0, 25, 50)]
    warm = resolve_config(None, {"lr_schedule": "constant", "warmup_steps": 4, "lr_max": 5e-6})
    assert [scheduled_lr(s, 50, warm) for s in (0, 3, 10)] == pytest.approx([1.25e-6, 5e-6, 5e-6])


# --- (d) the trainer: SCST on a tiny LLaVA, only trainable parameters move --------------------------------------
@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread beats several on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run_dir(tmp_path: Path, name: str, **values) -> Path:
    run_dir = tmp_path / name
    run_dir.mkdir()
    save_config(resolve_config(None, values), run_dir / "config.yaml")
    return run_dir


def test_scst_step_on_a_tiny_llava_changes_only_trainable_parameters(tmp_path, tiny_llava_dir, tiny_world, home):
    run_dir = _run_dir(tmp_path, "scst", model=str(tiny_llava_dir), strategy="lora", dataset="coco",
                       datasets_config=str(tiny_world), objective="scst", scst_samples=2, scst_max_length=6,
                       epoch_unit="image", epochs=1, batch_size=4, micro_batch_size=2, lr_max=0.05, lr_min=0.05,
                       optimizer="adam", max_train_images=4, max_val_images=2, device="cpu", seed=0)
    trainer = Trainer(run_dir, resume=False)
    seen = []
    cider_d = trainer.reward.scores

    def reward(captions, references):  # a random tiny LLaVA shares no n-gram with the references: CIDEr-D is 0
        seen.extend(captions)           # for every sample, so no advantage; its caption length stands in
        assert cider_d(captions, references).shape == (len(captions),)
        return torch.tensor([float(len(c)) for c in captions])

    trainer.reward.scores = reward
    before = {n: p.detach().clone() for n, p in trainer.loaded.model.named_parameters()}
    torch.manual_seed(0)
    metrics = trainer.train_step(trainer._epoch_plan(0)[0])
    assert len(seen) == 4 * 2 and len(set(seen)) > 1  # 4 images x 2 samples, not all alike
    assert all(math.isfinite(metrics[k]) for k in ("loss", "reward", "reward_baseline", "grad_norm"))
    assert metrics["grad_norm"] > 0
    after = dict(trainer.loaded.model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert changed and changed <= set(trainer.params), sorted(changed - set(trainer.params))[:3]
    assert math.isfinite(trainer.validation_loss()) and trainer.validation_loss() <= 0  # -CIDEr-D


def test_clip_captioner_scst_stage_starts_from_the_cross_entropy_run(tmp_path, tiny_world, monkeypatch):
    """XE with Adam + noam warm-up, then SCST init_from its run folder: two runs of the real trainer."""
    from captionlab.strategies.clip_captioner import WEIGHTS_FILE
    from safetensors.torch import load_file

    monkeypatch.setenv("CAPTIONLAB_HOME", str(tmp_path / "home"))
    clip = _tiny_clip(tmp_path, tiny_world)
    common = dict(model=str(clip), strategy="clip_captioner", dataset="coco", datasets_config=str(tiny_world),
                  epoch_unit="image", batch_size=8, micro_batch_size=8, max_val_images=4, device="cpu", seed=0,
                  optimizer="adam")
    xe = _run_dir(tmp_path, "xe", **common, epochs=2, lr_max=1e-3, lr_min=0.0, lr_schedule="noam", warmup_steps=3,
                  adam_beta2=0.98)
    assert train_run(xe) == 0
    rl = _run_dir(tmp_path, "rl", **common, epochs=1, lr_max=1e-5, lr_min=0.0, lr_schedule="constant",
                  objective="scst", scst_samples=3, scst_max_length=8, init_from=str(xe))
    trainer = Trainer(rl, resume=False)
    start = load_file(str(xe / "best" / "artifact" / WEIGHTS_FILE))
    assert all(torch.equal(p.detach(), start[n]) for n, p in trainer.params.items())
    del trainer
    assert train_run(rl) == 0
    rows = [r for r in __import__("captionlab.training.run_folder", fromlist=["RunFolder"]).RunFolder(rl).read_metrics()
            if "reward" in r]
    assert rows and all(math.isfinite(r["reward"]) for r in rows)
    with pytest.raises(ConfigError, match="init_from"):
        bad = _run_dir(tmp_path, "bad", **{**common, "model": str(clip)}, init_from=str(tmp_path / "nowhere"))
        Trainer(bad, resume=False)


def _tiny_clip(tmp_path: Path, world: Path) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from captionlab.data.datasets import load_records, resolve_dataset
    from captionlab.models.tokenizer import train_tokenizer

    records = load_records(resolve_dataset("coco", None, world), split="train")
    tokenizer = train_tokenizer([c for r in records for c in r.references], vocab_size=300)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    config = CLIPConfig(text_config=dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                         num_attention_heads=2, num_hidden_layers=1, max_position_embeddings=64, **ids),
                        vision_config=dict(hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                           num_hidden_layers=2, image_size=32, patch_size=16), projection_dim=16)
    folder = tmp_path / "clip"
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_adam_resumes_exactly_from_a_checkpoint(tmp_path, tiny_llava_dir, tiny_world, home):
    """Adam's moments and step count are checkpointed: stopped after step 2 and resumed, a run trains the same
    losses as one never stopped (a fresh Adam at the resume would change steps 4 and 5)."""
    from safetensors.torch import load_file

    from captionlab.training.run_folder import RunFolder

    settings = dict(model=str(tiny_llava_dir), strategy="lora", dataset="coco", datasets_config=str(tiny_world),
                    optimizer="adam", lr_schedule="noam", warmup_steps=2, lr_max=0.01, epochs=1, batch_size=4,
                    micro_batch_size=4, max_train_images=20, max_val_images=2, epoch_unit="image",
                    checkpoint_every_steps=100, device="cpu", seed=0)
    reference = _run_dir(tmp_path, "reference", **settings)
    assert train_run(reference) == 0
    losses = [r["loss"] for r in RunFolder(reference).read_metrics() if "loss" in r]
    assert len(losses) == 5

    stopped = _run_dir(tmp_path, "stopped", **settings)
    trainer = Trainer(stopped, resume=False)
    step = trainer.train_step

    def stop_after_two(groups):
        metrics = step(groups)
        trainer.stop.requested = trainer.state["step"] == 1  # the count before this step's increment
        return metrics

    trainer.train_step = stop_after_two
    assert trainer.fit() == "stopped"
    kinds = {name.split("::")[0] for name in load_file(str(stopped / "last" / "optimizer.safetensors"))}
    assert kinds == {"exp_avg", "exp_avg_sq", "step"}
    assert train_run(stopped, resume=True) == 0
    assert [r["loss"] for r in RunFolder(stopped).read_metrics() if "loss" in r] == pytest.approx(losses, rel=1e-6)
