"""Tolerant parsers for what real teachers reply: JSON when it is there, numbered lists and labelled lines when not.

Every parser either returns items or says *why* it could not (``ParseError.reason``, a short stable code that the
report counts), so no discarded item goes unexplained.
"""

from __future__ import annotations

import json
import re
from typing import Any

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.S)
# "Task 9: ...", "9. ...", "9) ...", "- ...", "* ..." at the start of a line
_TASK_MARK = re.compile(r"^\s*(?:\*\*)?(?:task|instruction|prompt)\s*#?\s*(\d+)\s*(?:\*\*)?\s*[:.)\-]\s*(?:\*\*)?", re.I | re.M)
_NUM_MARK = re.compile(r"^\s*(?:\*\*)?(\d{1,3})\s*[.)]\s+(?:\*\*)?", re.M)
_BULLET_MARK = re.compile(r"^\s*[-*\u2022]\s+", re.M)


class ParseError(ValueError):
    def __init__(self, reason: str, detail: str = ""):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


def _balanced(text: str, open_ch: str, close_ch: str) -> list[str]:
    """Top-level balanced spans starting with open_ch (string-aware), so trailing junk does not break JSON."""
    if open_ch not in text:  # most replies are plain lines: skip the character-by-character scan
        return []
    spans, depth, start, in_str, esc = [], 0, -1, False, False
    for i, ch in enumerate(text):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"' and depth > 0:
            in_str = True
        elif ch == open_ch:
            if depth == 0:
                start = i
            depth += 1
        elif ch == close_ch and depth > 0:
            depth -= 1
            if depth == 0:
                spans.append(text[start : i + 1])
    return spans


def _loads_lenient(blob: str) -> Any:
    try:
        return json.loads(blob)
    except json.JSONDecodeError:
        pass
    fixed = re.sub(r",\s*([}\]])", r"\1", blob)  # trailing commas
    try:
        return json.loads(fixed)
    except json.JSONDecodeError:
        pass
    if "'" in fixed and '"' not in fixed:  # Python-style quotes
        try:
            return json.loads(fixed.replace("'", '"'))
        except json.JSONDecodeError:
            pass
    return None


def extract_json(text: str, kind: type = object) -> Any:
    """The first JSON value of type ``kind`` (dict, list or any) in ``text``: whole, code-fenced, or embedded."""
    candidates = [text.strip()] + [m.strip() for m in _FENCE.findall(text)]
    wanted = [("{", "}")] if kind is dict else [("[", "]")] if kind is list else [("{", "}"), ("[", "]")]
    for c in list(candidates):
        for o, cl in wanted:
            candidates.extend(_balanced(c, o, cl))
    for c in candidates:
        if not c:
            continue
        v = _loads_lenient(c)
        if v is not None and (kind is object or isinstance(v, kind)):
            return v
    return None


def _strip_item(s: str) -> str:
    s = re.sub(r"\s+\n", "\n", s).strip()
    s = s.strip("*").strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'":
        s = s[1:-1].strip()
    return s


def _split_marked(text: str, pattern: re.Pattern) -> tuple[str, list[str]] | None:
    marks = list(pattern.finditer(text))
    if not marks:
        return None
    pre = text[: marks[0].start()]
    items = [text[m.end() : (marks[i + 1].start() if i + 1 < len(marks) else len(text))] for i, m in enumerate(marks)]
    return pre, items


_TASK_KEYS = ("instruction", "task", "prompt", "question", "text")


def parse_tasks(text: str, truncated: bool = False) -> tuple[list[str], list[tuple[str, str]]]:
    """New task instructions from a bootstrap reply → (instructions, [(fragment, reason), ...]).

    Order of attempts: JSON (list of strings / objects with an instruction-like key / {"tasks": [...]}),
    "Task N:" lines, "N." / "N)" numbered lists, bullets, then a single unmarked line. ``truncated`` (the reply
    hit max_tokens) drops the last item, which is likely cut mid-sentence.
    """
    rejected: list[tuple[str, str]] = []
    if not text or not text.strip():
        return [], [("", "parse:empty_reply")]
    items: list[str] | None = None
    data = extract_json(text)
    if isinstance(data, dict):
        for k in ("tasks", "instructions", "items", "prompts"):
            if isinstance(data.get(k), list):
                data = data[k]
                break
    if isinstance(data, list) and data:
        items = []
        for el in data:
            if isinstance(el, str):
                items.append(el)
            elif isinstance(el, dict) and any(isinstance(el.get(k), str) for k in _TASK_KEYS):
                items.append(next(el[k] for k in _TASK_KEYS if isinstance(el.get(k), str)))
            else:
                rejected.append((json.dumps(el)[:500], "parse:bad_json_item"))
    if items is None:
        for pat in (_TASK_MARK, _NUM_MARK, _BULLET_MARK):
            got = _split_marked(text, pat)
            if got is not None:
                items = got[1]
                # Chatter after the list ("Let me know if ...") follows a blank line: cut it off the last item.
                tail = re.split(r"\n\s*\n", items[-1].strip(), maxsplit=1)
                if len(tail) == 2:
                    items[-1] = tail[0]
                    rejected.append((tail[1].strip()[:500], "parse:trailing_text"))
                break
    if items is None:
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        if len(lines) == 1:
            items = lines
        else:
            return [], [(text.strip()[:500], "parse:no_tasks_found")]
    out = []
    for i, it in enumerate(items):
        s = _strip_item(it)
        if truncated and i == len(items) - 1:
            rejected.append((s, "parse:truncated"))
        elif not s:
            rejected.append((it, "parse:empty_item"))
        else:
            out.append(s)
    return out, rejected


