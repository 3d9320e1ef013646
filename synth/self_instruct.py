"""Self-Instruct (Wang et al., 2023): bootstrap new tasks from seed tasks, then write an instance for each.

Round r sends up to ``prompts_per_round`` prompts, each listing ``num_prompt_instructions`` tasks (seed tasks plus up
to ``num_machine_instructions`` generated ones from the answer of an earlier round's first prompt, chosen by an RNG
seeded with (config seed, round, prompt)), so a re-run asks exactly the same requests and the teacher's call cache answers them
for free. New tasks pass the instruction rules and the near-duplicate filter (ROUGE-L against seeds and everything
kept so far). Then each task is classified (classification or not) and gets an input/output instance: output first
for classification tasks, so labels are not all the same. ``fill`` runs it until ``num`` pairs are written.
"""

from __future__ import annotations

import asyncio
import random
import re

from orchard.dataio import content_hash

from .dedup import NearDupIndex
from .filters import instruction_reason, response_reason
from .fill import Method
from .ledger import Ledger
from .methods_config import SynthConfig
from .parsing import ParseError, instance_unfinished, parse_instance, parse_tasks, parse_yes_no
from .seeds import prompt_text
from .templates import PromptTemplate, load_template


def one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def bootstrap_prompt(tasks: list[str], count: int, tpl: PromptTemplate) -> str:
    lines = "\n".join(f"Task {i}: {one_line(t)}" for i, t in enumerate(tasks, 1))
    return tpl.render(tasks=lines, first=len(tasks) + 1, count=count)


def bootstrap_answer(tasks: list[str], first: int) -> str:
    """What a good reply to ``bootstrap_prompt`` looks like (the format ``parse_tasks`` reads first)."""
    return "\n".join(f"Task {first + i}: {one_line(t)}" for i, t in enumerate(tasks))


def instance_answer(input_text: str, output: str, classification: bool) -> str:
    inp = input_text.strip() or "<none>"
    if classification:
        return f"Class label: {output.strip()}\nInput: {inp}"
    return f"Input: {inp}\nOutput: {output.strip()}"


def strip_template_echo(item: str, prompt: str) -> str:
    """Drop lines of ``item`` that repeat the prompt's own instruction lines (small models echo the footer,
    e.g. "Write them one per line, starting at Task 4:")."""
    own = {ln.strip().lower() for ln in prompt.splitlines() if ln.strip() and not re.match(r"\s*Task \d+:", ln)}
    return "\n".join(ln for ln in item.splitlines() if ln.strip().lower() not in own).strip()


def request_seed(base: int, *parts: int) -> int:
    """A per-request seed derived from the config seed (stable across runs and Python versions)."""
    return int(content_hash([base, *parts], n=8), 16) % (2**31 - 1)


