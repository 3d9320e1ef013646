"""An evaluation that can say "better": intervals, verdicts, ties counted, regressions flagged."""

from __future__ import annotations

import json

import pandas as pd

from orchard.align.evaluate import regressions, stage_verdicts, win_rates
from orchard.align.verdicts import bootstrap_ci, loss_change_summary, verdict, win_rate_summary
from orchard.dataio import write_split


def test_interval_and_verdict_follow_the_data():
    assert verdict(bootstrap_ci([1.0] * 12 + [0.5] * 2), 0.5) == "better"
    assert verdict(bootstrap_ci([0.0] * 12 + [0.5] * 2), 0.5) == "worse"
    # 9 wins, 7 losses of 16: the interval straddles 0.5
    assert verdict(bootstrap_ci([1.0] * 9 + [0.0] * 7), 0.5) == "no change"
    assert verdict(bootstrap_ci([1.0, 0.0]), 0.5) == "not measured"  # too few to say anything
    lo, hi = bootstrap_ci([1.0] * 9 + [0.0] * 7)
    assert 0.3 < lo < 0.5625 < hi < 0.85


def test_lower_loss_is_better():
    old = [2.0, 2.1, 1.9, 2.2, 2.0, 2.05]
    assert loss_change_summary([x - 0.3 for x in old], old)["verdict"] == "better"
    s = loss_change_summary([x + 1.0 for x in old], old)
    assert s["verdict"] == "worse" and abs(s["mean_change"] - 1.0) < 1e-9


def _cands(tmp_path, answers):
    rows = [{"id": f"c{i}", "seed_id": f"s{i}", "prompt": [{"role": "user", "content": f"q{i}"}],
             "completions": [a, b], "provenance": json.dumps({"policies": ["sft", "base"]})}
            for i, (a, b) in enumerate(answers)]
    write_split(tmp_path / "cands", "train", rows)
    return rows


def test_ties_in_rejected_are_counted_not_dropped(tmp_path):
    """synth's judge writes ties to rejected.parquet: they are half a win each, not missing prompts."""
    rows = _cands(tmp_path, [("good", "bad"), ("good2", "bad2"), ("x", "y"), ("p", "q"), ("same", "same")])
    judged = [{"id": "j0", "seed_id": "s0", "prompt": rows[0]["prompt"], "chosen": [{"role": "assistant", "content": "good"}],
               "rejected": [{"role": "assistant", "content": "bad"}],
               "provenance": json.dumps({"parent_id": "c0", "pairwise": {"winner": "a", "orders_agree": True}})},
              {"id": "j1", "seed_id": "s1", "prompt": rows[1]["prompt"], "chosen": [{"role": "assistant", "content": "bad2"}],
               "rejected": [{"role": "assistant", "content": "good2"}],
               "provenance": json.dumps({"parent_id": "c1", "pairwise": {"winner": "b", "orders_agree": True}})}]
    write_split(tmp_path / "judged", "train", judged)
    pd.DataFrame([
        {"text": "q2", "reason": "pref:tie", "step": "judge", "seed_id": "s2", "parent_id": "c2",
         "detail": json.dumps({"pairwise": {"winner": "tie", "orders_agree": False}})},
        {"text": "q3", "reason": "pairwise:no_verdict", "step": "judge", "seed_id": "s3", "parent_id": "c3",
         "detail": ""},
    ]).to_parquet(tmp_path / "judged" / "rejected.parquet")
    w = win_rates(tmp_path / "judged", tmp_path / "cands")
    # c0 win, c1 loss, c2 tie (orders disagreed), c3 undecided, c4 identical answers: a tie
    assert (w["wins"], w["losses"], w["ties"], w["undecided"], w["judged"]) == (1, 1, 2, 1, 4)
    assert w["win_rate"] == 0.5 and w["policies"] == ["sft", "base"]
    assert w["order_consistency"] == 0.75


def test_stage_verdicts_flag_a_perplexity_jump():
    """The case the issue found: DPO raises held-out perplexity 158 -> 448 and the report must say so first."""
    base = [5.0 + 0.01 * i for i in range(20)]
    sft = [x - 0.1 for x in base]
    dpo = [x + 1.04 for x in sft]  # exp(1.04) ~ 2.8x the perplexity
    scores = {"base": {"heldout": {"per_example": base}}, "sft": {"heldout": {"per_example": sft}},
              "dpo": {"heldout": {"per_example": dpo}}}
    wr = {"sft_vs_base": win_rate_summary([1.0] * 10 + [0.5] * 4 + [0.0] * 2, [True] * 16),
          "dpo_vs_sft": win_rate_summary([0.5] * 8 + [1.0, 0.0] * 4, [False] * 16)}
    v = stage_verdicts(["base", "sft", "dpo"], scores, wr)
    assert v["sft"]["verdict"] == "better" and v["sft"]["verdict_from"] == "judge win-rate"
    assert v["dpo"]["win_rate"]["verdict"] == "no change" and v["dpo"]["heldout_loss"]["verdict"] == "worse"
    # the DPO judge never agreed with itself across orders: the held-out loss decides its verdict
    assert v["dpo"]["win_rate"]["unreliable"] and v["dpo"]["verdict"] == "worse"
    assert v["dpo"]["verdict_from"] == "held-out loss"
    m = {"perplexity": {"base": 160.0, "sft": 158.0, "dpo": 448.0}}
    lines = regressions(v, m)
    assert len(lines) == 1 and "dpo raises held-out perplexity from 158 to 448" in lines[0]


def test_a_small_judge_answering_in_a_sentence_still_gives_a_verdict():
    """SmolLM2-135M's own replies to the one-letter judge prompt (from the quickstart's call log)."""
    import pytest

    from orchard.synth.parsing import ParseError, parse_pairwise

    assert parse_pairwise("The answer is: B") == "b"
    assert parse_pairwise("The correct answer is A: 1") == "a"
    assert parse_pairwise("Response B") == "b"
    for no_verdict in ("The best answer is:", "A credit card debt is a type of"):
        with pytest.raises(ParseError):
            parse_pairwise(no_verdict)
