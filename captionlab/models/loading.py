"""Building and loading models of a registered family (`families`): random weights from a registry config, or real
weights; each family names its config, model and processor classes.

Real weights come from a local folder or the Hugging Face cache, never the network. bf16 on a
GPU, fp32 on the CPU; optional 4-bit (bitsandbytes) for QLoRA where CUDA is present.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers

from captionlab.models.registry import ModelNotFoundError, ModelSpec, _cached_hf_folder

transformers.utils.logging.disable_progress_bar()


@dataclass
class LoadedModel:
    """A model ready to use: the (possibly adapter-wrapped) network, its processor and its spec."""

    spec: ModelSpec
    model: torch.nn.Module
    processor: Any  # LlavaProcessor / LlavaNextProcessor, or None for random-weight shapes
    device: torch.device
    dtype: torch.dtype

    @property
    def tokenizer(self):
        return None if self.processor is None else self.processor.tokenizer


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def build_config(spec: ModelSpec) -> transformers.PretrainedConfig:
    config_class = spec.family.config_class()
    values = {k: v for k, v in spec.config.items() if k not in ("model_type", "transformers_version", "architectures")}
    return config_class(**values)


def model_class(spec: ModelSpec) -> type:
    return spec.family.model_class()


def build_random_model(spec: ModelSpec, device: str | torch.device = "meta", seed: int = 0,
                       dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The architecture of `spec` with random weights; on the meta device it costs no memory."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = model_class(spec)(build_config(spec))
    return model.to(dtype) if str(device) != "meta" else model


def weights_folder(spec: ModelSpec) -> Path:
    """Where the weights of `spec` lie on this machine, or a clear error saying how to get them."""
    if spec.weights_dir is not None:
        if (Path(spec.weights_dir) / "config.json").exists():
            return Path(spec.weights_dir)
        raise ModelNotFoundError(
            f"weights for {spec.name!r} are expected in {spec.weights_dir} but it has no config.json"
            + (" (rebuild the embedded study with `python -m train zoo`)" if spec.name == "embedded" else "")
        )
    if spec.hf_id:
        cached = _cached_hf_folder(spec.hf_id)
        if cached is not None:
            return cached
        raise ModelNotFoundError(
            f"weights for {spec.name!r} ({spec.hf_id}) are not in the local Hugging Face cache; captionlab "
            f"never downloads at run time. On a machine with internet run `hf download {spec.hf_id}` "
            f"(or `huggingface-cli download {spec.hf_id}`), or give a local folder of the weights instead "
            f"(`--model DIR` for evaluate and the app, `model=DIR` for `python -m train run`)."
        )
    raise ModelNotFoundError(f"model {spec.name!r} has neither a weights folder nor a Hugging Face id")


def load_model(spec: ModelSpec, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
               load_in_4bit: bool = False) -> LoadedModel:
    """Load real weights and the processor of `spec` (see `weights_folder` for where from)."""
    folder = weights_folder(spec)
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    kwargs: dict[str, Any] = {"dtype": dtype, "use_safetensors": True}  # never a pickled .bin
    if load_in_4bit:
        if device.type != "cuda":
            raise RuntimeError("4-bit loading (QLoRA) needs a CUDA GPU with bitsandbytes; none is present")
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True,
        )
        kwargs["device_map"] = {"": device.index or 0}
    model = model_class(spec).from_pretrained(folder, **kwargs)
    if not load_in_4bit:
        model.to(device)
    model.eval()
    processor = spec.family.load_processor(folder)
    processor.tokenizer.padding_side = "left"  # generation pads on the left
    return LoadedModel(spec=spec, model=model, processor=processor, device=device, dtype=dtype)
