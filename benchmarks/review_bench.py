"""Review on a live local Argilla server: push and pull of N records, and review-queue search latency at M records.

Baselines, side by side in the same run:
- push again: orchard (lists ids, sends only new rows) vs the SDK's `records.log` of every row (upsert);
- pull: orchard (REST pages of 1,000 + decisions) vs the SDK's record iterator with responses (fetch only);
- queue search: orchard's SQL engine vs the proof-of-concept engine that loads a dataset into Python on every
  search (/work/shared/reference/argilla_sqldb_poc), both serving the same database on two ports.

The queue dataset is pushed through the server up to --seed-records, then grown to --queue records by copying
rows inside SQLite (writes through the server run at ~100 records/s; reads are what is measured here).

    .venv/bin/python benchmarks/review_bench.py --push 10000 --queue 100000

Prints a table and writes benchmarks/results/review_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POC = Path(os.environ.get("ORCHARD_POC_DIR", "/work/shared/reference/argilla_sqldb_poc"))


def _rows(n: int, tag: str) -> list[dict]:
    from orchard.dataio import content_hash

    rnd = random.Random(0)
    out = []
    for i in range(n):
        msgs = [{"role": "user", "content": f"{tag} question {i}: explain topic {rnd.randrange(10**6)} to a farmer."},
                {"role": "assistant", "content": f"Answer {i}: " + " ".join(rnd.choice("abcdefgh") * 4
                                                                             for _ in range(30))}]
        prov = {"method": rnd.choice(["self_instruct", "evol_instruct:deepen"]),
                "judge": {"overall": rnd.randint(1, 5), "scores": {}}}
        out.append({"id": content_hash(msgs), "seed_id": "s", "messages": msgs, "provenance": json.dumps(prov)})
    return out


def _t(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def bench_push_pull(client, n: int) -> dict:
    import argilla as rg
    import krippendorff  # noqa: F401  (imported up front: their import time is not pull time)
    import matplotlib.pyplot  # noqa: F401
    import sklearn.metrics  # noqa: F401
    import statsmodels.stats.inter_rater  # noqa: F401

    from orchard.review.pull import collect, decide, write_outputs
    from orchard.review.push import push_rows, to_record, judge_scale

    rows = _rows(n, "push")
    t_push, out = _t(lambda: push_rows(client, rows, "bench-push", "bench", batch_size=500))
    assert out["pushed"] == n
    t_repush, out2 = _t(lambda: push_rows(client, rows, "bench-push", "bench", batch_size=500))
    assert out2["pushed"] == 0
    ds = client.datasets(name="bench-push", workspace=client.workspaces(name="bench"))
    scale = judge_scale(rows)
    t_repush_sdk, _ = _t(lambda: ds.records.log([to_record(r, "sft", scale) for r in rows], batch_size=500))

    # Responses from the owner on a fifth of the records, in bulk (one-by-one runs at ~15/s).
    n_resp = max(1, n // 5)
    me = client.me.id
    answered = [rg.Record(id=r["id"], fields=to_record(r, "sft", scale).fields,
                          responses=[rg.Response("decision", "accept" if i % 3 else "reject", user_id=me,
                                                 status="submitted")]) for i, r in enumerate(rows[:n_resp])]
    t_resp, _ = _t(lambda: ds.records.log(answered, batch_size=500))

    t_pull, result = _t(lambda: decide(rows, collect(client, ds)))
    with tempfile.TemporaryDirectory() as tmp:
        t_write, summary = _t(lambda: write_outputs(result, Path(tmp)))
    assert summary["counts"]["accepted"] + summary["counts"]["rejected"] == n_resp
    t_pull_sdk, got = _t(lambda: list(ds.records(with_responses=True)))
    assert len(got) == n
    return {
        "records": n, "responses": n_resp,
        "push_s": t_push, "push_records_per_s": n / t_push,
        "repush_orchard_s": t_repush, "repush_sdk_upsert_s": t_repush_sdk,
        "responses_bulk_s": t_resp,
        "pull_orchard_s": t_pull, "pull_sdk_iterate_s": t_pull_sdk, "pull_write_outputs_s": t_write,
    }


def _grow_sqlite(db: Path, dataset_id: str, target: int, owner_id: str, answered_share: float) -> int:
    """Copy the dataset's records inside SQLite until it holds `target` (new ids, external ids, priorities)."""
    con = sqlite3.connect(db, timeout=60)
    ds = uuid.UUID(dataset_id).hex
    base = con.execute("SELECT fields, metadata FROM records WHERE dataset_id=?", (ds,)).fetchall()
    have = len(base)
    rnd = random.Random(1)
    t0 = datetime(2026, 1, 1)
    rec_batch, resp_batch = [], []
    for k in range(target - have):
        fields, meta = base[k % have]
        meta = json.loads(meta)
        meta["review_priority"] = round(rnd.random(), 4)
        rid = uuid.uuid4().hex
        ts = (t0 + timedelta(milliseconds=k)).isoformat(sep=" ")
        rec_batch.append((rid, fields, f"copy-{k}", ds, ts, ts, json.dumps(meta), "pending"))
        if rnd.random() < answered_share:
            resp_batch.append((uuid.uuid4().hex, json.dumps({"decision": {"value": "accept"}}), "submitted", rid,
                               owner_id, ts, ts))
    with con:
        con.executemany("INSERT INTO records (id, fields, external_id, dataset_id, inserted_at, updated_at, metadata, "
                        "status) VALUES (?,?,?,?,?,?,?,?)", rec_batch)
        con.executemany('INSERT INTO responses (id, "values", status, record_id, user_id, inserted_at, updated_at) '
                        "VALUES (?,?,?,?,?,?,?)", resp_batch)
    total = con.execute("SELECT count(*) FROM records WHERE dataset_id=?", (ds,)).fetchone()[0]
    con.close()
    return total


