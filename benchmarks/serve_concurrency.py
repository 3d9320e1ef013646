"""Replies per second from `transformers serve` with 1 vs N concurrent `openai` clients, per server flag set.

Usage: .venv/bin/python benchmarks/serve_concurrency.py MODEL_DIR [--requests 24] [--max-tokens 64]
       [--concurrency 4 8] [--threads 2] [--out serve_concurrency.json]
Prints a table (replies/s and the ratio against the serial, default-flag baseline) and writes
benchmarks/results/serve_concurrency.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai

from orchard.serve import TeacherServer

PROMPT = ("Come up with 2 new tasks, different from these:\nTask 1: Tell me a joke about cats.\n"
          "Task 2: Summarize the text below.\nWrite them one per line, starting at Task 3:")


def run_load(srv: TeacherServer, requests: int, concurrency: int, max_tokens: int) -> dict:
    client = openai.OpenAI(base_url=srv.base_url, api_key="none", max_retries=0, timeout=120)

    def one(i: int):
        t = time.perf_counter()
        r = client.chat.completions.create(model=srv.model, max_tokens=max_tokens, temperature=1.0, seed=i,
                                           messages=[{"role": "user", "content": f"{PROMPT} ({i})"}])
        return time.perf_counter() - t, r.usage.completion_tokens

    one(-1)  # warm-up (first request loads lazily-initialised pieces)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - t0
    lat = sorted(r[0] for r in results)
    toks = sum(r[1] for r in results)
    return {"replies_per_s": requests / wall, "tokens_per_s": toks / wall, "p50_latency_s": lat[len(lat) // 2],
            "wall_s": wall, "completion_tokens": toks}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[4])
    ap.add_argument("--threads", type=int, default=None, help="OMP threads of the server (default 1)")
    ap.add_argument("--out", default="serve_concurrency.json")
    args = ap.parse_args()
    rows = []
    for cb in (False, True):
        try:
            with TeacherServer(args.model, continuous_batching=cb, threads=args.threads) as srv:
                start = srv.start_seconds
                for conc in (1, *args.concurrency):
                    r = run_load(srv, args.requests, conc, args.max_tokens)
                    rows.append({"continuous_batching": cb, "concurrency": conc, "start_s": start, **r})
        except Exception as e:  # a flag set that fails is a result too
            rows.append({"continuous_batching": cb, "error": f"{type(e).__name__}: {str(e)[-300:]}"})
    base = next(r["replies_per_s"] for r in rows if "replies_per_s" in r)
    print(f"{'cont.batching':>13} {'clients':>7} {'replies/s':>9} {'tok/s':>7} {'p50 s':>6} {'vs base':>7} {'start s':>7}")
    for r in rows:
        if "error" in r:
            print(f"{str(r['continuous_batching']):>13} error: {r['error']}")
            continue
        r["ratio_vs_serial_default"] = r["replies_per_s"] / base
        print(f"{str(r['continuous_batching']):>13} {r['concurrency']:>7} {r['replies_per_s']:>9.2f} "
              f"{r['tokens_per_s']:>7.1f} {r['p50_latency_s']:>6.2f} {r['ratio_vs_serial_default']:>6.2f}x "
              f"{r['start_s']:>7.1f}")
    out = Path(__file__).resolve().parent / "results" / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "threads": args.threads, "requests": args.requests, "max_tokens": args.max_tokens,
                               "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
