"""Zero-shot: the original model with the fixed prompt "Briefly caption the image"; nothing trains."""

from __future__ import annotations

from captionlab.strategies.base import Strategy, freeze


class ZeroShot(Strategy):
    name = "zero_shot"
    label = "Zero-shot"
    trains = False

    def apply(self, model, spec, tokenizer=None):
        freeze(model)
        return model

    def save(self, model, directory):
        self.write_card(directory)

    def load(self, model, spec, directory, tokenizer=None):
        return self.apply(model, spec, tokenizer)
