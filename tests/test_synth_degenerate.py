"""Filters for what small teachers write: loops, echoes, invented words, questions off the seeds' topic."""

from __future__ import annotations

import json
from pathlib import Path

from orchard.synth.degenerate import degenerate_reason
from orchard.synth.filters import english_word_share, instruction_reason, response_reason
from orchard.synth.methods_config import DegenerateConfig, FilterConfig

SEEDS = Path(__file__).resolve().parents[1] / "data" / "seeds"
CFG = DegenerateConfig()


def test_looping_and_echoing_text_is_caught_with_its_reason():
    # SmolLM2-135M's own loops, as the issue quotes them
    assert degenerate_reason("1. I will tell you how to do it. 1. I will tell you how to do it.", CFG)[0] \
        == "degenerate:repeated_ngrams"
    assert degenerate_reason("Tips:\n1. Make a budget\n2. Make a budget\n3. Make a budget\n4. Track spending",
                             CFG)[0] == "degenerate:repeated_lines"
    long_loop = "Save money every month. " * 20
    assert degenerate_reason(long_loop, CFG)[0] is not None
    reason, m = degenerate_reason("How do I save money each month?", CFG, prompt="How do I save money each month?")
    assert reason == "degenerate:echoes_prompt" and m["echo"] == 1.0
    assert response_reason("How do I save money each month?", FilterConfig(),
                           prompt="How do I save money each month?") == "degenerate:echoes_prompt"


def test_real_seed_tasks_pass():
    """Inputs not written for this test: the 175 Self-Instruct tasks and the 30 household-finance ones."""
    flagged = []
    for f in ("self_instruct_seed_tasks.jsonl", "household_finance.jsonl"):
        for line in (SEEDS / f).read_text().splitlines():
            t = json.loads(line)
            inst = t["instances"][0]
            prompt = t["instruction"] + " " + inst["input"]
            if degenerate_reason(inst["output"], CFG, prompt=prompt)[0] or degenerate_reason(t["instruction"], CFG)[0]:
                flagged.append(t["instruction"])
    assert flagged == []


def test_invented_words_are_not_english_but_money_arithmetic_is():
    assert english_word_share("Illelithynes liémoni Médée combined with Savoie libéraire") < 0.5
    assert english_word_share("Assets: $8,000 + $22,000 = $30,000. Debts: $6,500.") == 1.0
    assert instruction_reason("Illelx-BetterDietkonzeichter kaiser-Hamburger-esus Jeine Ruba", FilterConfig()) \
        == "filter:not_english"
    assert instruction_reason("How should I split the rent with my roommates?", FilterConfig()) is None


def test_off_topic_questions_score_below_on_topic_ones():
    from orchard.synth.dedup import TopicIndex
    from orchard.synth.methods_config import OnTopicConfig

    seeds = [json.loads(x)["instruction"] for x in (SEEDS / "household_finance.jsonl").read_text().splitlines()]
    idx = TopicIndex(seeds, OnTopicConfig(enabled=True))
    on = [idx.similarity(t) for t in ("How do I pay off my credit card faster?",
                                      "How should I split rent with roommates?")]
    off = [idx.similarity(t) for t in ("Tell me about the history of Rome.", "What is a logical fallacy?",
                                       "Can you help me plan a launch event for my product?")]
    assert min(on) >= 0.35 > max(off)
