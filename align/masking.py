"""Assistant-only loss on any chat template: which tokens of a rendered conversation the model must learn to say.

TRL's assistant-only loss needs `{% generation %}` markers in the chat template, and most templates on the hub
(SmolLM2's, Llama 3's, ChatML ones) have none; TRL 1.16 then refuses to train. Here the assistant spans are found
in the rendered text itself: for the i-th message, an assistant turn, the text rendered for the messages before it
with the generation prompt is a prefix of the whole conversation, and so is the text rendered up to and including
it; the span between the two is what the assistant says, its end-of-turn token included (so the model learns to
stop), trailing whitespace excluded. Templates that do not render prefixes consistently (some drop earlier
reasoning) fall back to locating the message's content, plus the end-of-turn text that follows it, after the
previous span. Tokens are assigned to spans by their character offsets, so the mask is exact for any fast tokenizer.

Every row is checked: a row whose mask is empty or does not cover its assistant text raises an error naming it.
"""

from __future__ import annotations

from orchard.errors import InputError


def _render(tok, messages: list[dict], generation_prompt: bool = False) -> str:
    if not messages:
        return ""
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _end_of_turn(tok) -> list[str]:
    """Strings that close an assistant turn in common templates, longest first (the tokenizer's EOS among them)."""
    marks = {"<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "</s>", "<|endoftext|>"}
    if tok.eos_token:
        marks.add(tok.eos_token)
    return sorted(marks, key=len, reverse=True)


def _close_turn(tok, full: str, pos: int, strict: bool = True) -> int:
    """End of the assistant turn that runs on from ``pos``: just past its first end-of-turn mark."""
    hits = [(j, mark) for mark in _end_of_turn(tok) if (j := full.find(mark, pos)) >= 0]
    if hits:
        j, mark = min(hits, key=lambda h: (h[0], -len(h[1])))
        if strict or not full[pos:j].strip():
            return j + len(mark)
    if strict:
        raise ValueError("the assistant turn has no end-of-turn mark in the rendered conversation")
    return pos


def assistant_spans(tok, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns."""
    full = _render(tok, messages)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _render(tok, messages[:i], generation_prompt=True)
        upto = _render(tok, messages[: i + 1])
        if full.startswith(before) and len(before) >= cursor:
            start = len(before)
            if full.startswith(upto) and len(upto) > start:
                end = len(upto)
                while end > start and full[end - 1].isspace():
                    end -= 1
            else:  # this turn renders differently once later turns follow it: it ends at its end-of-turn mark
                end = _close_turn(tok, full, start)
        else:
            content = m["content"].strip()
            start = full.find(content, cursor) if content else -1
            if start < 0:
                raise ValueError(f"assistant message {i} is not found in the rendered conversation")
            end = _close_turn(tok, full, start + len(content), strict=False)
        spans.append((start, end))
        cursor = end
    return full, spans


def _mask_from_offsets(offsets, spans) -> list[int]:
    mask = []
    for s, e in offsets:
        inside = any(s < b and e > a for a, b in spans) if e > s else False
        mask.append(1 if inside else 0)
    return mask


def tokenize_with_assistant_mask(tok, messages: list[dict]) -> dict:
    """``{"input_ids", "assistant_masks"}`` for one conversation; 1 marks a token the loss is taken on."""
    full, spans = assistant_spans(tok, messages)
    if getattr(tok, "is_fast", False):
        enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
        return {"input_ids": list(enc["input_ids"]), "assistant_masks": _mask_from_offsets(enc["offset_mapping"], spans)}
    # Slow tokenizers have no offsets: tokenize the pieces between span boundaries one by one.
    ids: list[int] = []
    mask: list[int] = []
    pos = 0
    for a, b in spans:
        for piece, bit in ((full[pos:a], 0), (full[a:b], 1)):
            if piece:
                t = tok(piece, add_special_tokens=False)["input_ids"]
                ids += t
                mask += [bit] * len(t)
        pos = b
    if pos < len(full):
        t = tok(full[pos:], add_special_tokens=False)["input_ids"]
        ids += t
        mask += [0] * len(t)
    return {"input_ids": ids, "assistant_masks": mask}


def _words(text: str) -> str:
    return " ".join(text.split())


def check_mask(tok, messages: list[dict], enc: dict) -> None:
    """The masked tokens must decode to the assistant turns' text (content, then at most end-of-turn markup)."""
    if 1 not in enc["assistant_masks"]:
        raise ValueError("no token of the assistant's answer is in the loss")
    masked = [t for t, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    said = _words(tok.decode(masked, skip_special_tokens=True))
    for m in messages:
        if m["role"] == "assistant" and _words(m["content"]) not in said:
            raise ValueError("the loss mask does not cover the assistant's answer")


def assistant_masked_rows(tok, rows: list[dict], where: str, check: bool = True) -> list[dict]:
    """Tokenized rows for TRL (``input_ids`` + ``assistant_masks``), each checked; errors name the row."""
    out = []
    for r in rows:
        try:
            enc = tokenize_with_assistant_mask(tok, r["messages"])
            if check:
                check_mask(tok, r["messages"], enc)
        except ValueError as e:
            raise InputError(f"assistant-only loss, row id {r.get('id')!r}: {e} (with the tokenizer's chat template)",
                             path=where, field="messages") from None
        out.append(enc)
    return out
