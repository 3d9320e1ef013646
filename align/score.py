"""Scoring a model on held-out data: assistant-token loss / perplexity and preference log-prob margins.

The assistant span is found by rendering the prompt with ``add_generation_prompt=True`` and taking every
token after it, so scoring works with any chat template (no ``{% generation %}`` markers needed) and is the
same computation for the base, SFT and DPO models.
"""

from __future__ import annotations

import math

import torch


def _encode(tok, prompt: list[dict], answer: list[dict], max_length: int) -> tuple[list[int], int]:
    prefix = tok.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=False)
    full = tok.apply_chat_template(prompt + answer, tokenize=True, return_dict=False)
    if hasattr(prefix, "input_ids"):
        prefix, full = prefix["input_ids"], full["input_ids"]
    prefix, full = list(prefix), list(full)
    start = len(prefix) if full[: len(prefix)] == prefix else _common_prefix(prefix, full)
    return full[:max_length], min(start, max_length)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@torch.no_grad()
def completion_logps(model, tok, items: list[tuple[list[dict], list[dict]]], batch_size: int = 8,
                     max_length: int = 1024) -> list[tuple[float, int]]:
    """For each (prompt, answer) pair: (sum of log p over answer tokens, number of answer tokens)."""
    dev = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    enc = [_encode(tok, p, a, max_length) for p, a in items]
    out: list[tuple[float, int]] = []
    for b in range(0, len(enc), batch_size):
        chunk = enc[b : b + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        att = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.bool)
        for i, (seq, start) in enumerate(chunk):
            ids[i, : len(seq)] = torch.tensor(seq)
            att[i, : len(seq)] = 1
            mask[i, start : len(seq)] = True
        logits = model(input_ids=ids.to(dev), attention_mask=att.to(dev), use_cache=False).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        tgt = ids[:, 1:].to(dev)
        tok_lp = logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
        m = mask[:, 1:].to(dev)
        for i in range(len(chunk)):
            out.append((float(tok_lp[i][m[i]].sum()), int(m[i].sum())))
    return out


def sft_loss(model, tok, rows: list[dict], batch_size: int = 8, max_length: int = 1024) -> dict:
    """Mean assistant-token NLL and perplexity over SFT rows (last assistant turn is the answer)."""
    items = [(r["messages"][:-1], r["messages"][-1:]) for r in rows]
    was_training = model.training
    model.eval()
    try:
        res = completion_logps(model, tok, items, batch_size, max_length)
    finally:
        model.train(was_training)
    total = -sum(lp for lp, _ in res)
    n = sum(k for _, k in res)
    loss = total / max(n, 1)
    # Each example's own mean NLL, for paired comparisons between models (align/verdicts.py).
    per_example = [-lp / k if k else None for lp, k in res]
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": n, "examples": len(rows),
            "per_example": per_example}


def pair_margins(policy, reference, tok, rows: list[dict], beta: float, batch_size: int = 8,
                 max_length: int = 1024) -> dict:
    """DPO implicit rewards on preference rows: beta * (log pi/ref(chosen) - log pi/ref(rejected))."""
    chosen = [(r["prompt"], r["chosen"]) for r in rows]
    rejected = [(r["prompt"], r["rejected"]) for r in rows]

    def lps(model):
        model.eval()
        c = completion_logps(model, tok, chosen, batch_size, max_length)
        rj = completion_logps(model, tok, rejected, batch_size, max_length)
        return [x for x, _ in c], [x for x, _ in rj]

    pc, pr = lps(policy)
    rc, rr = lps(reference) if reference is not None else ([0.0] * len(rows), [0.0] * len(rows))
    margins = [beta * ((a - b) - (c - d)) for a, b, c, d in zip(pc, pr, rc, rr)]
    n = max(len(margins), 1)
    return {
        "pairs": len(rows),
        "accuracy": sum(m > 0 for m in margins) / n,
        "margin_mean": sum(margins) / n,
        "chosen_reward_mean": beta * sum(a - c for a, c in zip(pc, rc)) / n,
        "rejected_reward_mean": beta * sum(b - d for b, d in zip(pr, rr)) / n,
        "margins": margins,
    }
