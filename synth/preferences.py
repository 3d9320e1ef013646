"""Preference pairs: several responses per prompt (temperatures cycled; sample index in the cache key), judged
into chosen/rejected with a margin; pairs below ``min_margin`` (and pairwise ties) are discarded with a reason.

``rating``: each response is scored; chosen = best mean score, rejected = worst, margin = their difference.
``pairwise``: every pair of responses is compared in both orders; a response scores 1 per win (ties 0.5);
chosen = most wins, rejected = fewest, margin = (wins difference) / (responses - 1), so with two responses the
margin is 1 when both orders agree and the pair is a tie (margin 0) when they do not.
"""

from __future__ import annotations

import itertools

from orchard.dataio import content_hash, provenance

from .judge import Judge, Verdict
from .ledger import Ledger
from .methods_config import PreferencesConfig
from .parsing import ParseError
from .self_instruct import request_seed


def prompt_of(row: dict) -> list[dict]:
    """The prompt messages of an SFT / preference / candidates row (everything before the last assistant turn)."""
    if row.get("prompt") is not None:
        p = row["prompt"]
        return [dict(m) for m in p] if isinstance(p, list) else [{"role": "user", "content": str(p)}]
    msgs = [dict(m) for m in row["messages"]]
    while msgs and msgs[-1]["role"] == "assistant":
        msgs.pop()
    return msgs


def sample_responses(rows: list[dict], cfg: PreferencesConfig, teacher, ledger: Ledger,
                     samplers: list | None = None) -> list[list[tuple[str, float, str]]]:
    """N (text, temperature, model) responses per prompt row. Response k comes from ``samplers[k % len]`` when
    given (other endpoints/models), else from ``teacher``. Failed calls are counted (``sample_errors``)."""
    from .teacher import ChatRequest

    samplers = samplers or [teacher]
    batches: list[list] = [[] for _ in samplers]
    for i, r in enumerate(rows):
        for k in range(cfg.num_responses):
            t = cfg.temperatures[k % len(cfg.temperatures)]
            batches[k % len(samplers)].append(((i, t), ChatRequest(
                messages=prompt_of(r), params={"temperature": t, "max_tokens": cfg.max_tokens},
                seed=request_seed(cfg.seed, 40, k), sample=k, tag=f"pref_sample:{r.get('id')}:{k}")))
    got: list[tuple[tuple[int, float], object, str]] = []
    for s, batch in zip(samplers, batches):
        if batch:
            results = s.chat_many([rq for _, rq in batch])
            got += [(own, res, s.model_id) for (own, _), res in zip(batch, results)]
    out: list[list[tuple[str, float, str]]] = [[] for _ in rows]
    for (i, t), res, model in sorted(got, key=lambda g: g[0][0]):
        if res.ok and res.text.strip():
            out[i].append((res.text.strip(), t, model))
        else:
            # Not a discarded item by itself: the prompt still gets judged on the responses that came back,
            # or is rejected as pref:too_few_responses. Still lost work: the pair is not the one a re-run gives.
            ledger.count("sample_errors")
            ledger.count("lost_calls")
    return out


