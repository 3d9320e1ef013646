"""align sampling (candidates, policy pairs, head-to-head), evaluation report, export and CLI, on CPU."""

from __future__ import annotations

import json
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from align_tiny import trained_sft  # noqa: E402
from orchard.align.api import (DPOConfig, EvalConfig, SampleConfig, dpo_stage, eval_stage, export_merged,
                               policy_pairs_stage, sample_policies_stage, sample_stage, win_rates)
from orchard.dataio import provenance, read_rows, write_split


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    env = trained_sft(tmp_path_factory.mktemp("align_se"), sft_work="w-sft")
    root, base, train, test = env["root"], env["base"], env["train"], env["test"]
    dpo_stage(root / "pairs", root / "sft", root / "dpo", root / "w-dpo",
              DPOConfig(max_steps=12, learning_rate=5e-3, logging_steps=2, save_steps=12, lr_scheduler_type="constant",
                        warmup_steps=0, max_length=64, per_device_train_batch_size=4))
    return {"root": root, "base": str(base), "train": train, "test": test}


SCFG = SampleConfig(num_completions=2, max_new_tokens=12, batch_size=8)


def test_sample_stage_writes_candidates_and_resumes_from_cache(env, tmp_path):
    r = env["root"]
    m = sample_stage(r / "data", r / "sft", tmp_path / "c1", tmp_path / "w", SCFG)
    rows = read_rows(tmp_path / "c1")
    assert m["prompts"] == len(env["train"]) == len(rows) and m["completions"] == 2 * len(rows)
    row = rows[0]
    assert set(row) >= {"id", "seed_id", "prompt", "completions", "provenance"}
    assert row["prompt"][-1]["role"] == "user" and len(row["completions"]) == 2
    prov = provenance(row)
    assert prov["method"] == "policy_sample" and prov["parent_id"] == env["train"][0]["id"]
    assert row["seed_id"] == env["train"][0]["seed_id"]
    # A re-run (e.g. after a kill) reuses finished generations from work_dir instead of sampling again.
    cache_lines = (tmp_path / "w" / "samples.jsonl").read_text().count("\n")
    m2 = sample_stage(r / "data", r / "sft", tmp_path / "c2", tmp_path / "w", SCFG)
    assert (tmp_path / "w" / "samples.jsonl").read_text().count("\n") == cache_lines
    assert read_rows(tmp_path / "c2") == rows
    assert m2["time_s"] < m["time_s"] + 5


def test_policy_pairs_reference_vs_policy(env, tmp_path):
    r = env["root"]
    m = policy_pairs_stage(r / "data", r / "sft", tmp_path / "p", tmp_path / "w", SCFG)
    tr, te = read_rows(tmp_path / "p", "train"), read_rows(tmp_path / "p", "test")
    assert m["train_pairs"] == len(tr) > 0 and m["test_pairs"] == len(te) > 0
    ref = {x["id"]: x["messages"][-1]["content"] for x in env["train"] + env["test"]}
    for p in tr + te:
        prov = provenance(p)
        assert prov["method"] == "reference_vs_policy"
        assert p["chosen"][0]["content"] == ref[prov["parent_id"]]
        assert p["rejected"][0]["content"] != p["chosen"][0]["content"]
    assert {provenance(p)["parent_id"] for p in te} <= {x["id"] for x in env["test"]}


def test_eval_report_with_forgetting_and_win_rates(env, tmp_path):
    r = env["root"]
    hh = sample_policies_stage(r / "data", {"dpo": r / "dpo", "sft": r / "sft", "base": None}, tmp_path / "hh",
                               tmp_path / "w-hh", SCFG.model_copy(update={"split": "test"}))
    assert hh["comparisons"] == {"dpo_vs_sft": len(env["test"]), "dpo_vs_base": len(env["test"])}
    cands = read_rows(tmp_path / "hh" / "dpo_vs_sft")
    assert provenance(cands[0])["policies"] == ["dpo", "sft"] and len(cands[0]["completions"]) == 2
    # A judged folder as synth's pairwise judge writes it (the judge is synth's; here: a over b, one tie).
    judged = []
    for i, c in enumerate(cands):
        winner = "tie" if i == 0 else "a"
        judged.append({"id": c["id"], "seed_id": c["seed_id"], "prompt": c["prompt"],
                       "chosen": [{"role": "assistant", "content": c["completions"][0]}],
                       "rejected": [{"role": "assistant", "content": c["completions"][1]}],
                       "provenance": json.dumps({"pairwise": {"winner": winner}})})
    write_split(tmp_path / "judged", "train", judged)
    wr = win_rates(tmp_path / "judged", tmp_path / "hh" / "dpo_vs_sft")
    n = len(cands)
    assert wr["judged"] == n and wr["ties"] == 1 and wr["win_rate"] == pytest.approx((n - 1 + 0.5) / n)

    gen = [{"id": str(i), "seed_id": str(i), "provenance": "{}", "messages": [
        {"role": "user", "content": "Say something."},
        {"role": "assistant", "content": "The quick brown fox jumps over the lazy dog."}]} for i in range(3)]
    write_split(tmp_path / "general", "train", gen)
    m = eval_stage(r / "data", r / "pairs", r / "sft", r / "dpo", tmp_path / "eval", tmp_path / "w-eval",
                   EvalConfig(general_dir=str(tmp_path / "general")),
                   judged={"dpo_vs_sft": (tmp_path / "judged", tmp_path / "hh" / "dpo_vs_sft")})
    assert set(m["perplexity"]) == {"base", "sft", "dpo"}
    assert m["loss"]["sft"] < m["loss"]["base"]  # SFT learned the held-out style
    assert m["reward_accuracy"]["dpo"] >= 0.5 and m["reward_margin"]["dpo"] > 0
    assert set(m["forgetting_ppl_ratio"]) == {"sft", "dpo"}
    assert m["win_rates"]["dpo_vs_sft"] == pytest.approx(wr["win_rate"])
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "| held-out perplexity |" in report and "dpo_vs_sft" in report and "Forgetting" in report
    for p in m["plots"]:
        assert (tmp_path / "eval" / p).stat().st_size > 1000
    assert {"sft_loss.png", "dpo_margins.png", "heldout_perplexity.png", "win_rates.png"} <= set(m["plots"])


def test_export_merged_matches_adapter_outputs(env, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    r = env["root"]
    res = export_merged(None, r / "dpo", tmp_path / "merged")
    assert (tmp_path / "merged" / "model.safetensors").exists() and not list((tmp_path / "merged").glob("*.bin"))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(env["base"]), r / "dpo" / "adapter").eval()
    ids = torch.randint(3, 300, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, ref(ids).logits, rtol=1e-4, atol=1e-4)
    assert res["parameters"] == sum(p.numel() for p in merged.parameters())


def test_cli_help_examples_and_input_errors(env, tmp_path):
    from typer.testing import CliRunner

    from orchard.align.cli import app

    runner = CliRunner()
    for cmd in ("sft", "dpo", "sample", "rlaif-sample", "eval", "export"):
        res = runner.invoke(app, [cmd, "--help"])
        assert res.exit_code == 0 and "Example: orchard align" in res.output, cmd
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_step: 3\n")
    res = runner.invoke(app, ["sft", str(env["root"] / "data"), "--out", str(tmp_path / "o"), "--config", str(bad),
                              "--base-model", env["base"]])
    assert res.exit_code == 2 and "max_step" in res.output and "unknown key" in res.output
    assert f"{bad}:1: 'max_step'" in res.output  # the file and line of the bad key
    assert not (tmp_path / "o").exists()
