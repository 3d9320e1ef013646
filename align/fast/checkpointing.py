"""Less recomputation where memory allows: leave the last ``keep`` decoder layers out of activation checkpointing.

With a frozen 4-bit base a checkpointed layer costs a third more compute (its forward runs twice); a layer kept
out stores its activations instead. The Trainer turns checkpointing on for every layer when training starts, so
the callback switches it off again for the chosen layers right after (``on_train_begin``).
"""

from __future__ import annotations

from transformers import TrainerCallback

from .unpad import backbone


def set_kept_layers(model, keep: int) -> int:
    """Disable checkpointing on the last ``keep`` layers of ``model``'s backbone; returns how many were changed."""
    layers = list(backbone(model).layers)
    keep = max(0, min(int(keep), len(layers)))
    for layer in layers[len(layers) - keep:]:
        layer.gradient_checkpointing = False
    return keep


class PartialCheckpointing(TrainerCallback):
    def __init__(self, keep: int):
        self.keep = keep
        self.applied = 0

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if args.gradient_checkpointing and model is not None and self.keep:
            self.applied = set_kept_layers(model, self.keep)