def user(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


class _Prompt:
    """One bootstrap prompt (a ``fill`` unit): its place (round, index), in-context tasks, request and task."""

    __slots__ = ("rnd", "p", "ctx", "request", "task", "_local")

    def __init__(self, rnd: int, p: int):
        self.rnd, self.p, self.ctx, self.request, self.task, self._local = rnd, p, [], None, None, None


class _Task:
    """A new task kept from a bootstrap answer (a ``fill`` candidate)."""

    __slots__ = ("id", "instruction", "seed_id", "parent_id", "round", "slot", "context_ids", "rouge_l_max")

    def __init__(self, **kw):
        for k, v in kw.items():
            setattr(self, k, v)


class SelfInstruct(Method):
    """The method as a ``fill`` method: units are bootstrap prompts (round r, prompt p), candidates the new tasks
    they bring, each finished by a classification call and an instance call.

    Every request depends only on its own place and on the answers it is built from: prompt (r, p) draws its
    seed tasks and, for r > 0 and p > 0, the machine tasks it shows from the answer of the first prompt of an
    earlier round (chosen by the same seeded RNG; first prompts show seed tasks only), and a task's calls are
    seeded by the task's place (r, p, j). A lost answer thus never shifts another request: the prompts built
    from it are not sent (``lost:dependency``) and nothing else changes. Classification and instance calls go to the pool behind the bootstrap calls (priorities), so they
    fill the slots the rounds leave free.
    """

    # Queue priorities (lower first): the next round gates all later work, a task's class gates its instance.
    P_BOOTSTRAP, P_CLASSIFY, P_INSTANCE = 0, 1, 2

    def __init__(self, cfg: SynthConfig, teacher, ledger: Ledger, teacher_prov: dict):
        self.cfg, self.si, self.teacher, self.ledger = cfg, cfg.self_instruct, teacher, ledger
        self.teacher_prov = teacher_prov
        self.t_boot = load_template("self_instruct_bootstrap", cfg.templates)
        self.t_cls = load_template("self_instruct_classify", cfg.templates)
        self.t_inst = load_template("self_instruct_instance", cfg.templates)
        self.t_inst_cls = load_template("self_instruct_instance_cls", cfg.templates)
        self.per_unit = self.si.tasks_per_prompt
        self.cap = f"self_instruct.max_rounds={self.si.max_rounds} ({self.si.prompts_per_round} prompts a round)"
        self.index = NearDupIndex(cfg.filters.near_dup)
        self.prompts: dict[tuple[int, int], _Prompt] = {}

    def start(self, seeds: list[dict]) -> None:
        self.seeds = seeds
        self.index.add_many((s["id"], s["instruction"]) for s in seeds)

    # -- units: bootstrap prompts -----------------------------------------------------------------------
    def units(self):
        for rnd in range(self.si.max_rounds):
            for p in range(self.si.prompts_per_round):
                u = self.prompts[(rnd, p)] = _Prompt(rnd, p)
                yield u

    def started(self, u: _Prompt, task) -> None:
        u.task = task

    async def fetch(self, pool, u: _Prompt):
        from .teacher import ChatRequest, ChatResult

        cfg, si = self.cfg, self.si
        rng = random.Random(request_seed(cfg.seed, 1, u.rnd, u.p))
        machine: list[dict] = []
        if si.num_machine_instructions and u.rnd > 0 and u.p > 0:
            # From the first prompt of an earlier round, which shows seed tasks only: a lost answer blocks the
            # prompts built from it, never a chain of prompts built from those.
            parent = self.prompts[(rng.randrange(u.rnd), 0)]
            res = await asyncio.shield(parent.task)
            if not res.ok:
                return ChatResult(error=f"not asked: its machine tasks come from bootstrap prompt r{parent.rnd}:"
                                        f"p{parent.p}, whose answer was lost ({res.error})", reason="dependency")
            machine = [t for t in self._local(parent, res) if isinstance(t, dict)]
        n_m = min(si.num_machine_instructions, len(machine))
        u.ctx = rng.sample(self.seeds, min(len(self.seeds), si.num_prompt_instructions - n_m)) + rng.sample(machine, n_m)
        u.request = ChatRequest(
            messages=user(bootstrap_prompt([c["instruction"] for c in u.ctx], si.tasks_per_prompt, self.t_boot)),
            params={"temperature": si.temperature, "top_p": si.top_p, "max_tokens": si.max_tokens},
            seed=request_seed(cfg.seed, 2, u.rnd, u.p), tag=f"self_instruct:r{u.rnd}:p{u.p}")
        return await pool.submit(u.request, self.P_BOOTSTRAP)

    def _local(self, u: _Prompt, res) -> list:
        """What one answer yields on its own (no other answer involved): per item, a task dict (lineage: the
        in-context task it is closest to, by ROUGE-L) or (text, reason) when it fails parsing or the rules."""
        if u._local is None:
            items, bad = parse_tasks(res.text)
            out: list = list(bad)
            prompt = u.request.messages[0]["content"]
            for j, raw in enumerate(items):
                text = strip_template_echo(raw, prompt)
                reason = instruction_reason(text, self.cfg.filters) if text else "parse:template_echo"
                if reason:
                    out.append((text or raw, reason))
                    continue
                parent = max(u.ctx, key=lambda c: self.index.rouge_l(c["instruction"], text))
                out.append({"id": content_hash({"instruction": text, "slot": [u.rnd, u.p, j]}), "instruction": text,
                            "seed_id": parent["seed_id"], "parent_id": parent["id"], "round": u.rnd,
                            "slot": [u.rnd, u.p, j], "context_ids": [c["id"] for c in u.ctx]})
            u._local = out
        return u._local

    def accept(self, u: _Prompt, res) -> list[_Task]:
        cfg, ledger = self.cfg, self.ledger
        if not res.ok:
            ledger.count("generated")
            ledger.lose("", res, "bootstrap", round=u.rnd, prompt=u.p)
            return []
        out = []
        for t in self._local(u, res):
            ledger.count("generated")
            if not isinstance(t, dict):
                ledger.reject(t[0], t[1], "bootstrap", detail={"round": u.rnd})
                continue
            hit, best, enc = index_check(self.index, t["instruction"], cfg.filters.near_dup.enabled)
            if hit is not None:
                ledger.reject(t["instruction"], "near_dup", "bootstrap", detail={"dup_of": hit.dup_of,
                                                                                  "rouge_l": round(hit.rouge_l, 4)})
                continue
            self.index.add(t["id"], t["instruction"], enc)
            ledger.count("instructions_kept")
            out.append(_Task(**t, rouge_l_max=round(best, 4)))
        return out

    # -- candidates: classify, then write an instance ---------------------------------------------------
    async def finish(self, pool, t: _Task):
        """(is classification?, the instance call's result, the step), or the lost classification call."""
        from .teacher import ChatRequest

        cfg, si = self.cfg, self.si
        is_cls = False
        if si.identify_classification:
            res = await pool.submit(ChatRequest(
                messages=user(self.t_cls.render(instruction=one_line(t.instruction))),
                params={"temperature": 0.0, "max_tokens": 8},
                seed=request_seed(cfg.seed, 3, *t.slot), tag=f"classify:{t.id}",
                cut_ok=lambda text: parse_yes_no(text) is not None), self.P_CLASSIFY)
            if not res.ok:  # its instance prompt depends on the answer: not sent, the task is lost
                return None, res, "classify"
            is_cls = bool(parse_yes_no(res.text))
        res = await pool.submit(ChatRequest(
            messages=user((self.t_inst_cls if is_cls else self.t_inst).render(instruction=one_line(t.instruction))),
            params={"temperature": si.response_temperature, "max_tokens": si.response_max_tokens},
            seed=request_seed(cfg.seed, 4, *t.slot), tag=f"instance:{t.id}",
            check=lambda text: instance_unfinished(text, is_cls)), self.P_INSTANCE)
        return is_cls, res, "instance"

    def conclude(self, t: _Task, outcome) -> dict | None:
        """The SFT row of a finished task, or None (the reason goes to the ledger)."""
        cfg, ledger = self.cfg, self.ledger
        is_cls, res, step = outcome
        common = dict(seed_id=t.seed_id, parent_id=t.parent_id)
        if not res.ok:
            ledger.lose(t.instruction, res, step, **common)
            return None
        try:
            inp, out = parse_instance(res.text, is_cls)
        except ParseError as e:
            ledger.reject(t.instruction, e.reason, "instance", **common, detail={"reply": res.text[:300]})
            return None
        reason = response_reason(out, cfg.filters)
        if reason:
            ledger.reject(t.instruction, reason, "instance", **common, detail={"output": out[:300]})
            return None
        tpl = self.t_inst_cls if is_cls else self.t_inst
        msgs = [{"role": "user", "content": prompt_text(t.instruction, inp)}, {"role": "assistant", "content": out}]
        prov = {"method": "self_instruct", "seed_id": t.seed_id, "parent_id": t.parent_id,
                "teacher": self.teacher_prov, **self.t_boot.provenance(),
                "templates": {x.name: x.version for x in (self.t_boot, self.t_cls, tpl)},
                "round": t.round, "context_ids": t.context_ids, "is_classification": is_cls,
                "filters": {"rouge_l_max": t.rouge_l_max}}
        return {"id": content_hash({"messages": msgs}), "seed_id": t.seed_id, "messages": msgs, "provenance": prov}

    def candidate_text(self, t: _Task) -> str:
        return t.instruction


def index_check(index: NearDupIndex, text: str, enabled: bool, **kw):
    """``index.check(text)`` when near-dup filtering is on, else "no duplicate"."""
    return index.check(text, **kw) if enabled else (None, 0.0, None)


def training_examples(seeds: list[dict], n: int, seed: int, cfg: SynthConfig, max_chars: int = 600) -> list[dict]:
    """Chat examples that teach a model to answer exactly the Self-Instruct prompts above (see api)."""
    si = cfg.self_instruct
    t_boot = load_template("self_instruct_bootstrap", cfg.templates)
    t_cls = load_template("self_instruct_classify", cfg.templates)
    t_inst = load_template("self_instruct_instance", cfg.templates)
    t_inst_cls = load_template("self_instruct_instance_cls", cfg.templates)
    t_resp = load_template("response", cfg.templates)
    rng = random.Random(request_seed(seed, 99))
    short = [s for s in seeds if len(s["instruction"]) <= 160] or list(seeds)
    with_out = [s for s in seeds if s.get("output")]
    k = max(1, si.num_prompt_instructions)
    out: list[dict] = []
    tries = 0
    while len(out) < n and tries < n * 50:
        tries += 1
        kind = rng.random()
        if kind < 0.4 and len(short) > k:
            picked = rng.sample(short, min(len(short), k + si.tasks_per_prompt))
            ctx, new = picked[:k], picked[k:]
            u = bootstrap_prompt([s["instruction"] for s in ctx], si.tasks_per_prompt, t_boot)
            a = bootstrap_answer([s["instruction"] for s in new], k + 1)
        elif kind < 0.55:
            s = rng.choice(seeds)
            u, a = t_cls.render(instruction=one_line(s["instruction"])), "Yes" if s["is_classification"] else "No"
        elif kind < 0.85 and with_out:
            s = rng.choice(with_out)
            tpl = t_inst_cls if s["is_classification"] else t_inst
            u = tpl.render(instruction=one_line(s["instruction"]))
            a = instance_answer(s.get("input", ""), s["output"], s["is_classification"])
        elif with_out:
            s = rng.choice(with_out)
            u, a = t_resp.render(prompt=prompt_text(s["instruction"], s.get("input", ""))), s["output"]
        else:
            continue
        if len(u) + len(a) > max_chars:
            continue
        out.append({"messages": [{"role": "user", "content": u}, {"role": "assistant", "content": a}]})
    return out
