"""Leaner LoRA layers: the adapter's update added to the base layer's output in one fused matrix product.

PEFT's LoRA forward (for plain and 4-bit base layers alike) clones the base output, runs ``lora_B(lora_A(x))``,
multiplies by the scaling and adds: three element-wise passes over every linear layer's output, each with its
own kernel launch and autograd node, in the forward, the recomputed forward and the backward. With the base
frozen, the same sum is ``addmm(base(x), x @ A^T, B^T, alpha=scaling)``: one GEMM that adds in place of its
output, no clone, no separate scaling. At 4-8k tokens per step an 8B QLoRA step is bound by such launches
(profiled: ~10k kernels a step), so fewer of them is time saved.

``enable(model)`` patches the LoRA layers of a PEFT model in place (idempotent, undone by ``disable``). A call the
fast form does not cover (adapters disabled or merged, several active adapters, dropout, DoRA and other
variants, mixed-adapter batches, no autocast with mismatched dtypes) runs PEFT's own forward.
"""

from __future__ import annotations

import torch

_CLASSES: dict[type, type] = {}


def adapter_and_dropout(layer):
    """(A, B, scaling, p) of a LoRA layer's one active adapter, ``p`` the dropout probability in effect on the
    adapter's input now (0 without dropout or outside training): the hand-fused decoder layers apply it
    themselves. None when the adapters are disabled; False for forms no fused path covers (merged or several
    adapters, DoRA and other variants, a dropout module other than ``nn.Dropout``)."""
    if getattr(layer, "merged", False) or len(layer.active_adapters) != 1:
        return False
    if layer.disable_adapters:
        return None
    name = layer.active_adapters[0]
    if name not in layer.lora_A or name in getattr(layer, "lora_variant", {}):
        return False
    d = layer.lora_dropout[name]
    if isinstance(d, torch.nn.Identity):
        p = 0.0
    elif type(d) is torch.nn.Dropout:
        p = float(d.p) if d.training else 0.0
    else:
        return False
    return layer.lora_A[name].weight, layer.lora_B[name].weight, layer.scaling[name], p


def plain_adapter(layer):
    """(A, B, scaling) of a LoRA layer's one active adapter in its plain form, no dropout module at all; None when
    the adapters are disabled (DPO's reference); False where this module's fused form does not apply."""
    found = adapter_and_dropout(layer)
    if not found:
        return found
    if not isinstance(layer.lora_dropout[layer.active_adapters[0]], torch.nn.Identity):
        return False
    return found[:3]


def _fused_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    peft_forward = type(self).__mro__[1].forward
    adapter = None if args or kwargs else plain_adapter(self)
    if not adapter:
        return peft_forward(self, x, *args, **kwargs)
    a, b, scaling = adapter
    if not torch.is_autocast_enabled(x.device.type) and not x.dtype == a.dtype == b.dtype:
        return peft_forward(self, x, *args, **kwargs)  # PEFT casts around the adapter; keep its rules
    result = self.base_layer(x)
    xa, bt = x.reshape(-1, x.shape[-1]) @ a.t(), b.t()
    if xa.dtype != result.dtype:  # no autocast, base computing in another dtype: the update is cast, as in PEFT
        xa, bt = xa.to(result.dtype), bt.to(result.dtype)
    out = torch.addmm(result.reshape(-1, result.shape[-1]), xa, bt, alpha=scaling)
    return out.view(result.shape)


def _fused_class(cls: type) -> type:
    # Why a class swap, not an instance ``forward``: a subclass keeps deepcopy, pickling and PEFT's own isinstance
    # checks working (a bound method in the instance dict would still point at the original after a deepcopy),
    # and its parent's forward is the fallback for every call the fused form does not cover. ``disable`` restores
    # the class.
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"Fused{cls.__name__}", (cls,), {"forward": _fused_forward, "_orchard_fused": True})
    return _CLASSES[cls]


def lora_layers(model):
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer) and hasattr(m, "base_layer")]


def enable(model) -> int:
    """Patch every LoRA linear layer under ``model``; returns how many were patched now."""
    n = 0
    for layer in lora_layers(model):
        if getattr(layer, "_orchard_fused", False) or not hasattr(layer.get_base_layer(), "in_features"):
            continue  # already done; embeddings and convolutions keep PEFT's forward
        layer.__class__ = _fused_class(type(layer))
        n += 1
    return n


def disable(model) -> int:
    n = 0
    for layer in lora_layers(model):
        if getattr(layer, "_orchard_fused", False):
            layer.__class__ = type(layer).__mro__[1]
            n += 1
    return n
