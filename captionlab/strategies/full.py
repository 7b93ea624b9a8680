"""Full fine-tuning (paper Sec. 4.3): the multimodal projector and every layer of the LLM are trained.

The vision tower stays frozen. The artifact is a complete Hugging Face model folder (safetensors),
loadable by plain transformers; for side-by-side use it is a separate model, since its weights
differ everywhere.
"""

from __future__ import annotations

from pathlib import Path

from captionlab.models.prompting import unwrap
from captionlab.strategies.base import Strategy, StrategyError, freeze


class FullFineTuning(Strategy):
    name = "full"
    label = "Full fine-tuning"
    own_weights = True
    supports_fsdp = True

    def apply(self, model, spec, tokenizer=None):
        from captionlab.models.families import family_of

        base = unwrap(model)
        freeze(base)
        for p in family_of(base).full_fine_tuning_parameters(base):  # projector and LLM (LLaVA-NeXT: + newline)
            p.requires_grad_(True)
        return model

    def save(self, model, directory, state_dict=None):
        """`state_dict`: the whole model's tensors when the model itself is sharded (FSDP), gathered by the trainer."""
        directory = Path(directory)
        self.write_card(directory)
        unwrap(model).save_pretrained(directory, state_dict=state_dict, safe_serialization=True)

    def load(self, model, spec, directory, tokenizer=None):
        self.check_card(directory)
        from captionlab.models.loading import model_class

        if not (Path(directory) / "config.json").exists():
            raise StrategyError(f"{directory}: no config.json in the full fine-tuning artifact")
        base = unwrap(model)
        loaded = model_class(spec).from_pretrained(directory, dtype=next(base.parameters()).dtype,
                                                     use_safetensors=True)
        return loaded.to(next(base.parameters()).device).eval()
