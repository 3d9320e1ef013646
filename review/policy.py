"""Automatic acceptance policy (`mode: auto`): decide per SFT row from its provenance, without people."""

from __future__ import annotations

from orchard.dataio import provenance, with_provenance

from .config import AutoPolicy


def judge_overall(row: dict) -> float | None:
    """The AI judge's overall score recorded in a row's provenance, if any."""
    judge = provenance(row).get("judge") or {}
    score = judge.get("overall") if isinstance(judge, dict) else None
    return float(score) if isinstance(score, (int, float)) else None


def filters_failed(row: dict) -> list[str]:
    """Names of the filters that a row's provenance says it failed.

    The synth package records what each filter measured; a filter failed when its entry is `False`
    or a dict with `"passed": false`. A top-level `"passed": false` counts as a failure named "filters".
    """
    filters = provenance(row).get("filters")
    if not isinstance(filters, dict):
        return []
    failed = []
    for name, value in filters.items():
        if name == "passed":
            if value is False:
                failed.append("filters")
        elif value is False or (isinstance(value, dict) and value.get("passed") is False):
            failed.append(name)
    return failed


def apply_auto_policy(rows: list[dict], policy: AutoPolicy) -> tuple[list[dict], list[dict]]:
    """Split rows into (accepted, rejected), each annotated with `provenance.review`."""
    policy_desc = policy.model_dump()
    verdicts: list[tuple[dict, str | None]] = []
    for row in rows:
        reason = None
        failed = filters_failed(row) if policy.require_filters_passed else []
        score = judge_overall(row)
        if failed:
            reason = "filters failed: " + ", ".join(failed)
        elif policy.min_judge_score is not None and score is None:
            reason = "no judge score"
        elif policy.min_judge_score is not None and score < policy.min_judge_score:
            reason = f"judge score {score:g} < {policy.min_judge_score:g}"
        verdicts.append((row, reason))

    if policy.max_items is not None:
        # Keep the best-scored rows; a stable sort keeps input order among equal scores.
        passing = [i for i, (_, r) in enumerate(verdicts) if r is None]
        ranked = sorted(passing, key=lambda i: -(judge_overall(verdicts[i][0]) or float("-inf")))
        for i in ranked[policy.max_items :]:
            verdicts[i] = (verdicts[i][0], f"over max_items={policy.max_items}")

    accepted, rejected = [], []
    for row, reason in verdicts:
        review = {"decision": "accept" if reason is None else "reject", "policy": policy_desc, "edited": False,
                  "reviewers": ["auto"]}
        if reason is not None:
            review["reason"] = reason
        (accepted if reason is None else rejected).append(with_provenance(row, review=review))
    return accepted, rejected
