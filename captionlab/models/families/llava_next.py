"""LLaVA-NeXT / LLaVA-1.6 (`llava_next`): LLaVA's parts, images tiled at any resolution, a learned newline."""

from __future__ import annotations

from captionlab.models.families.llava import LlavaFamily


class LlavaNextFamily(LlavaFamily):
    architecture = "llava_next"
    model_class_name = "LlavaNextForConditionalGeneration"
    config_class_name = "LlavaNextConfig"

    def full_fine_tuning_parameters(self, model) -> list:
        """LLaVA's, plus the learned embedding that ends every row of image tiles."""
        params = super().full_fine_tuning_parameters(model)
        newline = getattr(model.model, "image_newline", None)
        return params + ([newline] if newline is not None else [])

    def tiny_config(self, common: dict, image_size: int):
        s = image_size
        return self.config_class()(image_grid_pinpoints=[[s, 2 * s], [2 * s, s], [2 * s, 2 * s]],
                                   use_image_newline_parameter=True, **common)

    def tiny_processor(self, tokenizer, image_kwargs: dict, image_size: int, common: dict):
        import transformers

        s = image_size
        image_processor = transformers.LlavaNextImageProcessor(
            image_grid_pinpoints=[[s, 2 * s], [2 * s, s], [2 * s, 2 * s]], **image_kwargs)
        return transformers.LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, **common)
