"""Magpie (Xu et al., 2024): an aligned chat model, given only its chat template up to the user's turn, writes the
user's instruction itself; then it answers it as usual.

Small instruct models write far better instructions this way than by continuing Self-Instruct's numbered lists:
the pre-query text is exactly what they were aligned on. orchard's variant keeps lineage and the domain: item k's
system prompt names the domain and one seed task (seeds taken in turn), so every instruction is on topic and
traces to the seed that prompted it. The raw pre-query text goes through the endpoint's ``/completions`` route
(vLLM, llama.cpp's server and ``transformers serve`` have it; hosted chat-only APIs do not), and is built from the
teacher model's own tokenizer (or given verbatim as ``magpie.pre_query_template``).

It runs under ``fill`` like every method, so ``num`` means pairs written (until ``magpie.max_attempts`` items, or
``attempts_per_pair`` x ``num``, were tried). Item i's requests depend only on (config seed, i), never on what
became of other items: a lost answer shifts nothing, and a resumed run asks exactly the same requests (answered
from the call log for free).
"""

from __future__ import annotations

import math

from orchard.errors import InputError

from .dedup import NearDupIndex, TopicIndex
from .fill import Method
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


class Magpie(Method):
    """Magpie as a ``fill`` method: a unit is item i (its instruction call, the rules and the on-topic check), a
    candidate is an instruction that passed them and the near-duplicate check against everything kept before it,
    finished by its answer. Item i's requests depend only on (config seed, i)."""

    per_unit = 1

    def __init__(self, cfg: SynthConfig, teacher, ledger: Ledger, teacher_prov: dict):
        self.cfg, self.mp, self.teacher, self.ledger, self.teacher_prov = cfg, cfg.magpie, teacher, ledger, teacher_prov
        self._tok = None
        self._topic = None
        self.index = NearDupIndex(cfg.filters.near_dup)

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

    def start(self, seeds: list[dict]) -> None:
        self.seeds = seeds
        self.index.add_many((s["id"], s["instruction"]) for s in seeds)
        if self.cfg.filters.on_topic.enabled:
            self._topic = TopicIndex([s["instruction"] for s in seeds], self.cfg.filters.on_topic)
        limit = "magpie.max_attempts" if self.mp.max_attempts is not None else "magpie.attempts_per_pair"
        self.cap = f"{limit}: {self.max_attempts()} items tried"

    def units(self):
        return range(self.max_attempts())

    def _item(self, i: int) -> dict:
        seed = self.seeds[i % len(self.seeds)]
        return {"i": i, "seed_id": seed.get("seed_id") or seed["id"], "parent_id": seed["id"], "seed": seed}

    async def fetch(self, pool, i: int):
        """The instruction call of item i, and the checks its text can be judged by alone."""
        from .teacher import ChatRequest

        cfg, mp = self.cfg, self.mp
        context, system = self._context(self._item(i)["seed"])
        head, stops = self._pre_query(context, system)
        res = await pool.submit(ChatRequest(
            prompt=head, params={"temperature": mp.temperature, "top_p": mp.top_p, "max_tokens": mp.max_tokens,
                                 "stop": stops},
            seed=request_seed(cfg.seed, 31, i), tag=f"magpie:q{i}", max_tokens_cap=2 * mp.max_tokens))
        if not res.ok:
            if res.reason == "truncated":  # still cut off at twice the budget: a ramble, not a question
                return res, system, None, "magpie:instruction_too_long", {}
            return res, system, None, None, {}
        text = clean_instruction(res.text, stops)
        reason, detail = instruction_reason(text, cfg.filters), {}
        if reason is None and self._topic is not None:
            sim = self._topic.similarity(text)
            if sim < cfg.filters.on_topic.min_similarity:
                reason, detail = "filter:off_topic", {"similarity": round(sim, 3)}
        return res, system, text, reason, detail

    def accept(self, i: int, answer) -> list[dict]:
        res, system, text, reason, detail = answer
        it = self._item(i)
        common = dict(seed_id=it["seed_id"], parent_id=it["parent_id"])
        self.ledger.count("generated")
        if not res.ok and reason is None:
            self.ledger.lose("", res, "instruction", **common, item=i)
            return []
        if reason is None and self.cfg.filters.near_dup.enabled:
            hit, best, enc = self.index.check(text)
            if hit is not None:
                reason, detail = "near_dup", {"dup_of": hit.dup_of, "rouge_l": round(hit.rouge_l, 4)}
            else:
                self.index.add(f"magpie:{i}", text, enc)
                detail = {"rouge_l_max": round(best, 4)}
        if reason:
            self.ledger.reject(text, reason, "instruction", **common, detail={"item": i, **detail})
            return []
        self.ledger.count("instructions_kept")
        return [{**common, "i": i, "instruction": text, "system": system, "filters": detail}]

    async def finish(self, pool, cand: dict):
        from .teacher import ChatRequest

        mp = self.mp
        system = [{"role": "system", "content": mp.response_system_prompt}] if mp.response_system_prompt else []
        # One more try with twice the tokens at most: a small teacher's answer that long is mostly a loop.
        return await pool.submit(ChatRequest(
            messages=system + user(cand["instruction"]),
            params={"temperature": mp.response_temperature, "max_tokens": mp.response_max_tokens},
            seed=request_seed(self.cfg.seed, 32, cand["i"]), tag=f"magpie:a{cand['i']}",
            max_tokens_cap=2 * mp.response_max_tokens), priority=-1)

    def conclude(self, cand: dict, res) -> dict | None:
        common = dict(seed_id=cand["seed_id"], parent_id=cand["parent_id"])
        if not res.ok and res.reason == "truncated":  # an answer of the item, not a fault of the teacher
            self.ledger.reject(cand["instruction"], "magpie:response_too_long", "response", **common,
                               detail={"item": cand["i"], "max_tokens": 2 * self.mp.response_max_tokens})
            return None
        if not res.ok:
            self.ledger.lose(cand["instruction"], res, "response", **common, item=cand["i"])
            return None
        answer = res.text.strip()
        reason = response_reason(answer, self.cfg.filters, prompt=cand["instruction"])
        if reason:
            self.ledger.reject(cand["instruction"], reason, "response", **common,
                               detail={"item": cand["i"], "response": answer[:300]})
            return None
        msgs = [{"role": "user", "content": cand["instruction"]}, {"role": "assistant", "content": answer}]
        prov = {"method": "magpie", **common, "teacher": self.teacher_prov, "item": cand["i"],
                "system_prompt": cand["system"], "context": self.mp.context, "filters": cand["filters"]}
        return {"seed_id": cand["seed_id"], "messages": msgs, "provenance": prov}

    def candidate_text(self, cand) -> str:
        return cand.get("instruction", "") if isinstance(cand, dict) else ""
