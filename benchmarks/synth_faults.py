"""`orchard synth instructions` under teacher faults, as a user runs it (the CLI in a child process), against the
project's fault-injecting OpenAI-compatible server (tests/fake_teacher.py) in front of a deterministic upstream
(tests/synth_responder.py).

Three runs of the same command (Self-Instruct, ``--num N``), each into its own output folder:
  clean   no faults: the rows every other run must end with;
  heavy   heavy faults (500, 503, 429 with Retry-After, slow past the timeout, malformed, truncated, empty, dropped),
          then the same command again against the healthy upstream (the resume);
  kill    light faults with truncation on; SIGKILL once half the clean run's calls were answered; the same command
          again under the same faults (the resume), then once more against the healthy upstream.
For each: pairs asked, written, lost (by reason), calls paid twice (requests whose complete answer the server sent
more than once: the call log must have made every re-run free), exit code, and whether the rows equal the clean run's.

    .venv/bin/python benchmarks/synth_faults.py --num 300     # writes benchmarks/results/synth_faults.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from fake_teacher import FakeTeacher, FaultPlan  # noqa: E402
from synth_responder import responder  # noqa: E402

SEEDS = ROOT / "data" / "seeds" / "self_instruct_seed_tasks.jsonl"
HEAVY = {"500": 0.08, "503": 0.05, "429": 0.05, "timeout": 0.02, "malformed": 0.05, "truncated": 0.10,
         "empty_choices": 0.03, "empty_content": 0.03, "drop": 0.04}  # 45% of requests meet a fault
LIGHT_TRUNCATING = {"truncated": 0.15, "500": 0.05, "drop": 0.02}


def cmd(url: str, out: Path, num: int) -> list[str]:
    return [sys.executable, "-m", "orchard.cli", "synth", "instructions", str(SEEDS), "--out", str(out),
            "--base-url", url, "--model", "fake", "--num", str(num), "--concurrency", "8", "--timeout", "2"]


def env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))


def run(url: str, out: Path, num: int) -> dict:
    t0 = time.perf_counter()
    r = subprocess.run(cmd(url, out, num), env=env(), capture_output=True, text=True)
    return {"exit_code": r.returncode, "seconds": round(time.perf_counter() - t0, 1),
            "last_line": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""}


def outcome(out: Path) -> dict:
    from orchard.dataio import read_manifest

    oc = read_manifest(out).get("result", {}).get("outcome", {})
    return {k: oc.get(k) for k in ("status", "asked", "written", "lost", "lost_reasons")}


def ids(out: Path) -> list[str]:
    from orchard.dataio import read_rows

    return [r["id"] for r in read_rows(out)] if (out / "train.parquet").exists() else []


def paid_twice(*servers) -> int:
    """Requests (full bodies) whose complete answer was sent more than once, over all the servers given."""
    from collections import Counter

    c: Counter = Counter()
    for s in servers:
        c.update(s.stats()["ok_by_hash"])
    return sum(1 for v in c.values() if v > 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num", type=int, default=300)
    ap.add_argument("--seed", type=int, default=7, help="the fault plans' seed")
    a = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="orchard-faults-"))
    res: dict = {"num": a.num, "heavy_faults": HEAVY, "kill_faults": LIGHT_TRUNCATING}

    with FakeTeacher(responder=responder) as srv:
        res["clean"] = {**run(srv.base_url, d / "clean", a.num), **outcome(d / "clean"),
                        "calls": srv.stats()["requests"]}
    clean_ids = ids(d / "clean")

    plan = FaultPlan(HEAVY, seed=a.seed, retry_after=0.2, timeout_sleep_s=2.5)
    with FakeTeacher(responder=responder, faults=plan) as bad, FakeTeacher(responder=responder) as good:
        h = {**run(bad.base_url, d / "heavy", a.num), **outcome(d / "heavy"), "faults": bad.stats()["faults"],
             "requests": bad.stats()["requests"], "same_rows_as_clean": ids(d / "heavy") == clean_ids}
        h["resume_on_healthy"] = {**run(good.base_url, d / "heavy", a.num), **outcome(d / "heavy"),
                                  "requests": good.stats()["requests"],
                                  "same_rows_as_clean": ids(d / "heavy") == clean_ids}
        h["paid_twice"] = paid_twice(bad, good)
    res["heavy"] = h

    plan = FaultPlan(LIGHT_TRUNCATING, seed=a.seed, retry_after=0.2)
    with FakeTeacher(responder=responder, faults=plan, latency_s=0.01) as bad, \
            FakeTeacher(responder=responder) as good:
        p = subprocess.Popen(cmd(bad.base_url, d / "kill", a.num), env=env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        half = res["clean"]["calls"] // 2
        while bad.stats()["ok"] < half and p.poll() is None:
            time.sleep(0.01)
        p.send_signal(signal.SIGKILL)
        p.wait()
        k = {"killed_after_answers": bad.stats()["ok"], "output_after_kill": (d / "kill").exists(),
             "stale_temps_after_kill": len(list(d.glob(".tmp-kill-*")))}
        k["resume"] = {**run(bad.base_url, d / "kill", a.num), **outcome(d / "kill"),
                       "same_rows_as_clean": ids(d / "kill") == clean_ids,
                       "stale_temps_after_resume": len(list(d.glob(".tmp-kill-*")))}
        k["faults"] = bad.stats()["faults"]
        k["resume_on_healthy"] = {**run(good.base_url, d / "kill", a.num), **outcome(d / "kill"),
                                  "requests": good.stats()["requests"],
                                  "same_rows_as_clean": ids(d / "kill") == clean_ids}
        k["paid_twice"] = paid_twice(bad, good)
    res["kill"] = k

    out = ROOT / "benchmarks" / "results" / "synth_faults.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
