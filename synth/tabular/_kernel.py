"""Compiled k-nearest-record search under SDMetrics' DCR distance (numba), with early exit.

Every term of the distance is >= 0, so a partial sum that already reaches the current k-th best distance
cannot win: the scan stops there. Category mismatches are counted once per group of reference rows that
share their category values, and whole groups are skipped once their mismatches alone reach the bound.
Clipping, zero ranges and missing values are handled exactly as SDMetrics does, so every pair takes this
one path.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def knn_sums_grouped(qn, rn, rng, qc, g_tuples, g_start, g_count, k):  # pragma: no cover - compiled
    """Per query row, the ``k`` smallest sums of column distances (the caller divides by the columns).

    Reference rows are grouped by their category values: ``rn`` is sorted so that each group's rows are
    contiguous (``g_start``, ``g_count``); ``g_tuples`` holds each group's category codes. A query's category mismatches are counted once per group, groups
    are visited from fewest mismatches up, and the scan ends when the mismatches alone reach the k-th
    best distance (every later group has at least as many).
    """
    n, p = qn.shape
    c = qc.shape[1]
    G = g_tuples.shape[0]
    has_nan = np.isnan(qn).any() or np.isnan(rn).any()
    zero = rng == 0
    out = np.empty((n, k))
    best = np.empty(k)
    mism = np.empty(G, dtype=np.int64)
    bucket = np.empty(c + 2, dtype=np.int64)
    order = np.empty(G, dtype=np.int64)
    for i in range(n):
        for t in range(k):
            best[t] = np.inf
        for b in range(c + 2):
            bucket[b] = 0
        for g in range(G):
            cnt = 0
            for j in range(c):
                if qc[i, j] != g_tuples[g, j]:
                    cnt += 1
            mism[g] = cnt
            bucket[cnt + 1] += 1
        for b in range(1, c + 2):
            bucket[b] += bucket[b - 1]
        for g in range(G):  # counting sort by mismatches
            order[bucket[mism[g]]] = g
            bucket[mism[g]] += 1
        for idx in range(G):
            g = order[idx]
            base = float(mism[g])
            if base >= best[k - 1]:
                break
            for r in range(g_start[g], g_start[g] + g_count[g]):
                bound = best[k - 1]
                acc = base
                for j in range(p):
                    x = qn[i, j]
                    y = rn[r, j]
                    if has_nan and (np.isnan(x) or np.isnan(y)):
                        if not (np.isnan(x) and np.isnan(y)):
                            acc += 1.0  # missing against present
                    elif zero[j]:
                        if x != y:
                            acc += 1.0
                    else:
                        # SDMetrics divides by the range; the same division keeps results bit-close.
                        v = abs(x - y) / rng[j]
                        acc += v if v < 1.0 else 1.0
                    if acc >= bound:
                        break
                if acc < bound:
                    t = k - 1
                    while t > 0 and best[t - 1] > acc:
                        best[t] = best[t - 1]
                        t -= 1
                    best[t] = acc
        for t in range(k):
            out[i, t] = best[t]
    return out
