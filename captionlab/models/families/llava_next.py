"""LLaVA-NeXT / LLaVA-1.6 (`llava_next`): LLaVA's parts, images tiled at any resolution, a learned newline."""

from __future__ import annotations

from captionlab.models.families.base import ImageLayout
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

    def image_layout(self, config: dict, height: int, width: int) -> ImageLayout:
        """Tiled at the best pinpoint (LlavaNextProcessor's count): the base tile's features, the tiles' features
        less the rows and columns of padding, one newline per row."""
        tiles_h, tiles_w, rows, columns, patches = self._anyres_grid(config, height, width)
        tokens = rows * columns + rows + patches * patches + 1  # unpadded + newlines + base (+CLS)
        if config.get("vision_feature_select_strategy", "default") == "default":
            tokens -= 1
        return self._tiled(config, tokens, tiles_h * tiles_w, height, width)

    @staticmethod
    def _anyres_grid(config: dict, height: int, width: int) -> tuple[int, int, int, int, int]:
        """(tile rows, tile columns, feature rows, feature columns less padding, patches per tile side)."""
        from transformers.image_processing_utils import select_best_resolution

        vision = config["vision_config"]
        size, patch = int(vision["image_size"]), int(vision["patch_size"])
        best_h, best_w = select_best_resolution([height, width], config["image_grid_pinpoints"])
        tiles_h, tiles_w = best_h // size, best_w // size
        patches = size // patch
        rows, columns = patches * tiles_h, patches * tiles_w
        if width / height > columns / rows:
            new_rows = int(round(height * (columns / width), 7))
            rows -= ((rows - new_rows) // 2) * 2
        else:
            new_columns = int(round(width * (rows / height), 7))
            columns -= ((columns - new_columns) // 2) * 2
        return tiles_h, tiles_w, rows, columns, patches

    @staticmethod
    def _tiled(config: dict, tokens: int, tiles: int, height: int, width: int) -> ImageLayout:
        size = int(config["vision_config"]["image_size"])
        return ImageLayout(tokens=tokens, pixel_shape=(1 + tiles, 3, size, size), values={"image_sizes": [height, width]},
                           tiles=1 + tiles)

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
