"""Strategies whose parameters live in one controller module with hooks (prompt learning, prefix tuning).

The controller is registered on the LLaVA model under `controller_name` and holds one learned tensor
(`tensor_name`); switching, saving (one safetensors file) and loading are the same for all of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from safetensors.torch import load_file, save_file

from captionlab.models.prompting import unwrap
from captionlab.strategies.base import Strategy, StrategyError


class ControllerStrategy(Strategy):
    controller_name: ClassVar[str]
    tensor_name: ClassVar[str]

    def controller(self, model: torch.nn.Module) -> torch.nn.Module:
        return getattr(unwrap(model), self.controller_name)

    def learned(self, model: torch.nn.Module) -> torch.nn.Parameter:
        return getattr(self.controller(model), self.tensor_name)

    def set_enabled(self, model, enabled):
        self.controller(model).enabled = enabled

    def save(self, model, directory):
        tensor = self.learned(model)
        self.write_card(Path(directory), shape=list(tensor.shape))
        save_file({self.tensor_name: tensor.detach().float().cpu().contiguous()},
                  str(Path(directory) / f"{self.tensor_name}.safetensors"))

    def load(self, model, spec, directory, tokenizer=None):
        self.check_card(directory)
        weights = load_file(str(Path(directory) / f"{self.tensor_name}.safetensors"))[self.tensor_name]
        model = self.apply(model, spec, tokenizer)
        target = self.learned(model)
        if weights.shape != target.shape:
            raise StrategyError(f"{directory}: {self.tensor_name} shape {tuple(weights.shape)} != "
                                f"the model's {tuple(target.shape)}")
        with torch.no_grad():
            target.copy_(weights)
        return model
