"""FSDP2 (torch's `fully_shard`) for the trainer: `distributed: fsdp` in a recipe.

Every decoder layer of the LLM and every encoder layer of the vision tower is its own FSDP unit (its
parameters sharded across the processes, gathered for its forward and backward only), plus the
embeddings, the head and the root; on CUDA the units compute in bf16 from fp32 master weights and
reduce gradients in fp32. Wrapping is accelerate's (`FullyShardedDataParallelPlugin`, fsdp_version 2):

- on GPUs, `Accelerator(fsdp_plugin=...)` and `accelerator.prepare(model, optimizer)` shard the model
  and switch the optimizer over to the sharded parameters, as FSDP2 requires;
- on CPUs (gloo), accelerate keeps FSDP off: `AcceleratorState` switches to `DistributedType.FSDP`
  only for GPU-like multi-process types, not `MULTI_CPU` or a single un-launched process, and then
  silently prepares DDP instead. There the trainer calls accelerate's own `fsdp2_prepare_model` with
  the same plugin (same units, same `fully_shard` calls) on a CPU device mesh, and builds the
  optimizer from the sharded parameters afterwards. This is what the CPU tests run.

Checkpoints stay in the one format: the full (gathered) tensors, written by rank 0 (see trainer.py).
"""

from __future__ import annotations

import types

import torch

LAYER_SUFFIXES = ("DecoderLayer", "EncoderLayer")  # LlamaDecoderLayer, CLIPEncoderLayer, SiglipEncoderLayer...


def fsdp_unavailable_reason() -> str | None:
    """Why FSDP2 cannot run with this torch (None when it can)."""
    if not torch.distributed.is_available():
        return "this torch is built without torch.distributed"
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401  (torch >= 2.6 exports it here)
    except ImportError:
        return f"torch {torch.__version__} has no torch.distributed.fsdp.fully_shard (FSDP2 needs torch >= 2.6)"
    return None


def launched_distributed() -> bool:
    """Whether this process was started by a distributed launcher (torchrun / accelerate launch's)."""
    import os

    return int(os.environ.get("LOCAL_RANK", -1)) != -1 or int(os.environ.get("WORLD_SIZE", 1)) > 1


def make_plugin(cuda: bool):
    """The FSDP2 plugin: transformer-layer auto-wrap (classes set by `set_layer_classes`), full state dicts,
    bf16 compute with fp32 gradient reduction on CUDA, fp32 throughout on the CPU."""
    from accelerate import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import MixedPrecisionPolicy

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if cuda else None
    return FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy="transformer_based_wrap", reshard_after_forward=True,
        state_dict_type="FULL_STATE_DICT", mixed_precision_policy=policy, cpu_offload=False,
        cpu_ram_efficient_loading=False, activation_checkpointing=False)


def layer_class_names(model: torch.nn.Module) -> list[str]:
    """The class names of the model's repeated blocks: the LLM's decoder layers and the vision encoder's layers."""
    from captionlab.models.families import FamilyNotFound, family_of

    try:
        suffixes = family_of(model).layer_suffixes
    except (FamilyNotFound, AttributeError):  # a model of no registered family: the usual block names
        suffixes = LAYER_SUFFIXES
    return sorted({type(m).__name__ for m in model.modules() if type(m).__name__.endswith(suffixes)})


def set_layer_classes(plugin, model: torch.nn.Module) -> list[str]:
    names = layer_class_names(model)
    if not names:
        raise ValueError(f"distributed: fsdp found no decoder/encoder layers to shard in {type(model).__name__}")
    plugin.transformer_cls_names_to_wrap = names
    return names


def shard_on_cpu(accelerator, plugin, model: torch.nn.Module) -> torch.nn.Module:
    """accelerate's FSDP2 wrapping (`fsdp2_prepare_model`) where accelerate itself will not run it (gloo).

    It reads only the plugin, the device mesh and a few accelerator attributes, given here through a
    stand-in so that accelerate's shared state (which says MULTI_CPU) is left as it is.
    """
    from accelerate.utils import fsdp2_prepare_model
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (accelerator.num_processes,), mesh_dim_names=("dp_shard",))
    stand_in = types.SimpleNamespace(
        state=types.SimpleNamespace(fsdp_plugin=plugin), torch_device_mesh=mesh,
        parallelism_config=types.SimpleNamespace(fsdp_dim_names=("dp_shard",)),
        mixed_precision="no", is_main_process=accelerator.is_main_process, device=accelerator.device)
    return fsdp2_prepare_model(stand_in, model)


def is_sharded(tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor on the CPU (an all-gather for a sharded one: every process must call it)."""
    if is_sharded(tensor):
        tensor = tensor.full_tensor()
    return tensor.detach().cpu()


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict, gathered onto rank 0's CPU (empty on the other ranks). Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_into(param: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """`full` (a whole tensor, on every rank) as a tensor laid out like `param` (this rank's shard)."""
    full = full.to(device=param.device, dtype=param.dtype)
    if not is_sharded(param):
        return full
    from torch.distributed.tensor import distribute_tensor

    # every rank holds the same full tensor, so each takes its own shard without communication
    return distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)
