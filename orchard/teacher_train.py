"""Train a tiny teacher LLM from scratch on chat examples, so the quickstart can run with no hub and no API key.

The teacher is a 0.6M-parameter Llama with its own byte-level BPE. It is trained like a small language model:
every example is rendered with the teacher's chat template, all renderings are joined into one token stream,
and each step takes random windows of ``seq_len`` tokens from it (packing wastes no compute on padding and
a window need not start at a turn boundary, so long prompts still teach their endings). The learning rate
follows a warm-up then cosine schedule over the *time* budget, so a slow, shared machine still ends with a
decayed learning rate. What it writes is an ordinary model folder (safetensors + tokenizer with chat template)
that ``transformers serve`` can serve.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

from orchard.errors import InputError
from orchard.models import init_model, llama_config, save_model_dir, train_tokenizer

TEACHER_SHAPE = dict(hidden=128, layers=2, heads=4, intermediate=320)


def _check_examples(examples: list[dict]) -> list[list[dict]]:
    if not examples:
        raise InputError("no training examples given", field="examples")
    convs = []
    for i, ex in enumerate(examples):
        msgs = ex.get("messages") if isinstance(ex, dict) else None
        if not isinstance(msgs, list) or not msgs:
            raise InputError(f"example {i} has no 'messages' list", field="messages")
        for m in msgs:
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                    or not isinstance(m.get("content"), str):
                raise InputError(f"example {i}: each message needs role system|user|assistant and a string "
                                 f"content, got {m!r:.80}", field="messages")
        convs.append(msgs)
    return convs


def _token_stream(tokenizer, convs: list[list[dict]], assistant_only: bool):
    """All conversations rendered and tokenised, joined; with a 0/1 loss mask aligned to the tokens."""
    ids: list[int] = []
    mask: list[int] = []
    for msgs in convs:
        out = tokenizer.apply_chat_template(msgs, return_dict=True, return_assistant_tokens_mask=assistant_only)
        ids.extend(out["input_ids"])
        mask.extend(out["assistant_masks"] if assistant_only else [1] * len(out["input_ids"]))
    return ids, mask


def _lr_factor(progress: float, warmup: float = 0.05, floor: float = 0.1) -> float:
    """Linear warm-up over the first ``warmup`` of the budget, then cosine down to ``floor`` of the peak."""
    if progress < warmup:
        return max(progress / warmup, 0.01)
    p = min((progress - warmup) / (1 - warmup), 1.0)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))


def train_tiny_teacher(
    path: str | Path,
    examples: list[dict],
    *,
    seconds: float | None = 60,
    max_steps: int | None = None,
    seq_len: int = 128,
    batch_size: int = 4,
    lr: float = 3e-3,
    seed: int = 0,
    vocab_size: int = 2000,
    assistant_only: bool = False,
    max_position: int = 2048,
    log_every: int = 10,
    clock: str = "wall",
    on_log: Callable[[dict], None] | None = None,
) -> dict:
    """Train a tiny Llama from scratch on ``examples`` ({"messages": [...]}) and save it to ``path``.

    Stops at ``seconds`` of training or ``max_steps`` steps, whichever comes first (``seconds=None`` with
    ``max_steps`` makes the run deterministic for ``seed``). ``clock="cpu"`` counts this process's CPU time
    instead of wall time, so a shared, loaded machine trains as many steps as an idle one (only slower).
    Returns metrics with the loss curve.

    Small batches win at this size: at equal tokens (307k, synth's teacher examples) the loss reached was
    1.41 with batch 4 x 128 tokens, 1.61 with 8 x 128 and 2.99 with 16 x 192 (measured 2026-11-23).
    """
    import torch

    if seconds is None and max_steps is None:
        raise InputError("give seconds and/or max_steps, or training never stops", field="seconds")
    if (seconds is not None and seconds <= 0) or (max_steps is not None and max_steps < 1):
        raise InputError("seconds must be > 0 and max_steps >= 1", field="seconds")
    if clock not in ("wall", "cpu"):
        raise InputError(f"clock must be 'wall' or 'cpu', got {clock!r}", field="clock")
    now = time.perf_counter if clock == "wall" else time.process_time
    convs = _check_examples(examples)
    t_start = time.perf_counter()

    texts = [m["content"] for msgs in convs for m in msgs]
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    config = llama_config(tokenizer, max_position=max_position, **TEACHER_SHAPE)
    model = init_model(config, seed=seed)
    model.generation_config.max_new_tokens = 256
    # `transformers serve` only samples when the model's generation config says so; a request's
    # temperature=0 still switches to greedy decoding.
    model.generation_config.do_sample = True
    model.generation_config.temperature = 1.0
    model.generation_config.top_p = 1.0

    ids, mask = _token_stream(tokenizer, convs, assistant_only)
    if not any(mask):
        raise InputError("assistant_only=True but no example has an assistant message", field="messages")
    # A stream shorter than one window would leave nothing to sample: repeat it (tiny test inputs).
    while len(ids) < seq_len + 1:
        ids, mask = ids + ids, mask + mask
    stream = torch.tensor(ids, dtype=torch.long)
    loss_mask = torch.tensor(mask, dtype=torch.bool)
    n_windows = len(ids) - seq_len

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    model.train()
    prep_s = time.perf_counter() - t_start

    curve: list[dict] = []
    recent: list[float] = []
    step = 0
    t0 = now()
    w0 = time.perf_counter()
    while True:
        elapsed = now() - t0
        progress = max(elapsed / seconds if seconds else 0.0, step / max_steps if max_steps else 0.0)
        if progress >= 1.0:
            break
        for g in opt.param_groups:
            g["lr"] = lr * _lr_factor(progress)
        starts = torch.randint(0, n_windows, (batch_size,), generator=gen)
        offsets = starts[:, None] + torch.arange(seq_len)
        window = stream[offsets]
        # transformers shifts labels inside the model: labels are the inputs themselves, masked.
        labels = window.clone()
        labels[~loss_mask[offsets]] = -100
        if bool((labels[:, 1:] == -100).all()):
            continue  # assistant_only and a window with no assistant token: nothing to learn here
        out = model(input_ids=window, labels=labels)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        recent.append(out.loss.item())
        if step % log_every == 0 or step == 1:
            entry = {"step": step, "seconds": round(now() - t0, 2),
                     "loss": round(sum(recent) / len(recent), 4), "lr": round(opt.param_groups[0]["lr"], 6)}
            curve.append(entry)
            recent = []
            if on_log:
                on_log(entry)
    train_s = now() - t0
    wall_s = time.perf_counter() - w0
    if recent:
        curve.append({"step": step, "seconds": round(train_s, 2), "loss": round(sum(recent) / len(recent), 4),
                      "lr": round(opt.param_groups[0]["lr"], 6)})

    model.eval()
    save_model_dir(path, model, tokenizer)
    return {
        "path": str(path),
        "steps": step,
        "train_seconds": round(train_s, 2),
        "clock": clock,
        "train_wall_seconds": round(wall_s, 2),
        "prep_seconds": round(prep_s, 2),
        "initial_loss": curve[0]["loss"] if curve else None,
        "final_loss": curve[-1]["loss"] if curve else None,
        "tokens_per_step": batch_size * seq_len,
        "stream_tokens": len(ids),
        "examples": len(convs),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "vocab_size": len(tokenizer),
        "loss_curve": curve,
    }


def teacher_from_seeds(path: str | Path, seeds_path: str | Path, *, n: int = 2000, seconds: float | None = 60,
                       max_steps: int | None = None, seed: int = 0, **kwargs) -> dict:
    """Build training examples from a seed file with synth's own prompts, then train the tiny teacher.

    The examples come from ``orchard.synth.api.teacher_training_examples`` (the exact prompts synth sends,
    answered with valid replies built from the real seed tasks), so the teacher learns the formats synth parses.
    """
    from orchard.synth.api import teacher_training_examples  # imported here: the spine may import packages
    from orchard.synth.seeds import load_seeds

    seeds = load_seeds(seeds_path)
    examples = teacher_training_examples(seeds, n, seed)
    metrics = train_tiny_teacher(path, examples, seconds=seconds, max_steps=max_steps, seed=seed, **kwargs)
    metrics["seeds"] = str(seeds_path)
    return metrics
