"""Teacher-client throughput against a zero-latency local OpenAI-compatible server (tests/fake_teacher.py).

The question: with the teacher answering instantly, is orchard's client (cache lookup, SQLite commit of
every call before use, retries, budget) the bottleneck? Baseline, side by side in the same run: the bare
``openai`` SDK (AsyncOpenAI + a semaphore, nothing logged). The server runs in its own process.

    .venv/bin/python benchmarks/synth_throughput.py --n 2000 --concurrency 32

Prints a table and writes benchmarks/results/synth_throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import openai

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fake_teacher import fake_teacher_process, remote_stats  # noqa: E402

from orchard.synth.config import TeacherConfig  # noqa: E402
from orchard.synth.teacher import ChatRequest, Teacher  # noqa: E402


def _messages(i: int, tag: str) -> list[dict]:
    return [{"role": "system", "content": "You write one instruction and its answer as JSON."},
            {"role": "user", "content": f"{tag} seed task number {i}: write a new, different task."}]


async def _bare_sdk(base_url: str, n: int, conc: int, tag: str) -> int:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-local", max_retries=0, timeout=30)
    sem = asyncio.Semaphore(conc)

    async def one(i):
        async with sem:
            r = await client.chat.completions.create(model="fake", messages=_messages(i, tag), temperature=0.7,
                                                     top_p=1.0, max_tokens=256, seed=0)
            return r.choices[0].message.content

    out = await asyncio.gather(*(one(i) for i in range(n)))
    await client.close()
    return sum(1 for x in out if x)


def _teacher(base_url: str, db: Path, conc: int, **kw) -> Teacher:
    cfg = TeacherConfig(base_url=base_url, model="fake", max_concurrency=conc, max_tokens=256, timeout_s=30,
                        backoff_base_s=0.01, backoff_max_s=0.1, **kw)
    return Teacher(cfg, db)


def _row(name: str, n: int, ok: int, secs: float, http: int, note: str = "") -> dict:
    return {"case": name, "items": n, "ok": ok, "seconds": round(secs, 3), "items_per_s": round(n / secs, 1),
            "http_requests": http, "note": note}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="requests per case")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "synth_throughput.json")
    a = ap.parse_args(argv)
    n, conc = a.n, a.concurrency
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="orchard-bench-"))

    with fake_teacher_process(latency_s=0.0) as url:
        asyncio.run(_bare_sdk(url, 50, conc, "warmup"))  # the server's first connections, imports

        def served():
            return remote_stats(url)["requests"]

        s0 = served(); t0 = time.perf_counter()
        ok = asyncio.run(_bare_sdk(url, n, conc, "bare"))
        rows.append(_row("baseline: bare openai SDK (no log)", n, ok, time.perf_counter() - t0, served() - s0))

        db = tmp / "calls.sqlite"
        reqs = [ChatRequest(_messages(i, "orchard"), tag=str(i)) for i in range(n)]
        t = _teacher(url, db, conc)
        s0 = served(); t0 = time.perf_counter()
        res = t.chat_many(reqs, progress=False)
        rows.append(_row("orchard Teacher: cold (SQLite log, commit per call)", n, sum(r.ok for r in res),
                         time.perf_counter() - t0, served() - s0))

        t = _teacher(url, db, conc)
        s0 = served(); t0 = time.perf_counter()
        res = t.chat_many(reqs, progress=False)
        rows.append(_row("orchard Teacher: re-run (all cache hits)", n, sum(r.ok for r in res),
                         time.perf_counter() - t0, served() - s0, "zero HTTP calls expected"))

        t = _teacher(url, tmp / "json.sqlite", conc, response_format_json=True)
        s0 = served(); t0 = time.perf_counter()
        res = t.chat_many([ChatRequest(_messages(i, "json")) for i in range(n)], progress=False)
        rows.append(_row("orchard Teacher: cold, JSON mode (parsed)", n, sum(r.ok for r in res),
                         time.perf_counter() - t0, served() - s0))

    with fake_teacher_process(latency_s=0.0, probs={"500": 0.05, "429": 0.02, "drop": 0.02}, retry_after=0.01) as url:
        t = _teacher(url, tmp / "faults.sqlite", conc, max_retries=10)
        t0 = time.perf_counter()
        res = t.chat_many([ChatRequest(_messages(i, "faults")) for i in range(n)], progress=False)
        rows.append(_row("orchard Teacher: cold, 9% faults (500/429/drop)", n, sum(r.ok for r in res),
                         time.perf_counter() - t0, remote_stats(url)["requests"], "retries included"))

    base = rows[0]["items_per_s"]
    for r in rows:
        r["vs_baseline"] = round(r["items_per_s"] / base, 2)
    result = {
        "benchmark": "synth_throughput",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "openai": openai.__version__,
                    "loadavg": os.getloadavg()},
        "params": {"n": n, "concurrency": conc, "server": "tests/fake_teacher.py, zero latency, own process"},
        "rows": rows,
    }
    w = max(len(r["case"]) for r in rows)
    print(f"{'case':<{w}}  {'items/s':>8}  {'x base':>6}  {'ok':>5}  {'http':>5}  {'s':>6}")
    for r in rows:
        print(f"{r['case']:<{w}}  {r['items_per_s']:>8.1f}  {r['vs_baseline']:>6.2f}  {r['ok']:>5}  "
              f"{r['http_requests']:>5}  {r['seconds']:>6.2f}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
