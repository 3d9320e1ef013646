"""Near-duplicate filtering speed: orchard.synth.dedup (an exact ROUGE-L scan of the whole pool in rapidfuzz's C++)
against the naive pairwise rouge-score filter the Self-Instruct code uses, side by side on the same items.

Data (deterministic, seed 0): N instructions made from the 175 Self-Instruct seed tasks. Each item is either
- a *perturbed seed* (30%): a seed instruction with 1-3 word edits (drop, duplicate, swap neighbours, replace with a
  word from another seed) — mostly near-duplicates that should be removed; or
- a *recombination* (70%): 6-20 words drawn at random from 2-3 seeds' instructions, joined — mostly distinct.
Every item is checked against the 175 seeds and all items kept before it (keep-first), threshold ROUGE-L >= 0.7.

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dedup_speed.py [--n 50000] [--subset 1000]
Prints a table and writes benchmarks/results/dedup_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path

from orchard.synth.dedup import NearDupIndex, naive_rouge_filter
from orchard.synth.methods_config import NearDupConfig
from orchard.synth.seeds import load_seeds

ROOT = Path(__file__).resolve().parents[1]


def make_items(seeds: list[str], n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    vocab = [w for s in seeds for w in s.split()]
    out = []
    for i in range(n):
        if rng.random() < 0.3:
            w = rng.choice(seeds).split()
            for _ in range(rng.randint(1, 3)):
                op, j = rng.randrange(4), rng.randrange(len(w))
                if op == 0 and len(w) > 3:
                    del w[j]
                elif op == 1:
                    w.insert(j, w[j])
                elif op == 2 and j + 1 < len(w):
                    w[j], w[j + 1] = w[j + 1], w[j]
                else:
                    w[j] = rng.choice(vocab)
            text = " ".join(w)
        else:
            pool = [x for s in rng.sample(seeds, rng.randint(2, 3)) for x in s.split()]
            text = " ".join(rng.choice(pool) for _ in range(rng.randint(6, 20)))
        out.append((f"i{i}", text))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--subset", type=int, default=1000, help="items for the side-by-side with the naive filter")
    ap.add_argument("--threshold", type=float, default=0.7)
    args = ap.parse_args()
    seeds = [r["instruction"] for r in load_seeds(ROOT / "data" / "seeds" / "self_instruct_seed_tasks.jsonl")]
    items = make_items(seeds, args.n)
    cfg = NearDupConfig(rouge_threshold=args.threshold)

    def index_filter(its):
        idx = NearDupIndex(cfg)
        idx.add_many((f"seed{i}", s) for i, s in enumerate(seeds))
        t, c = time.perf_counter(), time.process_time()
        kept, dropped = idx.filter(its)
        index_filter.cpu = time.process_time() - c
        return time.perf_counter() - t, kept, dropped, idx.rouge_calls

    load_before = os.getloadavg()[0]
    full_s, full_kept, _, full_calls = index_filter(items)
    full_cpu = index_filter.cpu

    sub = items[: args.subset]
    mh_s, mh_kept, _, _ = index_filter(sub)
    mh_cpu = index_filter.cpu
    t, c = time.perf_counter(), time.process_time()
    nv_kept, _ = naive_rouge_filter(sub, args.threshold, pool=seeds)
    nv_s, nv_cpu = time.perf_counter() - t, time.process_time() - c
    a, b = set(mh_kept), set(nv_kept)
    agree = sum((k in a) == (k in b) for k, _ in sub) / len(sub)
    nv_drop, mh_drop = {k for k, _ in sub} - b, {k for k, _ in sub} - a
    recall = len(nv_drop & mh_drop) / len(nv_drop) if nv_drop else 1.0
    precision = len(nv_drop & mh_drop) / len(mh_drop) if mh_drop else 1.0

    res = {
        "n": args.n, "threshold": args.threshold, "method": "word-count bound (numpy) + exact LCS (rapidfuzz)",
        "cpu_count": os.cpu_count(), "omp_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "load_average_at_start": round(load_before, 2),
        "full": {"seconds": round(full_s, 2), "cpu_seconds": round(full_cpu, 2), "cpu_under_60s": full_cpu < 60, "kept": len(full_kept), "dropped": args.n - len(full_kept),
                 "rouge_calls": full_calls, "under_60s": full_s < 60},
        "subset": {"n": len(sub), "index_s": round(mh_s, 3), "naive_s": round(nv_s, 3),
                   "index_cpu_s": round(mh_cpu, 3), "naive_cpu_s": round(nv_cpu, 3),
                   "cpu_speedup": round(nv_cpu / mh_cpu, 1),
                   "speedup": round(nv_s / mh_s, 1), "decision_agreement": round(agree, 4),
                   "dup_recall_vs_naive": round(recall, 4), "dup_precision_vs_naive": round(precision, 4),
                   "index_kept": len(mh_kept), "naive_kept": len(nv_kept)},
    }
    print(f"{'':28}{'orchard NearDupIndex':>24}{'naive ROUGE-L':>16}{'ratio':>10}")
    print(f"{'subset ' + str(len(sub)) + ' items: seconds':28}{mh_s:>24.2f}{nv_s:>16.2f}{nv_s / mh_s:>9.1f}x")
    print(f"{'subset: CPU seconds':28}{mh_cpu:>24.2f}{nv_cpu:>16.2f}{nv_cpu / mh_cpu:>9.1f}x")
    print(f"{'subset: kept':28}{len(mh_kept):>24}{len(nv_kept):>16}")
    print(f"{'subset: decisions agree':28}{agree:>24.2%}")
    print(f"{'subset: dup recall / prec.':28}{recall:>17.2%} / {precision:.2%}")
    print(f"{'full ' + str(args.n) + ' items: seconds':28}{full_s:>24.2f}{'(not run)':>16}")
    print(f"{'full: CPU seconds':28}{full_cpu:>24.2f}   (1-min load average at start: {load_before:.1f})")
    print(f"{'full: kept / dropped':28}{len(full_kept):>16} / {args.n - len(full_kept)}")
    out = ROOT / "benchmarks" / "results" / "dedup_speed.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
