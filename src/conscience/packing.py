"""Pre-packed (and optionally int8) linear layers for decoding on a CPU.

Decoding a small batch multiplies a few rows by every weight matrix. On a CPU, PyTorch's dense
``linear`` then re-lays-out (packs) each weight on every call, so four rows cost far more than one.
oneDNN can pack a weight once, ahead of time — what ``torch.compile``'s CPU "freezing" does — and
its packed kernel keeps the numbers in the weight's own dtype. ``benchmarks/sampling.py`` measures
it on the online round's decodes: 4 answers × 48 tokens of the bundled model took 6.4 s packed vs
10.6 s dense fp32 (8.4 s in a bf16 copy), with the same next-token distribution.

``int8`` goes further for sampling only: weights rounded to int8 per output row, activations in
bfloat16 (``torch._weight_int8pack_mm``), a quarter of fp32's weight reads. It is not exact: the
same benchmark reads a next-token KL to fp32 of 0.011 nats per token (bf16: 0.0025; packed fp32:
0) and top-1 agreement 0.954 (bf16: 0.973).

Only for throwaway generation copies: a packed layer holds an opaque weight, has no gradient, and
is not saved. Packing falls back to the dense layer where the op is missing or refuses the dtype;
an int8 copy is refused with a clear error instead.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

#: The row count oneDNN tunes the packed layout for (the online round decodes 4–8 answers).
PACK_ROWS_HINT = 4


class PackedLinear(torch.nn.Module):
    """``nn.Linear`` for inference with its weight packed once by oneDNN."""

    def __init__(self, linear: torch.nn.Linear, rows_hint: int = PACK_ROWS_HINT) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        # plain attributes, not buffers: the packed tensor is opaque and must not reach state_dict
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows_hint)
        self.bias = None if linear.bias is None else linear.bias.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed=oneDNN"


class Int8Linear(torch.nn.Module):
    """``nn.Linear`` for inference with its weight rounded to int8, one scale per output row."""

    def __init__(self, linear: torch.nn.Linear, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float()
        scales = weight.abs().amax(dim=1).clamp_min(1e-12) / 127
        self.weight_int8 = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
        self.scales = scales.to(dtype)
        self.bias = None if linear.bias is None else linear.bias.detach().to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(self.scales.dtype)
        out = torch._weight_int8pack_mm(flat, self.weight_int8, self.scales)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weights=int8"


def _agrees(make: type, dtype: torch.dtype, tol: float) -> bool:
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):  # a probe inside a training run must not move its RNG
        layer = torch.nn.Linear(64, 48).to(dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(48, 64, generator=gen))
        x = torch.randn(3, 5, 64, generator=gen).to(dtype)
        fast = make(layer)(x)
        dense = F.linear(x, layer.weight, layer.bias)
    return fast.shape == dense.shape and torch.allclose(fast.float(), dense.float(), rtol=tol, atol=tol * 10)


@functools.cache
def int8_supported() -> bool:
    """Whether this PyTorch build runs int8-weight linears on the CPU (probed once)."""
    try:
        return hasattr(torch, "_weight_int8pack_mm") and _agrees(Int8Linear, torch.bfloat16, 0.05)
    except (RuntimeError, AttributeError):
        return False


@functools.cache
def packing_supported(dtype: torch.dtype) -> bool:
    """Whether this CPU and PyTorch build pack ``dtype`` weights and agree with dense ``linear``
    (probed once per dtype on a small layer; bf16 needs AVX-512 or AVX-NE-CONVERT)."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return False
    try:
        return _agrees(PackedLinear, dtype, 1e-4 if dtype == torch.float32 else 5e-2)
    except (RuntimeError, AttributeError):
        return False


def pack_linears(model: torch.nn.Module, int8: bool = False) -> int:
    """Replace every CPU ``nn.Linear`` of ``model`` (in place) by a :class:`PackedLinear` where
    its dtype packs, or by an :class:`Int8Linear` (``int8=True``, activations in the model's
    dtype); returns how many were replaced. Tied weights (an output head sharing the embedding
    matrix) keep the embedding dense — the new head is a separate copy."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not torch.nn.Linear or child.weight.device.type != "cpu":
                continue
            if int8:
                setattr(parent, name, Int8Linear(child, child.weight.dtype))
            elif packing_supported(child.weight.dtype):
                setattr(parent, name, PackedLinear(child))
            else:
                continue
            replaced += 1
    return replaced
