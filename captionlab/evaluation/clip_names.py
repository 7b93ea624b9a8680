"""The names CLIP-Score results record for their CLIP (`ResultRow.clip_encoder`), importable without torch."""

EMBEDDED_CLIP_NAME = "embedded-tiny-clip"  # the embedded world's 48-pixel CLIP (checkpoints/embedded/clip)
PAPER_CLIP_NAME = "open_clip:ViT-B-32/openai"  # the encoder of the paper's (and Hessel et al.'s) CLIP-S


def describe_clip(name: str) -> str:
    """A CLIP's recorded name as a table note names it: the embedded one with what it is."""
    return f"{name} (the embedded world's 48-pixel CLIP)" if name == EMBEDDED_CLIP_NAME else name
