"""A recipe through the real synth, judge, review and split stages against a scripted teacher server.

Checks what the runner promises across stages: counts that add up, judge scores carried to the review policy,
no new teacher call when nothing changed, and only the changed stage (and those after it) re-running.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_teacher import FakeTeacher, FaultPlan  # noqa: E402
from synth_responder import responder  # noqa: E402

from orchard.dataio import provenance, read_manifest, read_rows  # noqa: E402
from orchard.recipe import load_recipe  # noqa: E402
from orchard.runner import Runner  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SECRET = "sk-pipeline-test-secret-42"


@pytest.fixture()
def srv():
    with FakeTeacher(responder=responder, faults=FaultPlan(probs={"500": 0.05, "429": 0.03}, seed=1)) as s:
        yield s


def _recipe(tmp_path, srv, min_score=3):
    p = tmp_path / "r.yaml"
    p.write_text(f"""
name: pipe
runs_dir: {tmp_path / 'runs'}
seeds:
  path: {REPO / 'data' / 'seeds' / 'self_instruct_seed_tasks.jsonl'}
  max_seeds: 40
teacher:
  base_url: {srv.base_url}
  model: fake
  api_key_env: PIPE_KEY
  max_concurrency: 4
  backoff_base_s: 0.01
  backoff_max_s: 0.05
synth:
  method: self_instruct
  num: 30
judge:
  min_overall: null
review:
  mode: auto
  auto:
    min_judge_score: {min_score}
split:
  test_size: 0.25
""")
    return load_recipe(p)


def test_pipeline_counts_judge_review_and_no_repeated_calls(tmp_path, srv, monkeypatch):
    monkeypatch.setenv("PIPE_KEY", SECRET)
    out = Runner(_recipe(tmp_path, srv)).run()
    assert [o.status for o in out] == ["ran"] * 5
    run = tmp_path / "runs" / "pipe"
    synth = read_rows(run / "synth")
    judged = read_rows(run / "judge")
    assert len(synth) >= 20 and len(judged) == len(synth)  # min_overall null keeps every judged row
    scores = [provenance(r)["judge"]["overall"] for r in judged]
    assert all(1 <= s <= 5 for s in scores)
    review = read_manifest(run / "review")["result"]["counts"]
    accepted = read_rows(run / "review")
    assert review["accepted"] + review["rejected"] == len(judged)
    assert all(provenance(r)["judge"]["overall"] >= 3 for r in accepted)
    assert review["accepted"] == sum(s >= 3 for s in scores)
    split = read_manifest(run / "split")["result"]
    assert split["train"] + split["test"] == review["accepted"] and split["seeds_on_both_sides"] == 0

    served = srv.stats()["requests"]
    again = Runner(_recipe(tmp_path, srv)).run()
    assert [o.status for o in again] == ["skipped"] * 5
    assert srv.stats()["requests"] == served  # nothing asked twice

    # A stricter review policy re-runs review and split only, and costs no teacher call.
    stricter = Runner(_recipe(tmp_path, srv, min_score=4)).run()
    assert [o.status for o in stricter] == ["skipped", "skipped", "skipped", "ran", "ran"]
    assert srv.stats()["requests"] == served
    assert read_manifest(run / "review")["result"]["counts"]["accepted"] == sum(s >= 4 for s in scores)

    for p in run.rglob("*"):
        if p.is_file():
            assert SECRET.encode() not in p.read_bytes(), p


def test_tabular_records_ground_synthesis_only_through_a_passing_gate(tmp_path, srv):
    """tabular (SDV + privacy gate) → synth grounded on `run:tabular`: the records reach the teacher's prompts."""
    p = tmp_path / "t.yaml"
    p.write_text(f"""
name: tab
runs_dir: {tmp_path / 'runs'}
tabular:
  table: {REPO / 'data' / 'tables' / 'anes96.csv'}
  options:
    rows: 200
    n_attacks: 30
    singling_out: "off"
    synthesizer: gaussian_copula  # fast; the auto choice has its own test (test_tabular_select.py)
    gate:
      min_column_shape: 0.45  # the copula smooths logpopul's spike at log(0.1) (shape 0.50); not this test's subject
teacher:
  base_url: {srv.base_url}
  model: fake
  backoff_base_s: 0.01
  backoff_max_s: 0.05
synth:
  method: grounded
  num: 20
  min_num: 10                        # 10 records x 2 questions: some fall to the filters
  grounded:
    table: run:tabular
    max_rows: 10
""")
    out = Runner(load_recipe(p)).run()
    assert [o.status for o in out] == ["ran", "ran"]
    run = tmp_path / "runs" / "tab"
    assert read_manifest(run / "tabular")["gate"]["passed"] is True
    rows = read_rows(run / "synth")
    assert rows and all(provenance(r)["method"] == "grounded_table" for r in rows)
    # Each example carries its grounding record (a synthetic row, never a real one) as its system turn.
    synthetic = {r["id"]: r for r in read_rows(run / "tabular")}
    real_ages = set(__import__("pandas").read_csv(REPO / "data" / "tables" / "anes96.csv")["age"])
    for r in rows:
        system, user = r["messages"][0], r["messages"][1]
        assert system["role"] == "system" and "age:" in system["content"] and user["role"] == "user"
        assert provenance(r)["grounding"] in system["content"]
        assert provenance(r)["seed_id"] in synthetic  # lineage: the synthetic record it grew from
    assert real_ages  # (the gate, not this test, is what keeps real rows out: see tests/test_tabular_stage.py)


def test_a_stage_short_of_its_min_num_stops_the_run_and_says_so(tmp_path, srv):
    _recipe(tmp_path, srv)
    short = ["--set", "synth.self_instruct.max_rounds=1", "--set", "synth.self_instruct.prompts_per_round=2"]
    exe = Path(sys.executable).with_name("orchard")
    r = __import__("subprocess").run([str(exe), "run", str(tmp_path / "r.yaml"), *short], capture_output=True,
                                     text=True, timeout=300)
    run = tmp_path / "runs" / "pipe"
    assert r.returncode == 4, r.stderr
    n = len(read_rows(run / "synth"))
    assert f"synth: stopped short: {n} of 30 pairs written; stopped by self_instruct.max_rounds=1" in r.stderr
    assert not (run / "judge").exists(), "the stages after a short one must not run"
    assert read_manifest(run / "synth")["status"] == "incomplete"
    report = (run / "report.md").read_text().splitlines()
    assert report[2].startswith(f"- **synth: stopped short: {n} of 30 pairs written")
    # Asking for what it can give (min_num) lets the run go on; the synth stage is run again from its cache.
    requests = srv.stats()["requests"]
    sets = [x for x in short if x != "--set"] + [f"synth.min_num={n}"]
    out = Runner(load_recipe(tmp_path / "r.yaml", sets)).run(to_stage="judge")
    assert [o.status for o in out] == ["skipped", "ran", "ran"] and srv.stats()["requests"] > requests
    assert len(read_rows(run / "synth")) == n
