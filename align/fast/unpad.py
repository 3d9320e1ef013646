"""Padding-free forward for padded batches: the decoder sees only real tokens, one row, examples end to end.

``enable(model)`` patches the decoder backbone (e.g. ``LlamaModel``) of a causal LM, PEFT-wrapped or not. A call
with a 2-D ``attention_mask`` and no KV cache (every training, scoring and evaluation forward that TRL makes) is
unpadded: the real tokens are gathered into one row, each example keeps its own positions and attends only to
itself (:mod:`orchard.align.fast.attention`), and the hidden states are scattered back to the padded layout, so
the LM head, the losses and TRL's fused log-prob head see exactly the shapes they expect. The math is the plain
path's: padding only ever produced hidden states that every loss masks out. Other calls (generation with a
cache) run unchanged through SDPA.
"""

from __future__ import annotations

import functools

import torch

from . import prefix
from .attention import ATTN_NAME, KV_KEY, SEQ_LENS_KEY, VARLEN_KEY, register
from .decoder import backbone, set_kept_exact

__all__ = ["backbone", "disable", "enable"]


def _set_attn(config, name: str) -> None:
    config._attn_implementation = name


def enable(model, varlen_attention: bool = True, shared_prefix: bool = False) -> bool:
    """Patch ``model``'s backbone in place (idempotent). Returns False when already patched.

    ``varlen_attention``: on CUDA, one variable-length flash call per layer for the whole row (else one SDPA call
    per example); ``shared_prefix``: a preference batch's ``[chosen; rejected]`` rows share each pair's prompt
    (:mod:`orchard.align.fast.prefix`). Both are kept on the backbone and passed down with every forward; a
    second call updates them."""
    inner = backbone(model)
    inner.__dict__["_orchard_varlen"] = bool(varlen_attention)
    if shared_prefix:
        inner.__dict__["_orchard_share_prefix"] = True
    else:
        inner.__dict__.pop("_orchard_share_prefix", None)
    if getattr(inner.forward, "_orchard_unpad", False):
        return False
    register()
    before = inner.config._attn_implementation  # kept on the wrapper, not the config (configs get saved)
    _set_attn(inner.config, ATTN_NAME)
    orig = inner.forward

    @functools.wraps(orig)
    def forward(input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, inputs_embeds=None,
                use_cache=None, **kwargs):
        eligible = (
            attention_mask is not None
            and attention_mask.dim() == 2
            and past_key_values is None
            and not use_cache
            and (input_ids is None) != (inputs_embeds is None)
        )
        if not eligible:
            # generation and anything unusual: plain SDPA with its own masks
            prev = inner.config._attn_implementation
            _set_attn(inner.config, "sdpa")
            try:
                return orig(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                            **kwargs)
            finally:
                _set_attn(inner.config, prev)
        b, t = attention_mask.shape
        mask = attention_mask.bool()
        keep = mask.reshape(-1).nonzero().squeeze(1)  # the one host sync of the step's forward
        lens = tuple(int(n) for n in mask.sum(1).tolist() if n > 0)
        shared = None
        if inner.__dict__.get("_orchard_share_prefix") and position_ids is None:
            shared = prefix.plan(input_ids, mask)
        gather = keep if shared is None else shared.gather
        total = int(gather.numel())
        # for the kept-layer planner (orchard.align.fast.checkpointing): token counts of gradient forwards
        if torch.is_grad_enabled():
            d = inner.__dict__
            if "_orchard_tokens_max" in d:
                d["_orchard_tokens_max"] = max(d["_orchard_tokens_max"], total)
            keep_for = d.get("_orchard_keep_for")
            if keep_for is not None:
                set_kept_exact(inner, keep_for(total))
        pos = (mask.cumsum(1) - 1) if position_ids is None else position_ids.expand(b, -1)
        pos = pos.reshape(-1).index_select(0, gather).unsqueeze(0)
        if input_ids is not None:
            packed = dict(input_ids=input_ids.reshape(-1).index_select(0, gather).unsqueeze(0))
        else:
            packed = dict(inputs_embeds=inputs_embeds.reshape(b * t, -1).index_select(0, gather).unsqueeze(0))
        kwargs[VARLEN_KEY] = inner.__dict__.get("_orchard_varlen", True)
        if shared is None:
            kwargs[SEQ_LENS_KEY] = lens
        else:
            kwargs[SEQ_LENS_KEY] = shared.lens_q
            kwargs[KV_KEY] = (shared.kv_index, shared.lens_k)
        out = orig(attention_mask=None, position_ids=pos, use_cache=False, **packed, **kwargs)
        h = out.last_hidden_state[0]
        if shared is not None:  # every real position of the padded layout, the rejected prefixes copied
            h = h.index_select(0, shared.src)
        out.last_hidden_state = h.new_zeros(b * t, h.shape[-1]).index_copy(0, keep, h).view(b, t, -1)
        return out

    forward._orchard_unpad = True
    forward._orchard_orig = (orig, before)
    inner.forward = forward
    return True


def disable(model) -> bool:
    """Undo :func:`enable` (benchmarks reuse one loaded model for several paths)."""
    inner = backbone(model)
    fwd = inner.forward
    if not getattr(fwd, "_orchard_unpad", False):
        return False
    orig, attn = fwd._orchard_orig
    inner.forward = orig
    inner.__dict__.pop("_orchard_share_prefix", None)
    inner.__dict__.pop("_orchard_varlen", None)
    _set_attn(inner.config, attn)
    return True
