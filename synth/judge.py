"""AI judge over the teacher client: per-response ratings (1-5 per criterion, with a rationale) and a pairwise
judge that asks in both orders (A/B, then B/A) and calls it a tie when the two verdicts disagree, which cancels
position bias instead of letting it pick winners.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from statistics import mean

from .parsing import ParseError, parse_pairwise, parse_rating
from .self_instruct import request_seed, user
from .templates import load_template


def render_prompt(messages: list[dict]) -> str:
    """A conversation as the judge sees it: the lone user turn as is, else 'Role: content' blocks."""
    turns = list(messages)
    if len(turns) == 1 and turns[0]["role"] == "user":
        return turns[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in turns)


@dataclass
class Verdict:
    winner: str  # a | b | tie
    orders_agree: bool
    first: str
    second: str  # the swapped call's verdict, mapped back to the original labels


class Judge:
    def __init__(self, teacher, criteria: list[str], templates: dict, temperature: float = 0.0,
                 max_tokens: int = 300, seed: int = 0, model: str = ""):
        self.teacher, self.criteria = teacher, list(criteria)
        self.t_rate = load_template("judge_rating", templates)
        self.t_pair = load_template("judge_pairwise", templates)
        self.params = {"temperature": temperature, "max_tokens": max_tokens}
        # A template that asks for a bare letter (small judges) must not be sent in JSON mode.
        self.pair_json = "json" in self.t_pair.text.lower()
        self.seed, self.model = seed, model

    def rate_many(self, items: list[tuple[list[dict], str]]) -> list[dict | ParseError]:
        """For each (prompt messages, response): provenance ``judge`` dict, or a ParseError with the reason."""
        from .teacher import ChatRequest

        reqs = [ChatRequest(messages=user(self.t_rate.render(prompt=render_prompt(p), response=r,
                                                             criteria=", ".join(self.criteria))),
                            params=dict(self.params), seed=request_seed(self.seed, 30), json=True,
                            tag=f"judge:{i}") for i, (p, r) in enumerate(items)]
        out: list[dict | ParseError] = []
        for res in self.teacher.chat_many(reqs) if reqs else []:
            if not res.ok:
                out.append(ParseError(f"lost:{res.reason or 'gave_up'}", str(res.error)))  # a re-run asks again
                continue
            try:
                scores, why = parse_rating(res.text, self.criteria)
            except ParseError as e:
                out.append(e)
                continue
            out.append({"scores": scores, "overall": round(mean(scores.values()), 4), "rationale": why,
                        "model": self.model, **self.t_rate.provenance()})
        return out

    def _template(self):
        """The judge model's tokenizer (for its chat template), loaded once."""
        if getattr(self, "_tok", None) is None:
            from .magpie import load_tokenizer

            self._tok = load_tokenizer(self.teacher.config.resolved_endpoints()[0].model)
        return self._tok

    def pairwise_many(self, items: list[tuple[list[dict], str, str]]) -> list[Verdict | ParseError]:
        """For each (prompt messages, response a, response b): ask A=a,B=b and A=b,B=a; disagreement → tie."""
        from .teacher import ChatRequest

        reqs = []
        prefill = self.t_pair.meta.get("prefill")
        for i, (p, a, b) in enumerate(items):
            for order, (x, y) in enumerate(((a, b), (b, a))):
                msgs = user(self.t_pair.render(prompt=render_prompt(p), response_a=x, response_b=y))
                if prefill:
                    # The judge's answer is begun for it ("... is Response"): a small model then only has to
                    # say the letter. Sent as raw text through /completions, in the judge model's own template.
                    reqs.append(ChatRequest(prompt=self._template().apply_chat_template(
                        msgs, tokenize=False, add_generation_prompt=True) + prefill, params=dict(self.params),
                        seed=request_seed(self.seed, 31), tag=f"pairwise:{i}:{order}"))
                    continue
                reqs.append(ChatRequest(messages=msgs, params=dict(self.params), seed=request_seed(self.seed, 31),
                                        json=self.pair_json, tag=f"pairwise:{i}:{order}"))
        res = self.teacher.chat_many(reqs) if reqs else []
        if prefill:  # the verdict reads as one sentence with its beginning
            res = [replace(r, text=prefill + r.text) if r.ok else r for r in res]
        out: list[Verdict | ParseError] = []
        swap = {"a": "b", "b": "a", "tie": "tie"}
        for i in range(len(items)):
            r1, r2 = res[2 * i], res[2 * i + 1]
            if not (r1.ok and r2.ok):
                bad = r1 if not r1.ok else r2
                out.append(ParseError(f"lost:{bad.reason or 'gave_up'}", str(bad.error)))
                continue
            try:
                v1, v2 = parse_pairwise(r1.text), swap[parse_pairwise(r2.text)]
            except ParseError as e:
                out.append(e)
                continue
            agree = v1 == v2
            out.append(Verdict(v1 if agree else "tie", agree, v1, v2))
        return out
