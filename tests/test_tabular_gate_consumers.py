"""Every consumer of gated records goes through the one gate check, and a swapped records file reaches no teacher.

Consumers: grounded synthesis (API), `orchard synth instructions --method grounded --table` (CLI), and the
runner (a recipe whose synth stage reads `run:tabular`). Each is shown a gated folder whose train.parquet was
replaced by real rows after the gate ran; each refuses, and the scripted teacher server sees no request.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_teacher import FakeTeacher  # noqa: E402
from synth_responder import responder  # noqa: E402

from orchard.dataio import atomic_write_json, file_hash, read_manifest, write_split  # noqa: E402
from orchard.errors import InputError  # noqa: E402
from orchard.synth import api  # noqa: E402
from orchard.synth.teacher import TeacherConfig  # noqa: E402
from orchard.synth.methods_config import GroundedConfig, SynthConfig  # noqa: E402
from orchard.synth.tabular.gate import read_gated_records, require_passing_gate  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ANES = REPO / "data" / "tables" / "anes96.csv"


@pytest.fixture(scope="module")
def srv():
    with FakeTeacher(responder=responder) as s:
        yield s


def _gated_folder(folder: Path) -> Path:
    """A records folder as the tabular stage leaves it: rows, and a passing gate holding their content hash."""
    write_split(folder, "train", [{"age": 30 + i, "city": "Lyon" if i % 2 else "Oslo"} for i in range(6)])
    atomic_write_json(folder / "manifest.json", {"gate": {"passed": True, "checks": {},
                                                          "records_sha256": file_hash(folder / "train.parquet")}})
    return folder


def _swap_in_real_rows(folder: Path) -> pd.DataFrame:
    real = pd.read_csv(ANES).head(6)
    real.to_parquet(folder / "train.parquet", index=False)
    return real


def test_the_gate_reads_exactly_the_hashed_records_and_fails_closed(tmp_path):
    folder = _gated_folder(tmp_path / "t")
    gate, rows = read_gated_records(folder)
    assert gate["passed"] is True and [r["age"] for r in rows] == list(range(30, 36))
    _swap_in_real_rows(folder)
    with pytest.raises(InputError, match="changed after its privacy gate ran"):
        read_gated_records(folder)
    # a passing gate that records no hash cannot vouch for any records
    atomic_write_json(folder / "manifest.json", {"gate": {"passed": True, "checks": {}}})
    with pytest.raises(InputError, match="no content hash"):
        require_passing_gate(folder)


def test_grounded_synthesis_refuses_a_swapped_table(tmp_path, srv):
    folder = _gated_folder(tmp_path / "table")
    tc = TeacherConfig(base_url=srv.base_url, model="fake", max_retries=1)
    cfg = SynthConfig(method="grounded", num=10, grounded=GroundedConfig(table=folder))
    man = api.instructions_stage(None, tmp_path / "ok", tmp_path / "w1", cfg, tc)
    assert man["counts"]["kept"] > 0  # the untouched folder is used
    _swap_in_real_rows(folder)
    srv.reset_stats()
    with pytest.raises(InputError, match="changed after its privacy gate ran"):
        api.instructions_stage(None, tmp_path / "bad", tmp_path / "w2", cfg, tc)
    assert srv.stats()["requests"] == 0 and not (tmp_path / "bad").exists()


def test_cli_grounded_refuses_a_swapped_table(tmp_path, srv):
    folder = _gated_folder(tmp_path / "table")
    real = _swap_in_real_rows(folder)
    srv.reset_stats()
    r = subprocess.run(
        [sys.executable, "-m", "orchard.cli", "synth", "instructions", "--method", "grounded", "--table", str(folder),
         "--out", str(tmp_path / "out"), "--base-url", srv.base_url, "--model", "fake", "--num", "5"],
        capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "OPENAI_API_KEY": "x"},
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert "changed after its privacy gate ran" in r.stderr
    assert srv.stats()["requests"] == 0, "real rows reached the teacher"
    assert str(real["popul"].iloc[0]) not in r.stdout + r.stderr
    assert not (tmp_path / "out").exists()


def test_runner_refuses_a_swapped_tabular_output(tmp_path, srv):
    from orchard.recipe import load_recipe
    from orchard.runner import Runner

    p = tmp_path / "t.yaml"
    p.write_text(f"""
name: tab
runs_dir: {tmp_path / 'runs'}
tabular:
  table: {ANES}
  options: {{rows: 120, n_attacks: 20, singling_out: "off", synthesizer: gaussian_copula}}
teacher: {{base_url: {srv.base_url}, model: fake, backoff_base_s: 0.01, backoff_max_s: 0.05}}
synth:
  method: grounded
  num: 5
  grounded: {{table: "run:tabular", max_rows: 3}}
""")
    recipe = load_recipe(p)
    assert [o.status for o in Runner(recipe).run(to_stage="tabular")] == ["ran"]
    tab = tmp_path / "runs" / "tab" / "tabular"
    assert read_manifest(tab)["gate"]["records_sha256"] == file_hash(tab / "train.parquet")
    _swap_in_real_rows(tab)
    srv.reset_stats()
    with pytest.raises(InputError, match="stage 'synth' refuses its input.*changed after its privacy gate ran"):
        Runner(recipe).run()
    assert srv.stats()["requests"] == 0
    assert not (tmp_path / "runs" / "tab" / "synth").exists()


def test_orchard_run_exits_6_when_a_stage_stops_on_its_gate(tmp_path):
    """`orchard run` tells a failed privacy gate (3) from bad input (2, tests/test_runner.py), like `synth tabular`."""
    recipe = tmp_path / "gate.yaml"
    recipe.write_text(f"""
name: gate
runs_dir: {tmp_path / 'runs'}
tabular:
  table: {ANES}
  options: {{rows: 120, n_attacks: 20, singling_out: "off", synthesizer: gaussian_copula, gate: {{min_quality_score: 0.999}}}}
""")
    r = subprocess.run([str(Path(sys.executable).with_name("orchard")), "run", str(recipe)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 6, r.stdout + r.stderr
    assert "gate failed" in r.stderr and "quality_score" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "runs" / "gate" / "tabular").exists()  # no records from a failed gate
