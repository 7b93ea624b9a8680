"""Per-image scores of the Compare tab's captions, computed by captionlab.evaluation.

- CLIP-Score needs no references, so every caption gets one, from the CLIP the settings point
  to (`<checkpoints>/clip/`, e.g. the embedded tiny CLIP) or else the paper's ViT-B/32 when its
  weights are here (never downloaded); the encoder's name is reported beside the numbers.
- CIDEr-D weighs n-grams by their document frequency over a corpus of references; over a single
  image every weight is log(1/1) = 0. So each caption is scored against its image's references
  with the document frequencies of a corpus (the gallery's references): one
  `metrics.score_captions` call per strategy, the other corpus images given empty predictions
  (they change nothing in the caption's score). Scores are on the paper's scale (x100).
"""

from __future__ import annotations

import threading
from pathlib import Path

from captionlab.service.settings import AppSettings

_encoders: dict[str, object] = {}
_encoder_lock = threading.Lock()


def clip_encoder(settings: AppSettings):
    """(encoder, None) or (None, why there is none).

    `<checkpoints>/clip/` when there is one (the embedded tiny CLIP ships there), else the paper's
    ViT-B/32 when its weights are here. A real model's captions are never scored with the tiny
    CLIP, which only knows the embedded world.
    """
    from captionlab.evaluation.clip_choice import folder_clip_encoder, paper_clip_encoder

    folder = Path(settings.checkpoints) / "clip" if settings.checkpoints else None
    key = str(folder) if folder and (folder / "config.json").is_file() else "vit-b-32"
    with _encoder_lock:
        if key not in _encoders:
            if key == "vit-b-32":
                encoder, problem = paper_clip_encoder(settings.device)
            else:  # the tiny CLIP scores on the CPU, whatever device captions
                encoder, problem = folder_clip_encoder(folder)
            if encoder is None:
                return None, f"CLIP-Score unavailable: {problem}"
            _encoders[key] = encoder
        return _encoders[key], None


def clip_scores(settings: AppSettings, images: list, captions: dict[str, list[str]]) -> tuple[dict, list[str]]:
    """key -> CLIP-S per image (or None for all when no CLIP is available), and notes."""
    from captionlab.evaluation.clipscore import clip_score

    encoder, problem = clip_encoder(settings)
    if encoder is None:
        return {}, [problem]
    pairs = [(key, i) for key, texts in captions.items() for i in range(len(texts))]
    report = clip_score(encoder, [images[i] for _, i in pairs], [captions[k][i] for k, i in pairs])
    out: dict[str, list] = {key: [None] * len(texts) for key, texts in captions.items()}
    for row, (key, i) in enumerate(pairs):
        out[key][i] = report.per_image[row]
    return out, [f"CLIP-S: 2.5 x max(cos, 0) with {report.encoder_name} (reference-free; the paper uses ViT-B/32)"]


def cider_scores(captions: dict[str, list[str]], references: list[list[str] | None],
                 corpus: dict[str, list[str]] | None) -> tuple[dict, list[str]]:
    """key -> CIDEr-D (x100) per image (None where the image has no references), and notes."""
    from captionlab.evaluation.metrics import score_captions

    targets = [i for i, refs in enumerate(references) if refs]
    if not targets:
        return {}, []
    target_refs = [list(references[i]) for i in targets]  # the targets' own entries leave the corpus
    base = {f"corpus:{k}": list(v) for k, v in (corpus or {}).items() if list(v) not in target_refs}
    out: dict[str, list] = {}
    for key, texts in captions.items():
        predictions = {k: "" for k in base}
        refs = dict(base)
        for i in targets:
            predictions[f"target:{i}"] = texts[i]
            refs[f"target:{i}"] = list(references[i])
        report = score_captions(predictions, refs, metrics=["CIDEr"])
        per_image = report.per_image_paper_scale().get("CIDEr", {})
        out[key] = [per_image.get(f"target:{i}") if i in targets else None for i in range(len(texts))]
    n_docs = len(base) + len(targets)
    return out, [f"CIDEr-D (x100) with document frequencies over the references of {n_docs} images"
                 + (" (the gallery)" if corpus else "")]


def score_captions_per_image(settings: AppSettings, images: list, captions: dict[str, list[str]],
                             references: list[list[str] | None], corpus: dict[str, list[str]] | None
                             ) -> tuple[dict[str, dict[str, list]], list[str]]:
    """{"CIDEr": key -> per image, "CLIP-S": key -> per image}, notes. A failing metric becomes a note."""
    scores: dict[str, dict] = {}
    notes: list[str] = []
    for metric, compute in (("CLIP-S", lambda: clip_scores(settings, images, captions)),
                            ("CIDEr", lambda: cider_scores(captions, references, corpus))):
        try:
            scores[metric], more = compute()
            notes.extend(more)
        except Exception as exc:  # e.g. no Java for the PTB tokenizer: say so, keep the captions
            notes.append(f"{metric} unavailable: {type(exc).__name__}: {exc}")
    return scores, notes
