"""Evol-Instruct (Xu et al., WizardLM): rewrite prompts into harder ones (in-depth: add constraints, deepen,
concretize, increase reasoning) or new ones (in-breadth), eliminate failed evolutions, then answer the survivors.

Each round evolves the previous round's survivors (round 0: the seeds) with an operation drawn by an RNG seeded
with (config seed, round, item), so a re-run sends the same requests. Failed evolutions are discarded with a
reason: ``evol:unchanged`` (ROUGE-L to the parent too high: copied), ``evol:too_short``, ``evol:refusal``
("sorry", "as an AI"), ``evol:template_leak`` (the reply repeats the template's own words such as
"#Rewritten Prompt#" or "given prompt"), plus the shared instruction rules and near-duplicate filter.
"""

from __future__ import annotations

import random
import re

from orchard.dataio import content_hash

from .dedup import NearDupIndex
from .filters import instruction_reason, response_reason
from .ledger import Ledger
from .methods_config import SynthConfig
from .parsing import clean_rewrite
from .seeds import prompt_text
from .self_instruct import request_seed, user
from .templates import load_template

_REFUSAL = re.compile(r"\b(sorry|i cannot|i can't|i am unable|i'm unable|as an ai|language model)\b", re.I)
_LEAK = re.compile(r"#\s*(?:rewritten|given|created|new)\s*prompt\s*#|\b(?:rewritten|given|original|new|created)\s+prompt\b",
                   re.I)


def evolution_reason(parent: str, child: str, cfg: SynthConfig, rouge_l) -> tuple[str | None, float]:
    """Why an evolution failed (or None) and its ROUGE-L to the parent (``rouge_l(target, prediction)``)."""
    if not child.strip():
        return "evol:empty", 0.0
    sim = rouge_l(parent, child)
    if _LEAK.search(child):
        return "evol:template_leak", sim
    if _REFUSAL.search(child):
        return "evol:refusal", sim
    if len(child.split()) < cfg.evol.min_words:
        return "evol:too_short", sim
    if 1 - sim < cfg.evol.min_change_ratio:
        return "evol:unchanged", sim
    return None, sim


class Evol:
    def __init__(self, cfg: SynthConfig, teacher, ledger: Ledger, teacher_prov: dict):
        self.cfg, self.teacher, self.ledger, self.teacher_prov = cfg, teacher, ledger, teacher_prov
        self.tpl = {op: load_template(f"evol_{op}", cfg.templates) for op in cfg.evol.operations}
        self.t_resp = load_template("response", cfg.templates)

    def evolve(self, seeds: list[dict]) -> list[dict]:
        from .teacher import ChatRequest

        cfg, ev, ledger = self.cfg, self.cfg.evol, self.ledger
        index = NearDupIndex(cfg.filters.near_dup)
        parents = [{"id": s["id"], "seed_id": s["seed_id"], "prompt": prompt_text(s["instruction"], s.get("input", "")),
                    "depth": 0, "ops": [], "lineage": [s["id"]]} for s in seeds]
        index.add_many((p["id"], p["prompt"]) for p in parents)
        evolved: list[dict] = []
        for rnd in range(ev.rounds):
            room = cfg.num - len(evolved)
            if room <= 0 or not parents:
                break
            parents = parents[:room]
            reqs, ops = [], []
            for i, p in enumerate(parents):
                op = random.Random(request_seed(cfg.seed, 10, rnd, i)).choice(ev.operations)
                ops.append(op)
                reqs.append(ChatRequest(messages=user(self.tpl[op].render(prompt=p["prompt"])),
                                        params={"temperature": ev.temperature, "max_tokens": ev.max_tokens},
                                        seed=request_seed(cfg.seed, 11, rnd, i), tag=f"evol:r{rnd}:{p['id']}:{op}"))
            survivors = []
            for p, op, res in zip(parents, ops, self.teacher.chat_many(reqs)):
                ledger.count("generated")
                common = dict(seed_id=p["seed_id"], parent_id=p["id"])
                if not res.ok:
                    ledger.reject("", "teacher_error", "evolve", **common, detail={"error": res.error, "op": op})
                    continue
                child = clean_rewrite(res.text)
                reason, sim = evolution_reason(p["prompt"], child, cfg, index.rouge_l)
                if reason is None and res.truncated:
                    reason = "evol:truncated"
                if reason is None:
                    reason = instruction_reason(child, cfg.filters)
                    # An evolved prompt carries its input too, so it may run to twice the instruction limit.
                    if reason == "filter:too_long" and len(child.split()) <= 2 * cfg.filters.max_instruction_words:
                        reason = None
                hit, mh = None, None
                if reason is None and cfg.filters.near_dup.enabled:
                    hit, _, mh = index.check(child, exclude=set(p["lineage"]))
                    if hit is not None:
                        reason = "near_dup"
                if reason:
                    ledger.reject(child, reason, "evolve", **common,
                                  detail={"op": op, "rouge_l_parent": round(sim, 4), **({"dup_of": hit.dup_of} if hit else {})})
                    continue
                key = content_hash({"prompt": child, "parent": p["id"]})
                index.add(key, child, mh)
                item = {"id": key, "seed_id": p["seed_id"], "parent_id": p["id"], "prompt": child,
                        "depth": p["depth"] + 1, "ops": p["ops"] + [op], "lineage": p["lineage"] + [key], "rouge_l_parent": round(sim, 4), "op": op}
                survivors.append(item)
                evolved.append(item)
            parents = survivors
        return evolved

    def respond(self, items: list[dict]) -> list[dict]:
        from .teacher import ChatRequest

        cfg, ev, ledger = self.cfg, self.cfg.evol, self.ledger
        reqs = [ChatRequest(messages=user(self.t_resp.render(prompt=it["prompt"])),
                            params={"temperature": ev.response_temperature, "max_tokens": ev.response_max_tokens},
                            seed=request_seed(cfg.seed, 12, i), tag=f"evol_response:{it['id']}")
                for i, it in enumerate(items)]
        rows = []
        for it, res in zip(items, self.teacher.chat_many(reqs) if reqs else []):
            common = dict(seed_id=it["seed_id"], parent_id=it["parent_id"])
            if not res.ok:
                ledger.reject(it["prompt"], "teacher_error", "respond", **common, detail={"error": res.error})
                continue
            out = res.text.strip()
            # WizardLM also drops evolutions whose answer is a short apology: the prompt was not answerable.
            reason = response_reason(out, cfg.filters)
            if reason is None and _REFUSAL.search(out) and len(out.split()) < 80:
                reason = "evol:refusal_response"
            if reason:
                ledger.reject(it["prompt"], reason, "respond", **common, detail={"response": out[:300]})
                continue
            msgs = [{"role": "user", "content": it["prompt"]}, {"role": "assistant", "content": out}]
            tpl = self.tpl[it["op"]]
            prov = {"method": f"evol_instruct:{it['op']}", "seed_id": it["seed_id"], "parent_id": it["parent_id"],
                    "teacher": self.teacher_prov, **tpl.provenance(),
                    "templates": {tpl.name: tpl.version, self.t_resp.name: self.t_resp.version},
                    "depth": it["depth"], "ops": it["ops"], "filters": {"rouge_l_parent": it["rouge_l_parent"]}}
            rows.append({"id": content_hash({"messages": msgs}), "seed_id": it["seed_id"], "messages": msgs,
                         "provenance": prov})
        return rows

    def run(self, seeds: list[dict]) -> list[dict]:
        items = self.evolve(seeds)
        self.ledger.count("instructions_kept", len(items))
        return self.respond(items)
