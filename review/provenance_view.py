"""Provenance as a reviewer reads it: one "Label: value" line per fact, nested facts under their parent's name,
and no local paths (a path on the machine that made the data tells a reviewer nothing and shows its folders)."""

from __future__ import annotations

import re

# The facts a reviewer looks for first; the rest follow in name order.
FIRST = ("method", "seed_id", "parent_id", "teacher", "template", "template_version", "judge", "pairwise", "filters")
MAX_VALUE = 300
MAX_TOTAL = 4000

# An absolute local path (POSIX, home-relative, file:// or a Windows drive) standing alone or inside a text. The
# look-behind keeps URLs (http://host/path) and relative names (docs/guide.md) as they are.
_PATH = re.compile(r"(?<![\w:/.~-])(?:file://)?(?:~|[A-Za-z]:)?[/\\](?:[^\s'\"()\[\]{},;<>]+)")


def _strip_paths(text: str) -> str:
    """Each absolute path replaced by its last part (the file's name), or dropped when it has none."""
    def short(m: re.Match) -> str:
        name = re.split(r"[/\\]", m.group(0).rstrip("/\\"))[-1]
        return name if name and not name.endswith(":") else "(local path)"

    return _PATH.sub(short, text)


def _label(parts: list[str]) -> str:
    text = " ".join(parts).replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def _scalar(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    text = _strip_paths(str(value)).replace("\n", " ").strip()
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 1] + "…"


def _lines(parts: list[str], value) -> list[str]:
    if isinstance(value, dict):
        if not value:
            return []
        out = []
        for key in _ordered(value):
            out += _lines(parts + [str(key)], value[key])
        return out
    if isinstance(value, (list, tuple)):
        if not value:
            return []
        if all(not isinstance(v, (dict, list, tuple)) for v in value):
            return [f"{_label(parts)}: {_scalar(', '.join(str(v) for v in value))}"]
        out = []
        for i, v in enumerate(value, 1):
            out += _lines(parts + [str(i)], v)
        return out
    if value is None or value == "":
        return []
    return [f"{_label(parts)}: {_scalar(value)}"]


def _ordered(d: dict) -> list:
    first = [k for k in FIRST if k in d]
    return first + sorted((k for k in d if k not in FIRST), key=str)


def readable_provenance(prov: dict, leave_out: tuple[str, ...] = ()) -> str:
    """`prov` as plain text lines for the review UI, without the keys in `leave_out` (shown elsewhere)."""
    lines = []
    for key in _ordered(prov):
        if key not in leave_out:
            lines += _lines([str(key)], prov[key])
    text = "\n".join(lines)
    return text if len(text) <= MAX_TOTAL else text[: MAX_TOTAL - 1] + "…"
