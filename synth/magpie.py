"""Magpie (Xu et al., 2024): an aligned chat model, given only its chat template up to the user's turn, writes the
user's instruction itself; then it answers it as usual.

Small instruct models write far better instructions this way than by continuing Self-Instruct's numbered lists:
the pre-query text is exactly what they were aligned on. orchard's variant keeps lineage and the domain: item k's
system prompt names the domain and one seed task (seeds taken in turn), so every instruction is on topic and
traces to the seed that prompted it. The raw pre-query text goes through the endpoint's ``/completions`` route
(vLLM, llama.cpp's server and ``transformers serve`` have it; hosted chat-only APIs do not), and is built from the
teacher model's own tokenizer (or given verbatim as ``magpie.pre_query_template``).

``num`` means pairs written: items run concurrently (the server's batch kept full), a new one starting only while
the pairs kept plus those that may still be kept fall short of ``num``, so no item is generated only to be thrown
away; this goes on until ``num`` pairs pass every filter or ``max_attempts`` items were tried.
Item k's requests depend only on (config seed, k), never on what became of other items: a lost answer shifts
nothing, and a resumed run asks exactly the same requests (answered from the call log for free).
"""

from __future__ import annotations

import math

from orchard.errors import InputError

from .dedup import NearDupIndex, TopicIndex
from .filters import instruction_reason, response_reason
from .ledger import Ledger
from .methods_config import SynthConfig
from .self_instruct import request_seed, user

_SENTINEL = "\u2063MAGPIE_QUERY\u2063"


def pre_query_parts(tokenizer, context: list[dict]) -> tuple[str, list[str]]:
    """(the template's text for ``context`` up to where the next user's words begin, the text ending that turn)."""
    msgs = list(context) + [{"role": "user", "content": _SENTINEL}]
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
    if _SENTINEL not in text:
        raise InputError("the chat template does not render the user's message verbatim; give "
                         "magpie.pre_query_template", field="magpie.tokenizer")
    head, tail = text.split(_SENTINEL, 1)
    end = tail.strip().split("\n")[0].strip() or None
    stops = [s for s in {end, tokenizer.eos_token} if s]
    return head, stops


def load_tokenizer(ref: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(ref)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load the tokenizer '{ref}' for Magpie's pre-query template ({type(e).__name__}); "
                         f"set magpie.tokenizer to the teacher's model folder or hub id, or give "
                         f"magpie.pre_query_template", field="magpie.tokenizer") from None


def clean_instruction(text: str, stops: list[str]) -> str:
    for s in stops:
        text = text.split(s, 1)[0]
    return text.strip()


