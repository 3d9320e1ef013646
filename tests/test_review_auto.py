"""The automatic review policy (`mode: auto`) through the stage function, on real parquet folders."""

import json

import pytest
from pydantic import ValidationError

from orchard.dataio import content_hash, read_rows, write_split
from orchard.errors import InputError
from orchard.review.api import review_stage
from orchard.review.config import ReviewConfig


def _row(i, score=None, filters=None):
    msgs = [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]
    prov = {"method": "self_instruct"}
    if score is not None:
        prov["judge"] = {"overall": score, "scores": {}}
    if filters is not None:
        prov["filters"] = filters
    return {"id": content_hash(msgs), "seed_id": "s", "messages": msgs, "provenance": json.dumps(prov)}


def test_auto_policy_splits_and_annotates(tmp_path):
    rows = [_row(0, 4.5), _row(1, 2.0), _row(2, 4.0, {"rouge": {"passed": False}}), _row(3), _row(4, 5.0),
            _row(5, 3.0)]
    write_split(tmp_path / "in", "train", rows)
    cfg = ReviewConfig.model_validate({"mode": "auto", "auto": {"min_judge_score": 3.0, "max_items": 2}})
    out = review_stage(tmp_path / "in", tmp_path / "out", tmp_path / "work", cfg)
    assert out["counts"] == {"input": 6, "accepted": 2, "rejected": 4}
    acc = read_rows(tmp_path / "out", "train")
    rej = read_rows(tmp_path / "out", "rejected")
    assert [r["messages"][0]["content"] for r in acc] == ["q0", "q4"]  # top-2 scores, input order kept
    reasons = {r["messages"][0]["content"]: json.loads(r["provenance"])["review"]["reason"] for r in rej}
    assert reasons["q1"].startswith("judge score 2")
    assert reasons["q2"] == "filters failed: rouge"
    assert reasons["q3"] == "no judge score"
    assert reasons["q5"] == "over max_items=2"
    review = json.loads(acc[0]["provenance"])["review"]
    assert review["decision"] == "accept" and review["policy"]["min_judge_score"] == 3.0
    assert json.loads(acc[0]["provenance"])["method"] == "self_instruct"  # provenance kept


def test_auto_default_accepts_everything_that_passed(tmp_path):
    write_split(tmp_path / "in", "train", [_row(0), _row(1, filters={"passed": False})])
    out = review_stage(tmp_path / "in", tmp_path / "out", tmp_path / "w", ReviewConfig())
    assert out["counts"]["accepted"] == 1 and out["reject_reasons"] == {"filters failed": 1}


def test_config_forbids_unknown_keys_and_bad_input(tmp_path):
    with pytest.raises(ValidationError):
        ReviewConfig.model_validate({"mode": "auto", "auto": {"min_score": 3}})
    with pytest.raises(InputError, match="train.parquet"):
        review_stage(tmp_path / "missing", tmp_path / "out", tmp_path / "w", ReviewConfig())
