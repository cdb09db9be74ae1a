"""Fused factor products: all factorized weights of a model computed by a few flat operations.

`fuse_(model)` lays the d-th factors of all factorized weights of one depth, dtype and device
out in one flat buffer per d; each factor parameter becomes a view of its slice, so parameter
names, state_dict keys, optimizer state, masks and DDP see the same parameters as before.
Once per forward of the model one autograd operation computes w = w_1 * ... * w_D (mask
applied) for all of those weights at once; its backward forms every factor's gradient from
prefix and suffix products in the order autograd multiplies them, so values are bit for bit
those of the per-weight parametrization (dwfc/factorize.py), which stays the reference:
without `fuse_` (recipe `train.fused=false`) every weight is multiplied out by itself.
Per step this costs D - 1 products and one mask forward, about 2D products backward, whatever
the number of layers, and keeps none of the D - 2 intermediate products per weight alive.
`fuse_(model, compile=True)` (recipe `train.fused=compile`) runs the same products as
torch.compile'd loops, one pass over the factors each way (docs/factorization.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from dwfc.errors import InputError, first_line
from dwfc.factorize import FactorizedWeight, HadamardFactors, factorized_weights


def _layout(t: Tensor) -> list[int]:
    """The dimension order in which `t` is contiguous (channels_last: 0, 2, 3, 1)."""
    order = sorted(range(t.dim()), key=lambda i: -t.stride(i))
    return order if t.permute(order).is_contiguous() else list(range(t.dim()))


def _view(segment: Tensor, shape: torch.Size, order: list[int]) -> Tensor:
    """`segment` (flat) seen as a tensor of `shape` laid out in dimension order `order`."""
    if order == sorted(order):
        return segment.view(shape)
    stored = segment.view([shape[i] for i in order])
    return stored.permute(sorted(range(len(order)), key=order.__getitem__))


def _multiply(flat: list[Tensor], mask: Tensor | None) -> Tensor:
    """w = f_1 * ... * f_D, zero where `mask` is False, in autograd's order ((f_1 f_2) f_3)..."""
    weight = flat[0]
    for factor in flat[1:]:
        weight = weight * factor
    if mask is not None:
        weight = torch.where(mask, weight, torch.zeros((), dtype=weight.dtype,
                                                       device=weight.device))  # fmt: skip
    return weight


def _gradients(flat: list[Tensor], mask: Tensor | None, grad: Tensor) -> list[Tensor]:
    """Every factor's gradient from the weight's `grad`, as autograd forms it for `_multiply`:
    the suffix s carries the gradient from the right, grad f_d = s * (f_1 ... f_{d-1}); the
    prefixes are recomputed, not kept."""
    if mask is not None:
        grad = torch.where(mask, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))
    prefixes: list[Tensor | None] = [None, flat[0]]
    for factor in flat[1:-1]:
        prefixes.append(prefixes[-1] * factor)  # type: ignore[operator]
    grads: list[Tensor] = [grad] * len(flat)
    suffix = grad
    for d in range(len(flat) - 1, 0, -1):
        grads[d] = suffix * prefixes[d]
        suffix = suffix * flat[d]
    grads[0] = suffix
    return grads


_COMPILED: dict[str, Any] = {}


def _kernels(compiled: bool) -> tuple[Any, Any]:
    """`_multiply` and `_gradients`, or their torch.compile'd versions: one generated loop each
    instead of one pass over memory per product (the same products in the same order)."""
    if not compiled:
        return _multiply, _gradients
    if not _COMPILED:
        _COMPILED["multiply"] = torch.compile(_multiply, dynamic=True)
        _COMPILED["gradients"] = torch.compile(_gradients, dynamic=True)
    return _COMPILED["multiply"], _COMPILED["gradients"]


def check_compiles(device: torch.device) -> None:
    """Compile and run the products once on `device`: an InputError naming the cause when
    torch.compile cannot (no C++ compiler on the CPU, no Triton on CUDA)."""
    multiply, gradients = _kernels(True)
    try:
        flat = [torch.ones(16, device=device) for _ in range(2)]
        mask = torch.ones(16, dtype=torch.bool, device=device)
        gradients(flat, mask, multiply(flat, mask))
    except Exception as exc:  # noqa: BLE001 - any compiler failure: report it, train without
        raise InputError(f"train.fused=compile: torch.compile failed on {device.type} "
                         f"({first_line(exc)}); use train.fused=true") from None  # fmt: skip


