"""`ModelFamily`: the questions every model family answers (see the package docstring).

The defaults describe the transformers layout LLaVA-style models share (`model.model.language_model`,
`.vision_tower`, `.multi_modal_projector`, `lm_head`); a family whose layout differs overrides them.
Methods take the unwrapped transformers model (`captionlab.models.prompting.unwrap`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

VICUNA_SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
VICUNA_TEMPLATE = "{system} USER: <image>\n{prompt} ASSISTANT:"
LLM_LINEAR_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ImageLayout:
    """One image as the family's processor hands it to the model, known from the config alone (no processor, no
    pixels): what the bench builds its processor-free inputs from (`bench/common.py`)."""

    tokens: int  # the image tokens the processor writes into the prompt for it
    pixel_shape: tuple[int, ...]  # its pixel_values: (3, S, S), (tiles, 3, S, S), Qwen2.5-VL's (patches, values)
    # its other image inputs, one value per image (image_sizes: [height, width], image_grid_thw: [t, h, w])
    values: dict[str, list] = field(default_factory=dict)
    # its all-true masks, by shape per image (Idefics3's pixel_attention_mask: no padding in a square image)
    masks: dict[str, tuple[int, ...]] = field(default_factory=dict)
    rows_concatenated: bool = False  # a batch's pixel_values: the images' rows one after another, not stacked
    tiles: int = 1  # the vision tower's passes over it (LLaVA-NeXT / OneVision: the base image + the pinpoint's tiles)


class FamilyNotFound(ValueError):
    """A model whose architecture no registered family describes; the message names the known ones."""


class ModelFamily:
    """One family of VLMs. Subclasses set the class names; override a method where the layout differs."""

    architecture: ClassVar[str]  # the registry's "architecture" and config.json's "model_type"
    model_class_name: ClassVar[str]  # in transformers
    config_class_name: ClassVar[str]
    system_prompt: ClassVar[str] = VICUNA_SYSTEM_PROMPT
    prompt_template: ClassVar[str] = VICUNA_TEMPLATE  # "{system}", "{prompt}" and the image placeholder
    # The processor's image inputs the model takes beside input_ids, one entry per image (LLaVA-NeXT: + image_sizes).
    image_input_keys: ClassVar[tuple[str, ...]] = ("pixel_values", "image_sizes")
    # The processor's per-token inputs beside input_ids and attention_mask (Qwen2.5-VL: mm_token_type_ids, which its
    # 3-D rotary positions are computed from); a packed batch carries them for its prefix.
    token_input_keys: ClassVar[tuple[str, ...]] = ()
    # The token the prompt template writes where the image goes (the processor repeats it once per image feature).
    image_token: ClassVar[str] = "<image>"
    # The LLM's linear layers LoRA adapts (the paper: every fully connected layer of the LLM), and only the LLM's:
    # the vision tower has q/k/v projections too, which stay frozen.
    lora_target_modules: ClassVar[str] = r".*language_model.*\.(" + "|".join(LLM_LINEAR_LAYERS) + r")$"
    # The repeated blocks FSDP makes one unit each, by class-name suffix (LlamaDecoderLayer, CLIPEncoderLayer, ...).
    layer_suffixes: ClassVar[tuple[str, ...]] = ("DecoderLayer", "EncoderLayer")

    # --- classes -------------------------------------------------------------------------------
    def model_class(self) -> type:
        import transformers

        return getattr(transformers, self.model_class_name)

    def config_class(self) -> type:
        import transformers

        return getattr(transformers, self.config_class_name)

    def load_processor(self, folder: Path):
        import transformers

        return transformers.AutoProcessor.from_pretrained(folder)

    # --- where the parts are -------------------------------------------------------------------
    def language_model(self, model) -> Any:
        """The LLM decoder (its `.layers` are the decoder layers)."""
        return model.model.language_model

    def vision_tower(self, model) -> Any | None:
        return getattr(getattr(model, "model", None), "vision_tower", None)

    def projector(self, model) -> Any:
        return model.model.multi_modal_projector

    def prefix_placeholder(self, tokenizer) -> str:
        """The token prefix tuning's slots are written as: one token found nowhere else in the prompt or padding."""
        return tokenizer.unk_token

    def image_token_id(self, config) -> int:
        """The id of the token the image's features replace (LLaVA's config calls it `image_token_index`)."""
        found = getattr(config, "image_token_index", None)
        return int(found if found is not None else config.image_token_id)

    def image_marker_ids(self, tokenizer) -> tuple[int, ...]:
        """Ids of the tokens the processor puts around an image's tokens: neither image nor prompt (none here)."""
        return ()

    def prompt_position_ids(self, model, inputs: dict):
        """Position ids of a batch of prompts (`inputs`: input_ids, attention_mask and the processor's other outputs)
        where they are not the count of attended tokens before each (Qwen2.5-VL's 3-D rotary positions, shape
        (3, batch, length)); None: they are that count, as for LLaVA."""
        return None

    def image_layout(self, config: dict, height: int, width: int) -> ImageLayout:
        """One height x width image's tokens and input shapes, as the family's processor makes them, from the model's
        config alone (LLaVA: resized and cropped to the vision tower's square; its patches, +1 with the CLS feature
        under the "full" selection)."""
        vision = config["vision_config"]
        size, patch = int(vision["image_size"]), int(vision["patch_size"])
        tokens = (size // patch) ** 2 + (1 if config.get("vision_feature_select_strategy", "default") == "full" else 0)
        return ImageLayout(tokens=tokens, pixel_shape=(3, size, size))

    def full_fine_tuning_parameters(self, model) -> list:
        """What full fine-tuning trains: the projector and the whole LLM with its head; the vision tower stays."""
        modules = (self.projector(model), self.language_model(model), model.lm_head)
        return [p for module in modules for p in module.parameters()]

    # --- tiny random models (tests, benchmarks, the embedded model) ---------------------------------
    def tiny_tokenizer(self, tokenizer):
        """The tokenizer a tiny model of this family uses: `tokenizer`, plus any special tokens its processor needs."""
        return tokenizer

    def tiny_config(self, common: dict, image_size: int):
        """The family's config from the shared tiny settings (`captionlab.models.tiny.tiny_config`)."""
        return self.config_class()(**common)

    def tiny_processor(self, tokenizer, image_kwargs: dict, image_size: int, common: dict):
        import transformers

        image_processor = transformers.CLIPImageProcessor(**image_kwargs)
        return transformers.LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, **common)
