"""Distance to closest record (DCR), computed exactly as SDMetrics defines it, but vectorised.

SDMetrics' distance between two rows is the mean over columns of a per-column distance:
numerical/datetime ``min(|a - b| / range, 1)`` (range of the reference column; a zero range gives
``a != b``), categorical/boolean ``a != b``; a missing value against a present one counts 1, two missing
values count 0. SDMetrics builds a cross join of both tables in pandas (quadratic memory and time).

Here the search runs in a compiled kernel (``_kernel.py``, numba) that groups reference rows by their
category values and stops as soon as a partial distance reaches the best found so far: exact, and in
practice it touches a small part of all pairs. Without numba, numpy kernels do the same exactly: "easy"
pairs (numbers present and inside the reference's range, reference row complete) as a range-scaled L1
distance (a KD-tree, or scipy's ``cdist`` plus a one-hot matrix product for category matches) and the
other pairs through a chunked numpy computation. Results agree with SDMetrics to floating-point rounding.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.neighbors import NearestNeighbors

try:  # numba comes with anonymeter; without it the numpy kernels below do the same work, slower
    from ._kernel import knn_sums_grouped as _compiled
except ImportError:  # pragma: no cover
    _compiled = None

NUMERIC = ("numerical", "datetime")
CATEGORICAL = ("categorical", "boolean")
_CHUNK_ELEMENTS = 500_000  # distances per chunk: 4 MB blocks stay cache-friendly (measured fastest of 0.1M-2M)
_MAX_TREE_DIMS = 12  # KD-trees prune well only in few dimensions


def numeric_values(s: pd.Series, sdtype: str) -> np.ndarray:
    if sdtype == "datetime":
        dt = pd.to_datetime(s, errors="coerce")
        if getattr(dt.dt, "tz", None) is not None:
            dt = dt.dt.tz_convert(None)
        secs = dt.astype("datetime64[ns]").astype("int64").astype("float64") / 1e9
        return np.where(dt.isna().to_numpy(), np.nan, secs)
    return pd.to_numeric(s, errors="coerce").astype("float64").to_numpy()


def _nan_reduce(fn, x: np.ndarray) -> np.ndarray:
    """Column-wise nanmin/nanmax; an all-missing column gives NaN without numpy's "All-NaN slice" warning."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(x, axis=0)


class _Encoded:
    """Both tables encoded over the same columns: numbers (NaN for missing) and category codes."""

    def __init__(self, query: pd.DataFrame, ref: pd.DataFrame, columns: dict[str, str], range_from: pd.DataFrame | None = None):
        num_cols = [c for c, t in columns.items() if t in NUMERIC]
        cat_cols = [c for c, t in columns.items() if t in CATEGORICAL]
        if not num_cols and not cat_cols:
            raise ValueError("no numerical, datetime, categorical or boolean columns to measure")
        self.d = len(num_cols) + len(cat_cols)
        self.n_codes: list[int] = []
        n, m = len(query), len(ref)
        self.qn = np.column_stack([numeric_values(query[c], columns[c]) for c in num_cols]) if num_cols else np.zeros((n, 0))
        self.rn = np.column_stack([numeric_values(ref[c], columns[c]) for c in num_cols]) if num_cols else np.zeros((m, 0))
        self.rmin = _nan_reduce(np.nanmin, self.rn) if m and num_cols else np.zeros(len(num_cols))
        self.rmax = _nan_reduce(np.nanmax, self.rn) if m and num_cols else np.zeros(len(num_cols))
        self.range = self.rmax - self.rmin  # NaN when the reference column is all missing
        if range_from is not None and num_cols:
            # Scale by another table's ranges (comparing distances to two references on one scale). It
            # must cover the reference, so in-range queries still never clip.
            other = np.column_stack([numeric_values(range_from[c], columns[c]) for c in num_cols])
            self.range = _nan_reduce(np.nanmax, other) - _nan_reduce(np.nanmin, other)
        qc, rc = [], []
        for c in cat_cols:
            # Codes come from the reference's categories only: every query value the reference lacks is
            # at distance 1 from all reference rows, so they can share one "unseen" code (this keeps the
            # one-hot width at the reference's cardinality). Missing matches missing, as in SDMetrics.
            index = pd.Index(pd.unique(ref[c].dropna()))
            na_code, unseen_code = len(index), len(index) + 1
            r = index.get_indexer(ref[c])
            r = np.where(ref[c].isna().to_numpy(), na_code, r)
            q = index.get_indexer(query[c])
            q = np.where(query[c].isna().to_numpy(), na_code, np.where(q < 0, unseen_code, q))
            qc.append(q)
            rc.append(r)
            self.n_codes.append(len(index) + 2)
        self.qc = np.column_stack(qc) if qc else np.zeros((n, 0), dtype=np.int64)
        self.rc = np.column_stack(rc) if rc else np.zeros((m, 0), dtype=np.int64)