class _FlatProduct(torch.autograd.Function):
    """w = f_1 * ... * f_D (masked) on the bank's flat buffers; inputs are the factor
    parameters (so autograd routes each gradient to its parameter), in weight-major order."""

    @staticmethod
    def forward(ctx: Any, bank: FactorBank, *params: Tensor) -> Tensor:
        mask = bank.mask()
        weight = _kernels(bank.compiled)[0](bank.flat, mask)
        ctx.bank = bank
        ctx.save_for_backward(*bank.flat, *(() if mask is None else (mask,)))
        return weight

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        bank: FactorBank = ctx.bank
        saved = ctx.saved_tensors
        flat, mask = list(saved[: bank.depth]), saved[bank.depth :]
        grads = _kernels(bank.compiled)[1](flat, mask[0] if mask else None, grad)
        per_weight = [bank.views(g) for g in grads]
        return None, *(per_weight[d][i] for i in range(len(bank.sizes))
                       for d in range(bank.depth))  # fmt: skip


class FactorBank:
    """The factorized weights of one depth, dtype and device, their factors in flat buffers."""

    def __init__(self, weights: list[FactorizedWeight], compiled: bool = False) -> None:
        self.compiled = compiled  # the products by torch.compile (`fuse_(compile=True)`)
        self.hadamards: list[HadamardFactors] = [fw.parametrization for fw in weights]
        self.depth = self.hadamards[0].depth
        self.params = [p for fw in weights for p in fw.factors]
        self.shapes: list[torch.Size] = []
        self.orders: list[list[int]] = []
        self.sizes: list[int] = []
        self.flat: list[Tensor] = []
        self._pointers: list[int] = []
        self._mask: Tensor | None = None
        self._mask_key: list[tuple[Tensor | None, int]] = []
        self.bind()

    def views(self, flat: Tensor) -> list[Tensor]:
        """One flat tensor cut into the weights' shapes and layouts."""
        return [_view(seg, shape, order) for seg, shape, order
                in zip(flat.split(self.sizes), self.shapes, self.orders, strict=True)]  # fmt: skip

    def bind(self) -> None:
        """(Re)build the flat buffers from the parameters' values and make each a view; each
        weight keeps the memory layout its first factor has now (channels_last, say)."""
        first = self.params[:: self.depth]
        self.shapes, self.sizes = [f.shape for f in first], [f.numel() for f in first]
        self.orders = [_layout(f) for f in first]
        self.flat = []
        with torch.no_grad():
            for d in range(self.depth):
                params = self.params[d :: self.depth]
                flat = torch.cat([p.detach().permute(o).reshape(-1)
                                  for p, o in zip(params, self.orders, strict=True)])  # fmt: skip
                for param, view in zip(params, self.views(flat), strict=True):
                    param.data = view
                self.flat.append(flat)
        self._pointers = [p.data_ptr() for p in self.params]

    def bound(self) -> bool:
        """Whether every parameter still is its view (`.to()`, `assign=True` loads replace them)."""
        return all(p.data_ptr() == ptr for p, ptr in zip(self.params, self._pointers, strict=True))

    def mask(self) -> Tensor | None:
        """The weights' masks as one flat tensor (kept where a weight has none), cached."""
        key = [(h.mask, -1 if h.mask is None else h.mask._version) for h in self.hadamards]
        if len(key) != len(self._mask_key) or any(
            a is not b or u != v for (a, u), (b, v) in zip(key, self._mask_key, strict=True)
        ):
            masks = [h.mask for h in self.hadamards]
            self._mask = None if all(m is None for m in masks) else torch.cat([
                (m.permute(o).reshape(-1) if m is not None else
                 torch.ones(n, dtype=torch.bool, device=self.flat[0].device))
                for m, o, n in zip(masks, self.orders, self.sizes, strict=True)])  # fmt: skip
            self._mask_key = key
        return self._mask

    def materialize(self) -> None:
        """Compute every weight of the bank once; the parametrizations return these."""
        if not self.bound():
            self.bind()
        weights = _FlatProduct.apply(self, *self.params)
        for hadamard, value in zip(self.hadamards, self.views(weights), strict=True):
            hadamard.fused_value = value

    def release(self) -> None:
        for hadamard in self.hadamards:
            hadamard.fused_value = None


