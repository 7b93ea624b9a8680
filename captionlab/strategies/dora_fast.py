"""DoRA's forward the short way: peft's outputs and gradients, without materialising out x in matrices.

For each DoRA linear layer and each forward, peft (0.21) builds the LoRA weight B·A by passing an
identity matrix through the adapter (an in x in matrix, then an out x in one), adds it to W (another
out x in matrix) and takes the row norms; on a 7B model that is three passes over ~6.5 billion
numbers per forward, and during captioning per decoded token. The row norms need none of that:

    ||W_j + s (BA)_j||^2 = ||W_j||^2 + 2 s <W_j, (BA)_j> + s^2 ||(BA)_j||^2
    <W_j, (BA)_j>  = sum_k (W A^T)_jk B_jk          (W A^T: out x r)
    ||(BA)_j||^2   = sum_k (B (A A^T))_jk B_jk       (A A^T: r x r)

with ||W_j||^2 computed once (W is frozen; recomputed if W is ever changed in place). The norms are
detached exactly as in peft (DoRA paper, Sec. 4.3). peft then adds (m/||.|| - 1) W x + (m/||.||) s B A x
to W x in five elementwise passes, saving several activations for backward; the layer's output is
(m/||.||) (W x + s B A x), which one custom autograd step computes in two passes, saving one activation.
Outputs and gradients agree with peft's to float rounding (tests/test_dora_fast.py). Parameters, state dicts and saved adapters are peft's own: the swap
changes a module's class, nothing it stores.
"""

from __future__ import annotations

import torch

try:  # peft's DoRA layer class (peft >= 0.10)
    from peft.tuners.lora.dora import DoraLinearLayer
except ImportError:  # pragma: no cover - peft without DoRA
    DoraLinearLayer = None


_FLOAT32_PRODUCTS = {}  # device type -> whether torch.mm(..., out_dtype=torch.float32) runs there


def _mm_float32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor | None:
    """a @ b of half-precision inputs with float32 accumulation *and output*, or None where unsupported."""
    device = a.device.type
    if _FLOAT32_PRODUCTS.get(device) is False:
        return None
    try:
        out = torch.mm(a, b, out_dtype=torch.float32)
    except (TypeError, RuntimeError, NotImplementedError):
        _FLOAT32_PRODUCTS[device] = False
        return None
    _FLOAT32_PRODUCTS[device] = True
    return out


