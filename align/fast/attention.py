"""Attention kept within each example for padding-free batches (several examples laid end to end in one row).

Registered with transformers as ``orchard_packed``. When the forward carries the examples' lengths (the keyword
``orchard_seq_lens`` set by :mod:`orchard.align.fast.unpad`, or the ``cu_seq_lens_q`` tensor of TRL's
padding-free collator), each example attends only to itself: one causal SDPA call per example, so PyTorch picks
its flash kernel (no mask tensor, no padding, no cross-example attention). Without lengths it is plain SDPA with
whatever mask it was given, so the same model still evaluates and scores padded batches correctly.
"""

from __future__ import annotations

import torch

ATTN_NAME = "orchard_packed"
SEQ_LENS_KEY = "orchard_seq_lens"
KV_KEY = "orchard_kv"  # (key index, key segment lengths) for shared prefixes (orchard.align.fast.prefix)
# False: one SDPA call per example even on CUDA (FastConfig.varlen_attention; set by orchard.align.fast.unpad)
VARLEN_KEY = "orchard_varlen"


def _segment_lengths(total: int, kwargs: dict) -> list[int] | None:
    lens = kwargs.get(SEQ_LENS_KEY)
    if lens is None:
        cu = kwargs.get("cu_seq_lens_q")
        if cu is None:
            return None
        lens = torch.diff(cu.to("cpu", torch.long)).tolist()  # TRL's collator builds it on CPU: no device sync
    lens = [int(n) for n in lens if n > 0]
    rest = total - sum(lens)
    if rest < 0:
        raise ValueError(f"packed lengths add up to {sum(lens)} but the row holds {total} tokens")
    if rest:  # trailing padding (pad_to_multiple_of): its own segment, ignored by the loss anyway
        lens.append(rest)
    return lens


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """(batch, heads, tokens, head_dim) in, (batch, tokens, heads, head_dim) out, like transformers' SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    kv = kwargs.get(KV_KEY)
    varlen = kwargs.get(VARLEN_KEY, True)
    if kv is not None and query.shape[0] == 1:
        return _prefix_attention(query, key, value, tuple(kwargs[SEQ_LENS_KEY]), kv, dropout, scaling,
                                 varlen=varlen), None
    lens = _segment_lengths(query.shape[2], kwargs) if query.shape[0] == 1 else None
    kwargs = {k: v for k, v in kwargs.items() if k not in (SEQ_LENS_KEY, KV_KEY, VARLEN_KEY, "is_causal",
                                                            "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q",
                                                            "max_length_k")}
    if lens is None or len(lens) == 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    if varlen and _varlen_ok(query, dropout):
        return _varlen(query, key, value, lens, scaling), None
    # split (not slicing) so that backward assembles the three input gradients with one concatenation each.
    # cuDNN's SDPA is left out: it builds an execution plan for every new sequence length, which cost ~2 ms of
    # CPU per call on an H100 (profiled) since example lengths rarely repeat; flash has no per-shape setup.
    with _backends(query.device):
        outs = [
            sdpa_attention_forward(module, q, k, v, None, dropout=dropout, scaling=scaling, is_causal=True)[0]
            for q, k, v in zip(query.split(lens, dim=2), key.split(lens, dim=2), value.split(lens, dim=2))
        ]
    return torch.cat(outs, dim=1), None


# -- one varlen flash call for the whole row (CUDA) ----------------------------------------------------------
# A Python loop of one SDPA call per example costs a few kernel launches and autograd nodes per example per layer
# (forward, recomputation and backward); the flash kernel's variable-length entry point takes the examples'
# boundaries and does them all in one launch. PyTorch exposes it as the aten ops used under
# torch.nn.attention.varlen; they are called directly because that wrapper's signature moved between releases.

_CU: dict = {}  # cumulative sequence lengths by (lengths, device): a cache


def _varlen_ok(query, dropout: float) -> bool:
    return (query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and not dropout
            and query.shape[-1] % 8 == 0 and query.shape[-1] <= 256
            and hasattr(torch.ops.aten, "_flash_attention_forward"))


def _cu_seqlens(lens, device):
    key = (tuple(lens), device)
    cu = _CU.get(key)
    if cu is None:
        if len(_CU) > 16:
            _CU.clear()
        offsets = [0]
        for n in lens:
            offsets.append(offsets[-1] + n)
        cu = _CU[key] = torch.tensor(offsets, dtype=torch.int32, device=device)
    return cu


class _FlashVarlen(torch.autograd.Function):
    """Causal flash attention over examples laid end to end: (tokens, heads, dim) in and out. Where a segment
    has more keys than queries (a shared prefix), the causal mask is aligned to the bottom right (flash's
    convention): query j of a suffix sees the prefix and the suffix up to j."""

    @staticmethod
    def forward(ctx, q, k, v, cu_q, cu_k, max_q, max_k, scale):
        out, lse, rng, unused, _ = torch.ops.aten._flash_attention_forward(
            q, k, v, cu_q, cu_k, max_q, max_k, 0.0, True, False, scale=scale)
        ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k, rng, unused)
        ctx.max_q, ctx.max_k, ctx.scale = max_q, max_k, scale
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, out, lse, cu_q, cu_k, rng, unused = ctx.saved_tensors
        dq, dk, dv = torch.ops.aten._flash_attention_backward(
            grad.contiguous(), q, k, v, out, lse, cu_q, cu_k, ctx.max_q, ctx.max_k, 0.0, True, rng, unused,
            scale=ctx.scale)
        return dq, dk, dv, None, None, None, None, None


def _varlen(query, key, value, lens, scaling, lens_k=None):
    """(1, heads, tokens, dim) query/key/value in, (1, tokens, heads, dim) out, like transformers' SDPA."""
    q = query[0].transpose(0, 1).contiguous()
    k = key[0].transpose(0, 1).contiguous()
    v = value[0].transpose(0, 1).contiguous()
    lens_k = lens if lens_k is None else lens_k
    cu_q = _cu_seqlens(lens, q.device)
    cu_k = cu_q if lens_k == lens else _cu_seqlens(lens_k, q.device)
    scale = scaling if scaling is not None else q.shape[-1] ** -0.5
    # fewer key/value heads than query heads (GQA) go in as they are: the flash kernel handles them
    # (tests/test_fast_path_gpu.py, 32/8 heads on an H100)
    out = _FlashVarlen.apply(q, k, v, cu_q, cu_k, max(lens), max(lens_k), scale)
    return out.unsqueeze(0)


