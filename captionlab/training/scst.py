"""Self-critical sequence training (SCST; Rennie et al., CVPR 2017) with a CIDEr-D reward: `objective: scst`.

For each image of a step the policy (the model being trained) samples `scst_samples` captions; each is
rewarded by its CIDEr-D against the image's references, and its advantage is its reward minus a baseline:

  greedy  the reward of the model's own greedy caption (Rennie et al.: "self-critical");
  mean    the mean reward of the image's OTHER samples (leave-one-out, Luo 2020's "new self-critical"; the
          M2 Transformer code the CLIP-Captioner of Barraco et al. is trained with takes the mean of all k beams
          including the sample itself, which is this advantage times (k-1)/k).

The loss is REINFORCE with that baseline: -sum_i (r_i - b_i) * log p(w_i), log p(w_i) the summed token
log-probabilities of sample i (with its end token), over the step's samples (the trainer divides by their number).
Samples and the baseline are drawn in eval mode (no dropout, no gradient); the log-probabilities come from a
forward in train mode over the sampled captions as cross-entropy's own batch builder tokenises them, so a
strategy needs nothing new. CLIP-Captioner samples are ancestral samples of its decoder (`sample_captions` on
its training object); a LLaVA model samples with transformers' `generate(do_sample=True)`.

CIDEr-D is pycocoevalcap's (n-grams 1-4, tf-idf, clipped counts, Gaussian length penalty sigma 6, x10: its
`precook` builds the n-grams, `CiderD` below reproduces its `compute_cider` and a test checks the two agree),
with one difference that SCST needs: the document frequencies come from the TRAINING references, fixed for the
whole run, not from the few images of a batch (as the M2 code builds `Cider(train references)` once). Captions
are lower-cased and stripped of PTB's punctuation in Python; the Java PTB tokenizer of the evaluation would cost
a JVM per step.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from pycocoevalcap.cider.cider_scorer import precook

from captionlab.training.batching import IGNORE_INDEX

CIDER_N = 4
CIDER_SIGMA = 6.0
# PTBTokenizer's punctuation, as pycocoevalcap removes it after tokenising
_PUNCTUATION = re.compile(r"""''|'|``|`|-LRB-|-RRB-|-LCB-|-RCB-|[.?!,:\-;@#$%&*()_+=\[\]{}"/\\|~^<>]""")

Sampler = Callable[[list, int, int, bool], list[str]]
"""(images, samples per image, max tokens, greedy) -> captions, image-major (image 0's samples first)."""


def reward_words(text: str) -> str:
    """A caption as the reward sees it: lower-cased, punctuation dropped, single spaces."""
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


def _tfidf(counts: dict, document_frequency: dict, log_corpus: float) -> tuple[list[dict], list[float], int]:
    """pycocoevalcap's counts2vec: per n, the tf-idf vector and its norm; and the caption's length in words."""
    vectors = [defaultdict(float) for _ in range(CIDER_N)]
    norms = [0.0] * CIDER_N
    length = 0
    for ngram, frequency in counts.items():
        n = len(ngram) - 1
        weight = float(frequency) * (log_corpus - math.log(max(1.0, document_frequency.get(ngram, 0.0))))
        vectors[n][ngram] = weight
        norms[n] += weight * weight
        if n == 1:  # as pycocoevalcap: the "length" it penalises is the bigram count
            length += frequency
    return vectors, [math.sqrt(x) for x in norms], length


def _similarity(candidate, reference) -> float:
    """pycocoevalcap's sim: per n the clipped cosine times the length penalty, then their mean."""
    (vec, norm, length), (ref_vec, ref_norm, ref_length) = candidate, reference
    penalty = math.exp(-((length - ref_length) ** 2) / (2 * CIDER_SIGMA ** 2))
    total = 0.0
    for n in range(CIDER_N):
        value = sum(min(weight, ref_vec[n].get(ngram, 0.0)) * ref_vec[n].get(ngram, 0.0) for ngram, weight in vec[n].items())
        if norm[n] != 0 and ref_norm[n] != 0:
            value /= norm[n] * ref_norm[n]
        total += value * penalty
    return total / CIDER_N


