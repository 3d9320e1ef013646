"""Less recomputation where memory allows: leave the last ``keep`` decoder layers out of activation checkpointing.

With a frozen 4-bit base a checkpointed layer costs a third more compute (its forward runs twice); a layer kept
out stores its activations instead. The Trainer (and TRL's DPO, around every reference forward) switches
checkpointing on for all layers, so a kept layer gets a class whose ``gradient_checkpointing`` stays False
(:mod:`orchard.align.fast.decoder`).

``keep="auto"`` sizes it after the first optimizer step: (memory budget - measured peak - margin) divided by a
worst-case estimate of one layer's activations for the largest batch the trainer can form.
"""

from __future__ import annotations

import logging
import math

import torch
from transformers import TrainerCallback

from .decoder import backbone, is_kept, set_kept_exact, unkeep
from .layer import covers

log = logging.getLogger(__name__)


def set_kept_layers(model, keep: int) -> int:
    """Exempt the last ``keep`` layers of ``model``'s backbone from checkpointing; returns how many."""
    inner = backbone(model)
    set_kept_exact(inner, keep)
    return max(0, min(int(keep), len(inner.layers)))


def reset_kept_layers(model) -> int:
    """Undo :func:`set_kept_layers` (benchmarks reuse one model for several paths)."""
    n = 0
    for layer in backbone(model).layers:
        if is_kept(layer):
            unkeep(layer)
            n += 1
    inner = backbone(model)
    inner.__dict__.pop("_orchard_keep_for", None)
    inner.__dict__.pop("_orchard_tokens_max", None)
    return n


def residual_bytes(model) -> int:
    """Bytes per element of the residual stream: 4 where the input embeddings were upcast to fp32 (PEFT's
    ``prepare_model_for_kbit_training`` does that), else 2."""
    try:
        emb = backbone(model).embed_tokens.weight
    except (AttributeError, TypeError):
        return 2
    return 4 if emb.dtype == torch.float32 else 2


def layer_bytes_per_token(config, hidden_bytes: int = 2, intermediates: int = 3) -> int:
    """Activation bytes one non-checkpointed decoder layer keeps per token (bf16, LoRA on all linears, fused
    SwiGLU), with some room: seven hidden-sized and three intermediate-sized tensors (gate, up, and their
    product). Measured on an 8B model (H100, 2026-11-23): 12 kept layers cost 6.5 GiB more than 4 at batches of
    at most ~7k tokens, i.e. about 0.81 GiB or ~120 kB per token per layer; this estimate is 143 kB.
    ``hidden_bytes`` 4 for an fp32 residual stream (the hidden-sized tensors double); ``intermediates`` 2 for the
    hand-fused layers (:mod:`orchard.align.fast.layer` recomputes the product in the backward)."""
    return hidden_bytes * 7 * config.hidden_size + 2 * intermediates * config.intermediate_size


def intermediates_kept(inner) -> int:
    """Intermediate-sized tensors a kept layer of backbone ``inner`` stores per token (see above)."""
    layers = getattr(inner, "layers", None)
    if layers is None or not len(layers):
        return 3
    first = layers[0]
    return 2 if first.__dict__.get("_orchard_mlp_tail") and covers(first) else 3


def auto_keep(budget_gib: float, peak_gib: float, tokens: int, config, n_layers: int, margin_gib: float = 1.0,
              intermediates: int = 3) -> int:
    per_layer = layer_bytes_per_token(config, 2, intermediates) * tokens / 2**30
    room = budget_gib - peak_gib - margin_gib
    return max(0, min(n_layers, math.floor(room / per_layer))) if per_layer > 0 else 0


