"""The quickstart on the real model (SmolLM2-135M-Instruct), end to end, shrunk to CI size.

The same recipe and command as the README's, with fewer pairs and steps: Magpie synthesis through the runner's
own `transformers serve`, filters, review, split, LoRA SFT with assistant-only loss on SmolLM2's chat template
(which has no generation markers), policy pairs, DPO, and the evaluation with verdicts. Then `--num` against a
cap that cannot be met.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from orchard.dataio import provenance, read_manifest, read_rows

REPO = Path(__file__).resolve().parents[1]
SHRINK = ["--set", "synth.num=10", "--set", "sft.max_steps=6", "--set", "sft.eval_steps=3", "--set", "sft.save_steps=3",
          "--set", "dpo.max_steps=4", "--set", "dpo.save_steps=2", "--set", "eval.max_examples=12",
          "--set", "eval.win_rate.max_prompts=4", "--set", "eval.win_rate.max_new_tokens=64",
          "--set", "preferences.options.max_new_tokens=64", "--set", "split.test_size=0.3"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, smollm2_dir):
    runs = tmp_path_factory.mktemp("runs")
    exe = Path(sys.executable).with_name("orchard")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([str(exe), "run", "recipes/quickstart.yaml", "--runs-dir", str(runs), *SHRINK], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return runs / "quickstart", res


def test_pairs_asked_are_pairs_written_in_english(run):
    folder, _ = run
    rows = read_rows(folder / "synth")
    man = read_manifest(folder / "synth")["result"]
    assert len(rows) == 10 and man["num_target"] == 10 and man["outcome"]["status"] in ("complete", "lost")
    # no item generated only to be dropped for being over target
    assert "over_target" not in man["rejection_reasons"]
    assert man["rejection_reasons"].get("unused:num_reached", 0) == 0
    seed_ids = {r["id"] for r in read_rows(folder / "seeds")}
    for r in rows:
        p = provenance(r)
        assert p["method"] == "magpie" and r["seed_id"] in seed_ids and p["parent_id"] in seed_ids
        words = re.findall(r"[A-Za-z]+", " ".join(m["content"] for m in r["messages"]))
        assert len(words) >= 5


def test_sft_trains_on_a_template_without_generation_markers(run):
    folder, _ = run
    tpl = (REPO / "models" / "smollm2-135m-instruct" / "chat_template.jinja").read_text()
    assert "{% generation" not in tpl
    sft = read_manifest(folder / "sft")["result"]
    assert sft["steps"] == 6 and sft["tokens"] > 0
    assert (folder / "sft" / "adapter" / "adapter_model.safetensors").exists()
    assert read_manifest(folder / "dpo")["result"]["steps"] == 4


def test_evaluation_gives_verdicts_with_intervals(run):
    folder, _ = run
    ev = read_manifest(folder / "eval")["result"]
    assert set(ev["stage_verdicts"]) == {"sft", "dpo"}
    assert ev["stage_verdicts"]["sft"]["against"] == "base" and ev["stage_verdicts"]["dpo"]["against"] == "sft"
    for name, v in ev["stage_verdicts"].items():
        assert v["verdict"] in ("better", "no change", "worse", "not measured"), v
        assert v["heldout_loss"]["ci95"] is not None
        assert "general_loss_vs_base" in v
        w = v["win_rate"]
        full = ev["win_rate_details"][f"{name}_vs_{v['against']}"]
        # every held-out prompt (at most max_prompts=4): judged, or counted as undecided
        assert 1 <= full["prompts"] <= 4 and full["judged"] + full["undecided"] == full["prompts"]
        assert w["win_rate"] is None or 0 <= w["win_rate"] <= 1
        assert v["verdict_from"] in ("judge win-rate", "held-out loss")
    assert ev["general_examples"] == 12
    report = (folder / "eval" / "report.md").read_text()
    head = report.split("Base model:")[0]
    assert "| sft | base |" in head and "| dpo | sft |" in head  # the verdicts open the report
    for line in ev["regressions"]:
        assert line.split(" ")[0] in report


def test_a_cap_stops_num_short_with_the_stated_message(tmp_path, smollm2_dir):
    """Asked for 6 pairs with at most 3 items tried: fewer than asked, said plainly in the manifest."""
    exe = Path(sys.executable).with_name("orchard")
    res = subprocess.run([str(exe), "run", "recipes/quickstart.yaml", "--runs-dir", str(tmp_path), "--to", "synth",
                          "--set", "synth.num=6", "--set", "synth.magpie.max_attempts=3"], cwd=REPO,
                         env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=900)
    assert res.returncode == 4, res.stdout[-2000:] + res.stderr[-2000:]
    man = read_manifest(tmp_path / "quickstart" / "synth")["result"]
    out = man["outcome"]
    assert out["status"] == "short" and out["asked"] == 6 and out["written"] <= 3
    assert "magpie.max_attempts: 3 items tried" in out["stopped_by"]
    assert f"stopped short: {out['written']} of 6 pairs written" in out["message"]
    assert f"synth: {out['message']}" in res.stderr  # the one-line reason, unwrapped
    assert man["counts"]["generated"] == 3
