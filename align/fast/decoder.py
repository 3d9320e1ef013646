"""The decoder stack the fast path works on: finding it, and marking its layers kept out of checkpointing.

Shared by :mod:`unpad` (which chooses the kept layers per batch), :mod:`checkpointing` (which plans them) and
:mod:`layer` (whose fused class sits below the kept one); it imports none of them, so they need not import each
other.
"""

from __future__ import annotations

_KEPT: dict[type, type] = {}


def backbone(model):
    """The decoder stack (the module holding ``layers``) under a causal LM, a PEFT model or a wrapper."""
    m = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(m, getattr(m, "base_model_prefix", "model"), None)
    if inner is None or not hasattr(inner, "layers"):
        raise TypeError(f"no decoder backbone found under {type(m).__name__}")
    return inner


def _kept_class(cls: type) -> type:
    # Why a class swap: transformers' checkpointing layers read ``self.gradient_checkpointing`` in ``__call__``,
    # and the Trainer (and TRL's DPO, around every reference forward) set it on every module. Only a property, and
    # so a class, can keep answering False for one layer while remembering what was set meanwhile; an instance
    # attribute would simply be overwritten. The subclass adds nothing else, and ``unkeep`` restores the class.
    if cls not in _KEPT:
        _KEPT[cls] = type(f"Kept{cls.__name__}", (cls,), {
            "gradient_checkpointing": property(lambda self: False,
                                               lambda self, value: self.__dict__.__setitem__("_orchard_ckpt", value)),
            "_orchard_kept": True,
        })
    return _KEPT[cls]


def is_kept(layer) -> bool:
    return getattr(layer, "_orchard_kept", False)


def keep(layer) -> None:
    """Exempt ``layer`` from activation checkpointing (idempotent)."""
    if not is_kept(layer):
        layer.__dict__["_orchard_ckpt"] = layer.__dict__.pop("gradient_checkpointing", layer.gradient_checkpointing)
        layer.__class__ = _kept_class(type(layer))


def unkeep(layer) -> None:
    """Undo :func:`keep`: the layer is checkpointed again as last configured (idempotent)."""
    if is_kept(layer):
        layer.__class__ = type(layer).__mro__[1]
        layer.gradient_checkpointing = layer.__dict__.pop("_orchard_ckpt", False)


def set_kept_exact(inner, n: int) -> None:
    """Exactly the last ``n`` layers of the backbone ``inner`` kept, the others checkpointed as configured."""
    layers = inner.layers
    cut = len(layers) - max(0, min(int(n), len(layers)))
    for i, layer in enumerate(layers):
        (keep if i >= cut else unkeep)(layer)
