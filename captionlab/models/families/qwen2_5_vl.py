"""Qwen2.5-VL (`qwen2_5_vl`): a ViT with windowed attention at native resolution, a patch merger, a Qwen2.5 LLM.

Qwen2.5-VL-3B-Instruct and -7B-Instruct are transformers' `Qwen2_5_VLForConditionalGeneration`. Its parts: the
LLM is `model.model.language_model`, the vision tower `model.model.visual` (patch embedding, blocks) and the
projector the tower's own `merger` (2x2 patches -> one token, an MLP onto the LLM's width), so full fine-tuning
trains `visual.merger` and the LLM while the vision blocks stay frozen. Images are not resized to a fixed square
("dynamic resolution"): an image of h x w pixels becomes (h/28) x (w/28) tokens (within the processor's
min/max pixels), so rows of a batch differ in length. Positions are 3-D rotary (M-RoPE): an image token's
(temporal, height, width) position is its place in the image's grid, text tokens count on from the image's
largest extent. `prompt_position_ids` gives them from the model's own `get_rope_index`, so the prefix-shared
trainer and `GreedyDecoder` use the positions `generate()` and the per-caption forward compute.
"""

from __future__ import annotations

import copy
from typing import Any

from captionlab.models.families.base import ImageLayout, ModelFamily

QWEN_SYSTEM_PROMPT = "You are a helpful assistant."
# Qwen2.5-VL's chat template for one user turn with one image before the text (as its processor's template writes it).
QWEN_VL_TEMPLATE = ("<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n"
                    "<|vision_start|><|image_pad|><|vision_end|>{prompt}<|im_end|>\n<|im_start|>assistant\n")
IMAGE_WRAPPERS = ("<|vision_start|>", "<|vision_end|>")  # around an image's tokens: neither image nor prompt
# The special tokens a tiny model's tokenizer must know (the real one does).
SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", *IMAGE_WRAPPERS, "<|image_pad|>", "<|video_pad|>")
TINY_MERGE = 2  # 2 x 2 patches per LLM token, as the real models
# The image processor's pixel bounds in Qwen2.5-VL-{3B,7B}-Instruct's preprocessor_config.json (min_pixels 56 x 56,
# max_pixels 12,845,056 = 28 x 28 x 16,384; as public transcriptions of the 7B's file quote it, not read from the Hub
# here); images are resized into them (transformers' own default max is 28 x 28 x 1,280).
MIN_PIXELS, MAX_PIXELS = 56 * 56, 12_845_056


