"""Versioned prompt templates stored as text files under ``synth/prompts/`` (or a user's override path).

A template file starts with ``# key: value`` header lines (``template``, ``version``, ``placeholders``) and then
the prompt text with ``$name`` placeholders (``string.Template``: JSON braces in prompts need no escaping).
Rows record the template's name and version in their provenance, so a changed prompt is visible in the data.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from orchard.errors import InputError

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    version: str
    text: str
    path: str
    meta: dict = field(default_factory=dict, compare=False)  # every "# key: value" header line

    def render(self, **values: object) -> str:
        try:
            return string.Template(self.text).substitute({k: str(v) for k, v in values.items()})
        except KeyError as e:  # a user's override names a placeholder this step does not provide
            raise InputError(f"template '{self.name}' uses unknown placeholder ${e.args[0]}", path=self.path) from None

    def provenance(self) -> dict:
        return {"template": self.name, "template_version": self.version}


def parse_template(text: str, path: str, default_name: str) -> PromptTemplate:
    meta: dict[str, str] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines) and lines[i].startswith("# ") and ":" in lines[i]:
        key, _, value = lines[i][2:].partition(":")
        meta[key.strip()] = value.strip()
        i += 1
    body = "\n".join(lines[i:]).strip("\n")
    if not body.strip():
        raise InputError("template has no prompt text after its header", path=path)
    return PromptTemplate(meta.get("template", default_name), meta.get("version", "0"), body, path, meta)


def load_template(name: str, overrides: Mapping[str, str | Path] | None = None) -> PromptTemplate:
    """The template ``name``: the user's override (a file, or the name of another shipped template) when the config
    names one, else the shipped file."""
    path = Path(overrides[name]) if overrides and name in overrides else PROMPTS_DIR / f"{name}.txt"
    if not path.is_file() and (PROMPTS_DIR / f"{path}.txt").is_file():
        path = PROMPTS_DIR / f"{path}.txt"
    if not path.is_file():
        raise InputError(f"prompt template '{name}' not found", path=path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"template is not UTF-8 ({e.reason})", path=path) from None
    return parse_template(text, str(path), name)


def shipped_templates() -> list[str]:
    return sorted(p.stem for p in PROMPTS_DIR.glob("*.txt"))
