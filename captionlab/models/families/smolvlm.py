"""SmolVLM (`idefics3`): a SigLIP vision tower, a pixel-shuffle connector and a SmolLM2 (LLaMA) decoder.

SmolVLM-256M-Instruct and SmolVLM-Instruct (2.2B) are transformers' Idefics3 classes. Their parts live
elsewhere than LLaVA's: the LLM is `model.model.text_model`, the vision tower `model.model.vision_model`
and the projector `model.model.connector` (pixel shuffle by `scale_factor`, then one linear layer), so
`scale_factor**2` times fewer image tokens than patches. The processor wraps each image's tokens as
`<fake_token_around_image><global-img><image>...<fake_token_around_image>`; captionlab feeds one image per
prompt without splitting it into tiles (the global image only), as a caption needs the whole scene.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from captionlab.models.families.base import LLM_LINEAR_LAYERS, ImageLayout, ModelFamily

# SmolVLM's chat format (its chat template, one user turn with one image); it ships no default system prompt,
# so the prompt-learning tokens are the template's own and the user prompt's.
SMOLVLM_TEMPLATE = "<|im_start|>{system}User:<image>{prompt}<end_of_utterance>\nAssistant:"
# The tokens the processor wraps each image's tokens in: neither image nor prompt.
IMAGE_WRAPPERS = ("<fake_token_around_image>", "<global-img>")
# The special tokens of SmolVLM's processor and template: a tiny model's tokenizer must know them (the real one does).
SPECIAL_TOKENS = (*IMAGE_WRAPPERS, "<image>", "<end_of_utterance>")
TINY_SCALE_FACTOR = 2


class SmolVLMFamily(ModelFamily):
    architecture = "idefics3"
    model_class_name = "Idefics3ForConditionalGeneration"
    config_class_name = "Idefics3Config"
    system_prompt = ""
    prompt_template = SMOLVLM_TEMPLATE
    image_input_keys = ("pixel_values", "pixel_attention_mask")
    lora_target_modules = r".*text_model.*\.(" + "|".join(LLM_LINEAR_LAYERS) + r")$"

    def load_processor(self, folder: Path):
        import transformers

        processor = transformers.AutoProcessor.from_pretrained(folder)
        processor.image_processor.do_image_splitting = False  # one global image per caption, as documented above
        return processor

    def language_model(self, model) -> Any:
        return model.model.text_model

    def vision_tower(self, model) -> Any | None:
        return getattr(getattr(model, "model", None), "vision_model", None)

    def projector(self, model) -> Any:
        return model.model.connector

    def image_marker_ids(self, tokenizer) -> tuple[int, ...]:
        return tuple(tokenizer.convert_tokens_to_ids(token) for token in IMAGE_WRAPPERS)

    def image_layout(self, config: dict, height: int, width: int) -> ImageLayout:
        """Unsplit (`load_processor`), Idefics3ImageProcessor squares any image to the tower's side (one image per
        row, nothing padded: an all-true `pixel_attention_mask`); the connector's pixel shuffle leaves
        patches / scale_factor**2 tokens (the processor's `image_seq_len`)."""
        vision = config["vision_config"]
        size, patch = int(vision["image_size"]), int(vision["patch_size"])
        tokens = (size // patch) ** 2 // int(config.get("scale_factor", 2)) ** 2
        return ImageLayout(tokens=tokens, pixel_shape=(1, 3, size, size), masks={"pixel_attention_mask": (1, size, size)})

    # --- tiny random models ---------------------------------------------------------------------
    def tiny_tokenizer(self, tokenizer):
        """A copy of `tokenizer` that knows SmolVLM's image markers (the shared one stays as it is)."""
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
        return tokenizer

    def tiny_config(self, common: dict, image_size: int):
        vision = common["vision_config"]
        vision = dict(hidden_size=vision["hidden_size"], intermediate_size=vision["intermediate_size"],
                      num_hidden_layers=vision["num_hidden_layers"], num_attention_heads=vision["num_attention_heads"],
                      image_size=image_size, patch_size=vision["patch_size"])
        return self.config_class()(vision_config=vision, text_config=common["text_config"],
                                   scale_factor=TINY_SCALE_FACTOR, image_token_id=common["image_token_index"],
                                   pad_token_id=common["pad_token_id"], tie_word_embeddings=False)

    def tiny_processor(self, tokenizer, image_kwargs: dict, image_size: int, common: dict):
        import transformers

        s = image_size
        image_processor = transformers.Idefics3ImageProcessor(
            do_image_splitting=False, size={"longest_edge": s}, max_image_size={"longest_edge": s},
            image_mean=image_kwargs["image_mean"], image_std=image_kwargs["image_std"])
        patches = (s // common["patch_size"]) ** 2
        return transformers.Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                              image_seq_len=patches // TINY_SCALE_FACTOR ** 2)