_NOINPUT = {"", "<none>", "none", "<noinput>", "noinput", "n/a", "na", "-", "(none)", "null", "no input", "<no input>"}


def _labelled(text: str, labels: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """Split 'Label: value' sections (values may span lines) for the given label aliases."""
    alias = {a.lower(): k for k, al in labels.items() for a in al}
    pat = re.compile(r"^\s*(?:\*\*)?(" + "|".join(re.escape(a) for a in alias) + r")(?:\*\*)?\s*:\s*(?:\*\*)?", re.I | re.M)
    marks = list(pat.finditer(text))
    out: dict[str, str] = {}
    for i, m in enumerate(marks):
        key = alias[m.group(1).lower()]
        val = text[m.end() : (marks[i + 1].start() if i + 1 < len(marks) else len(text))].strip()
        out.setdefault(key, val)
    return out


def parse_instance(text: str, classification: bool = False) -> tuple[str, str]:
    """(input, output) from an instance reply; for classification tasks the label comes first (output-first)."""
    if not text or not text.strip():
        raise ParseError("instance:empty_reply")
    data = extract_json(text, dict)
    if isinstance(data, dict):
        low = {str(k).lower(): v for k, v in data.items()}
        out = low.get("output", low.get("class label", low.get("label")))
        if isinstance(out, str) and out.strip():
            inp = low.get("input") if isinstance(low.get("input"), str) else ""
            return ("" if inp.strip().lower() in _NOINPUT else inp.strip()), out.strip()
    labels = {"input": ("input",), "output": ("output", "answer", "response")}
    if classification:
        labels["output"] = labels["output"] + ("class label", "label", "class")
    sec = _labelled(text, labels)
    out = sec.get("output", "").strip()
    if not out:
        raise ParseError("instance:no_output", text[:200])
    inp = sec.get("input", "").strip()
    if inp.lower() in _NOINPUT:
        inp = ""
    if classification and not inp and "input" not in sec:
        raise ParseError("instance:no_input_for_label", text[:200])
    return inp, out


_INSTANCE_LABEL_END = re.compile(r"(?:^|\n)\s*(?:\*\*)?(?:input|output|answer|response|class label|label|class)"
                                 r"(?:\*\*)?\s*:?\s*(?:\*\*)?\s*$", re.I)


def instance_unfinished(text: str, classification: bool = False) -> str | None:
    """Why an instance reply stops inside its format (it ends on a label, with nothing after it), or None. A reply
    that is simply wrong (no labels) is not unfinished: ``parse_instance`` says what is wrong with it."""
    m = _INSTANCE_LABEL_END.search(text or "")
    return f"the reply ends on its {m.group(0).strip()!r} label" if m else None


def parse_yes_no(text: str) -> bool | None:
    """Yes → True, No → False, anything else → None."""
    m = re.search(r"\b(yes|no)\b", (text or "").strip().lower())
    return None if m is None else m.group(1) == "yes"


_REWRITE_PREFIX = re.compile(
    r"^\s*(?:#+\s*)?(?:\*\*)?(?:new|rewritten|created|evolved|revised)\s+(?:prompt|instruction)(?:\*\*)?\s*#*\s*:?\s*(?:\*\*)?",
    re.I,
)


def clean_rewrite(text: str) -> str:
    """An evolved prompt without its label ("Rewritten prompt:"), fences or wrapping quotes."""
    s = (text or "").strip()
    fence = _FENCE.findall(s)
    if fence and len(fence[0].strip()) > 0.8 * len(s.replace("```", "").strip()):
        s = fence[0].strip()
    s = _REWRITE_PREFIX.sub("", s, count=1).strip()
    return _strip_item(s)


def parse_qa_pairs(text: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Question/answer pairs: JSON list of {question, answer}, or "Q:/A:" ("Question:/Answer:") blocks."""
    if not text or not text.strip():
        return [], [("", "parse:empty_reply")]
    pairs, rejected = [], []
    data = extract_json(text)
    if isinstance(data, dict):
        data = next((v for v in data.values() if isinstance(v, list)), [data])
    if isinstance(data, list) and data:
        for el in data:
            if isinstance(el, dict):
                low = {str(k).lower(): v for k, v in el.items()}
                q, a = low.get("question", low.get("q")), low.get("answer", low.get("a"))
                if isinstance(q, str) and isinstance(a, str) and q.strip() and a.strip():
                    pairs.append((q.strip(), a.strip()))
                    continue
            rejected.append((json.dumps(el, ensure_ascii=False)[:500], "parse:bad_qa_item"))
        return pairs, rejected
    pat = re.compile(r"(?:^|(?<=[.?!]\s))\s*(?:\d+[.)]\s*)?(?:\*\*)?(q|question|a|answer)(?:\s*\d+)?(?:\*\*)?\s*:\s*(?:\*\*)?", re.I | re.M)
    marks = list(pat.finditer(text))
    q = None
    for i, m in enumerate(marks):
        val = text[m.end() : (marks[i + 1].start() if i + 1 < len(marks) else len(text))].strip()
        if m.group(1).lower().startswith("q"):
            if q is not None:
                rejected.append((q, "parse:question_without_answer"))
            q = val
        elif q is not None:
            if q and val:
                pairs.append((q, val))
            else:
                rejected.append((q or val, "parse:empty_qa"))
            q = None
    if q is not None:
        rejected.append((q, "parse:question_without_answer"))
    if not pairs and not rejected:
        rejected.append((text.strip()[:500], "parse:no_qa_found"))
    return pairs, rejected


def parse_rating(text: str, criteria: list[str]) -> tuple[dict[str, float], str]:
    """Scores 1–5 per criterion + rationale from a judge reply; JSON first, then 'name: 4' lines."""
    if not text or not text.strip():
        raise ParseError("judge:empty_reply")
    scores: dict[str, float] = {}
    rationale = ""
    data = extract_json(text, dict)
    if isinstance(data, dict):
        src = data.get("scores") if isinstance(data.get("scores"), dict) else data
        low = {str(k).lower().replace(" ", "_"): v for k, v in src.items()}
        for c in criteria:
            v = low.get(c.lower())
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                scores[c] = float(v)
            elif isinstance(v, str) and re.fullmatch(r"\s*\d+(\.\d+)?\s*", v):
                scores[c] = float(v)
        r = data.get("rationale", data.get("reason", data.get("explanation", "")))
        rationale = r if isinstance(r, str) else ""
    if len(scores) < len(criteria):
        for c in criteria:
            if c in scores:
                continue
            m = re.search(re.escape(c).replace("_", "[ _]") + r"\W{0,6}(\d(?:\.\d+)?)", text, re.I)
            if m:
                scores[c] = float(m.group(1))
        if not rationale:
            m = re.search(r"rationale\W{0,4}(.+)", text, re.I | re.S)
            rationale = m.group(1).strip().strip('"}').strip() if m else ""
    missing = [c for c in criteria if c not in scores]
    if missing:
        raise ParseError("judge:missing_scores", ",".join(missing))
    bad = [c for c, v in scores.items() if not 1 <= v <= 5]
    if bad:
        raise ParseError("judge:score_out_of_range", ",".join(bad))
    return scores, rationale[:2000]


def parse_pairwise(text: str) -> str:
    """'a', 'b' or 'tie' from a pairwise judge reply."""
    if not text or not text.strip():
        raise ParseError("pairwise:empty_reply")
    data = extract_json(text, dict)
    if isinstance(data, dict):
        w = str(data.get("winner", data.get("better", ""))).strip().lower()
        w = w.replace("response", "").replace("assistant", "").strip(" _")
        if w in ("a", "b", "tie"):
            return w
    m = re.search(r"(?:winner|better)(?:\s+(?:is|one is))?\W{0,12}(?:response\s*)?\b(a|b|tie)\b", text, re.I)
    if m:
        return m.group(1).lower()
    m = re.fullmatch(r"\W*(?:response\s*)?(a|b|tie)\W*", text.strip(), re.I)
    if m:
        return m.group(1).lower()
    # Small judges answer in a sentence: "The answer is: B", "The correct answer is A: ...", "Response B".
    # The letter must be a capital standing alone, so that the article in "A credit card is ..." never counts.
    m = re.search(r"(?i:answer|response|choice|option)(?:\s+(?i:is))?\s*[:\-]?\s*\(?\b([AB])\b(?![a-z'])", text)
    if m:
        return m.group(1).lower()
    raise ParseError("pairwise:no_verdict", text[:200])