def _exact_block(e: _Encoded, qi: np.ndarray, ri: np.ndarray) -> np.ndarray:
    """Exact SDMetrics distances between query rows ``qi`` and reference rows ``ri``, any values.

    One column at a time (2-D arrays): a 3-D broadcast over all columns is several times slower.
    """
    total = np.zeros((len(qi), len(ri)))
    for j in range(e.qn.shape[1]):
        q, r, rng = e.qn[qi, j], e.rn[ri, j], e.range[j]
        diff = np.abs(np.subtract.outer(q, r))
        if rng == 0:
            col = (diff > 0).astype(float)
        else:
            with np.errstate(invalid="ignore"):
                col = np.minimum(diff / rng, 1.0)
        qnan, rnan = np.isnan(q)[:, None], np.isnan(r)[None, :]
        total += np.where(qnan | rnan, np.where(qnan & rnan, 0.0, 1.0), col)
    for j in range(e.qc.shape[1]):
        total += np.not_equal.outer(e.qc[qi, j], e.rc[ri, j])
    return total / e.d


def _onehot(codes: np.ndarray, sizes: list[int]) -> np.ndarray:
    out = np.zeros((len(codes), sum(sizes)), dtype=np.float32)
    offset = 0
    for j, size in enumerate(sizes):
        out[np.arange(len(codes)), offset + codes[:, j]] = 1.0
        offset += size
    return out


class _FastBlock:
    """Distances for in-range queries against complete reference rows: no clipping, no missing values.

    Numbers: an L1 distance of range-scaled values (scipy's cdist). Categories: mismatches = columns -
    matches, and matches are a one-hot dot product (a matrix multiply; float32 is exact for these counts).
    """

    def __init__(self, e: _Encoded, ri: np.ndarray):
        self.e = e
        self.keep = e.range > 0  # zero-range columns contribute 0 for in-range queries
        self.r_num = e.rn[ri][:, self.keep] / e.range[self.keep]
        self.r_hot = _onehot(e.rc[ri], e.n_codes).T if e.qc.shape[1] else None

    def __call__(self, qi: np.ndarray, _ri=None) -> np.ndarray:
        """``d * distance - categorical columns`` (a monotone shift: the k smallest are the same rows).

        Fewer passes over the (chunk x reference) block than the final distance; :meth:`finish` maps back.
        """
        from scipy.spatial.distance import cdist

        e = self.e
        if self.keep.any():
            total = cdist(e.qn[qi][:, self.keep] / e.range[self.keep], self.r_num, "cityblock")
        else:
            total = np.zeros((len(qi), len(self.r_num)))
        if self.r_hot is not None:
            total -= _onehot(e.qc[qi], e.n_codes) @ self.r_hot
        return total

    def finish(self, raw: np.ndarray) -> np.ndarray:
        return (raw + self.e.qc.shape[1]) / self.e.d


