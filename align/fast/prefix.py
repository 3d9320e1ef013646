"""Shared prefixes computed once: a DPO batch's chosen and rejected rows start with the same prompt.

TRL's DPO trainer lays a batch out as ``[chosen_0 .. chosen_{B-1}, rejected_0 .. rejected_{B-1}]``, each row the
prompt followed by a completion, right-padded. Under causal attention a token's hidden state depends only on
the tokens before it, so the prompt's hidden states are the same in both rows of a pair. :func:`plan` finds,
per pair, the longest common prefix of the two rows (the prompt, plus any identical first completion tokens)
and lays the packed row out as ``chosen_i`` whole, then only ``rejected_i``'s own suffix. The suffix attends to
the chosen row's prefix keys and to itself: its keys are gathered as ``[chosen_i[:s_i], rejected_i[s_i:]]`` and
attention is causal aligned to the bottom right. The hidden states are scattered back to the padded layout (the
rejected row's prefix copied from the chosen row's), so TRL's log-prob head and loss see what they always see,
and gradients from both rows meet in the one computed prefix. Every pass (the reference forward, the policy
forward, its recomputation and backward) then runs on ``P + C + R`` tokens per pair instead of ``2P + C + R``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MIN_SHARED_FRACTION = 0.05  # below this, the plain padding-free layout (fewer index operations) is used


@dataclass
class PrefixPlan:
    gather: torch.Tensor  # padded-layout flat indices of the packed row's tokens, in packed order
    src: torch.Tensor  # for each real padded position (row-major), its packed index
    lens_q: tuple[int, ...]  # query segments: chosen_i whole, rejected_i suffix, ...
    kv_index: torch.Tensor  # packed indices of each segment's keys: chosen_i; chosen_i[:s_i] + rejected_i suffix
    lens_k: tuple[int, ...]
    shared: int  # tokens not computed twice


def plan(input_ids: torch.Tensor | None, mask: torch.Tensor) -> PrefixPlan | None:
    """The packed layout for a right-padded ``[chosen; rejected]`` batch, or None where sharing does not apply."""
    if input_ids is None or mask.dim() != 2 or mask.shape[0] % 2:
        return None
    b, t = mask.shape
    h = b // 2
    m = mask.bool()
    lens = m.sum(1)
    if not bool((m.int().cumprod(1).sum(1) == lens).all()):  # real tokens must come first in every row
        return None
    same = (input_ids[:h] == input_ids[h:]) & m[:h] & m[h:]
    s = same.int().cumprod(1).sum(1)
    lens_l, s_l = lens.tolist(), s.tolist()
    lc, lr = lens_l[:h], lens_l[h:]
    if min(lens_l) < 1:
        return None
    s_l = [min(si, r - 1) for si, r in zip(s_l, lr)]  # the rejected row keeps at least its last token
    total = sum(lens_l)
    if sum(s_l) < MIN_SHARED_FRACTION * total:
        return None

    gather, kv, lens_q, lens_k = [], [], [], []
    chosen_src, rejected_src = [], []
    off = 0
    for i in range(h):
        oc, n_c, n_s, n_r = off, lc[i], s_l[i], lr[i]
        orr = oc + n_c
        gather += [torch.arange(i * t, i * t + n_c), torch.arange((i + h) * t + n_s, (i + h) * t + n_r)]
        chosen_part = torch.arange(oc, oc + n_c)
        suffix = torch.arange(orr, orr + n_r - n_s)
        kv += [chosen_part, torch.arange(oc, oc + n_s), suffix]
        lens_q += [n_c, n_r - n_s]
        lens_k += [n_c, n_r]
        chosen_src.append(chosen_part)
        rejected_src.append(torch.cat([torch.arange(oc, oc + n_s), suffix]))
        off = orr + n_r - n_s
    dev = mask.device
    return PrefixPlan(
        gather=torch.cat(gather).to(dev, non_blocking=True),
        src=torch.cat(chosen_src + rejected_src).to(dev, non_blocking=True),
        lens_q=tuple(lens_q),
        kv_index=torch.cat(kv).to(dev, non_blocking=True),
        lens_k=tuple(lens_k),
        shared=sum(s_l),
    )
