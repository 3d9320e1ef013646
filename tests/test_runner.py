"""The runner: manifests, skipping unchanged stages, re-running changed ones, resuming a killed stage."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from orchard.dataio import read_manifest, read_rows
from orchard.recipe import load_recipe
from orchard.runner import Runner

REPO = Path(__file__).resolve().parents[1]
SEEDS = REPO / "data" / "seeds" / "self_instruct_seed_tasks.jsonl"


def _recipe(tmp_path, extra="", test_size=0.25):
    p = tmp_path / "r.yaml"
    p.write_text(f"name: rt\nruns_dir: {tmp_path / 'runs'}\nseeds:\n  path: {SEEDS}\n"
                 f"split:\n  test_size: {test_size}\n{extra}")
    return p


def test_manifest_contents_and_skip_when_unchanged(tmp_path):
    rec = load_recipe(_recipe(tmp_path))
    out = Runner(rec).run()
    assert [o.status for o in out] == ["ran", "ran"]
    run = tmp_path / "runs" / "rt"
    m = read_manifest(run / "split")
    assert m["status"] == "complete" and len(m["fingerprint"]) == 32
    assert m["inputs"]["data"]["path"] == str(run / "seeds") and len(m["inputs"]["data"]["hash"]) == 64
    assert m["config"]["stage"]["test_size"] == 0.25
    assert {"python", "torch", "transformers", "trl", "datasets"} <= set(m["versions"])
    assert m["seconds"] >= 0 and m["started_at"] <= m["finished_at"]
    assert m["result"]["train"] + m["result"]["test"] == 175 and m["result"]["seeds_on_both_sides"] == 0
    assert len(read_rows(run / "split", "test")) == m["result"]["test"]
    assert (run / "report.md").exists() and "split" in (run / "report.md").read_text()
    mtime = (run / "split" / "train.parquet").stat().st_mtime_ns
    again = Runner(load_recipe(_recipe(tmp_path))).run()
    assert [o.status for o in again] == ["skipped", "skipped"]
    assert (run / "split" / "train.parquet").stat().st_mtime_ns == mtime


def test_changed_config_reruns_only_that_stage_and_downstream(tmp_path):
    Runner(load_recipe(_recipe(tmp_path))).run()
    out = Runner(load_recipe(_recipe(tmp_path, test_size=0.3))).run()
    assert [o.status for o in out] == ["skipped", "ran"]
    # --set override and --from forcing
    out = Runner(load_recipe(_recipe(tmp_path), ["seeds.max_seeds=50"])).run()
    assert [o.status for o in out] == ["ran", "ran"]  # new seeds → new input hash for split
    assert read_manifest(tmp_path / "runs" / "rt" / "split")["result"]["train"] + \
        read_manifest(tmp_path / "runs" / "rt" / "split")["result"]["test"] == 50
    out = Runner(load_recipe(_recipe(tmp_path), ["seeds.max_seeds=50"])).run(from_stage="split")
    assert [o.stage for o in out] == ["split"] and out[0].status == "ran"


KILLABLE = textwrap.dedent('''
    import sys, time, json
    from pathlib import Path
    from orchard.recipe import load_recipe
    from orchard.runner import Runner
    from orchard.stage import StageSpec
    from orchard.stages import STAGES
    from orchard.dataio import write_split, read_rows

    def slow_split(ctx):
        # A stage that does 20 units of work, checkpointing each one in its work folder.
        done = ctx.work_dir / "done.jsonl"
        seen = [json.loads(l) for l in done.read_text().splitlines()] if done.exists() else []
        with open(ctx.work_dir / "calls.log", "a") as log:
            for i in range(len(seen), 20):
                log.write(f"{i}\\n"); log.flush()
                time.sleep(0.05)
                with open(done, "a") as f:
                    f.write(json.dumps(i) + "\\n")
        rows = read_rows(ctx.inputs["data"])
        write_split(ctx.out_dir, "train", rows)
        return {"units": 20}

    specs = dict(STAGES)
    specs["split"] = StageSpec("split", STAGES["split"].inputs, slow_split)
    Runner(load_recipe(sys.argv[1]), specs=specs).run()
''')


def test_killed_stage_resumes_without_redoing_work_and_leaves_no_half_output(tmp_path):
    recipe = _recipe(tmp_path)
    script = tmp_path / "killable.py"
    script.write_text(KILLABLE)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = tmp_path / "runs" / "rt"
    proc = subprocess.Popen([sys.executable, str(script), str(recipe)], env=env)
    log = run / ".work" / "split" / "calls.log"
    deadline = time.time() + 60
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 5):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "split").exists()  # nothing half-written in the final place
    first = len(log.read_text().splitlines())
    assert 5 <= first < 20
    subprocess.run([sys.executable, str(script), str(recipe)], env=env, check=True, timeout=120)
    calls = [int(x) for x in log.read_text().splitlines()]
    # every unit ran once, except at most the one in flight when the kill came
    assert sorted(set(calls)) == list(range(20)) and len(calls) - 20 <= 1
    assert read_manifest(run / "split")["result"]["units"] == 20
    assert not [p for p in run.iterdir() if p.name.startswith((".tmp-", ".old-"))]


def test_cli_run_and_bad_recipe_exit_code(tmp_path):
    exe = Path(sys.executable).with_name("orchard")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsplit:\n  test_sise: 0.2\n")
    r = subprocess.run([str(exe), "run", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2 and "bad.yaml:3" in r.stderr and "split.test_sise" in r.stderr
    assert "Traceback" not in r.stderr
    r = subprocess.run([str(exe), "run", str(_recipe(tmp_path)), "--to", "seeds"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "runs" / "rt" / "seeds" / "manifest.json").read_text())["result"]["counts"]["train"] == 175