def _queries(dataset_id: str) -> dict:
    pending = {"type": "terms", "scope": {"entity": "response", "property": "status"}, "values": ["pending"]}
    rec_pending = {"type": "terms", "scope": {"entity": "record", "property": "status"}, "values": ["pending"]}
    path = f"/api/v1/me/datasets/{dataset_id}/records/search"
    return {
        # What the web UI asks for when a reviewer opens the queue (1 record per page), first and deep pages.
        "queue first page": (path, {"filters": {"and": [pending, rec_pending]}}, 0, 1),
        "queue deep page": (path, {"filters": {"and": [pending, rec_pending]}}, 50_000, 1),
        "queue by inserted_at": (path, {"filters": {"and": [pending, rec_pending]},
                                        "sort": [{"scope": {"entity": "record", "property": "inserted_at"},
                                                  "order": "asc"}]}, 0, 1),
        "metadata range + sort": (path, {"filters": {"and": [{"type": "range", "scope": {
            "entity": "metadata", "metadata_property": "judge_score"}, "ge": 2, "le": 4}]},
            "sort": [{"scope": {"entity": "metadata", "metadata_property": "review_priority"}, "order": "desc"}]},
            0, 50),
        "text query": (path, {"query": {"text": {"q": "farmer topic"}}}, 0, 50),
    }


def _latency(http, queries: dict, reps: int) -> dict:
    out = {}
    for name, (path, body, offset, limit) in queries.items():
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            r = http.post(path, json=body, params={"offset": offset, "limit": limit, "include": "responses"},
                          timeout=600)
            times.append(time.perf_counter() - t0)
            r.raise_for_status()
        times.sort()
        out[name] = {"p50_ms": 1000 * statistics.median(times),
                     "p95_ms": 1000 * times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))],
                     "n": reps, "total": r.json()["total"]}
    return out