def make_pairs(rows: list[dict], responses: list[list[str]], cfg: PreferencesConfig, judge: Judge,
               ledger: Ledger, mode: str, extra: list[dict] | None = None) -> list[dict]:
    """Judge each row's responses and emit TRL preference rows (prompt / chosen / rejected)."""
    pairs_out, n_rej = [], len(ledger.rejected)
    if mode == "rating":
        flat = [(prompt_of(r), c) for r, cs in zip(rows, responses) for c in cs]
        verdicts = judge.rate_many(flat)
        it = iter(verdicts)
        per_row = [[next(it) for _ in cs] for cs in responses]
    else:
        combos = [list(itertools.combinations(range(len(cs)), 2)) for cs in responses]
        flat = [(prompt_of(r), cs[a], cs[b]) for r, cs, cb in zip(rows, responses, combos) for a, b in cb]
        verdicts = judge.pairwise_many(flat)
        it = iter(verdicts)
        per_row = [[(a, b, next(it)) for a, b in cb] for cb in combos]
    for idx, (r, cs, got) in enumerate(zip(rows, responses, per_row)):
        ledger.count("generated")
        common = (r.get("seed_id", ""), r.get("id", ""))
        text = prompt_of(r)[-1]["content"] if prompt_of(r) else ""
        if len(cs) < 2:
            ledger.reject(text, "pref:too_few_responses", "judge", *common, {"responses": len(cs)})
            continue
        if mode == "rating":
            ok = [(i, v) for i, v in enumerate(got) if isinstance(v, dict)]
            errs = [v.reason for v in got if isinstance(v, ParseError)]
            if len(ok) < 2:
                ledger.reject(text, errs[0] if errs else "pref:too_few_judged", "judge", *common, {"errors": errs})
                continue
            ok.sort(key=lambda x: (-x[1]["overall"], x[0]))
            (ci, cj), (ri, rj) = ok[0], ok[-1]
            margin = round(cj["overall"] - rj["overall"], 4)
            detail = {"judge": {"chosen": cj, "rejected": rj}, "scores": [v.get("overall") if isinstance(v, dict) else None for v in got]}
        else:
            wins = [0.0] * len(cs)
            errs, agree_all = [], True
            for a, b, v in got:
                if isinstance(v, ParseError):
                    errs.append(v.reason)
                    continue
                agree_all &= v.orders_agree
                if v.winner == "a":
                    wins[a] += 1
                elif v.winner == "b":
                    wins[b] += 1
                else:
                    wins[a] += 0.5
                    wins[b] += 0.5
            if errs and len(errs) == len(got):
                ledger.reject(text, errs[0], "judge", *common, {"errors": errs})
                continue
            order = sorted(range(len(cs)), key=lambda i: (-wins[i], i))
            ci, ri = order[0], order[-1]
            margin = round((wins[ci] - wins[ri]) / (len(cs) - 1), 4)
            first = next((v for a, b, v in got if isinstance(v, Verdict)), None)
            winner = "tie" if margin == 0 else ("a" if ci < ri else "b")
            detail = {"pairwise": {"winner": winner, "orders_agree": bool(agree_all), "margin": margin,
                                   "wins": wins, "first_order": first.first if first else None,
                                   "second_order": first.second if first else None}}
        if margin <= 0 and mode == "pairwise":
            ledger.reject(text, "pref:tie", "judge", *common, detail)
            continue
        if margin < cfg.min_margin:
            ledger.reject(text, "pref:low_margin", "judge", *common, {"margin": margin, "min_margin": cfg.min_margin})
            continue
        prompt = prompt_of(r)
        chosen = [{"role": "assistant", "content": cs[ci]}]
        rejected = [{"role": "assistant", "content": cs[ri]}]
        prov = {k: v for k, v in provenance(r).items() if k in ("seed_id", "method", "teacher", "policy")}
        prov.update({"seed_id": r.get("seed_id") or r.get("id"), "parent_id": r.get("id"), "margin": margin,
                     "source_method": prov.pop("method", None), "method": f"preference_{mode}",
                     "judge_model": judge.model, **detail, **((extra or [{}] * len(rows))[idx])})
        pairs_out.append({"id": content_hash({"prompt": prompt, "chosen": chosen, "rejected": rejected}),
                          "seed_id": r.get("seed_id") or r.get("id"), "prompt": prompt, "chosen": chosen,
                          "rejected": rejected, "provenance": prov})
    # Judge calls lost after every retry: a row rejected as lost:* accounts for one of its own; the others (and
    # those of rows judged on what came back) are lost calls.
    lost = sum(isinstance(v, ParseError) and v.reason.startswith("lost:") for v in verdicts)
    ledger.count("lost_calls", lost - sum(r["reason"].startswith("lost:") for r in ledger.rejected[n_rej:]))
    return pairs_out
