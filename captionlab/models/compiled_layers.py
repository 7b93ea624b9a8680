"""A model's repeated transformer layers run through `torch.compile`, only inside `with compiled.active():`.

Why. Captioning time on a GPU is mostly the prefill (BOS + prompt + 576 image tokens per image on
LLaVA-1.5), and transformers' eager layers spend a third of it (measured on an H200: 415 of 1,160 ms
per 64 images) in separate elementwise passes between the matrix products: fp32 RMSNorm (five passes),
the rotary embedding (a concatenation and four products per tensor), SiLU * up, the residual adds, the
vision tower's LayerNorms and GELUs. Inductor fuses those passes; the matrix products stay cuBLAS's.

How. "Regional compilation": every layer of a stack of identical layers (the vision tower's encoder
layers, the language model's decoder layers) is compiled on its own, and since the layers of one stack
share their code, one compiled graph serves all of them (a new input shape recompiles once, then shapes
are dynamic). A decoder layer's attention writes the KV cache, whose per-layer Python objects would make
every layer compile anew, so while active its class's `forward` is wrapped in `torch.compiler.disable`
(the layer compiles in two graphs around it, and the attention runs eagerly, as before) and the rotary
function it calls from its module (`apply_rotary_pos_emb`) is swapped for a compiled copy of itself.

Scope. The compiled layers are swapped in only while `active()` is entered (the decoder enters it for the
prefill, and for each decoding step if asked: `GreedyDecoder(compile_steps=True)`), by setting the
`_compiled_call_impl` that `nn.Module.__call__` consults, exactly as `nn.Module.compile()` does; everything is
restored on exit, so training and any other caller keep the eager layers. The two class/module-level swaps are
the same computation as what they replace (a no-compile wrapper, a compiled copy of the same function), so
another thread using the same classes meanwhile computes the same thing. If compiling fails (no compiler, an unsupported
layer), `active()` restores everything, records why in `error` and re-raises; the caller reruns eagerly
(`GreedyDecoder` does, and says so).

    compiled = CompiledLayers(model)
    with compiled.active():
        out = model(**inputs)
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch

ROTARY_FUNCTION = "apply_rotary_pos_emb"


def _takes_a_cache(layer: torch.nn.Module) -> bool:
    parameters = inspect.signature(layer.forward).parameters
    return any(name in parameters for name in ("past_key_values", "past_key_value", "layer_past"))


def _attention_of(layer: torch.nn.Module) -> torch.nn.Module | None:
    return next((child for name, child in layer.named_children() if "attn" in name or "attention" in name), None)


def repeated_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Every layer of every stack of identical layers in `model` (a `ModuleList` named `layers` whose items share
    one class): the vision tower's encoder layers and the language model's decoder layers."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.rsplit(".", 1)[-1] == "layers" and len(module) > 1 \
                and len({type(layer) for layer in module}) == 1:
            found.extend(module)
    return found


class CompiledLayers:
    """`torch.compile`d stand-ins for a model's repeated layers, swapped in by `active()`."""

    def __init__(self, model: torch.nn.Module, **compile_options):
        self.model = model
        self.layers = repeated_layers(model)
        self.options = compile_options
        self.error: str | None = None  # why compiling failed, once it has
        self._compiled: dict[int, object] = {}
        # the attention classes of cache-keeping (decoder) layers: run eagerly inside the compiled layers
        self.eager_classes = list(dict.fromkeys(type(attention) for layer in self.layers if _takes_a_cache(layer)
                                                for attention in [_attention_of(layer)] if attention is not None))
        self._rotary: dict[str, object] = {}  # module name -> compiled apply_rotary_pos_emb

    @property
    def usable(self) -> bool:
        return bool(self.layers) and self.error is None

    def _compiled_for(self, layer: torch.nn.Module):
        compiled = self._compiled.get(id(layer))
        if compiled is None:
            compiled = self._compiled[id(layer)] = torch.compile(layer._call_impl, **self.options)
        return compiled

    def _swaps(self) -> list[tuple[object, str, object]]:
        """(owner, attribute, stand-in) for the attention classes' forward and their modules' rotary function."""
        swaps = []
        for cls in self.eager_classes:
            swaps.append((cls, "forward", torch.compiler.disable(cls.forward)))
            module = sys.modules.get(cls.__module__)
            rotary = getattr(module, ROTARY_FUNCTION, None)
            if callable(rotary):
                if module.__name__ not in self._rotary:
                    self._rotary[module.__name__] = torch.compile(rotary, **self.options)
                swaps.append((module, ROTARY_FUNCTION, self._rotary[module.__name__]))
        return swaps

    @contextmanager
    def active(self) -> Iterator[bool]:
        """Run the body with the compiled layers; yields whether they are in use (False after a failure).

        A failure inside the body is recorded in `error` and re-raised, with the eager layers restored, so that
        the caller can rerun the same work eagerly."""
        if not self.usable:
            yield False
            return
        saved_layers = [(layer, layer.__dict__.get("_compiled_call_impl")) for layer in self.layers]
        saved_swaps = []  # (owner, attribute, had its own attribute, its value)
        try:
            for owner, attribute, stand_in in self._swaps():
                own = attribute in vars(owner)
                saved_swaps.append((owner, attribute, own, vars(owner).get(attribute)))
                setattr(owner, attribute, stand_in)
            for layer, _ in saved_layers:
                layer._compiled_call_impl = self._compiled_for(layer)
            yield True
        except torch.OutOfMemoryError:
            raise  # not the compiler's fault: the caller's batch-halving handles it
        except Exception as error:
            self.error = f"{type(error).__name__}: {error}"
            raise
        finally:
            for layer, previous in saved_layers:
                layer._compiled_call_impl = previous
            for owner, attribute, own, value in reversed(saved_swaps):
                if own:
                    setattr(owner, attribute, value)
                else:
                    delattr(owner, attribute)
