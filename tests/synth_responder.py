"""A scripted teacher for synth's tests: plausible answers to each of synth's prompts (matched by their first
words), deterministic in the prompt and the request seed, with a knob for messy formats.

Served through tests/fake_teacher.FakeTeacher (a real HTTP server), so the real client, cache and retries run.
"""

from __future__ import annotations

import hashlib
import json
import re

TOPICS = ["volcanoes", "tax law", "chess openings", "sourdough bread", "the French revolution", "sorting algorithms",
          "bird migration", "solar panels", "marathon training", "jazz harmony", "soil erosion", "password hashing",
          "medieval castles", "coral reefs", "supply chains", "the immune system", "board games", "glaciers",
          "vector calculus", "beekeeping", "typography", "rainforests", "compound interest", "origami"]
VERBS = ["Explain", "Summarize", "Compare", "Describe", "List three facts about", "Write a haiku about",
         "Give advice on", "Outline the history of", "Propose a lesson plan on", "Name common myths about"]


TAILS = ["using a simple analogy", "for a school newsletter", "and mention one common mistake",
         "in the style of a news report", "with a short worked example", "as a numbered checklist",
         "to a skeptical friend over dinner", "including the main risks and costs"]


# More ways to vary a task, so that a long run finds thousands of tasks that are not near-duplicates of each other.
ASPECTS = ["cost", "safety", "history", "common errors", "regional differences", "future trends", "ethics",
           "measurement", "beginner questions", "expert debates", "tools needed", "seasonal effects", "local laws",
           "environmental impact", "famous cases", "everyday uses", "career paths", "key numbers", "open problems",
           "typical timelines"]
AUDIENCES = ["a ten year old", "a retired engineer", "new employees", "a city council", "first-year students",
             "a busy parent", "tourists", "a hiring manager", "hospital staff", "a podcast audience"]


def _h(*parts) -> int:
    return int(hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:12], 16)


def responder(messages: list[dict], body: dict, messy: bool = True) -> str:
    p = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    h = _h(p, body.get("seed"), body.get("temperature"))
    if p.startswith("Come up with") and "starting at Task" in p:
        count = int(re.search(r"Come up with (\d+)", p).group(1))
        first = int(re.search(r"starting at Task (\d+)", p).group(1))
        tasks = []
        for i in range(count):
            k = _h(h, i)
            tasks.append(f"{VERBS[k % len(VERBS)]} {TOPICS[(k // 11) % len(TOPICS)]} {TAILS[(k // 7) % len(TAILS)]}, "
                         f"looking at {ASPECTS[(k // 13) % len(ASPECTS)]} for {AUDIENCES[(k // 17) % len(AUDIENCES)]}.")
        style = h % 4 if messy else 0
        if style == 0:
            return "\n".join(f"Task {first + i}: {t}" for i, t in enumerate(tasks))
        if style == 1:
            return "Sure! Here are some new tasks:\n" + "\n".join(f"{i + 1}. {t}" for i, t in enumerate(tasks)) + "\n\nLet me know!"
        if style == 2:
            return "```json\n" + json.dumps([{"instruction": t} for t in tasks]) + "\n```\nHope this helps."
        # a junk task the keyword filter must catch, plus a copy of an in-context task (near-dup)
        ctx = re.findall(r"^Task \d+: (.*)$", p, re.M)
        return "\n".join([f"Task {first}: {tasks[0]}", f"Task {first + 1}: Draw a picture of a map of the city.",
                          f"Task {first + 2}: {ctx[0] if ctx else tasks[-1]}"])
    if p.startswith("Can this task"):
        return "Yes" if "Name common myths" in p else "No"
    if p.startswith("Write an example input"):
        return f"Input: <none>\nOutput: Here is a clear answer number {h % 1000}, written for the task."
    if p.startswith("Pick one class label"):
        return "Class label: Myth\nInput: Goldfish have a three-second memory."
    if p.startswith("You rewrite prompts") or p.startswith("You write new prompts"):
        orig = p.split("Prompt:\n", 1)[1].strip()
        style = h % 5
        if style == 0:
            return orig  # unchanged: must be eliminated
        if style == 1:
            return "Sorry, I cannot help with that."
        if style == 2:
            return "#Rewritten Prompt#: " + orig + " Also the given prompt must cite sources."
        return f"Rewritten prompt: {orig} Answer in exactly {3 + h % 4} bullet points and justify each one."
    if p.startswith("Rate the assistant"):
        q = _h(p)
        return json.dumps({"scores": {c: 1 + (q >> i) % 5 for i, c in enumerate(
            ["helpfulness", "correctness", "instruction_following", "honesty"])}, "rationale": "scripted"})
    if p.startswith("Two assistant responses"):
        a = p.split("[Response A]\n", 1)[1].split("\n\n[Response B]", 1)[0]
        b = p.split("[Response B]\n", 1)[1]
        # a position-biased judge when both are "biased": always says A; otherwise prefers the longer one
        if "BIASED" in a and "BIASED" in b:
            return json.dumps({"winner": "A", "rationale": "first is better"})
        return json.dumps({"winner": "A" if len(a) >= len(b) else "B", "rationale": "longer"})
    if p.startswith("Read the passage") or p.startswith("Here is one record"):
        body_text = p.split("\n\n", 1)[-1]
        w = re.findall(r"[A-Za-z]{4,}", body_text)
        return json.dumps([{"question": f"What does the text say about {w[(h + i) % len(w)]} here?",
                            "answer": f"It mentions {w[(h + 2 * i + 1) % len(w)]}."} for i in range(2)])
    # a plain response prompt
    return f"Answer ({body.get('temperature')}): " + "detail " * (1 + h % 20) + p[:60]
