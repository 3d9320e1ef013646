"""Degenerate text: what small teachers write when they loop, and what no filter of Self-Instruct catches.

A 135M-parameter teacher answers "1. I will tell you how to do it. 1. I will tell you how to do it." or repeats
the question back; length, keyword and near-duplicate rules pass such text. Four measures, each with a threshold
in ``DegenerateConfig``: the share of lines that repeat an earlier line, the share of repeated word n-grams, the
zlib compression ratio (repetitive text compresses far better than prose), and how much of an answer merely
echoes its instruction. ``degenerate_reason`` returns the first failed measure as a reason code, with the
measures, so that ``rejected.parquet`` says why.
"""

from __future__ import annotations

import re
import zlib

from .methods_config import DegenerateConfig

_WORD = re.compile(r"\w+", re.UNICODE)


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def repeated_line_share(text: str) -> float:
    """Share of non-empty lines (list markers and case ignored) that repeat an earlier line."""
    lines = [re.sub(r"^\s*(\d+[.)]|[-*•])\s*", "", ln).strip().lower() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    if len(lines) < 2:
        return 0.0
    return 1.0 - len(set(lines)) / len(lines)


def repeated_ngram_share(words: list[str], n: int) -> float:
    """Share of word n-grams that occurred earlier in the same text (0 for text shorter than 3 n-grams)."""
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if len(grams) < 3:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def compression_ratio(text: str) -> float:
    raw = text.encode("utf-8")
    return len(raw) / max(1, len(zlib.compress(raw, 9)))


def echo_share(answer_words: list[str], prompt_words: list[str]) -> float:
    """How much the answer is the prompt said back: LCS(answer, prompt) in words, over the longer of the two
    (an answer made of most of the prompt and little else scores near 1; a one-word label taken from a
    classification prompt's options scores near 0)."""
    if not answer_words or not prompt_words:
        return 0.0
    from rapidfuzz.distance import LCSseq

    return LCSseq.similarity(answer_words, prompt_words) / max(len(answer_words), len(prompt_words))


def measure(text: str, prompt: str | None, cfg: DegenerateConfig) -> dict:
    w = _words(text)
    m = {"repeated_lines": round(repeated_line_share(text), 3),
         "repeated_ngrams": round(repeated_ngram_share(w, cfg.ngram), 3)}
    if len(text) >= cfg.min_chars_for_compression:
        m["compression_ratio"] = round(compression_ratio(text), 3)
    if prompt:
        m["echo"] = round(echo_share(w, _words(prompt)), 3)
    return m


def degenerate_reason(text: str, cfg: DegenerateConfig, prompt: str | None = None) -> tuple[str | None, dict]:
    """(reason code or None, the measures) for a generated text; ``prompt`` enables the echo check."""
    if not cfg.enabled or not text or not text.strip():
        return None, {}
    m = measure(text, prompt, cfg)
    if m["repeated_lines"] > cfg.max_repeated_line_share:
        return "degenerate:repeated_lines", m
    if m["repeated_ngrams"] > cfg.max_repeated_ngram_share:
        return "degenerate:repeated_ngrams", m
    if m.get("compression_ratio", 0.0) > cfg.max_compression_ratio:
        return "degenerate:compressible", m
    if m.get("echo", 0.0) >= cfg.max_echo_share:
        return "degenerate:echoes_prompt", m
    return None, m
