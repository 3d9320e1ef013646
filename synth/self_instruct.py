"""Self-Instruct (Wang et al., 2023): bootstrap new tasks from seed tasks, then write an instance for each.

Round r sends ``prompts_per_round`` prompts, each listing ``num_prompt_instructions`` tasks (seed tasks plus up to
``num_machine_instructions`` already generated ones, chosen by an RNG seeded with (config seed, round, prompt)), so a
re-run asks exactly the same requests and the teacher's call cache answers them for free. New tasks pass the
instruction rules and the near-duplicate filter (ROUGE-L against seeds and everything kept so far). Then each task
is classified (classification or not) and gets an input/output instance: output first for classification tasks,
so labels are not all the same.
"""

from __future__ import annotations

import asyncio
import random
import re

from orchard.dataio import content_hash

from .dedup import NearDupIndex
from .filters import instruction_reason, response_reason
from .ledger import Ledger
from .methods_config import SynthConfig
from .parsing import ParseError, parse_instance, parse_tasks, parse_yes_no
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


class SelfInstruct:
    """The method, pipelined on one event loop (``Teacher.run``): round r's bootstrap replies are filtered as soon
    as the round is in, and every accepted task's classification and instance calls start right away, filling the
    slots that the next round's bootstrap calls (sent first: they gate everything after them) leave free. The
    requests are exactly those of running the phases one after the other (same prompts, seeds and cache keys), and
    results are assembled in task order, so outputs, ledger and resumes do not depend on which call lands first.
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

    def run(self, seeds: list[dict], progress: bool = True) -> list[dict]:
        return self.teacher.run(lambda pool: self._pipeline(pool, seeds, progress))

    # -- phase 1: new instructions ------------------------------------------------------------------
    async def _bootstrap(self, pool, seeds: list[dict], on_accept=None) -> list[dict]:
        """Rounds of bootstrap prompts; ``on_accept(task, index)`` is called as each new task is kept."""
        from .teacher import ChatRequest

        cfg, si, ledger = self.cfg, self.si, self.ledger
        index = NearDupIndex(cfg.filters.near_dup)
        index.add_many((s["id"], s["instruction"]) for s in seeds)
        machine: list[dict] = []
        for rnd in range(si.max_rounds):
            if len(machine) >= cfg.num:
                break
            reqs, contexts = [], []
            for p in range(si.prompts_per_round):
                rng = random.Random(request_seed(cfg.seed, 1, rnd, p))
                n_m = min(si.num_machine_instructions, len(machine))
                ctx = rng.sample(seeds, min(len(seeds), si.num_prompt_instructions - n_m)) + rng.sample(machine, n_m)
                reqs.append(ChatRequest(
                    messages=user(bootstrap_prompt([c["instruction"] for c in ctx], si.tasks_per_prompt, self.t_boot)),
                    params={"temperature": si.temperature, "top_p": si.top_p, "max_tokens": si.max_tokens},
                    seed=request_seed(cfg.seed, 2, rnd, p), tag=f"self_instruct:r{rnd}:p{p}"))
                contexts.append(ctx)
            results = await pool.gather(reqs, priority=self.P_BOOTSTRAP)
            for p, (res, ctx) in enumerate(zip(results, contexts)):
                if not res.ok:
                    ledger.count("generated")
                    ledger.reject("", "teacher_error", "bootstrap", detail={"error": res.error, "round": rnd})
                    continue
                items, bad = parse_tasks(res.text, truncated=res.truncated)
                for frag, reason in bad:
                    ledger.count("generated")
                    ledger.reject(frag, reason, "bootstrap", detail={"round": rnd})
                prompt = reqs[p].messages[0]["content"]
                for raw in items:
                    ledger.count("generated")
                    text = strip_template_echo(raw, prompt)
                    if not text:
                        ledger.reject(raw, "parse:template_echo", "bootstrap", detail={"round": rnd})
                        continue
                    if len(machine) >= cfg.num:
                        ledger.reject(text, "over_target", "bootstrap", detail={"round": rnd})
                        continue
                    reason = instruction_reason(text, cfg.filters)
                    if reason:
                        ledger.reject(text, reason, "bootstrap", detail={"round": rnd})
                        continue
                    hit, best, enc = index.check(text) if cfg.filters.near_dup.enabled else (None, 0.0, None)
                    if hit is not None:
                        ledger.reject(text, "near_dup", "bootstrap", detail={"dup_of": hit.dup_of,
                                                                              "rouge_l": round(hit.rouge_l, 4)})
                        continue
                    # Lineage: the in-context task this one is closest to (ROUGE-L), and that task's root seed.
                    parent = max(ctx, key=lambda c: index.rouge_l(c["instruction"], text))
                    key = content_hash({"instruction": text, "n": len(machine)})
                    index.add(key, text, enc)
                    machine.append({"id": key, "instruction": text, "seed_id": parent["seed_id"],
                                    "parent_id": parent["id"], "round": rnd,
                                    "context_ids": [c["id"] for c in ctx], "rouge_l_max": round(best, 4)})
                    if on_accept is not None:
                        on_accept(machine[-1], len(machine) - 1)
        self.rounds_run = rnd + 1 if si.max_rounds else 0
        return machine

    # -- phase 2 + 3: classify, then write an instance per task ------------------------------------
    async def _instance(self, pool, t: dict, i: int):
        """(is classification?, the instance call's result) of task ``t``, the ``i``-th kept task."""
        from .teacher import ChatRequest

        cfg, si = self.cfg, self.si
        is_cls = False
        if si.identify_classification:
            res = await pool.submit(ChatRequest(
                messages=user(self.t_cls.render(instruction=one_line(t["instruction"]))),
                params={"temperature": 0.0, "max_tokens": 8},
                seed=request_seed(cfg.seed, 3, i), tag=f"classify:{t['id']}"), self.P_CLASSIFY)
            is_cls = bool(res.ok and parse_yes_no(res.text))
        tpl = self.t_inst_cls if is_cls else self.t_inst
        res = await pool.submit(ChatRequest(
            messages=user(tpl.render(instruction=one_line(t["instruction"]))),
            params={"temperature": si.response_temperature, "max_tokens": si.response_max_tokens},
            seed=request_seed(cfg.seed, 4, i), tag=f"instance:{t['id']}"), self.P_INSTANCE)
        return is_cls, res

    async def _pipeline(self, pool, seeds: list[dict], progress: bool) -> list[dict]:
        from .teacher import _progress

        bar = _progress(self.cfg.num, progress)
        pending: list[asyncio.Future] = []

        def accept(task: dict, i: int) -> None:
            fut = asyncio.ensure_future(self._instance(pool, task, i))
            if bar is not None:
                fut.add_done_callback(lambda _f: bar.update(1))
            pending.append(fut)

        try:
            tasks = await self._bootstrap(pool, seeds, accept)
            outcomes = await asyncio.gather(*pending)
        except BaseException:
            # Stop this run's queued calls; the pool lets the ones already sent land in the call log.
            for f in pending:
                f.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            raise
        finally:
            if bar is not None:
                bar.close()
        self.ledger.count("instructions_kept", len(tasks))
        return self._rows(tasks, outcomes)

    def _rows(self, tasks: list[dict], outcomes: list) -> list[dict]:
        """SFT rows in task order; failed instances go to the ledger with their reason."""
        cfg, ledger = self.cfg, self.ledger
        rows = []
        for t, (is_cls, res) in zip(tasks, outcomes):
            common = dict(seed_id=t["seed_id"], parent_id=t["parent_id"])
            if not res.ok:
                ledger.reject(t["instruction"], "teacher_error", "instance", **common, detail={"error": res.error})
                continue
            try:
                inp, out = parse_instance(res.text, is_cls)
            except ParseError as e:
                ledger.reject(t["instruction"], e.reason, "instance", **common, detail={"reply": res.text[:300]})
                continue
            reason = response_reason(out, cfg.filters)
            if reason:
                ledger.reject(t["instruction"], reason, "instance", **common, detail={"output": out[:300]})
                continue
            tpl = self.t_inst_cls if is_cls else self.t_inst
            msgs = [{"role": "user", "content": prompt_text(t["instruction"], inp)},
                    {"role": "assistant", "content": out}]
            prov = {"method": "self_instruct", "seed_id": t["seed_id"], "parent_id": t["parent_id"],
                    "teacher": self.teacher_prov, **self.t_boot.provenance(),
                    "templates": {x.name: x.version for x in (self.t_boot, self.t_cls, tpl)},
                    "round": t["round"], "context_ids": t["context_ids"], "is_classification": is_cls,
                    "filters": {"rouge_l_max": t["rouge_l_max"]}}
            rows.append({"id": content_hash({"messages": msgs}), "seed_id": t["seed_id"], "messages": msgs,
                         "provenance": prov})
        return rows


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
