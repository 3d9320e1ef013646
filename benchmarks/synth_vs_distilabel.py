"""Self-Instruct end to end: orchard's ``instructions_stage`` vs distilabel 1.5's Self-Instruct pipeline, side by
side in one run, against the same zero-latency fake teacher (tests/fake_teacher.py, one process each for a clean
server and a faulty one, same scripted responder), same seeds, same number of items asked, same concurrency,
timeout and retry count.

Scenarios: (1) no faults; (2) faults (5% 500, 3% 429 with Retry-After 1 s, 2% dropped connections, 2% malformed
JSON bodies, 2% empty ``choices``); (3) no faults, the run killed with SIGKILL midway (when half of its clean run's
completed calls are served) and started again on the same work/cache folder; (4) the same with SIGINT to the
process group instead (Ctrl+C: the graceful stop distilabel documents before resuming from its cache).

Per run: items asked, items delivered (non-empty instruction and response), lost, HTTP calls, calls repeated (a
request body hash served successfully more than once, from the server's per-hash counters), wall seconds of the
whole process (interpreter start and imports included) and of the generation alone.

distilabel runs in its own venv (created once at ~/.cache/orchard/distilabel-env: ``distilabel[openai]==1.5.3``,
``openai==1.59.9`` and ``requests``; it never touches .venv) through benchmarks/distilabel_self_instruct.py.

    .venv/bin/python benchmarks/synth_vs_distilabel.py --seeds 60 --per-seed 5 --concurrency 16

Prints a table with orchard / distilabel ratios and writes benchmarks/results/synth_vs_distilabel.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fake_teacher import FakeTeacher, FaultPlan, remote_stats
from synth_responder import TOPICS, VERBS, _h
from synth_responder import responder as synth_responder

SEED_FILE = ROOT / "data" / "seeds" / "self_instruct_seed_tasks.jsonl"
DL_VERSION = "1.5.3"
DL_OPENAI = "openai==1.59.9"
DL_ENV = Path(os.environ.get("ORCHARD_DISTILABEL_ENV", Path.home() / ".cache" / "orchard" / "distilabel-env"))
DL_SCRIPT = ROOT / "benchmarks" / "distilabel_self_instruct.py"
FAULTS = {"500": 0.05, "429": 0.03, "drop": 0.02, "malformed": 0.02, "empty_choices": 0.02}
RETRY_AFTER_S = 1.0
# Stop-and-resume scenarios: SIGKILL (a crash, OOM kill) or SIGINT to the process group (Ctrl+C, the stop
# distilabel documents for resuming from its cache), sent when half of the clean run's calls are served.
STOP_SIGNALS = {"kill_resume": signal.SIGKILL, "interrupt_resume": signal.SIGINT}

# -- the scripted teacher (shared by both systems) ----------------------------------------------------------

_SYL = ["ka", "lo", "mi", "ren", "tas", "vo", "pel", "dar", "sin", "quo", "bel", "tor", "nu", "fes", "gal", "hir"]


def _word(k: int) -> str:
    return "".join(_SYL[(k >> (4 * j)) % 16] for j in range(2 + k % 2))


def new_task(*key) -> str:
    """A plausible new task, with four made-up words so that tasks are not near-duplicates of each other (a good
    teacher's tasks are diverse; orchard's near-dup filter would otherwise make it ask for more)."""
    k = _h(*key)
    w = [_word(k >> (12 * j)) for j in range(4)]
    return f"{VERBS[k % len(VERBS)]} {w[0]} {w[1]} in {TOPICS[(k // 7) % len(TOPICS)]} for {w[2]} {w[3]}."


def bench_responder(messages: list[dict], body: dict) -> str:
    """Both systems' new-task prompts get the same kind of answer (N diverse tasks, one per line, in the format
    each prompt asks for); every other prompt (classify, instance, response) goes to tests/synth_responder."""
    p = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    m = re.match(r"# Task Description\nDevelop (\d+) user queries", p)  # distilabel's SelfInstruct template
    if m:
        return "\n".join(new_task(p, body.get("temperature"), i) for i in range(int(m.group(1))))
    m = re.match(r"Come up with (\d+)", p)  # orchard's bootstrap template
    if m:
        first = int(re.search(r"starting at Task (\d+)", p).group(1))
        return "\n".join(f"Task {first + i}: {new_task(p, body.get('seed'), i)}" for i in range(int(m.group(1))))
    return synth_responder(messages, body, messy=False)


def serve(faults: bool, seed: int) -> None:
    plan = FaultPlan(FAULTS, seed=seed, retry_after=RETRY_AFTER_S) if faults else None
    srv = FakeTeacher(responder=bench_responder, faults=plan).start()
    print(f"PORT {srv.port}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        time.sleep(3600)


class Server:
    """A fake teacher in its own process (its own GIL), full per-hash stats over GET /_stats."""

    def __init__(self, faults: bool, seed: int, log: Path):
        cmd = [sys.executable, __file__, "--serve"] + (["--faults"] if faults else []) + ["--fault-seed", str(seed)]
        with open(log, "a") as lf:  # clients killed mid-request make the server log connection resets
            self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=lf, text=True)
        line = self.p.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"fake teacher did not start: {line!r}")
        self.base_url = f"http://127.0.0.1:{int(line.split()[1])}/v1"

    def stats(self) -> dict:
        return remote_stats(self.base_url)

    def cpu_s(self) -> float:
        """CPU seconds the server process has used so far, all its threads (Linux /proc)."""
        fields = Path(f"/proc/{self.p.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        self.p.terminate()
        self.p.wait(10)


def diff_stats(before: dict, after: dict) -> dict:
    ok = {h: n - before["ok_by_hash"].get(h, 0) for h, n in after["ok_by_hash"].items()}
    return {"http_calls": after["requests"] - before["requests"], "ok_calls": after["ok"] - before["ok"],
            "calls_repeated": sum(max(0, n - 1) for n in ok.values()),
            "faults": {k: v - before["faults"].get(k, 0) for k, v in after["faults"].items()
                       if k != "ok" and v - before["faults"].get(k, 0)}}


# -- orchard, in a child process (so both systems pay their interpreter start and imports) -------------------


def run_orchard_child(a) -> None:
    t_import = time.perf_counter()
    from orchard.synth import api
    from orchard.synth.teacher import TeacherConfig
    from orchard.synth.methods_config import SelfInstructConfig, SynthConfig

    # The openai SDK's own retry delays are 0.5 s doubling to 8 s; orchard's backoff is set the same.
    tc = TeacherConfig(base_url=a.base_url, model="fake", max_concurrency=a.concurrency, timeout_s=a.timeout,
                       max_retries=a.max_retries, backoff_base_s=0.5, backoff_max_s=8.0, max_tokens=512,
                       transport=a.orchard_transport)
    cfg = SynthConfig(num=a.num, report=False, self_instruct=SelfInstructConfig(
        tasks_per_prompt=a.per_seed, prompts_per_round=a.concurrency, max_rounds=100, temperature=1.0,
        identify_classification=a.orchard_classify,
        max_tokens=512, response_temperature=0.7, response_max_tokens=512))
    t0 = time.perf_counter()
    man = api.instructions_stage(a.seed_file, Path(a.out), Path(a.work), cfg, tc)
    print(json.dumps({"gen_s": round(time.perf_counter() - t0, 3), "import_s": round(t0 - t_import, 3),
                      "kept": man["counts"]["kept"]}), flush=True)


def warm_orchard(a, sizes: list[int]) -> list[dict]:
    """orchard's stage run several times in this one process against a clean server: the first run pays the
    stage's lazy imports (rouge_score pulls in nltk), the later ones show the stage's own rate. Not side by side
    with distilabel: a supplement to the end-to-end rows."""
    from orchard.synth import api
    from orchard.synth.teacher import TeacherConfig
    from orchard.synth.methods_config import SelfInstructConfig, SynthConfig

    tmp = Path(tempfile.mkdtemp(prefix="orchard-warm-"))
    seed_file = tmp / "seeds.jsonl"
    seed_file.write_text("\n".join(SEED_FILE.read_text().splitlines()[: a.seeds]) + "\n")
    srv = Server(False, 0, tmp / "server.log")
    out = []
    try:
        tc = TeacherConfig(base_url=srv.base_url, model="fake", max_concurrency=a.concurrency, timeout_s=a.timeout,
                           max_retries=a.max_retries, backoff_base_s=0.5, backoff_max_s=8.0, max_tokens=512)
        for i, n in enumerate(sizes):
            cfg = SynthConfig(num=n, seed=i, report=False, self_instruct=SelfInstructConfig(
                tasks_per_prompt=a.per_seed, prompts_per_round=a.concurrency, max_rounds=1000, temperature=1.0,
                identify_classification=a.orchard_classify, max_tokens=512, response_temperature=0.7,
                response_max_tokens=512))
            before = srv.stats()
            t0 = time.perf_counter()
            man = api.instructions_stage(seed_file, tmp / f"o{i}", tmp / f"w{i}", cfg, tc)
            secs = time.perf_counter() - t0
            d = diff_stats(before, srv.stats())
            out.append({"run": i + 1, "asked": n, "delivered": man["counts"]["kept"], "seconds": round(secs, 2),
                        "items_per_s": round(man["counts"]["kept"] / secs, 1), "http_calls": d["http_calls"],
                        "note": "first run in the process: includes the stage's lazy imports" if i == 0 else ""})
            print(f"  warm orchard run {i + 1}: {out[-1]}", flush=True)
    finally:
        srv.close()
    return out


def orchard_cmd(url: str, seed_file: Path, out: Path, work: Path, a, num: int | None = None) -> list[str]:
    return [sys.executable, __file__, "--orchard-child", "--base-url", url, "--seed-file", str(seed_file),
            "--out", str(out), "--work", str(work), "--num", str(num or a.seeds * a.per_seed), "--per-seed",
            str(a.per_seed), "--concurrency", str(a.concurrency), "--timeout", str(a.timeout), "--max-retries",
            str(a.max_retries), "--orchard-transport", a.orchard_transport] + (
                ["--orchard-classify"] if a.orchard_classify else [])


def orchard_delivered(out: Path) -> int:
    if not (out / "train.parquet").exists():
        return 0
    from orchard.dataio import read_rows

    n = 0
    for r in read_rows(out):
        msgs = r["messages"]
        if msgs[0]["content"].strip() and msgs[-1]["role"] == "assistant" and msgs[-1]["content"].strip():
            n += 1
    return n


# -- distilabel, in its own venv -------------------------------------------------------------------------------


def ensure_distilabel_env() -> Path:
    py = DL_ENV / "bin" / "python"
    if not py.exists():  # python -m venv from a venv's interpreter builds on the base interpreter
        subprocess.run([sys.executable, "-m", "venv", str(DL_ENV)], check=True)
        # openai pinned to the 1.x of distilabel 1.5.3's release month; requests is imported but not declared.
        subprocess.run([str(py), "-m", "pip", "install", "-q", f"distilabel[openai]=={DL_VERSION}", DL_OPENAI,
                        "requests"], check=True)
    return py


def distilabel_cmd(py: Path, url: str, seeds_json: Path, out: Path, cache: Path, a) -> list[str]:
    return [str(py), str(DL_SCRIPT), "--base-url", url, "--seeds", str(seeds_json), "--out", str(out),
            "--cache-dir", str(cache), "--num-instructions", str(a.per_seed), "--batch-size", str(a.concurrency),
            "--timeout", str(a.timeout), "--max-retries", str(a.max_retries)]


def distilabel_delivered(out: Path, seeds: list[str], per_seed: int) -> int:
    if not out.exists():
        return 0
    got: dict[str, int] = {}
    for line in out.read_text().splitlines():
        r = json.loads(line)
        if (r.get("instruction") or "").strip() and (r.get("generation") or "").strip():
            got[r["input"]] = got.get(r["input"], 0) + 1
    asked: dict[str, int] = {}
    for s in seeds:  # a seed listed k times (--sizes cycles the seed tasks) is asked k * per_seed items
        asked[s] = asked.get(s, 0) + per_seed
    return sum(min(n, got.get(s, 0)) for s, n in asked.items())


# -- one run -----------------------------------------------------------------------------------------------------


def run_child(cmd: list[str], srv: Server, log: Path, timeout_s: float, stop_at_ok: int | None = None,
              stop_signal: int = signal.SIGKILL) -> dict:
    """Run ``cmd`` to the end, or send ``stop_signal`` to its whole process group once the server has served
    ``stop_at_ok`` successful calls since the start (SIGINT to the group is what Ctrl+C in a terminal does).
    A child still running after ``timeout_s`` is SIGKILLed and reported as hung."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(ROOT))
    base = srv.stats()["ok"] if stop_at_ok else 0
    ru0, srv_cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN), srv.cpu_s()
    t0 = time.perf_counter()
    stopped = hung = False
    with open(log, "a") as lf, tempfile.TemporaryFile("w+") as outf:
        # SIGINT back to its default in the child, as in a terminal: a benchmark started in the background (`&`,
        # nohup) has SIGINT ignored, which children inherit, and Python then never sees the Ctrl-C.
        p = subprocess.Popen(cmd, stdout=outf, stderr=lf, text=True, env=env, start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        while p.poll() is None:
            if stop_at_ok and not stopped and srv.stats()["ok"] - base >= stop_at_ok:
                os.killpg(p.pid, stop_signal)  # the child and everything it started (distilabel's workers)
                stopped = True
            if time.perf_counter() - t0 > timeout_s:
                os.killpg(p.pid, signal.SIGKILL)
                hung = True
                break
            time.sleep(0.05)
        p.wait()
        with __import__("contextlib").suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)  # workers a stopped parent left behind
        outf.seek(0)
        out = outf.read()
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the child and the processes it waited for
    info = {"cpu_s": ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime,
            "server_cpu_s": srv.cpu_s() - srv_cpu0}
    for line in out.splitlines():
        if line.startswith("{"):
            info.update(json.loads(line))
    if hung:
        info["error"] = f"hung: still running after {timeout_s:.0f} s, killed (see {log})"
    elif not stopped and p.returncode != 0:
        info["error"] = f"exit {p.returncode} (see {log})"
    return {"wall_s": wall, "stopped": stopped, "hung": hung, "rc": p.returncode, **info}


