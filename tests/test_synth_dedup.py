"""Near-duplicate index (rapidfuzz scan) against rouge-score itself: the same decisions, hits and scores."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
from rouge_score import rouge_scorer

from orchard.synth import dedup
from orchard.synth.dedup import NearDupIndex, naive_rouge_filter, words
from orchard.synth.seeds import load_seeds

SEEDS = Path(__file__).resolve().parents[1] / "data" / "seeds" / "self_instruct_seed_tasks.jsonl"


class _Words:
    def tokenize(self, text):
        return words(text)


def _items(n: int, seed: int = 0) -> tuple[list[str], list[tuple[str, str]]]:
    """Seed instructions, and items that are edited seeds (mostly duplicates) or word salads (mostly not)."""
    seeds = [s["instruction"] for s in load_seeds(SEEDS)]
    rng = random.Random(seed)
    vocab = [w for s in seeds for w in s.split()]
    out = []
    for i in range(n):
        if rng.random() < 0.4:
            w = rng.choice(seeds).split()
            for _ in range(rng.randint(1, 4)):
                j = rng.randrange(len(w))
                if rng.random() < 0.5 and len(w) > 3:
                    del w[j]
                else:
                    w[j] = rng.choice(vocab)
            text = " ".join(w)
        else:
            pool = [x for s in rng.sample(seeds, 2) for x in s.split()]
            text = " ".join(rng.choice(pool) for _ in range(rng.randint(3, 14)))
        out.append((f"i{i}", text))
    # exact copies, an empty text and punctuation only: edge cases of the tokenizer
    out += [("copy", out[0][1]), ("empty", ""), ("punct", "?!"), ("copy2", seeds[3])]
    return seeds, out


def test_rouge_l_is_bit_identical_to_rouge_score():
    seeds, items = _items(300)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=_Words())
    idx = NearDupIndex()
    texts = seeds[:60] + [t for _, t in items]
    rng = random.Random(1)
    for _ in range(3000):
        a, b = rng.choice(texts), rng.choice(texts)
        assert idx.rouge_l(a, b) == scorer.score(a, b)["rougeL"].fmeasure, (a, b)


@pytest.mark.parametrize("lossy", [False, True])
def test_index_decides_exactly_like_pairwise_rouge_score(monkeypatch, lossy):
    if lossy:  # fewer code points than words: codes are shared, every candidate is re-scored on real words
        monkeypatch.setattr(dedup, "_CODES", 40)
    seeds, items = _items(700)
    ref_kept, ref_dropped = naive_rouge_filter(items, 0.7, pool=seeds)
    idx = NearDupIndex()
    idx.add_many((f"pool{i}", t) for i, t in enumerate(seeds))
    kept, dropped = idx.filter(items)
    assert idx._lossy is lossy
    assert kept == ref_kept
    assert 100 < len(dropped) < len(items) - 100, "the data must hold both duplicates and distinct items"
    assert {k: (h.dup_of, h.rouge_l) for k, h in dropped.items()} == \
        {k: (h.dup_of, h.rouge_l) for k, h in ref_dropped.items()}


def test_best_score_and_exclude_skips_ancestors():
    idx = NearDupIndex()
    idx.add_many([("p", "Write a short poem about the ocean at night."),
                  ("q", "Explain how photosynthesis works in desert plants."),
                  ("r", "Write a long poem about the ocean at night.")])
    text = "Write a short poem about the ocean at midnight, please."
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=_Words())
    hit, best, _ = idx.check(text)
    assert hit.dup_of == "p" and best == hit.rouge_l == scorer.score(idx.texts["p"], text)["rougeL"].fmeasure
    hit, best, _ = idx.check(text, exclude={"p"})  # the next closest one still counts
    assert hit.dup_of == "r" and best == scorer.score(idx.texts["r"], text)["rougeL"].fmeasure
    hit, best, _ = idx.check(text, exclude={"p", "r"})
    assert hit is None and best == 0.0  # nothing left that could reach the threshold
    # the same words in another order: the word-count bound says "maybe", the exact LCS says no, and the
    # score it reached is reported
    shuffled = "night at ocean the about poem short a write"
    hit, best, _ = idx.check(shuffled)
    assert hit is None and 0 < best < 0.7 and best == scorer.score(idx.texts["p"], shuffled)["rougeL"].fmeasure


def test_stage_start_up_imports_no_nltk_rouge_score_or_datasketch():
    code = ("import sys; from orchard.synth import api, self_instruct, evol, grounded, dedup, teacher; "
            "from orchard.synth.dedup import NearDupIndex; NearDupIndex().check('a b c'); "
            "print(sorted(m for m in ('nltk', 'rouge_score', 'datasketch', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
