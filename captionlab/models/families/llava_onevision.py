"""LLaVA-OneVision (`llava_onevision`): SigLIP so400m/14 at 384 px, LLaVA's two-layer projector, a Qwen2 LLM.

Its parts sit where LLaVA-NeXT's do (`model.model.language_model`, `.vision_tower`, `.multi_modal_projector`
and the learned `image_newline`), so only its classes, its Qwen2 chat template (the one its checkpoints were
trained with: `<|im_start|>system ... <|im_end|>`) and its tiny model differ. Images are tiled at any
resolution (`anyres_max_9`); every image feature token of every tile goes to the LLM ("full" selection).
"""

from __future__ import annotations

import copy
import math

from captionlab.models.families.base import ImageLayout
from captionlab.models.families.llava_next import LlavaNextFamily

QWEN2_SYSTEM_PROMPT = "You are a helpful assistant."
QWEN2_TEMPLATE = ("<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n<image>\n{prompt}<|im_end|>\n"
                  "<|im_start|>assistant\n")


class LlavaOnevisionFamily(LlavaNextFamily):
    architecture = "llava_onevision"
    model_class_name = "LlavaOnevisionForConditionalGeneration"
    config_class_name = "LlavaOnevisionConfig"
    system_prompt = QWEN2_SYSTEM_PROMPT
    prompt_template = QWEN2_TEMPLATE
    image_input_keys = ("pixel_values", "image_sizes", "batch_num_images")

    def image_layout(self, config: dict, height: int, width: int) -> ImageLayout:
        """LlavaOnevisionProcessor's count: LLaVA-NeXT's tiling, every patch of the base tile (SigLIP: no CLS), and the
        tiles' features scaled down to at most `anyres_max_N` tiles' worth (rows and columns divided alike)."""
        tiles_h, tiles_w, rows, columns, patches = self._anyres_grid(config, height, width)
        unpadded, newlines = rows * columns, rows
        max_tiles = int(config.get("vision_aspect_ratio", "anyres_max_9").removeprefix("anyres_max_"))
        ratio = math.sqrt(rows * columns / (max_tiles * patches ** 2))
        if ratio > 1.1:
            unpadded, newlines = int(rows // ratio) * int(columns // ratio), int(rows // ratio)
        return self._tiled(config, unpadded + newlines + patches * patches, tiles_h * tiles_w, height, width)

    def prefix_placeholder(self, tokenizer) -> str:
        """Qwen2's tokenizer has no unknown token and pads with `<|endoftext|>`; the slot goes before the template,
        so it is the first `<|im_start|>` of each row (its embedding is never used: the slot's state is overwritten)."""
        return "<|im_start|>"

    def tiny_tokenizer(self, tokenizer):
        """A copy of `tokenizer` that knows Qwen2's chat tokens and the processor's `<video>` (the real one does)."""
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<video>"]})
        return tokenizer

    def tiny_config(self, common: dict, image_size: int):
        s = image_size
        vision = {k: v for k, v in common["vision_config"].items() if k not in ("model_type", "projection_dim")}
        vision.update(model_type="siglip_vision_model", hidden_act="gelu_pytorch_tanh")
        text = {**common["text_config"], "model_type": "qwen2"}
        settings = {k: v for k, v in common.items() if k not in ("vision_config", "text_config")}
        settings.update(vision_feature_layer=-1, vision_feature_select_strategy="full")
        return self.config_class()(vision_config=vision, text_config=text, vision_aspect_ratio="anyres_max_9",
                                   image_grid_pinpoints=[[s, s], [s, 2 * s], [2 * s, s]], **settings)

    def tiny_processor(self, tokenizer, image_kwargs: dict, image_size: int, common: dict):
        import transformers

        s = image_size
        image_processor = transformers.LlavaOnevisionImageProcessor(
            size={"height": s, "width": s}, image_grid_pinpoints=[[s, s], [s, 2 * s], [2 * s, s]],
            image_mean=image_kwargs["image_mean"], image_std=image_kwargs["image_std"])
        video_processor = transformers.LlavaOnevisionVideoProcessor(  # required by the processor; captions use none
            size={"height": s, "width": s}, image_mean=image_kwargs["image_mean"], image_std=image_kwargs["image_std"])
        return transformers.LlavaOnevisionProcessor(
            image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
            num_image_tokens=(s // common["patch_size"]) ** 2, vision_feature_select_strategy="full",
            vision_aspect_ratio="anyres_max_9")