def measure(system: str, scenario: str, srv: Server, cmd: list[str], delivered, asked: int, log: Path,
            timeout_s: float, stop_at_ok: int | None = None, stop_signal: int = signal.SIGKILL) -> dict:
    before = srv.stats()
    runs = []
    if stop_at_ok:
        runs.append(run_child(cmd, srv, log, timeout_s, stop_at_ok, stop_signal))
    runs.append(run_child(cmd, srv, log, timeout_s))
    d = diff_stats(before, srv.stats())
    n = delivered()
    wall = sum(r["wall_s"] for r in runs)
    # generation time: the child's own clock when it finished, its whole wall time when it was stopped
    gen = sum(r["wall_s"] if (r["stopped"] or r["hung"] or "gen_s" not in r) else r["gen_s"] for r in runs)
    row = {"system": system, "scenario": scenario, "asked": asked, "delivered": n, "lost": asked - n,
           "wall_s": round(wall, 2), "gen_s": round(gen, 2), "items_per_s": round(n / wall, 1) if wall else None,
           "items_per_s_gen": round(n / gen, 1) if gen else None, **d,
           "client_cpu_s": round(sum(r["cpu_s"] for r in runs), 2),
           "server_cpu_s": round(sum(r["server_cpu_s"] for r in runs), 2),
           # share of one core the teacher (server) used while the system ran: near 1.0 means the teacher is
           # the bottleneck; low means the system under test is
           "server_cpu_util": round(sum(r["server_cpu_s"] for r in runs) / wall, 3) if wall else None,
           "client_cpu_util": round(sum(r["cpu_s"] for r in runs) / wall, 3) if wall else None,
           "stopped_after_ok_calls": stop_at_ok,
           "stop_signal": signal.Signals(stop_signal).name if stop_at_ok else None,
           "first_run_exit": runs[0]["rc"] if stop_at_ok else None,
           "hung": any(r["hung"] for r in runs),
           "runs": [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()} for r in runs],
           "errors": [r["error"] for r in runs if r.get("error")]
           + [f"pipeline.run raised {r['pipeline_error']}; rows salvaged from its step files" for r in runs
              if r.get("pipeline_error")]}
    print(f"  {system:<10} {scenario:<14} delivered {n}/{asked}  {row['items_per_s']} items/s  "
          f"calls {d['http_calls']}  repeated {d['calls_repeated']}  {row['wall_s']} s {row['errors'] or ''}",
          flush=True)
    return row


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def run_sizes(a, py: Path, dl_versions: dict, tmp: Path, seed_file: Path, seed_texts: list[str], log: Path) -> dict:
    """Clean runs of both systems at each size, side by side on one zero-latency server, ``--repeats`` times."""
    sizes = [int(x) for x in a.sizes.split(",")]
    srv = Server(False, 0, tmp / "server.log")
    rows: list[dict] = []
    try:
        for size in sizes:
            # distilabel: one seed row per per_seed items, cycling through the same seed tasks orchard gets
            dl_seeds = [seed_texts[i % len(seed_texts)] for i in range(size // a.per_seed)]
            seeds_json = tmp / f"seeds-{size}.json"
            seeds_json.write_text(json.dumps(dl_seeds))
            for rep in range(a.repeats):
                for system in ("orchard", "distilabel"):
                    d = tmp / f"{system}-{size}-{rep}"
                    if system == "orchard":
                        cmd = orchard_cmd(srv.base_url, seed_file, d / "out", d / "work", a, num=size)
                        delivered = lambda d=d: orchard_delivered(d / "out")
                    else:
                        cmd = distilabel_cmd(py, srv.base_url, seeds_json, d / "rows.jsonl", d / "cache", a)
                        delivered = lambda d=d, s=dl_seeds: distilabel_delivered(d / "rows.jsonl", s, a.per_seed)
                    row = measure(system, f"clean {size}", srv, cmd, delivered, size, log, a.child_timeout)
                    row.update(size=size, repeat=rep + 1)
                    rows.append(row)
    finally:
        srv.close()

    summary = []
    for size in sizes:
        med = {}
        for system in ("orchard", "distilabel"):
            rs = [r for r in rows if r["size"] == size and r["system"] == system]
            med[system] = {k: round(_median([r[k] or 0 for r in rs]), 3) for k in
                           ("items_per_s", "items_per_s_gen", "wall_s", "http_calls", "delivered",
                            "server_cpu_util", "client_cpu_util")}
            med[system]["items_per_s_runs"] = [r["items_per_s"] for r in rs]
        o, d = med["orchard"], med["distilabel"]
        summary.append({"size": size, "orchard": o, "distilabel": d,
                        "ratio_items_per_s": round(o["items_per_s"] / d["items_per_s"], 2) if d["items_per_s"] else None,
                        "ratio_items_per_s_gen": (round(o["items_per_s_gen"] / d["items_per_s_gen"], 2)
                                                  if d["items_per_s_gen"] else None)})
    result = {
        "benchmark": "synth_vs_distilabel --sizes",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "loadavg": os.getloadavg()},
        "versions": {"distilabel_env": dl_versions},
        "settings": {"sizes": sizes, "repeats": a.repeats, "seed_tasks": a.seeds, "per_seed": a.per_seed,
                     "concurrency": a.concurrency, "timeout_s": a.timeout, "max_retries": a.max_retries,
                     "orchard_classify": a.orchard_classify,
                     "server": "tests/fake_teacher.py FakeTeacher, zero latency, own process (one Python process, "
                               "a thread per connection), on the same 2 cores",
                     "items_per_s": "delivered items / wall time of the whole child process (interpreter start "
                                    "and imports included)",
                     "server_cpu_util": "server CPU seconds / wall seconds (1.0 = one core busy)"},
        "summary": summary,
        "rows": rows,
    }
    print()
    print(f"{'size':>6} {'system':<10} {'items/s':>8} {'gen it/s':>8} {'wall s':>7} {'http':>6} "
          f"{'client cpu':>10} {'server cpu':>10} {'x distilabel':>12}")
    for srow in summary:
        for system in ("orchard", "distilabel"):
            m = srow[system]
            ratio = f"{srow['ratio_items_per_s']:.2f}" if system == "orchard" and srow["ratio_items_per_s"] else "1.00"
            print(f"{srow['size']:>6} {system:<10} {m['items_per_s']:>8.1f} {m['items_per_s_gen']:>8.1f} "
                  f"{m['wall_s']:>7.2f} {m['http_calls']:>6.0f} {m['client_cpu_util']:>10.2f} "
                  f"{m['server_cpu_util']:>10.2f} {ratio:>12}")
    print("(median of", a.repeats, "runs; cpu = share of one core over the run's wall time)")
    a.out_json.parent.mkdir(parents=True, exist_ok=True)
    a.out_json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out_json}")
    return result


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=60, help="seed tasks used (first N of the Self-Instruct seeds)")
    ap.add_argument("--per-seed", type=int, default=5, help="new instructions per seed (distilabel num_instructions)")
    ap.add_argument("--concurrency", type=int, default=16, help="orchard max_concurrency = distilabel batch size")
    ap.add_argument("--timeout", type=int, default=10)
    ap.add_argument("--max-retries", type=int, default=6)
    ap.add_argument("--scenarios", default="clean,faults,kill_resume,interrupt_resume")
    ap.add_argument("--sizes", default="",
                    help="instead of the scenarios: clean runs of both systems at these item counts (e.g. "
                         "1000,5000; distilabel gets size/per-seed seed rows, cycling through the --seeds tasks), "
                         "written to results/synth_vs_distilabel_sizes.json")
    ap.add_argument("--repeats", type=int, default=1, help="runs per size and system (--sizes); medians reported")
    ap.add_argument("--warm-orchard", default="",
                    help="only run orchard's stage in-process at these sizes (e.g. 300,300,1000) and add the rows "
                         "to the existing JSON under orchard_in_process")
    ap.add_argument("--fault-repeats", type=int, default=3, help="runs of the fault scenario per system")
    ap.add_argument("--child-timeout", type=float, default=150, help="a run still going after this is hung")
    ap.add_argument("--out-json", type=Path, default=None,
                    help="default: benchmarks/results/synth_vs_distilabel.json (_sizes.json with --sizes)")
    # child modes
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--faults", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--fault-seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--orchard-child", action="store_true", help=argparse.SUPPRESS)
    for k in ("--base-url", "--seed-file", "--out", "--work"):
        ap.add_argument(k, help=argparse.SUPPRESS)
    ap.add_argument("--num", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--orchard-transport", default="auto", choices=["auto", "direct", "aiohttp", "httpx"],
                    help="orchard's teacher transport (auto = direct; aiohttp/httpx = the openai SDK on it)")
    ap.add_argument("--orchard-classify", action="store_true",
                    help="keep orchard's classification call per task (distilabel has no such step)")
    a = ap.parse_args(argv)
    results = ROOT / "benchmarks" / "results"
    a.out_json = a.out_json or results / ("synth_vs_distilabel_sizes.json" if a.sizes else "synth_vs_distilabel.json")
    if a.serve:
        return serve(a.faults, a.fault_seed)
    if a.orchard_child:
        return run_orchard_child(a)

    if a.warm_orchard:
        rows = warm_orchard(a, [int(x) for x in a.warm_orchard.split(",")])
        result = json.loads(a.out_json.read_text()) if a.out_json.exists() else {}
        result["orchard_in_process"] = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                        "loadavg": os.getloadavg(), "rows": rows}
        a.out_json.write_text(json.dumps(result, indent=2) + "\n")
        return result
    py = ensure_distilabel_env()
    dl_versions = json.loads(subprocess.run(
        [str(py), "-c", ("import json, importlib.metadata as m; print(json.dumps({p: m.version(p) for p in "
                         "('distilabel', 'openai', 'httpx', 'pydantic')}))")], capture_output=True, text=True, check=True).stdout)
    tmp = Path(tempfile.mkdtemp(prefix="orchard-vs-distilabel-"))
    lines = SEED_FILE.read_text().splitlines()[: a.seeds]
    seed_file = tmp / "seeds.jsonl"
    seed_file.write_text("\n".join(lines) + "\n")
    seed_texts = [json.loads(ln)["instruction"] for ln in lines]
    seeds_json = tmp / "seeds.json"
    seeds_json.write_text(json.dumps(seed_texts))
    asked = a.seeds * a.per_seed
    log = tmp / "children.log"
    if a.sizes:
        return run_sizes(a, py, dl_versions, tmp, seed_file, seed_texts, log)
    print(f"work folder {tmp}; {asked} items asked per run", flush=True)

    servers = {"clean": Server(False, 0, tmp / "server.log"), "faults": Server(True, 1, tmp / "server.log")}
    rows: list[dict] = []
    clean_ok: dict[str, int] = {}
    try:
        scenarios = a.scenarios.split(",")
        # Which calls meet a fault depends on arrival order, so the fault scenario is run several times.
        runs = [(sc, f"faults#{i + 1}" if sc == "faults" else sc)
                for sc in scenarios for i in range(a.fault_repeats if sc == "faults" else 1)]
        for sc, label in runs:
            srv = servers["faults" if sc == "faults" else "clean"]
            for system in ("orchard", "distilabel"):
                d = tmp / f"{system}-{label.replace('#', '')}"
                if system == "orchard":
                    cmd = orchard_cmd(srv.base_url, seed_file, d / "out", d / "work", a)
                    delivered = lambda d=d: orchard_delivered(d / "out")
                else:
                    cmd = distilabel_cmd(py, srv.base_url, seeds_json, d / "rows.jsonl", d / "cache", a)
                    delivered = lambda d=d: distilabel_delivered(d / "rows.jsonl", seed_texts, a.per_seed)
                stop = clean_ok.get(system, 0) // 2 if sc in STOP_SIGNALS else None
                row = measure(system, label, srv, cmd, delivered, asked, log, a.child_timeout, stop or None,
                              STOP_SIGNALS.get(sc, signal.SIGKILL))
                if sc == "clean":
                    clean_ok[system] = row["ok_calls"]
                rows.append(row)
    finally:
        for s in servers.values():
            s.close()

    ratios = {}
    for sc in dict.fromkeys(label for _, label in runs):
        o = next(r for r in rows if r["system"] == "orchard" and r["scenario"] == sc)
        d = next(r for r in rows if r["system"] == "distilabel" and r["scenario"] == sc)
        ratios[sc] = {k: (round(o[k] / d[k], 2) if d[k] else None) for k in ("items_per_s", "items_per_s_gen")}
        ratios[sc]["lost"] = {"orchard": o["lost"], "distilabel": d["lost"]}
    import openai

    result = {
        "benchmark": "synth_vs_distilabel",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "loadavg": os.getloadavg(),
                    "note": "shared 2-core machine, other engineers' jobs running"},
        "versions": {"orchard_openai": openai.__version__, "distilabel_env": dl_versions},
        "settings": {"seeds": a.seeds, "fault_repeats": a.fault_repeats, "child_timeout_s": a.child_timeout, "per_seed": a.per_seed, "items_asked": asked, "concurrency": a.concurrency,
                     "timeout_s": a.timeout, "max_retries": a.max_retries, "fault_plan": FAULTS,
                     "retry_after_s": RETRY_AFTER_S, "server": "tests/fake_teacher.py FakeTeacher, zero latency, "
                     "own process, responder benchmarks/synth_vs_distilabel.py:bench_responder",
                     "orchard": ("instructions_stage, method self_instruct, tasks_per_prompt=per_seed, "
                                 "prompts_per_round=concurrency, default filters (near-dup, keywords, PII), "
                                 "classification step " + ("on" if a.orchard_classify else "off (distilabel has "
                                 "none)") + ", report off; backoff 0.5 s doubling to 8 s"),
                     "distilabel": "LoadDataFromDicts >> SelfInstruct(num_instructions=per_seed) >> ExpandColumns "
                                   ">> TextGeneration, OpenAILLM(timeout, max_retries), input_batch_size="
                                   "concurrency, Pipeline.run(use_cache=True)"},
        "rows": rows,
        "ratios_orchard_over_distilabel": ratios,
    }
    print()
    hdr = (f"{'scenario':<16} {'system':<10} {'asked':>5} {'deliv':>5} {'lost':>4} {'items/s':>8} {'gen it/s':>8} "
           f"{'http':>5} {'repeat':>6} {'wall s':>7}")
    print(hdr)
    for r in rows:
        print(f"{r['scenario']:<16} {r['system']:<10} {r['asked']:>5} {r['delivered']:>5} {r['lost']:>4} "
              f"{r['items_per_s'] or 0:>8.1f} {r['items_per_s_gen'] or 0:>8.1f} {r['http_calls']:>5} "
              f"{r['calls_repeated']:>6} {r['wall_s']:>7.2f}" + (f"  ERR {r['errors']}" if r["errors"] else ""))
    for sc, rt in ratios.items():
        print(f"orchard / distilabel, {sc}: items/s x{rt['items_per_s']}, generation-only items/s "
              f"x{rt['items_per_s_gen']}")
    a.out_json.parent.mkdir(parents=True, exist_ok=True)
    a.out_json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out_json}")
    return result


if __name__ == "__main__":
    main()