class CiderD:
    """CIDEr-D of captions against their references, document frequencies from a fixed reference corpus."""

    def __init__(self, corpus: Iterable[Sequence[str]]):
        """`corpus`: each training image's references (the idf's documents are images, as in CIDEr)."""
        self.document_frequency: dict[tuple, float] = defaultdict(float)
        images = 0
        for references in corpus:
            images += 1
            for ngram in {g for r in references for g in precook(reward_words(r), CIDER_N)}:
                self.document_frequency[ngram] += 1
        if images == 0:
            raise ValueError("CIDEr-D needs a reference corpus of at least one image")
        self.log_corpus = math.log(float(images))
        self._reference_vectors: dict[tuple[str, ...], list] = {}

    def _references(self, references: Sequence[str]) -> list:
        key = tuple(references)
        if key not in self._reference_vectors:
            self._reference_vectors[key] = [self._vector(r) for r in references]
        return self._reference_vectors[key]

    def _vector(self, caption: str):
        return _tfidf(precook(reward_words(caption), CIDER_N), self.document_frequency, self.log_corpus)

    def score(self, caption: str, references: Sequence[str]) -> float:
        """One caption's CIDEr-D (pycocoevalcap's scale: x10, so ~0-10) against its image's references."""
        if not references:
            raise ValueError("CIDEr-D needs at least one reference per image")
        candidate = self._vector(caption)
        return 10.0 * sum(_similarity(candidate, ref) for ref in self._references(references)) / len(references)

    def scores(self, captions: Sequence[str], references: Sequence[Sequence[str]]) -> torch.Tensor:
        return torch.tensor([self.score(c, r) for c, r in zip(captions, references, strict=True)],
                            dtype=torch.float32)


def baseline_rewards(rewards: torch.Tensor, kind: str, greedy: torch.Tensor | None = None) -> torch.Tensor:
    """(images, k) baselines for (images, k) rewards: the other samples' mean, or each image's greedy reward."""
    if kind == "mean":
        k = rewards.shape[1]
        if k < 2:
            raise ValueError("the mean baseline needs at least 2 samples per image")
        return (rewards.sum(dim=1, keepdim=True) - rewards) / (k - 1)
    if kind == "greedy":
        if greedy is None:
            raise ValueError("the greedy baseline needs the greedy captions' rewards")
        return greedy.reshape(-1, 1).expand_as(rewards)
    raise ValueError(f"unknown SCST baseline {kind!r}: greedy or mean")


def sequence_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N,) summed log-probabilities of each row's labelled tokens (logits[:, t] predicts labels[:, t + 1])."""
    targets = labels[:, 1:]
    log_probs = F.log_softmax(logits[:, :-1].float(), dim=-1)
    mask = targets != IGNORE_INDEX
    picked = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(dim=1)


def scst_loss_sum(log_probs: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """REINFORCE with a baseline, summed over the samples: -sum_i (r_i - b_i) log p(w_i)."""
    return -(advantages.detach().to(log_probs.dtype) * log_probs).sum()


def rollout(sample: Sampler, reward: CiderD, images: list, references: list[Sequence[str]], samples: int,
            baseline: str, max_length: int) -> tuple[list[str], torch.Tensor, dict[str, float]]:
    """Sample, reward and baseline one micro-batch: (captions image-major, advantages, reward sums)."""
    captions = sample(images, samples, max_length, False)
    repeated = [refs for refs in references for _ in range(samples)]
    rewards = reward.scores(captions, repeated).view(len(images), samples)
    greedy = None
    if baseline == "greedy":
        greedy = reward.scores(sample(images, 1, max_length, True), references)
    baselines = baseline_rewards(rewards, baseline, greedy)
    stats = {"reward_sum": float(rewards.sum()), "baseline_sum": float(baselines.sum()),
             "samples": float(rewards.numel())}
    return captions, (rewards - baselines).reshape(-1), stats


def greedy_reward_sum(sample: Sampler, reward: CiderD, images: list, references: list[Sequence[str]],
                      max_length: int) -> float:
    """Summed CIDEr-D of the greedy captions of `images` (SCST's validation score)."""
    return float(reward.scores(sample(images, 1, max_length, True), references).sum())


def sample_llava(model: torch.nn.Module, loaded, prefix_slots: int, prompt: str, images: list, samples: int,
                 max_length: int, greedy: bool) -> list[str]:
    """Captions of a LLaVA-family model under its strategy, `samples` per image, by `generate` (no gradient)."""
    from captionlab.models.prompting import build_prompt

    processor = loaded.processor
    tokenizer = processor.tokenizer
    text = build_prompt(loaded.spec, prompt, prefix_slots, loaded.spec.family.prefix_placeholder(tokenizer))
    previous_side, tokenizer.padding_side = tokenizer.padding_side, "left"  # generation continues every row's end
    try:
        inputs = processor(images=[im.convert("RGB") for im in images], text=[text] * len(images),
                           return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = previous_side
    device = next(p for p in model.parameters()).device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(loaded.dtype)
    options = dict(do_sample=False) if greedy else dict(do_sample=True, top_k=0, top_p=1.0, temperature=1.0)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_length, num_return_sequences=1 if greedy else samples,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **options)
    new_tokens = out[:, inputs["input_ids"].shape[1]:]
    return [caption.strip() for caption in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