class Qwen25VLFamily(ModelFamily):
    architecture = "qwen2_5_vl"
    model_class_name = "Qwen2_5_VLForConditionalGeneration"
    config_class_name = "Qwen2_5_VLConfig"
    system_prompt = QWEN_SYSTEM_PROMPT
    prompt_template = QWEN_VL_TEMPLATE
    image_token = "<|image_pad|>"
    image_input_keys = ("pixel_values", "image_grid_thw")
    token_input_keys = ("mm_token_type_ids",)
    layer_suffixes = ("DecoderLayer", "VisionBlock")

    def vision_tower(self, model) -> Any | None:
        return getattr(getattr(model, "model", None), "visual", None)

    def projector(self, model) -> Any:
        return model.model.visual.merger

    def prefix_placeholder(self, tokenizer) -> str:
        """Qwen's tokenizer has no unknown token; the slot goes before the template, so it is each row's first
        `<|im_start|>` (its embedding is never used: prefix tuning overwrites the slot's state at every layer)."""
        return "<|im_start|>"

    def image_marker_ids(self, tokenizer) -> tuple[int, ...]:
        return tuple(tokenizer.convert_tokens_to_ids(token) for token in IMAGE_WRAPPERS)

    def image_layout(self, config: dict, height: int, width: int, min_pixels: int = MIN_PIXELS,
                     max_pixels: int = MAX_PIXELS) -> ImageLayout:
        """As Qwen2VLImageProcessor makes it: resized to multiples of patch x merge pixels (`smart_resize`), one image
        repeated to `temporal_patch_size` frames, flattened into one row per patch (pixel_values of a batch: the
        images' rows one after another), `image_grid_thw` = (1, rows, columns) of patches, merge**2 patches a token."""
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        vision = config["vision_config"]
        patch, merge = int(vision["patch_size"]), int(vision.get("spatial_merge_size", 2))
        temporal = int(vision.get("temporal_patch_size", 2))
        resized_h, resized_w = smart_resize(height, width, factor=patch * merge, min_pixels=min_pixels,
                                            max_pixels=max_pixels)
        rows, columns = resized_h // patch, resized_w // patch
        channels = int(vision.get("in_chans", vision.get("in_channels", 3)))
        return ImageLayout(tokens=rows * columns // merge ** 2,
                           pixel_shape=(rows * columns, channels * temporal * patch * patch),
                           values={"image_grid_thw": [1, rows, columns]}, rows_concatenated=True)

    def prompt_position_ids(self, model, inputs: dict):
        """The 3-D rotary positions (3, batch, length) the model computes for these prompts (padding: 0)."""
        from captionlab.models.prompting import unwrap

        inner = unwrap(getattr(model, "module", model))
        positions, _ = inner.model.get_rope_index(
            inputs["input_ids"], inputs["mm_token_type_ids"], image_grid_thw=inputs.get("image_grid_thw"),
            attention_mask=inputs.get("attention_mask"))
        return positions

    # --- tiny random models (as transformers' tests/models/qwen2_5_vl build them: small depth and widths) ---------
    def tiny_tokenizer(self, tokenizer):
        """A copy of `tokenizer` that knows Qwen's chat and vision tokens and names `<|image_pad|>` its image token."""
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
        tokenizer.image_token = "<|image_pad|>"
        return tokenizer

    def tiny_config(self, common: dict, image_size: int):
        text, vision = common["text_config"], common["vision_config"]
        head_dim = text["hidden_size"] // text["num_attention_heads"]
        quarter = head_dim // 2 // 4  # mrope_section: the rotary half of a head split over (t, h, w)
        rope = {"rope_type": "default", "rope_theta": 10000.0,
                "mrope_section": [head_dim // 2 - 2 * quarter, quarter, quarter]}
        text = dict(hidden_size=text["hidden_size"], intermediate_size=text["intermediate_size"],
                    num_hidden_layers=text["num_hidden_layers"], num_attention_heads=text["num_attention_heads"],
                    num_key_value_heads=max(1, text["num_attention_heads"] // 2), vocab_size=text["vocab_size"],
                    max_position_embeddings=text["max_position_embeddings"], bos_token_id=text["bos_token_id"],
                    eos_token_id=text["eos_token_id"], pad_token_id=text["pad_token_id"], rope_parameters=rope)
        patch = vision["patch_size"] // 2  # finer patches than LLaVA's tiny: several windows per tiny image
        vision = dict(depth=vision["num_hidden_layers"], hidden_size=vision["hidden_size"],
                      intermediate_size=2 * vision["hidden_size"], num_heads=vision["num_attention_heads"],
                      patch_size=patch, spatial_merge_size=TINY_MERGE, temporal_patch_size=2,
                      window_size=2 * TINY_MERGE * patch,  # 2 x 2 merged tokens per window
                      fullatt_block_indexes=[vision["num_hidden_layers"] - 1], out_hidden_size=text["hidden_size"],
                      tokens_per_second=2)
        # tiny_tokenizer appends SPECIAL_TOKENS, in order, at the end of the vocabulary
        ids = {token: text["vocab_size"] - len(SPECIAL_TOKENS) + i for i, token in enumerate(SPECIAL_TOKENS)}
        return self.config_class()(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                                   video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                                   vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)

    def tiny_processor(self, tokenizer, image_kwargs: dict, image_size: int, common: dict):
        import transformers

        patch = common["patch_size"] // 2
        factor = patch * TINY_MERGE
        sizes = dict(min_pixels=factor * factor, max_pixels=(2 * image_size) ** 2, patch_size=patch,
                     merge_size=TINY_MERGE, temporal_patch_size=2, image_mean=image_kwargs["image_mean"],
                     image_std=image_kwargs["image_std"])
        return transformers.Qwen2_5_VLProcessor(image_processor=transformers.Qwen2VLImageProcessor(**sizes),
                                                video_processor=transformers.Qwen2VLVideoProcessor(**sizes),
                                                tokenizer=tokenizer)
