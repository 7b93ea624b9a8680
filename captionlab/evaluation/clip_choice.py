"""Which CLIP scores captions: the one choice the evaluator and the Compare tab's scores share.

    encoder, why_not = paper_clip_encoder(device)          # open_clip ViT-B/32, OpenAI weights, as the paper
    encoder, why_not = folder_clip_encoder(folder, device)  # a CLIP folder: the embedded tiny one, or any HF CLIP
    encoder, why_not = clip_encoder_for(embedded, device)   # the evaluator's rule (below)

The embedded model's captions are scored with the embedded tiny CLIP (it knows the embedded
world), every other model's with ViT-B/32 when its weights are on this machine; a real model is
never scored with the tiny CLIP. Without an encoder the answer is (None, why), and CLIP-Score is
reported unavailable with that reason, never estimated. Importing this module is cheap.
"""

from __future__ import annotations

from pathlib import Path


def paper_clip_encoder(device: str | None = None):
    """(open_clip ViT-B/32 with OpenAI's weights, None), or (None, why not: no weights, no open_clip)."""
    from captionlab.evaluation import clipscore

    try:
        clipscore.openclip_weights_path()
    except clipscore.ClipWeightsNotFound as exc:
        return None, str(exc)
    try:
        import open_clip  # noqa: F401
    except ImportError as exc:
        return None, f"open_clip is not installed ({exc}); it is pinned in requirements.txt"
    return clipscore.OpenClipEncoder(device=device), None


def folder_clip_encoder(folder: Path, device: str | None = None):
    """(the CLIP in `folder`, None), or (None, why not): the embedded tiny CLIP is named as such."""
    from captionlab.evaluation import clipscore

    folder = Path(folder)
    embedded = folder == clipscore.embedded_clip_folder()
    if not (folder / "config.json").is_file():
        if embedded:
            return None, (f"the embedded tiny CLIP is not built ({folder} is missing): "
                          "run `python -m train zoo` to build the embedded study")
        return None, f"no CLIP in {folder} (config.json is missing)"
    try:
        if embedded:
            return clipscore.embedded_clip_encoder(folder, device=device or "cpu"), None
        return clipscore.HFClipEncoder(folder, device=device or "cpu"), None
    except Exception as exc:  # a broken folder: say so instead of failing the evaluation
        which = "embedded tiny CLIP" if embedded else "CLIP"
        return None, f"the {which} in {folder} cannot be loaded: {type(exc).__name__}: {exc}"


def clip_encoder_for(embedded: bool, device: str | None = None):
    """The evaluator's choice: the embedded tiny CLIP for the embedded model, ViT-B/32 for every other."""
    from captionlab.evaluation import clipscore

    if embedded:
        return folder_clip_encoder(clipscore.embedded_clip_folder(), device)
    return paper_clip_encoder(device)
