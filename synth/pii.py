"""PII scan of generated text: e-mails, phone numbers, credit cards (Luhn-checked), IBANs (mod-97-checked),
US SSNs and IP addresses; policy ``mask`` (replace with ``[EMAIL]`` …) or ``drop`` (reject the row).

Why regexes: presidio-analyzer, the maintained option, needs a spaCy language model downloaded from a model hub
to build its analyzer, which this offline setup cannot fetch. These patterns are deliberately conservative and
the checksums (Luhn, IBAN mod 97, IPv4 octet ranges) cut false positives on numbers that merely look alike.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Iterable

_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
# Not the digits of a decimal number ("3.835777303699742" passes Luhn by chance): no "." or "," glued on either side.
_CARD = re.compile(r"(?<![\d.,])(?:\d[ -]?){12,18}\d(?![\d]|[.,]\d)")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,3})?\b")
_SSN = re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b")
_IPV4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")
_IPV6 = re.compile(r"\b(?:[0-9A-Fa-f]{1,4}:){2,7}[0-9A-Fa-f]{1,4}\b")
# International (+CC …) or North-American style numbers; needs separators so plain long integers don't match.
_PHONE = re.compile(
    r"(?<![\w+])(?<!\d[ .-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]\d{3,4}(?![\w-])(?![ .-]\d)"
)


def luhn_ok(digits: str) -> bool:
    d = [int(c) for c in digits if c.isdigit()]
    if not 13 <= len(d) <= 19:
        return False
    total = 0
    for i, x in enumerate(reversed(d)):
        if i % 2 == 1:
            x *= 2
            if x > 9:
                x -= 9
        total += x
    return total % 10 == 0


def iban_ok(s: str) -> bool:
    s = s.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    num = "".join(str(int(c, 36)) for c in moved)
    return int(num) % 97 == 1


def _ip_ok(s: str) -> bool:
    try:
        ipaddress.ip_address(s)
        return True
    except ValueError:
        return False


def find_pii(text: str, kinds: Iterable[str]) -> list[tuple[str, int, int]]:
    """(kind, start, end) spans, non-overlapping, earlier kinds in this order winning: email, iban, card, ssn,
    ip, phone."""
    kinds = set(kinds)
    spans: list[tuple[str, int, int]] = []
    checks = [
        ("email", _EMAIL, None),
        ("iban", _IBAN, iban_ok),
        ("credit_card", _CARD, luhn_ok),
        ("ssn", _SSN, None),
        ("ip", _IPV4, _ip_ok),
        ("ip", _IPV6, _ip_ok),
        ("phone", _PHONE, lambda s: sum(c.isdigit() for c in s) >= 9),  # fewer digits: mostly plain numbers
    ]
    for kind, pat, ok in checks:
        if kind not in kinds:
            continue
        for m in pat.finditer(text or ""):
            if ok is not None and not ok(m.group(0)):
                continue
            if any(not (m.end() <= a or m.start() >= b) for _, a, b in spans):
                continue
            spans.append((kind, m.start(), m.end()))
    return sorted(spans, key=lambda s: s[1])


def mask_pii(text: str, spans: list[tuple[str, int, int]]) -> str:
    out, last = [], 0
    for kind, a, b in spans:
        out.append(text[last:a])
        out.append(f"[{kind.upper()}]")
        last = b
    out.append(text[last:])
    return "".join(out)
