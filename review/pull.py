"""Pull reviewers' submitted responses back into orchard datasets, with agreement numbers and a report.

Decisions come from the server's current state and the source rows (joined on the stable id), so pulling again
gives the same result and only adds what reviewers did since. Majority vote across reviewers; ties are reported
and kept out of both outputs.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from orchard.dataio import atomic_write_json, atomic_write_text, with_provenance, write_split

from .agreement import calibrate, judge_agreement, reviewer_agreement
from .client import iter_records
from .push import _messages_parts, _overall, dataset_kind, judge_scale


def _usernames(client) -> dict[str, str]:
    r = client.http_client.get("/api/v1/users")
    r.raise_for_status()
    return {u["id"]: u["username"] for u in r.json()["items"]}


def _value(resp: dict, question: str):
    v = (resp.get("values") or {}).get(question)
    return v.get("value") if isinstance(v, dict) else None


def _majority(votes: list) -> tuple[str | None, Counter]:
    counts = Counter(v for v in votes if v is not None)
    if not counts:
        return None, counts
    top = counts.most_common()
    if len(top) > 1 and top[0][1] == top[1][1]:
        return "tie", counts
    return top[0][0], counts


def collect(client, dataset) -> dict[str, list[dict]]:
    """external id -> that record's submitted responses as [{"user": name, "values": {...}}]."""
    names = _usernames(client)
    out = {}
    for rec in iter_records(client, dataset.id, include=("responses",)):
        subs = [{"user": names.get(r["user_id"], r["user_id"]), "values": {q: _value(r, q) for q in r["values"]}}
                for r in rec.get("responses") or [] if r.get("status") == "submitted"]
        out[rec["external_id"]] = subs
    return out


def decide(rows: list[dict], responses: dict[str, list[dict]], min_submitted: int = 1,
           calibration_apply: bool = False) -> dict:
    """Turn responses into accepted/rejected rows (SFT) or preference pairs, plus agreement and calibration."""
    kind = dataset_kind(rows)
    scale = judge_scale(rows)
    mid = (scale[0] + scale[1]) / 2
    accepted, rejected, edits_as_prefs, ties, pending = [], [], [], [], []
    labels: dict[str, dict] = {}
    ratings: dict[str, dict] = {}
    human, judge, cal_scores, cal_accept = [], [], [], []
    question = "decision" if kind == "sft" else "preference"
    for row in rows:
        subs = responses.get(row["id"], [])
        if len(subs) < min_submitted or not subs:
            pending.append(row)
            continue
        votes = [s["values"].get(question) for s in subs]
        labels[row["id"]] = {s["user"]: v for s, v in zip(subs, votes) if v is not None}
        qs = {s["user"]: s["values"].get("quality") for s in subs if s["values"].get("quality") is not None}
        if qs:
            ratings[row["id"]] = qs
        winner, counts = _majority(votes)
        reviewers = sorted(s["user"] for s in subs)
        if winner in (None, "tie"):
            ties.append({"id": row["id"], "votes": dict(counts), "reviewers": reviewers})
            continue
        score = _overall(row)
        if kind == "sft":
            if score is not None:
                human.append(winner)
                judge.append("accept" if score >= mid else "reject")
                cal_scores.append(score)
                cal_accept.append(winner == "accept")
            review = {"decision": winner, "edited": False, "reviewers": reviewers, "votes": dict(counts),
                      "rating": (sum(qs.values()) / len(qs)) if qs else None}
            if winner == "accept":
                original = _messages_parts(row["messages"])[2]
                edits = Counter(e.strip() for s in subs if s["values"].get("decision") == "accept"
                                for e in [s["values"].get("edited_response") or ""] if e.strip()
                                and e.strip() != original.strip())
                new_row = dict(row)
                if edits:
                    edited = edits.most_common(1)[0][0]
                    msgs = [dict(m) for m in row["messages"]]
                    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
                    msgs[last]["content"] = edited
                    new_row["messages"] = msgs
                    review.update(edited=True, original_response=original)
                    edits_as_prefs.append(_edit_pair(row, msgs, edited, original))
                accepted.append(with_provenance(new_row, review=review))
            else:
                rejected.append(with_provenance(row, review=review))
        else:
            a_is_chosen = int(row["id"][-1], 16) % 2 == 0  # as push placed them
            keeps = (winner == "a") == a_is_chosen
            new_row = dict(row)
            if not keeps:  # reviewers preferred the originally rejected response
                new_row["chosen"], new_row["rejected"] = row["rejected"], row["chosen"]
            review = {"decision": "accept", "swapped": not keeps, "reviewers": reviewers, "votes": dict(counts)}
            accepted.append(with_provenance(new_row, review=review))
            pw = (json.loads(row["provenance"]).get("pairwise") or {}) if row.get("provenance") else {}
            if pw.get("winner") in ("a", "b"):
                human.append("keep" if keeps else "swap")
                judge.append("keep" if pw["winner"] == "a" else "swap")

    calibration = calibrate(cal_scores, cal_accept) if kind == "sft" else None
    applied = []
    if calibration_apply and calibration and calibration["threshold"] is not None:
        t = calibration["threshold"]
        for row in list(pending):
            score = _overall(row)
            if score is None:
                continue
            pending.remove(row)
            review = {"decision": "accept" if score >= t else "reject", "edited": False,
                      "reviewers": ["calibrated_judge"], "threshold": t}
            (accepted if score >= t else rejected).append(with_provenance(row, review=review))
            applied.append(row["id"])
    return {
        "kind": kind, "accepted": accepted, "rejected": rejected, "edit_pairs": edits_as_prefs, "ties": ties,
        "pending": pending,
        "agreement": {question: reviewer_agreement(labels, "nominal"),
                      **({"quality": reviewer_agreement(ratings, "ordinal")} if ratings else {})},
        "judge_agreement": judge_agreement(human, judge),
        "calibration": calibration, "calibration_applied": len(applied),
        "_cal": (cal_scores, cal_accept),
    }