def _knn(block, e: _Encoded, qi: np.ndarray, ri: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` smallest distances per query row, computed in chunks of bounded memory."""
    m = len(ri)
    out = np.empty((len(qi), k))
    step = max(1, _CHUNK_ELEMENTS // max(1, m))
    for s in range(0, len(qi), step):
        dist = block(qi[s : s + step], ri)
        if k == 1:
            out[s : s + step, 0] = dist.min(axis=1)
        else:
            part = np.partition(dist, k - 1, axis=1)[:, :k] if m > k else dist
            out[s : s + step] = np.sort(part, axis=1)[:, :k]
    return out


def _pruned_min(fast: _FastBlock, qi: np.ndarray) -> np.ndarray:
    """``min_r (numeric L1 - category matches)`` per query, computing numbers only where they can matter.

    The category matches of a whole chunk are one float32 matrix product. The reference row with the most
    matches gives an upper bound ``u`` on the minimum; since the numeric part is >= 0, only rows with
    ``matches >= -u`` can beat it, and numeric distances are computed for those pairs alone. Chunks where
    pruning leaves too many pairs use the dense kernel. Exact: the bound only skips rows that cannot win.
    """
    e = fast.e
    out = np.empty(len(qi))
    m = fast.r_num.shape[0]
    step = max(1, _CHUNK_ELEMENTS // max(1, m))
    qs_all = e.qn[:, fast.keep] / e.range[fast.keep] if fast.keep.any() else None
    for s in range(0, len(qi), step):
        q = qi[s : s + step]
        matches = _onehot(e.qc[q], e.n_codes) @ fast.r_hot  # exact small integers
        best = matches.argmax(axis=1)
        if qs_all is not None:
            num_best = np.abs(qs_all[q] - fast.r_num[best]).sum(axis=1)
        else:
            num_best = np.zeros(len(q))
        upper = num_best - matches[np.arange(len(q)), best]
        rows, cols = np.nonzero(matches >= (-upper - 1e-9)[:, None])
        if len(rows) > 0.2 * matches.size:  # pruning did not pay: dense kernel for this chunk
            out[s : s + step] = fast(q).min(axis=1)
            continue
        raw = -matches[rows, cols].astype(np.float64)
        if qs_all is not None:
            raw += np.abs(qs_all[q][rows] - fast.r_num[cols]).sum(axis=1)
        res = np.full(len(q), np.inf)
        np.minimum.at(res, rows, raw)
        out[s : s + step] = res
    return out


def _compiled_knn(e: _Encoded, qi: np.ndarray, k: int) -> np.ndarray:
    """The compiled exact kernel (see _kernel.py) for query rows ``qi`` against all reference rows."""
    rng = np.where(np.isnan(e.range), 0.0, e.range)  # an all-missing column: every pair is missing-vs-x
    rc = np.ascontiguousarray(e.rc, dtype=np.int64)
    # Group reference rows by their category values; the kernel visits groups from fewest mismatches.
    tuples, group = np.unique(rc, axis=0, return_inverse=True)
    group = np.asarray(group).ravel()
    order = np.argsort(group, kind="stable")
    count = np.bincount(group, minlength=len(tuples)).astype(np.int64)
    start = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)
    sums = _compiled(
        np.ascontiguousarray(e.qn[qi]), np.ascontiguousarray(e.rn[order]), rng,
        np.ascontiguousarray(e.qc[qi], dtype=np.int64), np.ascontiguousarray(tuples, dtype=np.int64), start, count, k,
    )
    return sums / e.d


def nearest_distances(
    query: pd.DataFrame, reference: pd.DataFrame, columns: dict[str, str], k: int = 1, range_from: pd.DataFrame | None = None
) -> np.ndarray:
    """Distances from each query row to its ``k`` nearest reference rows, shape ``(len(query), k)``, ascending.

    ``columns`` maps column name to sdtype (numerical, datetime, categorical, boolean); other columns
    are ignored. With ``k=1`` the first column equals SDMetrics' ``calculate_dcr``. ``range_from`` (a
    table containing ``reference``'s rows) sets the numeric ranges instead of ``reference``.
    """
    if len(reference) == 0:
        raise ValueError("the reference table is empty")
    e = _Encoded(query, reference, columns, range_from)
    if _compiled is not None and len(query) and e.qc.shape[1]:
        k_eff = min(k, len(reference))
        num_cols = [c for c, t in columns.items() if t in NUMERIC]
        unseen = np.all(e.qc == np.asarray(e.n_codes) - 1, axis=1)
        if num_cols and unseen.any():
            # Rows whose every category is absent from the reference mismatch all reference rows in all
            # categories: a constant, so their numbers alone decide (the KD-tree path, below).
            out = np.empty((len(query), k_eff))
            nums = nearest_distances(query.iloc[np.flatnonzero(unseen)], reference, {c: columns[c] for c in num_cols}, k_eff, range_from)
            out[unseen] = (nums * len(num_cols) + e.qc.shape[1]) / e.d
            if (~unseen).any():
                out[~unseen] = _compiled_knn(e, np.flatnonzero(~unseen), k_eff)
            return out
        return _compiled_knn(e, np.arange(len(query)), k_eff)
    k_eff = min(k, len(reference))
    n = len(query)
    out = np.full((n, k_eff), np.inf)
    if n == 0:
        return out
    ref_complete = ~np.isnan(e.rn).any(axis=1)
    with np.errstate(invalid="ignore"):
        in_range = (e.qn >= e.rmin) & (e.qn <= e.rmax)  # False for NaN
    easy = in_range.all(axis=1)
    hard_q, easy_q = np.flatnonzero(~easy), np.flatnonzero(easy)
    tree_r, rest_r = np.flatnonzero(ref_complete), np.flatnonzero(~ref_complete)
    if len(easy_q) and len(tree_r):
        kk = min(k_eff, len(tree_r))
        keep = e.range > 0
        if e.qc.shape[1] == 0 and keep.sum() <= _MAX_TREE_DIMS:
            # Few numeric columns only: a KD-tree (sub-quadratic) on range-scaled values.
            nn = NearestNeighbors(n_neighbors=kk, metric="manhattan", algorithm="kd_tree")
            nn.fit(e.rn[tree_r][:, keep] / e.range[keep])
            dist, _ = nn.kneighbors(e.qn[easy_q][:, keep] / e.range[keep])
            out[easy_q, :kk] = dist / e.d
        else:
            fast = _FastBlock(e, tree_r)
            if kk == 1 and fast.r_hot is not None:
                out[easy_q, 0] = fast.finish(_pruned_min(fast, easy_q))
            else:
                out[easy_q, :kk] = fast.finish(_knn(fast, e, easy_q, tree_r, kk))
    if len(easy_q) and len(rest_r):
        extra = _knn(lambda qi, ri: _exact_block(e, qi, ri), e, easy_q, rest_r, min(k_eff, len(rest_r)))
        out[easy_q] = np.sort(np.hstack([out[easy_q], extra]), axis=1)[:, :k_eff]
    if len(hard_q):
        out[hard_q] = _knn(lambda qi, ri: _exact_block(e, qi, ri), e, hard_q, np.arange(len(e.rn)), k_eff)
    return out


def dcr(query: pd.DataFrame, reference: pd.DataFrame, columns: dict[str, str], range_from: pd.DataFrame | None = None) -> np.ndarray:
    """Distance to closest record of each query row in ``reference`` (SDMetrics' definition)."""
    return nearest_distances(query, reference, columns, k=1, range_from=range_from)[:, 0]


def nndr(query: pd.DataFrame, reference: pd.DataFrame, columns: dict[str, str]) -> np.ndarray:
    """Nearest-neighbour distance ratio: closest over second-closest distance (0 for an exact copy)."""
    d = nearest_distances(query, reference, columns, k=2)
    if d.shape[1] < 2:
        return np.zeros(len(d))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(d[:, 0] == 0, 0.0, d[:, 0] / d[:, 1])