def _poc_server(info, state: dict, port: int, log: Path):
    """The proof-of-concept engine serving the same database on another port (the baseline)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARGILLA_")}
    home = info.data_dir / "argilla"
    env.update(ARGILLA_HOME_PATH=str(home), ARGILLA_SEARCH_ENGINE="sqldb",
               ARGILLA_DATABASE_URL=f"sqlite+aiosqlite:///{home / 'argilla.db'}?check_same_thread=False",
               ARGILLA_REDIS_URL=f"redis://127.0.0.1:{state['redis_port']}/0", HF_HUB_OFFLINE="1")
    py = str(Path(state["env"]) / "bin" / "python")
    return subprocess.Popen([py, str(POC / "run_server.py"), "--port", str(port)], env=env,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--push", type=int, default=10_000, help="records for push/pull")
    ap.add_argument("--queue", type=int, default=100_000, help="records in the queue dataset")
    ap.add_argument("--seed-records", type=int, default=500, help="queue records pushed through the server")
    ap.add_argument("--reps", type=int, default=20, help="repetitions per query (orchard)")
    ap.add_argument("--baseline-reps", type=int, default=3, help="repetitions per query (baseline)")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--baseline-queries", default="queue first page,queue deep page,metadata range + sort",
                    help="comma-separated queries to time on the baseline (each takes seconds at 100k)")
    ap.add_argument("--out", default="review_bench.json", help="file name under benchmarks/results/")
    args = ap.parse_args()

    import httpx

    from orchard.review.client import connect
    from orchard.review.local_server import free_port, read_state, start_server, stop_server
    from orchard.review.push import push_rows

    tmp = Path(tempfile.mkdtemp(prefix="review-bench-"))
    info = start_server(tmp, port=free_port())
    poc = None
    try:
        client = connect(info.url, api_key=info.api_key)
        result = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count()}, "args": vars(args)}
        if args.push:
            result["push_pull"] = bench_push_pull(client, args.push)

        push_rows(client, _rows(args.seed_records, "queue"), "bench-queue", "bench", batch_size=500)
        ds = client.datasets(name="bench-queue", workspace=client.workspaces(name="bench"))
        t_grow, total = _t(lambda: _grow_sqlite(tmp / "argilla" / "argilla.db", str(ds.id), args.queue,
                                                uuid.UUID(str(client.me.id)).hex, 0.2))
        result["queue_records"] = total
        queries = _queries(str(ds.id))
        headers = {"X-Argilla-Api-Key": info.api_key}
        with httpx.Client(base_url=info.url, headers=headers) as http:
            _latency(http, queries, 1)  # warm caches
            result["orchard"] = _latency(http, queries, args.reps)
            t0 = time.perf_counter()
            prog = http.get(f"/api/v1/datasets/{ds.id}/progress").json()
            result["progress_ms"] = 1000 * (time.perf_counter() - t0)
            result["progress"] = prog
        if not args.no_baseline and (POC / "run_server.py").exists():
            port = free_port()
            poc = _poc_server(info, read_state(tmp), port, tmp / "logs" / "poc.log")
            url = f"http://127.0.0.1:{port}"
            for _ in range(200):
                try:
                    if httpx.get(f"{url}/api/v1/me", headers=headers, timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.3)
            with httpx.Client(base_url=url, headers=headers) as http:
                wanted = set(args.baseline_queries.split(","))
                result["baseline_poc"] = _latency(http, {k: v for k, v in queries.items() if k in wanted},
                                                  args.baseline_reps)
    finally:
        if poc is not None:
            os.killpg(poc.pid, 15)
            poc.wait(timeout=30)
        stop_server(tmp)
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nReview benchmark ({result['machine']['cpus']} CPUs)")
    if result.get("push_pull"):
        p = result["push_pull"]
        print(f"push {p['records']} records: {p['push_s']:.1f} s ({p['push_records_per_s']:.0f} records/s)")
        print(f"push again: orchard {p['repush_orchard_s']:.2f} s vs SDK upsert {p['repush_sdk_upsert_s']:.1f} s "
              f"(x{p['repush_sdk_upsert_s'] / p['repush_orchard_s']:.1f})")
        print(f"{p['responses']} responses in bulk: {p['responses_bulk_s']:.1f} s")
        print(f"pull: orchard {p['pull_orchard_s']:.2f} s vs SDK iterate {p['pull_sdk_iterate_s']:.2f} s "
              f"(x{p['pull_sdk_iterate_s'] / p['pull_orchard_s']:.1f}); writing splits, report and plots "
              f"{p['pull_write_outputs_s']:.1f} s")
    if "orchard" not in result:
        return
    print(f"\nqueue search at {result['queue_records']} records (progress {result['progress_ms']:.0f} ms)")
    print(f"{'query':28} {'orchard p50':>12} {'p95':>8} {'baseline p50':>13} {'ratio':>7}")
    for name, o in result["orchard"].items():
        b = result.get("baseline_poc", {}).get(name)
        tail = f"{b['p50_ms']:13.0f} {b['p50_ms'] / o['p50_ms']:6.0f}x" if b else ""
        print(f"{name:28} {o['p50_ms']:10.1f}ms {o['p95_ms']:6.1f}ms {tail}")
    out = ROOT / "benchmarks" / "results" / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    sys.exit(main())