def _edit_pair(row: dict, msgs: list[dict], edited: str, original: str) -> dict:
    """A reviewer's edit is a preference: the edited response over the original."""
    last_user = max(i for i, m in enumerate(msgs) if m["role"] == "user")
    prompt = [dict(m) for m in msgs[: last_user + 1]]
    pair = {"id": row["id"] + "-edit", "seed_id": row.get("seed_id"), "prompt": prompt,
            "chosen": [{"role": "assistant", "content": edited}],
            "rejected": [{"role": "assistant", "content": original}]}
    return with_provenance(pair, method="review_edit", parent_id=row["id"], margin=1.0)


def write_outputs(result: dict, out_dir: Path) -> dict:
    """Write train/rejected/preferences splits, agreement.json, plots and report.md; return the summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_split(out_dir, "train", result["accepted"])
    write_split(out_dir, "rejected", result["rejected"])
    if result["edit_pairs"]:
        write_split(out_dir, "preferences", result["edit_pairs"])
    summary = {
        "kind": result["kind"],
        "counts": {"accepted": len(result["accepted"]), "rejected": len(result["rejected"]),
                   "ties": len(result["ties"]), "pending": len(result["pending"]),
                   "edited": sum(json.loads(r["provenance"])["review"].get("edited", False)
                                 for r in result["accepted"]),
                   "calibration_applied": result["calibration_applied"]},
        "agreement": result["agreement"], "judge_agreement": result["judge_agreement"],
        "calibration": result["calibration"], "ties": result["ties"],
        "min_submitted": result.get("min_submitted"),
    }
    atomic_write_json(out_dir / "agreement.json", summary)
    plots = _plots(result, out_dir)
    atomic_write_text(out_dir / "report.md", _report(summary, plots))
    return summary


def _plots(result: dict, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    scores, accepted = result["_cal"]
    if scores:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist([s for s, a in zip(scores, accepted) if a], bins=10, alpha=0.6, label="reviewers accepted")
        ax.hist([s for s, a in zip(scores, accepted) if not a], bins=10, alpha=0.6, label="reviewers rejected")
        cal = result["calibration"]
        if cal and cal["threshold"] is not None:
            ax.axvline(cal["threshold"], color="k", ls="--", label=f"best threshold {cal['threshold']:g}")
        ax.set_xlabel("AI judge score")
        ax.set_ylabel("items")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "judge_vs_reviewers.png", dpi=100)
        plt.close(fig)
        made.append("judge_vs_reviewers.png")
    kappas = result["agreement"].get("decision", result["agreement"].get("preference", {})).get("cohen_kappa", {})
    if kappas:
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.barh(list(kappas), [v["kappa"] or 0.0 for v in kappas.values()])
        ax.set_xlim(-1, 1)
        ax.set_xlabel("Cohen's kappa")
        fig.tight_layout()
        fig.savefig(out_dir / "reviewer_kappa.png", dpi=100)
        plt.close(fig)
        made.append("reviewer_kappa.png")
    return made


def _overlap_lines(m: dict | None) -> list[str]:
    if not m:
        return []
    line = f"A record counts once {m['used']} reviewer(s) submitted it"
    if m["source"] == "dataset":
        line += " (the overlap the dataset was pushed with)."
    else:
        line += f", as asked (the dataset was pushed with {m['pushed_with']})."
    return [line, ""]


def _report(s: dict, plots: list[str]) -> str:
    c = s["counts"]
    lines = ["# Review results", "",
             f"Accepted {c['accepted']}, rejected {c['rejected']}, ties {c['ties']}, still pending {c['pending']} "
             f"(edited by reviewers: {c['edited']}; decided by the calibrated judge: {c['calibration_applied']}).", "",
             *_overlap_lines(s.get("min_submitted")),
             "## Agreement between reviewers", ""]
    for q, a in s["agreement"].items():
        lines.append(f"- **{q}** ({a['items']} items with 2+ reviews): Fleiss' kappa {a['fleiss_kappa']}, "
                     f"Krippendorff's alpha {a['krippendorff_alpha']}, raw agreement {a['percent_agreement']}")
        for pair, v in a["cohen_kappa"].items():
            lines.append(f"  - Cohen's kappa {pair}: {v['kappa']} (n={v['n']})")
    j = s["judge_agreement"]
    lines += ["", "## Reviewers vs the AI judge", "",
              f"Accuracy {j['accuracy']}, Cohen's kappa {j['cohen_kappa']} (n={j['n']})."]
    cal = s["calibration"]
    if cal:
        lines += ["", "## Calibration", "",
                  f"Threshold {cal['threshold']} (accept when the judge score is at least this): accuracy "
                  f"{cal['accuracy']}, precision {cal['precision']}, recall {cal['recall']} on {cal['n']} reviewed items."]
    if s["ties"]:
        lines += ["", "## Ties (kept out of the outputs)", ""] + [f"- {t['id']}: {t['votes']}" for t in s["ties"]]
    lines += [""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def dataset_progress(client, dataset) -> dict:
    """Progress of a dataset overall and per reviewer (the server's own counts)."""
    return dataset.progress(with_users_distribution=True)