def _weight_times_a(weight: torch.Tensor, lora_A: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """W A^T (out x r) in float32, as peft gets it with W and A in `dtype` (out x in times in x r).

    On a GPU peft keeps the adapter in float32 and trains a bf16 base: then `dtype` is float32, and W in float32
    is exact, but converting W (out x in) to float32 and multiplying in float32 costs a copy of W and a slow
    float32 product in every forward. Instead A is split into bf16 high and low parts (A = A_hi + A_lo up to
    ~2^-17 relative) and W A_hi^T + W A_lo^T are taken as bf16 products with float32 accumulation and output:
    the same numbers to ~1e-5 relative, at half-precision speed. Elsewhere (W already in `dtype`, or W wider
    than `dtype`) the product is taken in `dtype`, as before."""
    if dtype == torch.float32 and weight.dtype in (torch.bfloat16, torch.float16) and lora_A.dtype == torch.float32:
        high = lora_A.to(weight.dtype)
        low = (lora_A - high.float()).to(weight.dtype)
        first = _mm_float32(weight, high.t())
        if first is not None:
            return first + _mm_float32(weight, low.t())
    return (weight.to(dtype) @ lora_A.to(dtype).t()).float()


def _row_norms(weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float,
               weight_sq: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """||W_j + scaling * (B A)_j|| for every output row j (W, A, B as if in `dtype`, default W's), in float32,
    without forming B A or W + s B A."""
    a, b = lora_A.float(), lora_B.float()
    cross = (_weight_times_a(weight, lora_A, dtype or weight.dtype) * b).sum(dim=1)  # <W_j, (BA)_j>
    gram = a @ a.t()  # r x r
    lora_sq = ((b @ gram) * b).sum(dim=1)  # ||(BA)_j||^2
    return (weight_sq + 2.0 * scaling * cross + scaling * scaling * lora_sq).clamp_(min=0.0).sqrt_()


class _DoraCombine(torch.autograd.Function):
    """y = scale * (base + scaling * lora): peft's base + (scale - 1) * base + scale * scaling * lora in two passes,
    saving one activation (base + scaling * lora) for backward instead of peft's several."""

    @staticmethod
    def forward(ctx, base, lora, scale, scaling):
        pre = torch.add(base, lora, alpha=scaling)
        ctx.save_for_backward(pre, scale)
        ctx.scaling = scaling
        return pre * scale

    @staticmethod
    def backward(ctx, grad):
        pre, scale = ctx.saved_tensors
        need_base, need_lora, need_scale = ctx.needs_input_grad[:3]
        grad_base = grad_lora = grad_scale = None
        if need_base or need_lora:
            scaled = grad * scale
            grad_lora = scaled * ctx.scaling if need_lora else None
            grad_base = scaled if need_base else None
        if need_scale:
            grad_scale = (grad * pre).reshape(-1, pre.shape[-1]).sum(dim=0).view_as(scale)
        return grad_base, grad_lora, grad_scale, None


if DoraLinearLayer is not None:
    from peft.tuners.lora.variants import DoraLinearVariant

    class FastDoraLinearLayer(DoraLinearLayer):
        """peft's DoraLinearLayer with the row norms computed from r-wide products (see the module docstring)."""

        def _weight_sq(self, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
            """||W_j||^2 of the stored weight as rounded to `dtype`, recomputed only when W changes in place."""
            key = (weight.data_ptr(), weight._version, weight.dtype, tuple(weight.shape), dtype)
            cached = self.__dict__.get("_captionlab_weight_sq")
            if cached is None or cached[0] != key:
                with torch.no_grad():
                    cached = (key, weight.detach().to(dtype).float().pow(2).sum(dim=1))
                self.__dict__["_captionlab_weight_sq"] = cached
            return cached[1]

        def weight_norm(self, base_layer, lora_A, lora_B, scaling, dtype) -> torch.Tensor:
            """peft's detached ||W + s B A|| per output row, in `dtype` (peft takes it in the layer's dtype)."""
            from peft.utils.integrations import dequantize_module_weight
            from peft.utils.other import transpose

            weight = transpose(dequantize_module_weight(base_layer), self.fan_in_fan_out)
            with torch.no_grad():  # ||W||^2 keyed on the stored weight, not on a per-call dtype copy of it
                weight_sq = self._weight_sq(weight, dtype)
                return _row_norms(weight, lora_A.weight, lora_B.weight, scaling, weight_sq, dtype).to(dtype)

        def forward(self, x, *, lora_A, lora_B, scaling, base_layer, base_result=None, adapter_name="default"):
            weight_norm = self.weight_norm(base_layer, lora_A, lora_B, scaling, x.dtype)
            mag_norm_scale = (self.weight / weight_norm).view(1, -1)
            lora_result = lora_B(lora_A(x))
            if base_result is not None:
                if base_layer.bias is not None:
                    base_result = base_result - base_layer.bias
            else:
                from peft.utils.integrations import dequantize_module_weight
                from peft.utils.other import transpose

                weight = transpose(dequantize_module_weight(base_layer), self.fan_in_fan_out)
                base_result = torch.nn.functional.linear(x, weight.to(x.dtype))
            return (mag_norm_scale - 1) * base_result + mag_norm_scale * lora_result * scaling

    class FastDoraLinearVariant(DoraLinearVariant):
        """peft's DoRA variant of a Linear layer, with the output combined in one autograd step (`_DoraCombine`)
        whenever the base result can be reused (no dropout, or eval); otherwise peft's own path."""

        @staticmethod
        def forward(module, active_adapter, x, result, **kwargs):
            dropout = module.lora_dropout[active_adapter]
            dora = module.lora_magnitude_vector[active_adapter]
            if not (isinstance(dropout, torch.nn.Identity) or not module.training) \
                    or not isinstance(dora, FastDoraLinearLayer):
                return DoraLinearVariant.forward(module, active_adapter, x, result, **kwargs)
            lora_A, lora_B = module.lora_A[active_adapter], module.lora_B[active_adapter]
            scaling = module.scaling[active_adapter]
            base_layer = module.get_base_layer()
            scale = (dora.weight / dora.weight_norm(base_layer, lora_A, lora_B, scaling, x.dtype)).view(1, -1)
            lora = lora_B(lora_A(x))
            bias = base_layer.bias
            base = result if bias is None else result - bias
            out = _DoraCombine.apply(base, lora, scale, scaling)
            return out if bias is None else out + bias


def use_fast_dora(model: torch.nn.Module) -> int:
    """Give every peft DoRA linear layer of `model` the short-way forward; returns how many were switched."""
    if DoraLinearLayer is None:
        return 0
    switched = 0
    for module in model.modules():
        if type(module) is DoraLinearLayer and not getattr(module, "fan_in_fan_out", False):
            module.__class__ = FastDoraLinearLayer
            switched += 1
        variants = getattr(module, "lora_variant", None)
        if isinstance(variants, dict):
            for name, variant in variants.items():
                if type(variant) is DoraLinearVariant:
                    variants[name] = FastDoraLinearVariant()
    return switched


def use_peft_dora(model: torch.nn.Module) -> int:
    """Undo `use_fast_dora`: peft's own DoRA forward again (the benchmarks' plain rows); returns how many."""
    switched = 0
    for module in model.modules():
        if DoraLinearLayer is not None and type(module) is FastDoraLinearLayer:
            module.__class__ = DoraLinearLayer
            switched += 1
        variants = getattr(module, "lora_variant", None)
        if isinstance(variants, dict):
            for name, variant in variants.items():
                if DoraLinearLayer is not None and type(variant) is FastDoraLinearVariant:
                    variants[name] = DoraLinearVariant()
    return switched
