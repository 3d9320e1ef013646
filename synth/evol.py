"""Evol-Instruct (Xu et al., WizardLM): rewrite prompts into harder ones (in-depth: add constraints, deepen,
concretize, increase reasoning) or new ones (in-breadth), eliminate failed evolutions, then answer the survivors.

Each seed's chain of ``rounds`` evolutions rewrites the last evolution that passed (round 0: the seed) with an
operation drawn by an RNG seeded with (config seed, round, seed index), so a re-run sends the same requests; chains
run seed after seed until ``num`` pairs are written. Failed evolutions are discarded with a
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
from .fill import Method
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


class _Chain:
    """One seed's evolution chain (a ``fill`` unit): evolution d rewrites evolution d - 1, up to evol.rounds."""

    __slots__ = ("i", "seed", "task")

    def __init__(self, i: int, seed: dict):
        self.i, self.seed, self.task = i, seed, None


class Evol(Method):
    """Evol-Instruct as a ``fill`` method: a unit is one seed's chain of ``rounds`` evolutions (each rewrites the
    last one that passed the checks an answer can be judged by alone), a candidate is an evolved prompt, finished
    by its response call. A chain's requests depend only on its seed and its own answers, so a lost answer ends
    that chain and shifts nothing else."""

    def __init__(self, cfg: SynthConfig, teacher, ledger: Ledger, teacher_prov: dict):
        self.cfg, self.teacher, self.ledger, self.teacher_prov = cfg, teacher, ledger, teacher_prov
        self.tpl = {op: load_template(f"evol_{op}", cfg.templates) for op in cfg.evol.operations}
        self.t_resp = load_template("response", cfg.templates)
        self.index = NearDupIndex(cfg.filters.near_dup)
        self.per_unit = cfg.evol.rounds

    def start(self, seeds: list[dict]) -> None:
        self.seeds = seeds
        self.index.add_many((s["id"], prompt_text(s["instruction"], s.get("input", ""))) for s in seeds)
        self.cap = f"every seed evolved ({len(seeds)} seeds, evol.rounds={self.cfg.evol.rounds})"

    def units(self):
        return (_Chain(i, s) for i, s in enumerate(self.seeds))

    async def fetch(self, pool, u: _Chain) -> list:
        """[(round, op, parent, result, child, local reason, ROUGE-L to the parent)], ending at the first failure."""
        from .teacher import ChatRequest

        cfg, ev = self.cfg, self.cfg.evol
        s = u.seed
        parent = {"id": s["id"], "seed_id": s["seed_id"], "prompt": prompt_text(s["instruction"], s.get("input", "")),
                  "depth": 0, "ops": [], "lineage": [s["id"]]}
        steps = []
        for rnd in range(ev.rounds):
            op = random.Random(request_seed(cfg.seed, 10, rnd, u.i)).choice(ev.operations)
            res = await pool.submit(ChatRequest(
                messages=user(self.tpl[op].render(prompt=parent["prompt"])),
                params={"temperature": ev.temperature, "max_tokens": ev.max_tokens},
                seed=request_seed(cfg.seed, 11, rnd, u.i), tag=f"evol:r{rnd}:{parent['id']}:{op}"))
            if not res.ok:
                steps.append((rnd, op, parent, res, None, None, 0.0))
                break
            child = clean_rewrite(res.text)
            reason, sim = evolution_reason(parent["prompt"], child, cfg, self.index.rouge_l)
            if reason is None:
                reason = instruction_reason(child, cfg.filters)
                # An evolved prompt carries its input too, so it may run to twice the instruction limit.
                if reason == "filter:too_long" and len(child.split()) <= 2 * cfg.filters.max_instruction_words:
                    reason = None
            steps.append((rnd, op, parent, res, child, reason, sim))
            if reason:
                break
            key = content_hash({"prompt": child, "parent": parent["id"]})
            parent = {"id": key, "seed_id": s["seed_id"], "parent_id": parent["id"], "prompt": child,
                      "depth": parent["depth"] + 1, "ops": parent["ops"] + [op], "lineage": parent["lineage"] + [key],
                      "rouge_l_parent": round(sim, 4), "op": op}
        return steps

    def accept(self, u: _Chain, steps: list) -> list:
        cfg, ledger = self.cfg, self.ledger
        out = []
        for rnd, op, parent, res, child, reason, sim in steps:
            ledger.count("generated")
            common = dict(seed_id=parent["seed_id"], parent_id=parent["id"])
            if not res.ok:
                ledger.lose("", res, "evolve", **common, op=op)
                continue
            hit, mh = None, None
            if reason is None and cfg.filters.near_dup.enabled:
                hit, _, mh = self.index.check(child, exclude=set(parent["lineage"]))
                if hit is not None:
                    reason = "near_dup"
            if reason:
                ledger.reject(child, reason, "evolve", **common,
                              detail={"op": op, "rouge_l_parent": round(sim, 4), **({"dup_of": hit.dup_of} if hit else {})})
                continue
            key = content_hash({"prompt": child, "parent": parent["id"]})
            self.index.add(key, child, mh)
            ledger.count("instructions_kept")
            out.append({"id": key, "seed_id": parent["seed_id"], "parent_id": parent["id"], "prompt": child,
                        "depth": parent["depth"] + 1, "ops": parent["ops"] + [op], "rouge_l_parent": round(sim, 4),
                        "op": op, "slot": [u.i, rnd]})
        return out

    async def finish(self, pool, it: dict):
        from .teacher import ChatRequest

        ev = self.cfg.evol
        return await pool.submit(ChatRequest(
            messages=user(self.t_resp.render(prompt=it["prompt"])),
            params={"temperature": ev.response_temperature, "max_tokens": ev.response_max_tokens},
            seed=request_seed(self.cfg.seed, 12, *it["slot"]), tag=f"evol_response:{it['id']}"))

    def conclude(self, it: dict, res) -> dict | None:
        cfg, ledger = self.cfg, self.ledger
        common = dict(seed_id=it["seed_id"], parent_id=it["parent_id"])
        if not res.ok:
            ledger.lose(it["prompt"], res, "respond", **common)
            return None
        out = res.text.strip()
        # WizardLM also drops evolutions whose answer is a short apology: the prompt was not answerable.
        reason = response_reason(out, cfg.filters)
        if reason is None and _REFUSAL.search(out) and len(out.split()) < 80:
            reason = "evol:refusal_response"
        if reason:
            ledger.reject(it["prompt"], reason, "respond", **common, detail={"response": out[:300]})
            return None
        msgs = [{"role": "user", "content": it["prompt"]}, {"role": "assistant", "content": out}]
        tpl = self.tpl[it["op"]]
        prov = {"method": f"evol_instruct:{it['op']}", "seed_id": it["seed_id"], "parent_id": it["parent_id"],
                "teacher": self.teacher_prov, **tpl.provenance(),
                "templates": {tpl.name: tpl.version, self.t_resp.name: self.t_resp.version},
                "depth": it["depth"], "ops": it["ops"], "filters": {"rouge_l_parent": it["rouge_l_parent"]}}
        return {"id": content_hash({"messages": msgs}), "seed_id": it["seed_id"], "messages": msgs, "provenance": prov}

    def candidate_text(self, it: dict) -> str:
        return it["prompt"]
