"""Filters applied to generated items, each returning a reason code when it discards one.

Rules follow Self-Instruct's heuristics (length bounds, a keyword list of tasks a text model cannot do, text
starting with punctuation or a non-English character); decontamination drops items sharing a word n-gram with a
user's eval set (13-grams like GPT-3 by default); PII is masked or dropped; near/semantic duplicates live in
``dedup.py``. ``final_filters`` runs the row-level ones and records what each measured in provenance ``filters``.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Iterable

from orchard.dataio import provenance, with_provenance
from orchard.errors import InputError

from .dedup import semantic_filter, words
from .degenerate import degenerate_reason
from .ledger import Ledger
from .methods_config import DecontamConfig, FilterConfig
from .pii import find_pii, mask_pii


def instruction_reason(text: str, cfg: FilterConfig) -> str | None:
    """Why an instruction is unusable, or None (degenerate text included: synth/degenerate.py)."""
    t = (text or "").strip()
    if not t:
        return "filter:empty"
    n = len(t.split())
    if n < cfg.min_instruction_words:
        return "filter:too_short"
    if n > cfg.max_instruction_words:
        return "filter:too_long"
    if cfg.keyword_filter:
        low = " " + " ".join(words(t)) + " "
        if any(f" {k.lower()} " in low for k in cfg.keywords):
            return "filter:keyword"
    if t[0] in string.punctuation:
        return "filter:starts_with_punctuation"
    if cfg.english_only and not t[0].isascii():
        return "filter:non_english_start"
    if cfg.english_only and english_word_share(t) < cfg.min_english_word_share:
        return "filter:not_english"
    return degenerate_reason(t, cfg.degenerate)[0]


def english_word_share(text: str) -> float:
    """Share of a text's words that are English words (wordfreq's English list; numbers count as words).

    Small teachers drift into invented words and other languages ("Illelithynes liémoni Médée ..."); rules on
    the first character and length pass such text."""
    from wordfreq import tokenize, zipf_frequency

    toks = [w for w in tokenize(text, "en") if not any(c.isdigit() for c in w)]
    if not toks:
        return 1.0
    return sum(zipf_frequency(w, "en") > 0 for w in toks) / len(toks)


def response_reason(text: str, cfg: FilterConfig, prompt: str | None = None) -> str | None:
    """Why a response is unusable, or None; with ``prompt``, an answer that only echoes it is degenerate too."""
    t = (text or "").strip()
    if len(t) < max(1, cfg.min_response_chars):
        return "filter:response_too_short"
    if len(t) > cfg.max_response_chars:
        return "filter:response_too_long"
    if cfg.english_only and english_word_share(t) < cfg.min_english_word_share:
        return "filter:response_not_english"
    return degenerate_reason(t, cfg.degenerate, prompt)[0]


# -- decontamination --------------------------------------------------------------------------------


def _texts_of(value) -> Iterable[str]:
    if value is None:
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        if isinstance(value.get("content"), str):
            yield value["content"]
    elif hasattr(value, "tolist") or isinstance(value, (list, tuple)):
        for v in (value.tolist() if hasattr(value, "tolist") else value):
            yield from _texts_of(v)


def load_eval_texts(path: Path, fields: list[str]) -> list[str]:
    """Texts of an eval set: a dataset folder (every split), JSONL, JSON, CSV, Parquet or plain text file."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise InputError("eval set not found", path=path, field="filters.decontam.eval_sets")
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    texts: list[str] = []
    for f in files:
        suf = f.suffix.lower()
        try:
            if suf == ".parquet":
                df = pd.read_parquet(f)
            elif suf == ".csv":
                df = pd.read_csv(f, dtype=str, keep_default_na=False)
            elif suf in (".jsonl", ".json"):
                df = pd.read_json(f, lines=suf == ".jsonl")
            else:
                texts.append(f.read_text(encoding="utf-8"))
                continue
        except (ValueError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read eval set: {e}", path=f) from None
        for col in [c for c in df.columns if c in fields]:
            for v in df[col]:
                texts.extend(_texts_of(v))
    return texts


class Decontaminator:
    """Word n-gram index of eval sets; an item sharing any n-gram with them is contaminated."""

    def __init__(self, cfg: DecontamConfig, texts: list[str] | None = None):
        self.n = cfg.ngram
        self.grams: set[int] = set()
        srcs = texts if texts is not None else [t for p in cfg.eval_sets for t in load_eval_texts(p, cfg.fields)]
        for t in srcs:
            self.grams.update(self._grams(t))

    def _grams(self, text: str) -> set[int]:
        w = words(text)
        return {hash(" ".join(w[i : i + self.n])) for i in range(len(w) - self.n + 1)}

    @property
    def active(self) -> bool:
        return bool(self.grams)

    def overlap(self, text: str) -> int:
        return len(self._grams(text) & self.grams) if self.grams else 0


# -- row-level pass ---------------------------------------------------------------------------------


def row_text(row: dict) -> tuple[str, str]:
    """(prompt text, response text) of an SFT row."""
    msgs = row.get("messages") or []
    prompt = "\n".join(m["content"] for m in msgs if m["role"] in ("system", "user"))
    resp = "\n".join(m["content"] for m in msgs if m["role"] == "assistant")
    return prompt, resp


def _set_text(row: dict, masked: dict[int, str]) -> dict:
    msgs = [dict(m) for m in row["messages"]]
    for i, t in masked.items():
        msgs[i]["content"] = t
    return {**row, "messages": msgs}


def final_filters(rows: list[dict], cfg: FilterConfig, ledger: Ledger, step: str = "filters",
                  decontam: Decontaminator | None = None) -> list[dict]:
    """Decontamination, PII (mask or drop) and optional semantic dedup over finished SFT rows."""
    decontam = decontam if decontam is not None else Decontaminator(cfg.decontam)
    out = []
    for row in rows:
        prompt, resp = row_text(row)
        measured = dict(provenance(row).get("filters", {}))
        if decontam.active:
            hits = decontam.overlap(prompt + "\n" + resp)
            measured["decontam_overlap"] = hits
            if hits:
                ledger.reject(prompt, "decontam", step, row.get("seed_id", ""), row.get("id", ""),
                              {"ngram": decontam.n, "overlapping_ngrams": hits})
                continue
        if cfg.pii.enabled:
            masked, found = {}, []
            for i, m in enumerate(row["messages"]):
                spans = find_pii(m["content"], cfg.pii.kinds)
                if spans:
                    found += [s[0] for s in spans]
                    masked[i] = mask_pii(m["content"], spans)
            measured["pii"] = sorted(set(found))
            if found and cfg.pii.policy == "drop":
                ledger.reject(prompt, "pii", step, row.get("seed_id", ""), row.get("id", ""), {"kinds": sorted(set(found))})
                continue
            if masked:
                row = _set_text(row, masked)
        out.append(with_provenance(row, filters=measured))
    if cfg.semantic.enabled and len(out) > 1:
        texts = [row_text(r)[0] for r in out]
        kept, dropped = semantic_filter(texts, cfg.semantic)
        for i, (j, cos) in dropped.items():
            r = out[i]
            ledger.reject(texts[i], "semantic_dup", step, r.get("seed_id", ""), r.get("id", ""),
                          {"dup_of": out[j]["id"], "cosine": round(cos, 4)})
        out = [out[i] for i in kept]
    return out
