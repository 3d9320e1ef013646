"""Teacher-client throughput against a zero-latency local OpenAI-compatible server (tests/fake_teacher.py).

The question: with the teacher answering instantly, is orchard's client (cache lookup, SQLite commit of
every call before use, retries, budget) the bottleneck? Baseline, side by side in the same run: the bare
``openai`` SDK as most code uses it (AsyncOpenAI with its default httpx2 transport, typed
``chat.completions.create``, a semaphore, nothing logged). orchard runs with its default ``direct`` transport
(aiohttp without the SDK) and, for comparison, through the SDK on its aiohttp transport and on its default one. The server
runs in its own process.

    .venv/bin/python benchmarks/synth_throughput.py --n 2000 --concurrency 32

Prints a table and writes benchmarks/results/synth_throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import openai

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fake_teacher import fake_teacher_process, remote_stats  # noqa: E402

from orchard.synth.teacher import ChatRequest, Teacher, TeacherConfig  # noqa: E402


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


def _teacher(base_url: str, db: Path, conc: int, transport: str = "auto", **kw) -> Teacher:
    cfg = TeacherConfig(base_url=base_url, model="fake", max_concurrency=conc, max_tokens=256, timeout_s=30,
                        backoff_base_s=0.01, backoff_max_s=0.1, **kw)
    return Teacher(cfg, db, transport=transport)


def _cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _cpu_pids(pids: list[int]) -> float:
    """CPU seconds used so far by the server processes (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / tick


class _Case:
    """Measure one case: wall time, this process's CPU (the client) and the server's CPU."""

    def __init__(self, srv):
        self.srv = srv

    def __enter__(self):
        self.s0, self.c0, self.k0 = remote_stats(self.srv.base_url)["requests"], _cpu_self(), _cpu_pids(self.srv.pids)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.secs = time.perf_counter() - self.t0
        self.client_cpu, self.server_cpu = _cpu_self() - self.c0, _cpu_pids(self.srv.pids) - self.k0
        self.http = remote_stats(self.srv.base_url)["requests"] - self.s0

    def row(self, name: str, n: int, ok: int, note: str = "") -> dict:
        return {"case": name, "items": n, "ok": ok, "seconds": round(self.secs, 3),
                "items_per_s": round(n / self.secs, 1), "http_requests": self.http,
                "client_cpu_ms_per_item": round(1000 * self.client_cpu / n, 3),
                "client_cpu_util": round(self.client_cpu / self.secs, 2),
                "server_cpu_util": round(self.server_cpu / self.secs, 2), "note": note}


def _micro(n: int = 5000) -> dict:
    """CPU per call of orchard's own steps, measured in isolation (process time, microseconds)."""
    from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

    from orchard.synth.teacher import CallLog

    t = _teacher("http://127.0.0.1:9/v1", Path(tempfile.mkdtemp()) / "m.sqlite", 8)
    reqs = [ChatRequest(_messages(i, "micro")) for i in range(n)]
    out = {}
    c0 = time.process_time()
    keys = [t.request_key(r) for r in reqs]
    out["cache_key"] = (time.process_time() - c0) / n
    c0 = time.process_time()
    for k in keys:
        t.log.lookup(k)
    out["cache_lookup"] = (time.process_time() - c0) / n

    async def one():
        return 1

    async def retried():
        for _ in range(n):
            async for attempt in AsyncRetrying(stop=stop_after_attempt(7), wait=wait_random_exponential(1, max=30),
                                               retry=retry_if_exception_type(ValueError), reraise=True):
                with attempt:
                    await one()

    c0 = time.process_time()
    asyncio.run(retried())
    out["tenacity_wrapper"] = (time.process_time() - c0) / n
    row = dict(key="k", status="ok", cached=0, model="fake", endpoint="127.0.0.1:1", tag="t",
               request_json={"messages": _messages(0, "micro")}, response_text="x" * 400, finish_reason="stop",
               prompt_tokens=30, completion_tokens=100, cost_usd=0.0, latency_s=0.01, attempts=1, error=None)
    log = CallLog(Path(tempfile.mkdtemp()) / "w.sqlite")
    c0 = time.process_time()
    for i in range(n // 5):
        log.record_many([dict(row, key=f"a{i}")])
    out["log_row_own_commit"] = (time.process_time() - c0) / (n // 5)
    c0 = time.process_time()
    for i in range(0, n, 16):
        log.record_many([dict(row, key=f"b{i + j}") for j in range(16)])
    out["log_row_group_commit_16"] = (time.process_time() - c0) / n
    return {k: round(v * 1e6, 1) for k, v in out.items()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="requests per case")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--server-workers", type=int, default=1, help="fake-server processes sharing the port")
    ap.add_argument("--repeats", type=int, default=3, help="rounds; each case reports its median round")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "synth_throughput.json")
    a = ap.parse_args(argv)
    n, conc = a.n, a.concurrency
    tmp = Path(tempfile.mkdtemp(prefix="orchard-bench-"))
    runs: dict[str, list[dict]] = {}

    def add(c: "_Case", name: str, ok: int, note: str = "") -> None:
        runs.setdefault(name, []).append(c.row(name, n, ok, note))

    # Cases are interleaved round by round and each reported as its median round, so that a burst of
    # load from other processes on a shared machine hits all cases alike.
    for rnd in range(a.repeats):
        with fake_teacher_process(latency_s=0.0, workers=a.server_workers) as srv:
            url = srv.base_url
            asyncio.run(_bare_sdk(url, 50, conc, f"warmup{rnd}"))  # first connections, imports

            with _Case(srv) as c:
                ok = asyncio.run(_bare_sdk(url, n, conc, f"bare{rnd}"))
            add(c, "baseline: bare openai SDK (no log)", ok)

            db = tmp / f"calls{rnd}.sqlite"
            reqs = [ChatRequest(_messages(i, f"orchard{rnd}"), tag=str(i)) for i in range(n)]
            with _Case(srv) as c:
                t = _teacher(url, db, conc)
                res = t.chat_many(reqs, progress=False)
            add(c, f"orchard Teacher: cold ({t.transport} transport)", sum(r.ok for r in res))

            with _Case(srv) as c:
                reqs_a = [ChatRequest(_messages(i, f"sdkaio{rnd}")) for i in range(n)]
                res = _teacher(url, tmp / f"sdkaio{rnd}.sqlite", conc, transport="aiohttp").chat_many(
                    reqs_a, progress=False)
            add(c, "orchard Teacher: cold (SDK on its aiohttp transport)", sum(r.ok for r in res))

            with _Case(srv) as c:
                reqs_h = [ChatRequest(_messages(i, f"httpx{rnd}")) for i in range(n)]
                res = _teacher(url, tmp / f"httpx{rnd}.sqlite", conc, transport="httpx").chat_many(reqs_h,
                                                                                                  progress=False)
            add(c, "orchard Teacher: cold (SDK default httpx2 transport)", sum(r.ok for r in res))

            with _Case(srv) as c:
                res = _teacher(url, db, conc).chat_many(reqs, progress=False)
            add(c, "orchard Teacher: re-run (all cache hits)", sum(r.ok for r in res), "zero HTTP calls expected")

            with _Case(srv) as c:
                t = _teacher(url, tmp / f"json{rnd}.sqlite", conc, response_format_json=True)
                res = t.chat_many([ChatRequest(_messages(i, f"json{rnd}")) for i in range(n)], progress=False)
            add(c, "orchard Teacher: cold, JSON mode (parsed)", sum(r.ok for r in res))

        with fake_teacher_process(latency_s=0.0, probs={"500": 0.05, "429": 0.02, "drop": 0.02}, retry_after=0.01,
                                  workers=a.server_workers, seed=rnd) as srv:
            with _Case(srv) as c:
                t = _teacher(srv.base_url, tmp / f"faults{rnd}.sqlite", conc, max_retries=10)
                res = t.chat_many([ChatRequest(_messages(i, f"faults{rnd}")) for i in range(n)], progress=False)
            add(c, "orchard Teacher: cold, 9% faults (500/429/drop)", sum(r.ok for r in res), "retries included")

    rows = []
    for name, rs in runs.items():
        rs = sorted(rs, key=lambda r: r["items_per_s"])
        med = dict(rs[len(rs) // 2])
        med["items_per_s_rounds"] = [r["items_per_s"] for r in rs]
        # Load-independent: what one fully free core could drive, from the client's CPU per item.
        med["items_per_free_core_s"] = round(1000 / med["client_cpu_ms_per_item"], 1)
        rows.append(med)

    micro = _micro()
    base = rows[0]["items_per_s"]
    for r in rows:
        r["vs_baseline"] = round(r["items_per_s"] / base, 2)
    result = {
        "benchmark": "synth_throughput",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "openai": openai.__version__,
                    "loadavg": os.getloadavg()},
        "params": {"n": n, "concurrency": conc, "repeats": a.repeats,
                   "server": f"tests/fake_teacher.py, zero latency, {a.server_workers} process(es)"},
        "rows": rows,
        "orchard_overhead_us_per_call": micro,
    }
    w = max(len(r["case"]) for r in rows)
    print(f"{'case':<{w}}  {'items/s':>8}  {'x base':>6}  {'ok':>5}  {'http':>5}  {'s':>6}  "
          f"{'cli ms/it':>9}  {'/core/s':>7}  {'cli cpu':>7}  {'srv cpu':>7}")
    for r in rows:
        print(f"{r['case']:<{w}}  {r['items_per_s']:>8.1f}  {r['vs_baseline']:>6.2f}  {r['ok']:>5}  "
              f"{r['http_requests']:>5}  {r['seconds']:>6.2f}  {r['client_cpu_ms_per_item']:>9.3f}  "
              f"{r['items_per_free_core_s']:>7.0f}  "
              f"{r['client_cpu_util']:>7.2f}  {r['server_cpu_util']:>7.2f}")
    print("median of rounds. cli ms/it: client CPU per item; /core/s: items/s one free core could drive (1000 / cli "
          "ms/it); cpu columns: cores busy on average (1.00 = one core)")
    print("orchard's own CPU per call (µs): " + ", ".join(f"{k} {v}" for k, v in micro.items()))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
