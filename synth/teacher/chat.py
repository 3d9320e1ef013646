"""What a method asks the teacher and what it gets back: ``ChatRequest`` and ``ChatResult``.

Plain data, with no HTTP and no state: the client (``client.py``) runs requests, the pool (``pool.py``) queues
them, and both check what a caller hands them with ``as_request``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional


@dataclass
class ChatRequest:
    """One chat completion to make.

    ``params`` override the config's sampling defaults (temperature, top_p, max_tokens, stop, ...).
    ``seed`` is sent to the endpoint and ``sample`` is not; both are part of the cache key, so N samples
    of one prompt (distinct seeds or sample indexes) are N distinct cached calls. ``tag`` is for tracing
    (an item id) and is not part of the key. ``json`` asks for a JSON object (None: the config decides).
    ``prompt``, instead of ``messages``, is raw text continued through ``/completions`` with no chat template
    applied (Magpie writes instructions that way, from a template's user-turn prefix).
    ``check(text)`` returns why an answer stops inside the expected format (None: complete); such an answer is
    treated like a cut-off one: asked again, never cached as good. ``cut_ok(text)``: True when an answer cut off at
    max_tokens is whole all the same (a yes/no question, read from its first yes or no, which more tokens cannot
    change). Neither is part of the key.
    """

    messages: list[dict] = field(default_factory=list)
    params: dict = field(default_factory=dict)
    seed: Optional[int] = None
    sample: int = 0
    tag: Optional[str] = None
    json: Optional[bool] = None
    check: Optional[Callable[[str], Optional[str]]] = None
    cut_ok: Optional[Callable[[str], bool]] = None
    prompt: Optional[str] = None
    max_tokens_cap: Optional[int] = None  # this request's own cap on re-asking a cut-off answer (not in the key)

    def prompt_messages(self) -> list[dict]:
        """What was sent, as messages (a raw prompt as one user message), for logs and usage estimates."""
        return self.messages if self.prompt is None else [{"role": "user", "content": self.prompt}]


@dataclass
class ChatResult:
    """The outcome of one request: ``text`` when ``ok``, else ``error`` says why and ``reason`` is a short code
    for it (``truncated``, ``bad_format``, ``refused``, ``request_failed``, ``gave_up``: faults after every retry)."""

    text: Optional[str] = None
    error: Optional[str] = None
    reason: Optional[str] = None
    finish_reason: Optional[str] = None
    usage: dict = field(default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0})
    cost_usd: float = 0.0
    cached: bool = False
    attempts: int = 0
    latency_s: float = 0.0
    model: Optional[str] = None
    endpoint: Optional[str] = None
    key: str = ""
    tag: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.text is not None

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"

    def json(self) -> Any:
        """The text parsed as JSON (code fences tolerated); raises ValueError if it is not JSON."""
        if not self.ok:
            raise ValueError(f"no text to parse: {self.error}")
        return parse_json_text(self.text)


def parse_json_text(text: str) -> Any:
    """Parse a model's JSON answer, tolerating a ```json fence around it."""
    s = text.strip()
    if s.startswith("```"):
        s = re.sub(r"^```[a-zA-Z0-9_-]*\s*", "", s)
        s = re.sub(r"\s*```\s*$", "", s)
    return json.loads(s)


# Request params the client sets itself, and what to use instead.
_NOT_PARAMS = {
    "model": "the config names the model", "messages": "pass messages, not a param", "stream": "not supported",
    "response_format": "use json=True", "seed": "use ChatRequest.seed", "n": "one choice per call; use seeds",
}


def as_request(r: ChatRequest | dict) -> ChatRequest:
    """A ``ChatRequest`` (a dict is turned into one), checked before anything is queued or paid: it has messages or
    a raw prompt, never both, and no param the client sets itself (model, seed, JSON mode, ...). Raises
    ValueError or TypeError saying what is wrong."""
    if isinstance(r, dict):
        if "messages" not in r and "prompt" not in r:
            raise ValueError("a request dict needs 'messages' (or a raw 'prompt')")
        r = ChatRequest(**r)
    if not isinstance(r, ChatRequest):
        raise TypeError(f"expected ChatRequest or dict, got {type(r).__name__}")
    bad = sorted(set(r.params) & set(_NOT_PARAMS))
    if bad:
        raise ValueError("; ".join(f"param {k!r}: {_NOT_PARAMS[k]}" for k in bad))
    if r.prompt is not None:
        if not isinstance(r.prompt, str) or not r.prompt or r.messages:
            raise ValueError("a raw prompt must be a non-empty string, with no messages")
    elif not isinstance(r.messages, list) or not r.messages:
        raise ValueError("messages must be a non-empty list of {role, content}")
    return r
