"""A model's repeated transformer layers run through `torch.compile`, only inside `with compiled.active():`.

Why. Captioning time on a GPU is mostly the prefill (BOS + prompt + 576 image tokens per image on
LLaVA-1.5), and transformers' eager layers spend part of it in separate elementwise passes between the
matrix products: fp32 RMSNorm (five passes), SiLU * up, the vision tower's LayerNorms and GELUs. Inductor
fuses those passes; the matrix products stay cuBLAS's. This is "regional compilation": each encoder layer
of the vision tower, and each decoder layer's norms and MLP (not its attention, which writes the KV cache:
its per-layer cache objects would make every layer compile anew), is compiled on its own, and since the
layers of one stack share their code, one compiled graph serves all of them (a new input shape recompiles
once, then shapes are dynamic).

Scope. The compiled layers are swapped in only while `active()` is entered (the decoder enters it for the
prefill alone), by setting the `_compiled_call_impl` that `nn.Module.__call__` consults, exactly as
`nn.Module.compile()` does, and restoring it on exit: training, the CUDA-graph decoding steps and any
other caller keep the eager layers. If compiling fails (no compiler, an unsupported layer), `active()`
restores the eager layers, records why in `error`, and re-raises nothing the caller must handle: the
caller reruns eagerly (`GreedyDecoder` does, and says so).

    compiled = CompiledLayers(model)
    with compiled.active():
        out = model(**inputs)
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def _takes_a_cache(layer: torch.nn.Module) -> bool:
    parameters = inspect.signature(layer.forward).parameters
    return any(name in parameters for name in ("past_key_values", "past_key_value", "layer_past"))


def compile_regions(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules to compile: in every stack of identical layers of `model` (a `ModuleList` named `layers` whose
    items share one class), each layer whole when it keeps no KV cache (the vision tower's encoder layers), else
    its children other than attention (a decoder layer's norms and MLP: the attention writes the KV cache, whose
    per-layer Python objects would make every layer compile anew)."""
    found = []
    for name, module in model.named_modules():
        if not (isinstance(module, torch.nn.ModuleList) and name.rsplit(".", 1)[-1] == "layers" and len(module) > 1
                and len({type(layer) for layer in module}) == 1):
            continue
        for layer in module:
            if not _takes_a_cache(layer):
                found.append(layer)
                continue
            found.extend(child for child_name, child in layer.named_children()
                         if "attn" not in child_name and "attention" not in child_name
                         and any(True for _ in child.parameters()))
    return found


class CompiledLayers:
    """`torch.compile`d stand-ins for a model's repeated layers, swapped in by `active()`."""

    def __init__(self, model: torch.nn.Module, **compile_options):
        self.model = model
        self.layers = compile_regions(model)
        self.options = compile_options
        self.error: str | None = None  # why compiling failed, once it has
        self._compiled: dict[int, object] = {}

    @property
    def usable(self) -> bool:
        return bool(self.layers) and self.error is None

    def _compiled_for(self, layer: torch.nn.Module):
        compiled = self._compiled.get(id(layer))
        if compiled is None:
            compiled = self._compiled[id(layer)] = torch.compile(layer._call_impl, **self.options)
        return compiled

    @contextmanager
    def active(self) -> Iterator[bool]:
        """Run the body with the compiled layers; yields whether they are in use (False after a failure).

        A failure inside the body is recorded in `error` and re-raised, with the eager layers restored, so that
        the caller can rerun the same work eagerly."""
        if not self.usable:
            yield False
            return
        saved = [(layer, layer.__dict__.get("_compiled_call_impl")) for layer in self.layers]
        try:
            for layer, _ in saved:
                layer._compiled_call_impl = self._compiled_for(layer)
            yield True
        except torch.OutOfMemoryError:
            raise  # not the compiler's fault: the caller's batch-halving handles it
        except Exception as error:
            self.error = f"{type(error).__name__}: {error}"
            raise
        finally:
            for layer, previous in saved:
                layer._compiled_call_impl = previous