class TokenBudget:
    """Kept layers chosen per micro batch from its token count (set by the padding-free forward, which knows it).

    Memory at ``tokens`` with every layer checkpointed is modelled as ``static + per_token * tokens`` (both
    measured: the model's own memory at train begin, and the first step's peak); each kept layer adds
    :func:`layer_bytes_per_token` per token. A batch of short examples keeps many layers, a long one few, and
    every batch stays under the budget less the margin.
    """

    def __init__(self, budget_gib: float, static_bytes: int, per_token_bytes: float, config, n_layers: int,
                 margin_gib: float = 0.75, hidden_bytes: int = 2, intermediates: int = 3):
        self.budget = budget_gib * 2**30
        self.static = static_bytes
        self.room = (budget_gib - margin_gib) * 2**30 - static_bytes
        self.per_token, self.layer = per_token_bytes, layer_bytes_per_token(config, hidden_bytes, intermediates)
        self.n_layers = n_layers
        self.seen: dict[int, int] = {}  # kept layers -> micro batches (reported in metrics)
        self.last: tuple[int, int] | None = None  # (tokens, kept) of the last gradient forward
        self.corrections = 0

    def keep_for(self, tokens: int) -> int:
        free = self.room - self.per_token * tokens
        k = max(0, min(self.n_layers, math.floor(free / (self.layer * tokens)))) if tokens > 0 else 0
        self.seen[k] = self.seen.get(k, 0) + 1
        self.last = (tokens, k)
        return k

    def observe(self, peak_bytes: int) -> bool:
        """After a step: if its peak went over the budget, raise the per-layer estimate to what that step shows
        (with 10% more), so later batches keep fewer layers. Returns whether it corrected."""
        if self.last is None or peak_bytes <= self.budget:
            return False
        tokens, k = self.last
        if k == 0 or tokens == 0:
            self.per_token = max(self.per_token, (peak_bytes - self.static) / max(tokens, 1) * 1.1)
        else:
            shown = (peak_bytes - self.static - self.per_token * tokens) / (k * tokens)
            self.layer = max(self.layer * 1.25, shown * 1.1)
        self.corrections += 1
        return True


class PartialCheckpointing(TrainerCallback):
    """``keep``: an int, or "auto" with ``budget_gib`` and the largest tokens per micro batch.

    "auto" with the padding-free forward: per micro batch (:class:`TokenBudget`), after a first step with every
    layer checkpointed that measures the memory per token. Without it (no token counts): one number for the
    whole run from the largest possible batch (``max_tokens``), after the first step.
    """

    def __init__(self, keep: int | str, budget_gib: float, max_tokens: int | None = None):
        self.keep, self.budget_gib, self.max_tokens = keep, budget_gib, max_tokens
        self.applied: int | str | None = None
        self.static = None
        self.budget: TokenBudget | None = None
        self.seen_peak = 0  # the highest CUDA peak checked against the budget so far

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if args.gradient_checkpointing and model is not None and self.keep != "auto":
            self.applied = set_kept_layers(model, int(self.keep))
        elif self.keep == "auto" and torch.cuda.is_available():
            self.static = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            if model is not None:
                backbone(model).__dict__["_orchard_tokens_max"] = 0

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.budget is not None:  # per-batch mode: check the step against the budget, correct if over
            # The CUDA peak counter is left alone (the stage's and the user's own peak readings depend on it): a
            # step that raised it is the one that set the new peak, so only then is the budget checked.
            peak = torch.cuda.max_memory_allocated()
            if peak > self.seen_peak:
                self.seen_peak = peak
                if self.budget.observe(peak):
                    log.warning("fast path: step %d peaked over the %.1f GiB budget; kept-layer estimate raised",
                                state.global_step, self.budget_gib)
            return
        if (self.keep != "auto" or self.applied is not None or model is None or not args.gradient_checkpointing
                or not torch.cuda.is_available()):
            return
        inner = backbone(model)
        peak_b = torch.cuda.max_memory_allocated()
        peak = peak_b / 2**30
        t1 = inner.__dict__.get("_orchard_tokens_max") or 0
        if t1 > 0 and self.static is not None:
            per_token = max(0, peak_b - self.static) / t1
            self.budget = TokenBudget(self.budget_gib, self.static, per_token, inner.config, len(inner.layers),
                                      hidden_bytes=residual_bytes(model), intermediates=intermediates_kept(inner))
            self.seen_peak = peak_b  # step 1's own peak, every layer checkpointed
            inner.__dict__["_orchard_keep_for"] = self.budget.keep_for
            self.applied = "per batch"
            log.info("fast path: kept layers chosen per batch (%.0f kB per token measured at %d tokens, "
                     "budget %.1f GiB)", per_token / 1e3, t1, self.budget_gib)
            return
        tokens = self.max_tokens or args.per_device_train_batch_size * (getattr(args, "max_length", None) or 2048)
        k = auto_keep(self.budget_gib, peak, tokens, inner.config, len(inner.layers),
                      intermediates=intermediates_kept(inner))
        self.applied = set_kept_layers(model, k)
        log.info("fast path: %d of %d layers left out of checkpointing (peak %.1f GiB, budget %.1f GiB)",
                 self.applied, len(inner.layers), peak, self.budget_gib)

    def report(self) -> dict:
        """What was kept: a number, or per batch how many micro batches kept how many layers."""
        if self.budget is not None:
            return {"per_batch": {str(k): n for k, n in sorted(self.budget.seen.items())},
                    "over_budget_corrections": self.budget.corrections}
        return {"layers": self.applied}
