"""The smoke recipe (tiny models), end to end, as a user runs it: seeds → tiny teacher → synth → review → split → SFT → DPO → eval.

This is the slowest test (a few minutes on 2 cores); it checks the artifacts, that the counts add up from stage to
stage, that every trained row traces back to a seed, that DPO moves the margins, that no key leaks, and that a
second run skips every stage.
"""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchard.dataio import provenance, read_manifest, read_rows
from orchard.lineage import seeds_on_both_sides

REPO = Path(__file__).resolve().parents[1]
SECRET = "sk-orchard-test-secret-0123456789"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    exe = Path(sys.executable).with_name("orchard")
    env = dict(os.environ, OPENAI_API_KEY=SECRET, OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    res = subprocess.run([str(exe), "run", "recipes/smoke.yaml", "--runs-dir", str(runs)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=1500)
    first = time.perf_counter() - t0
    if res.returncode == 3 and read_manifest(runs / "smoke" / "synth")["result"]["outcome"]["status"] == "lost":
        # The 0.6M teacher samples at temperature 1; now and then one of ~350 instances ends inside its format on
        # every retry (e.g. on its "Input:" label) and is lost: exit 3, "run the same command again to ask for
        # them again". That is the user's path, so the test takes it: the re-run asks only for the lost items.
        res = subprocess.run([str(exe), "run", "recipes/smoke.yaml", "--runs-dir", str(runs)], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=1500)
        first = time.perf_counter() - t0
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return runs / "smoke", res, first, exe, env, runs


def test_artifacts_and_counts_add_up(smoke):
    run, res, _, _, _, _ = smoke
    assert str(run) in res.stdout and "report.md" in res.stdout
    for stage in ("seeds", "teacher_model", "synth", "review", "split", "sft", "preferences", "dpo", "eval"):
        assert read_manifest(run / stage)["status"] == "complete", stage
    seeds = read_rows(run / "seeds")
    assert len(seeds) == 175
    synth = read_manifest(run / "synth")["result"]
    kept = read_rows(run / "synth")
    rejected = read_rows(run / "synth", "rejected")
    assert len(kept) >= 100, synth["counts"]
    assert synth["counts"]["generated"] == synth["counts"]["kept"] + synth["counts"]["rejected"]
    assert len(rejected) == synth["counts"]["rejected"] and all(r["reason"] for r in rejected)
    review = read_manifest(run / "review")["result"]["counts"]
    assert review["accepted"] + review["rejected"] == len(kept)
    train, test = read_rows(run / "split", "train"), read_rows(run / "split", "test")
    assert len(train) + len(test) == review["accepted"]
    assert not seeds_on_both_sides(train, test)
    prefs = read_manifest(run / "preferences")["result"]
    assert prefs["train_pairs"] + prefs["train_identical_skipped"] == len(train)


def test_every_trained_row_traces_to_a_seed(smoke):
    run = smoke[0]
    seed_ids = {r["id"] for r in read_rows(run / "seeds")}
    for folder, split in (("synth", "train"), ("split", "train"), ("split", "test"), ("preferences", "train")):
        for row in read_rows(run / folder, split):
            assert row["seed_id"] in seed_ids, (folder, row["seed_id"])
            prov = provenance(row)
            assert prov.get("seed_id") == row["seed_id"]
            assert prov.get("template_version") or prov.get("method") == "policy_sample" or "template" in prov


def test_training_moved_the_numbers(smoke):
    run = smoke[0]
    sft = read_manifest(run / "sft")["result"]
    # Validation loss falls, and so does the training loss once past the single-batch noise of step 1.
    assert sft["eval_loss"] < sft["first_eval_loss"], sft
    losses = [h["loss"] for h in json.loads((run / "sft" / "log_history.json").read_text())
              if "loss" in h and h.get("step", 0) > 1]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    assert math.isfinite(sft["test_loss"])
    assert (run / "sft" / "adapter" / "adapter_model.safetensors").exists()
    dpo = read_manifest(run / "dpo")["result"]
    assert dpo["last_logged_margin"] > dpo["first_logged_margin"] + 0.5
    assert dpo["train_pairs_accuracy"] >= 0.7  # chance is 0.5
    ev = read_manifest(run / "eval")["result"]
    assert set(ev["loss"]) == {"base", "sft", "dpo"} and ev["reward_margin"]["dpo"] > 0
    for png in ("sft/loss.png", "dpo/margins.png", "eval/heldout_perplexity.png", "synth/lengths.png"):
        assert (run / png).stat().st_size > 1000, png
    report = (run / "report.md").read_text()
    assert all(f"## {s}" in report for s in ("synth", "sft", "dpo", "eval"))
    assert not [p for p in run.rglob("*.bin") if "adapter" in p.parts or "model" in p.parts]  # safetensors only


def test_no_secret_anywhere_in_the_run(smoke):
    run = smoke[0]
    for p in run.rglob("*"):
        if p.is_file():
            assert SECRET.encode() not in p.read_bytes(), p


def test_second_run_skips_every_stage(smoke):
    run, _, first, exe, env, runs = smoke
    t0 = time.perf_counter()
    res = subprocess.run([str(exe), "run", "recipes/smoke.yaml", "--runs-dir", str(runs)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("skipped") == 9 and " ran " not in res.stdout
    assert time.perf_counter() - t0 < 60
