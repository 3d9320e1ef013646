"""benchmarks/scaling.py (issue 9's harness) on CPU: the same CLI runs a user types, 1 process against 2 gloo
processes, for SFT and DPO; weak scaling (2 processes take twice the examples per step), efficiency computed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def test_scaling_harness_on_two_cpu_processes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scaling.py"), "--cpu", "--size", "tiny",
                        "--sft-steps", "2", "--dpo-steps", "2", "--maxlen", "128", "--out", str(tmp_path / "run"),
                        "--results-dir", str(tmp_path / "res"), "--model-dir", str(tmp_path / "models")],
                       env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    (rep_path,) = (tmp_path / "res").glob("scaling-*-cpu.json")
    rows = json.loads(rep_path.read_text())["rows"]
    assert [(x["stage"], x["processes"]) for x in rows] == [("sft", 1), ("sft", 2), ("dpo", 1), ("dpo", 2)]
    assert all("error" not in x for x in rows), rows
    for stage in ("sft", "dpo"):
        one, two = (x for x in rows if x["stage"] == stage)
        assert one["steps"] == two["steps"] == 2
        assert two["tokens"] > 1.5 * one["tokens"]  # twice the examples per step, counted over both processes
        assert one["scaling_efficiency"] == 1.0
        assert two["scaling_efficiency"] == pytest.approx(two["speedup"] / 2, abs=1e-3)
    assert "cpu_ddp x2" in r.stdout  # the table
