"""The held-out split by lineage: nothing in validation may reach training through a relative or a paraphrase.

Items are grouped by the seed they grew from (``seed_id``); groups that hold near-duplicates of each other
(MinHash/LSH over word shingles of the prompt) are joined, and whole groups fall on one side of the split.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import numpy as np
from datasketch import MinHash, MinHashLSH
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

_WORD = re.compile(r"\w+", re.UNICODE)


def prompt_text(row: dict) -> str:
    """The text a row asks: its user turns (SFT or preference rows) or its instruction (seed rows)."""
    msgs = row.get("messages") or row.get("prompt")
    if isinstance(msgs, list) and msgs:
        return "\n".join(m.get("content", "") for m in msgs if m.get("role") == "user")
    return " ".join(str(row.get(k) or "") for k in ("instruction", "input"))


def _minhash(text: str, num_perm: int, shingle: int) -> MinHash:
    words = _WORD.findall(text.lower())
    grams = {" ".join(words[i:i + shingle]) for i in range(max(1, len(words) - shingle + 1))} or {""}
    m = MinHash(num_perm=num_perm, seed=1)
    m.update_batch([g.encode("utf-8") for g in grams])
    return m


@dataclass
class SplitResult:
    train: list[dict]
    test: list[dict]
    families: int
    joined_by_near_duplicates: int  # lineage families merged because an item of one near-duplicates another's

    def stats(self) -> dict:
        n = len(self.train) + len(self.test)
        return {
            "train": len(self.train), "test": len(self.test),
            "test_fraction": round(len(self.test) / n, 4) if n else 0.0,
            "families": self.families, "families_joined_by_near_duplicates": self.joined_by_near_duplicates,
            "seeds_on_both_sides": len(seeds_on_both_sides(self.train, self.test)),
        }


def lineage_split(rows: list[dict], test_size: float = 0.2, threshold: float = 0.7, seed: int = 0,
                  num_perm: int = 128, shingle: int = 2) -> SplitResult:
    """Split ``rows`` so that every family (same ``seed_id``, or near-duplicate prompts) is on one side."""
    n = len(rows)
    if n < 2:
        return SplitResult(list(rows), [], n, 0)
    seeds = [str(r.get("seed_id") or r.get("id")) for r in rows]
    seed_index = {s: i for i, s in enumerate(dict.fromkeys(seeds))}
    # Graph nodes: items 0..n-1 and seeds n..n+S-1; an item joins its seed and its near-duplicates.
    src, dst = [], []
    for i, s in enumerate(seeds):
        src.append(i)
        dst.append(n + seed_index[s])
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    hashes = []
    for i, r in enumerate(rows):
        m = _minhash(prompt_text(r), num_perm, shingle)
        hashes.append(m)
        lsh.insert(str(i), m)
    dup_edges = 0
    for i, m in enumerate(hashes):
        for j in lsh.query(m):
            j = int(j)
            if j != i and seeds[i] != seeds[j] and m.jaccard(hashes[j]) >= threshold:
                src.append(i)
                dst.append(j)
                dup_edges += 1
    size = n + len(seed_index)
    graph = coo_matrix((np.ones(len(src)), (src, dst)), shape=(size, size))
    _, labels = connected_components(graph, directed=False)
    item_labels = labels[:n]
    families = sorted(set(item_labels.tolist()))
    by_family: dict[int, list[int]] = {f: [] for f in families}
    for i, f in enumerate(item_labels.tolist()):
        by_family[f].append(i)
    seed_families = len(seed_index)
    joined = seed_families - len(families) if seed_families > len(families) else 0

    rng = random.Random(seed)
    order = list(families)
    rng.shuffle(order)
    target = max(1, round(test_size * n))
    test_idx: set[int] = set()
    for f in order:
        if len(test_idx) >= target:
            break
        members = by_family[f]
        # Skip a family that would swallow the training side whole.
        if len(test_idx) + len(members) >= n:
            continue
        test_idx.update(members)
    train = [rows[i] for i in range(n) if i not in test_idx]
    test = [rows[i] for i in range(n) if i in test_idx]
    return SplitResult(train, test, len(families), joined)


def seeds_on_both_sides(train: list[dict], test: list[dict]) -> set[str]:
    a = {str(r.get("seed_id")) for r in train}
    b = {str(r.get("seed_id")) for r in test}
    return a & b