class Magpie:
    def __init__(self, cfg: SynthConfig, teacher, ledger: Ledger, teacher_prov: dict):
        self.cfg, self.mp, self.teacher, self.ledger, self.teacher_prov = cfg, cfg.magpie, teacher, ledger, teacher_prov
        self._tok = None

    def _context(self, seed: dict) -> tuple[list[dict], str | None]:
        """The conversation before the user's turn the teacher writes, and the system prompt in it.

        ``seed_turn`` (default): the seed task asked and answered as an earlier turn, so the new question follows
        on from it (on topic, and its lineage is real); ``system_hint``: the seed quoted in the system prompt;
        ``none``: the system prompt alone, Magpie as published."""
        mp = self.mp
        system = mp.system_prompt.format(domain=mp.domain or "everyday questions",
                                         example=" ".join(seed["instruction"].split())) if mp.system_prompt else None
        msgs = [{"role": "system", "content": system}] if system else []
        if mp.context == "seed_turn":
            inp = (seed.get("input") or "").strip()
            msgs += [{"role": "user", "content": seed["instruction"] + (f"\n\n{inp}" if inp else "")},
                     {"role": "assistant", "content": seed.get("output") or ""}]
        return msgs, system

    def _pre_query(self, context: list[dict], system: str | None) -> tuple[str, list[str]]:
        mp = self.mp
        if mp.pre_query_template is not None:
            return mp.pre_query_template.replace("{system}", system or ""), list(mp.stop)
        if self._tok is None:
            ref = mp.tokenizer or self.teacher.config.resolved_endpoints()[0].model
            self._tok = load_tokenizer(ref)
        head, stops = pre_query_parts(self._tok, context)
        return head, sorted(set(stops) | set(mp.stop))

    def max_attempts(self) -> int:
        mp = self.mp
        return mp.max_attempts if mp.max_attempts is not None else math.ceil(self.cfg.num * mp.attempts_per_pair)

    def run(self, seeds: list[dict], progress: bool = True) -> list[dict]:
        return self.teacher.run(lambda pool: self._pipeline(pool, seeds, progress))

    async def _item(self, pool, i: int, seeds: list[dict], index: NearDupIndex) -> dict:
        """Item i, start to end: its instruction, the rules, its response. Depends on (seed, i) only."""
        from .teacher import ChatRequest

        cfg, mp = self.cfg, self.mp
        seed = seeds[i % len(seeds)]
        context, system = self._context(seed)
        head, stops = self._pre_query(context, system)
        out = {"i": i, "system": system, "text": "", "seed_id": seed.get("seed_id") or seed["id"],
               "parent_id": seed["id"]}
        res = await pool.submit(ChatRequest(
            prompt=head, params={"temperature": mp.temperature, "top_p": mp.top_p, "max_tokens": mp.max_tokens,
                                 "stop": stops},
            seed=request_seed(cfg.seed, 31, i), tag=f"magpie:q{i}"), priority=0)
        if not res.ok:
            return {**out, "reason": "teacher_error", "step": "instruction", "detail": {"error": res.error}}
        text = out["text"] = clean_instruction(res.text, stops)
        if res.truncated:
            return {**out, "reason": "magpie:truncated_instruction", "step": "instruction"}
        reason = instruction_reason(text, cfg.filters)
        if reason:
            return {**out, "reason": reason, "step": "instruction"}
        if self._topic is not None:
            sim = self._topic.similarity(text)
            if sim < cfg.filters.on_topic.min_similarity:
                return {**out, "reason": "filter:off_topic", "step": "instruction",
                        "detail": {"similarity": round(sim, 3)}}
        if cfg.filters.near_dup.enabled:  # against the seeds only here: the kept pool is checked in item order
            hit, _, _ = index.check(text)
            if hit is not None:
                return {**out, "reason": "near_dup", "step": "instruction",
                        "detail": {"dup_of": hit.dup_of, "rouge_l": round(hit.rouge_l, 4)}}
        # Answers go first in the queue: a finished pair frees its slot for the next item.
        res = await pool.submit(ChatRequest(
            messages=user(text), params={"temperature": mp.response_temperature, "max_tokens": mp.response_max_tokens},
            seed=request_seed(cfg.seed, 32, i), tag=f"magpie:a{i}"), priority=-1)
        if not res.ok:
            return {**out, "reason": "teacher_error", "step": "response", "detail": {"error": res.error}}
        answer = out["response"] = res.text.strip()
        if res.truncated:
            return {**out, "reason": "magpie:truncated_response", "step": "response",
                    "detail": {"response_end": answer[-200:]}}
        reason = response_reason(answer, cfg.filters, prompt=text)
        if reason:
            return {**out, "reason": reason, "step": "response", "detail": {"response": answer[:300]}}
        return {**out, "reason": None}

    async def _pipeline(self, pool, seeds: list[dict], progress: bool) -> list[dict]:
        """Items run concurrently, started while kept + possibly kept < num (so none is made only to be dropped),
        and are decided in item order (near-duplicates against the kept ones), so the outcome does not depend on
        which call lands first, and a resumed run, answered from the call log, reaches the same rows."""
        import asyncio

        from .teacher import _progress

        cfg, ledger = self.cfg, self.ledger
        self._topic = TopicIndex([s["instruction"] for s in seeds], cfg.filters.on_topic) \
            if cfg.filters.on_topic.enabled else None
        seed_index = NearDupIndex(cfg.filters.near_dup)
        seed_index.add_many((s["id"], s["instruction"]) for s in seeds)
        kept_index = NearDupIndex(cfg.filters.near_dup)
        kept_index.add_many((s["id"], s["instruction"]) for s in seeds)
        cap = self.max_attempts()
        running: dict[asyncio.Future, int] = {}
        done: dict[int, dict] = {}
        rows: list[dict] = []
        next_i = decided = 0
        bar = _progress(cfg.num, progress)

        def may_pass() -> int:  # finished items not yet decided whose own checks passed
            return sum(1 for o in done.values() if o["reason"] is None)

        try:
            while True:
                while len(rows) + may_pass() + len(running) < cfg.num and next_i < cap:
                    fut = asyncio.ensure_future(self._item(pool, next_i, seeds, seed_index))
                    running[fut] = next_i
                    next_i += 1
                if not running:
                    break
                finished, _ = await asyncio.wait(list(running), return_when=asyncio.FIRST_COMPLETED)
                for fut in finished:
                    done[running.pop(fut)] = fut.result()
                while decided in done:
                    o = done.pop(decided)
                    decided += 1
                    if self._decide(o, kept_index, rows) and bar is not None:
                        bar.update(1)
        except BaseException:
            for fut in running:
                fut.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            raise
        finally:
            if bar is not None:
                bar.close()
        self.attempts = next_i
        self.stopped_by_cap = len(rows) < cfg.num
        return rows

    def _decide(self, o: dict, index: NearDupIndex, rows: list[dict]) -> bool:
        """Keep item ``o`` or record why not; True when kept."""
        cfg, ledger = self.cfg, self.ledger
        ledger.count("generated")
        common = dict(seed_id=o["seed_id"], parent_id=o["parent_id"])
        detail = {"item": o["i"], **(o.get("detail") or {})}
        if o["reason"] is not None:
            ledger.reject(o["text"], o["reason"], o["step"], **common, detail=detail)
            return False
        best = None
        if cfg.filters.near_dup.enabled:
            hit, best, enc = index.check(o["text"])
            if hit is not None:
                ledger.reject(o["text"], "near_dup", "response", **common,
                              detail={**detail, "dup_of": hit.dup_of, "rouge_l": round(hit.rouge_l, 4)})
                return False
            index.add(f"magpie:{o['i']}", o["text"], enc)
        msgs = [{"role": "user", "content": o["text"]}, {"role": "assistant", "content": o["response"]}]
        prov = {"method": "magpie", **common, "teacher": self.teacher_prov, "item": o["i"],
                "system_prompt": o["system"], "context": self.mp.context,
                "filters": {"rouge_l_max": round(best, 4) if best is not None else None}}
        rows.append({"seed_id": o["seed_id"], "messages": msgs, "provenance": prov})
        return True