class _Fusion:
    """What `fuse_` attached to a model: its banks and hooks."""

    def __init__(self, model: nn.Module, banks: list[FactorBank]) -> None:
        self.banks = banks
        self.hooks: list[RemovableHandle] = [
            model.register_forward_pre_hook(self._enter),
            model.register_forward_hook(self._leave, always_call=True),
        ]

    def _enter(self, module: nn.Module, args: Any) -> None:
        for bank in self.banks:
            bank.materialize()

    def _leave(self, module: nn.Module, args: Any, output: Any) -> None:
        for bank in self.banks:
            bank.release()


CPU_BANK_ELEMENTS = 2**21  # 8 MiB of fp32 per flat buffer on CPU; see `fuse_`


def _banks(weights: list[FactorizedWeight], cap: int | None) -> list[list[FactorizedWeight]]:
    """The weights grouped by depth, dtype and device, in order, each group cut at `cap`
    elements (a weight larger than `cap` alone)."""
    groups: dict[tuple[int, torch.dtype, torch.device], list[list[FactorizedWeight]]] = {}
    filled: dict[tuple[int, torch.dtype, torch.device], int] = {}  # entries in the last bank
    for fw in weights:
        first = fw.factors[0]
        key = (fw.parametrization.depth, first.dtype, first.device)
        banks = groups.setdefault(key, [[]])
        if cap is not None and banks[-1] and filled[key] + first.numel() > cap:
            banks.append([])
            filled[key] = 0
        banks[-1].append(fw)
        filled[key] = filled.get(key, 0) + first.numel()
    return [bank for banks in groups.values() for bank in banks]


def fuse_(model: nn.Module, max_elements: int | None = -1, compile: bool = False) -> None:
    """Compute all factorized weights of `model` with a few flat operations per forward, in place.

    Call it with the model on its device (moving it later is detected and costs one re-layout);
    the factor parameters stay the same objects, so an optimizer made before or after works.
    `unfuse_` (and `collapse_`) undo it. A model without factorized weights is left alone.
    `max_elements` caps each flat buffer (None: no cap; -1: none on CUDA, CPU_BANK_ELEMENTS on
    the CPU, whose allocator maps larger tensors fresh from the OS on every step: a multiply of
    11.2M floats took 22 ms into a new tensor and 3.9 ms into a reused one). `compile` runs the
    products and their gradients as torch.compile'd loops (bit for bit the same values; the
    first step compiles, a few seconds; recipe `train.fused=compile`).

    Example:
        dwfc.factorize_(model, depth=3); dwfc.fuse_(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-4, fused=True)
    """
    unfuse_(model)
    weights = list(factorized_weights(model))
    if not weights:
        return
    if max_elements == -1:
        on_cpu = weights[0].factors[0].device.type == "cpu"
        max_elements = CPU_BANK_ELEMENTS if on_cpu else None
    if compile:
        check_compiles(weights[0].factors[0].device)
    banks = [FactorBank(ws, compile) for ws in _banks(weights, max_elements)]
    model._dwfc_fusion = _Fusion(model, banks)


def unfuse_(model: nn.Module) -> None:
    """Undo `fuse_`: per-weight products again, each factor in its own storage."""
    fusion: _Fusion | None = model.__dict__.pop("_dwfc_fusion", None)
    if fusion is None:
        return
    for hook in fusion.hooks:
        hook.remove()
    with torch.no_grad():
        for bank in fusion.banks:
            bank.release()
            for param in bank.params:
                param.data = param.data.clone(memory_format=torch.preserve_format)


def is_fused(model: nn.Module) -> bool:
    return "_dwfc_fusion" in model.__dict__


@contextlib.contextmanager
def fused(model: nn.Module, enabled: bool = True, compile: bool = False) -> Iterator[None]:
    """`fuse_` for the duration of a block (nothing when not `enabled`), then `unfuse_`."""
    if not enabled:
        yield
        return
    fuse_(model, compile=compile)
    try:
        yield
    finally:
        unfuse_(model)
