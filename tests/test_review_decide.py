"""Turning reviewers' responses into datasets, offline: majority vote, ties, edits, calibration, agreement."""

import json

import pytest

from orchard.dataio import content_hash, read_rows
from orchard.review.agreement import calibrate, reviewer_agreement
from orchard.review.pull import decide, write_outputs
from orchard.review.push import uncertainty


def _row(i, score):
    msgs = [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]
    return {"id": content_hash(msgs), "seed_id": "s", "messages": msgs,
            "provenance": json.dumps({"judge": {"overall": score}})}


def _resp(user, decision, **more):
    return {"user": user, "values": {"decision": decision, **more}}


def test_majority_ties_pending_and_calibration_applied(tmp_path):
    rows = [_row(i, s) for i, s in enumerate([0.9, 0.8, 0.3, 0.2, 0.7, 0.95, 0.1])]
    responses = {
        rows[0]["id"]: [_resp("a", "accept"), _resp("b", "accept"), _resp("c", "reject")],
        rows[1]["id"]: [_resp("a", "accept"), _resp("b", "reject")],                  # tie
        rows[2]["id"]: [_resp("a", "reject"), _resp("b", "reject")],
        rows[3]["id"]: [_resp("a", "reject"), _resp("b", "reject")],
        rows[4]["id"]: [_resp("a", "accept", edited_response="better a4"), _resp("b", "accept")],
        rows[5]["id"]: [_resp("a", "accept")],                                         # under min_submitted
    }
    res = decide(rows, responses, min_submitted=2, calibration_apply=True)
    # Reviewed, untied: scores 0.9 acc, 0.3 rej, 0.2 rej, 0.7 acc -> any threshold in (0.3, 0.7] is perfect;
    # the lowest such score is 0.7.
    assert res["calibration"]["threshold"] == 0.7 and res["calibration"]["accuracy"] == 1.0
    assert res["calibration"]["precision"] == 1.0 and res["calibration"]["recall"] == 1.0
    assert res["calibration_applied"] == 2  # rows 5 (0.95 -> accept) and 6 (0.1 -> reject)
    summary = write_outputs(res, tmp_path)
    assert summary["counts"] == {"accepted": 3, "rejected": 3, "ties": 1, "pending": 0, "edited": 1,
                                 "calibration_applied": 2}
    acc = {r["id"]: json.loads(r["provenance"])["review"] for r in read_rows(tmp_path, "train")}
    assert acc[rows[0]["id"]]["votes"] == {"accept": 2, "reject": 1}
    assert acc[rows[5]["id"]]["reviewers"] == ["calibrated_judge"]
    assert acc[rows[4]["id"]]["original_response"] == "a4"
    assert read_rows(tmp_path, "preferences")[0]["chosen"][0]["content"] == "better a4"
    assert (tmp_path / "report.md").exists() and (tmp_path / "judge_vs_reviewers.png").exists()


def test_agreement_three_raters_and_missing():
    # 3 raters, 4 items, all agree on 3 items, one 2-1 split: Fleiss by hand.
    labels = {"i1": {"a": "x", "b": "x", "c": "x"}, "i2": {"a": "y", "b": "y", "c": "y"},
              "i3": {"a": "x", "b": "x", "c": "x"}, "i4": {"a": "x", "b": "y", "c": "x"}, "i5": {"a": "x"}}
    out = reviewer_agreement(labels)
    assert out["items"] == 4  # i5 has one rating only
    # p_x = 8/12, p_y = 4/12, Pe = 5/9; P_i = 1,1,1,1/3 -> P = 5/6; kappa = (5/6 - 5/9) / (4/9) = 0.625
    assert out["fleiss_kappa"] == pytest.approx(0.625)
    assert out["percent_agreement"] == pytest.approx(0.75)


def test_calibrate_prefers_accuracy_then_f1():
    assert calibrate([], []) is None
    cal = calibrate([1, 2, 3, 4], [False, False, True, True])
    assert cal["threshold"] == 3 and cal["accuracy"] == 1.0


def test_uncertainty_scales_and_pairwise():
    row = {"provenance": json.dumps({"judge": {"overall": 3}})}
    assert uncertainty(row, (1, 5)) == 1.0
    assert uncertainty({"provenance": json.dumps({"judge": {"overall": 5}})}, (1, 5)) == 0.0
    assert uncertainty({"provenance": json.dumps({"pairwise": {"orders_agree": False}})}, (0, 1)) == 1.0
    assert uncertainty({"provenance": "{}"}, (0, 1)) == 1.0  # never judged