def _prefix_attention(query, key, value, lens_q, kv, dropout, scaling, varlen: bool = True):
    """Segments whose keys are gathered by index (shared prefixes), causal aligned to the bottom right."""
    index, lens_k = kv
    key, value = key.index_select(2, index), value.index_select(2, index)
    if varlen and _varlen_ok(query, dropout):
        return _varlen(query, key, value, lens_q, scaling, tuple(lens_k))
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    outs = []
    for q, k, v in zip(query.split(list(lens_q), dim=2), key.split(list(lens_k), dim=2),
                       value.split(list(lens_k), dim=2)):
        nq, nk = q.shape[2], k.shape[2]
        if nq == nk:
            o = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling,
                                                                 dropout_p=dropout)
        else:
            allowed = torch.ones(nq, nk, dtype=torch.bool, device=q.device).tril(diagonal=nk - nq)
            o = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scaling,
                                                                 dropout_p=dropout)
        outs.append(o.transpose(1, 2))
    return torch.cat(outs, dim=1)


def _backends(device):
    import contextlib

    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def register() -> str:
    """Make ``orchard_packed`` known to transformers (idempotent). No mask function is registered on purpose:
    the model then builds no mask at all for packed rows, and padded calls go through SDPA (see unpad)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, packed_attention)
    return ATTN_NAME
