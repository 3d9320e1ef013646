"""The config story's base, shared by the spine and the packages: one strict model base, one YAML loader that
remembers lines, one validator that turns pydantic's errors into ``file:line: 'key': expected`` messages, and one
model-reference type.

Packages define their own config models on ``Strict`` (in their ``config.py``); the recipe embeds them, so a
package's field names are the recipe's YAML keys and every error reads the same, whether it comes from a recipe,
a package's ``--config`` file or a ``--set`` override.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Tag, ValidationError

from orchard.errors import InputError

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """Every config model's base: an unknown key is an error (a typo must not silently keep a default)."""

    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- YAML with line numbers

class _LineLoader(yaml.SafeLoader):
    """A SafeLoader that remembers the line of every mapping key."""


def _construct_mapping(loader, node, deep=False):
    mapping = yaml.SafeLoader.construct_mapping(loader, node, deep=True)
    loader._lines[id(mapping)] = {loader.construct_object(k, deep=True): k.start_mark.line + 1 for k, _ in node.value}
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class YamlDoc:
    """A parsed YAML document and the line of each mapping key in it (for error messages)."""

    def __init__(self, data: Any, lines: dict[int, dict], path: str | Path | None):
        self.data, self._lines, self.path = data, lines, path

    def line_of(self, loc: tuple) -> int | None:
        """The line of the deepest key of ``loc`` (a pydantic error location) that the document has."""
        line, node = None, self.data
        for part in loc:
            if isinstance(node, dict) and part in node:
                line = self._lines.get(id(node), {}).get(part, line)
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                node = node[part]
            else:
                break
        return line


def parse_yaml(text: str, path: str | Path | None = None) -> YamlDoc:
    """Parse YAML text (safely), remembering key lines; bad YAML is an InputError naming the file and line."""
    loader = _LineLoader(text)
    loader._lines = {}
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise InputError(f"not valid YAML: {getattr(e, 'problem', e)}", path=path,
                         line=(mark.line + 1) if mark else None) from None
    finally:
        loader.dispose()
    return YamlDoc(data, loader._lines, path)


def load_yaml(path: str | Path, *, what: str = "file") -> YamlDoc:
    """Read a YAML file whose top level must be a mapping; a missing file or a non-mapping is an InputError."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} not found", path=path)
    doc = parse_yaml(path.read_text(encoding="utf-8"), path)
    if doc.data is None:
        doc.data = {}
    if not isinstance(doc.data, dict):
        raise InputError(f"a {what} must be a YAML mapping of keys", path=path)
    return doc


def set_override(data: dict, dotted: str, raw_value: str) -> None:
    """Apply one ``--set a.b.c=value`` (the value parsed as YAML, so numbers and booleans keep their type)."""
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        if node.get(k) is None:
            node[k] = {}
        if not isinstance(node[k], dict):
            raise InputError(f"--set {dotted}: '{k}' is not a mapping", field=dotted)
        node = node[k]
    node[keys[-1]] = yaml.safe_load(raw_value) if raw_value != "" else ""


def apply_overrides(data: dict, overrides: list[str] | None) -> None:
    for item in overrides or []:
        if "=" not in item:
            raise InputError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        set_override(data, k.strip(), v)


# ---------------------------------------------------------------- validation with readable errors

def validate(model: type[M], data: Any, *, doc: YamlDoc | None = None, path: str | Path | None = None,
             prefix: tuple = (), what: str = "config") -> M:
    """``model.model_validate(data)``, or one InputError listing every problem as ``file:line: 'key': expected``.

    ``prefix`` is where ``data`` sits inside ``doc`` (for a block validated on its own)."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise InputError(f"invalid {what}:\n  " + "\n  ".join(
            error_lines(model, e, doc=doc, path=path, prefix=prefix))) from None


def error_lines(model: type[BaseModel], e: ValidationError, *, doc: YamlDoc | None = None,
                path: str | Path | None = None, prefix: tuple = ()) -> list[str]:
    path = path if path is not None else (doc.path if doc else None)
    out = []
    for err in e.errors():
        loc, _ = _walk(model, tuple(err["loc"]))
        key = ".".join(str(p) for p in prefix + loc)
        line = doc.line_of(prefix + loc) if doc else None
        where = f"{path}:{line}" if (path and line) else (str(path) if path else "")
        expected = err["msg"]
        if err["type"] == "extra_forbidden":
            allowed = allowed_keys(model, tuple(err["loc"])[:-1])
            expected = "unknown key" + (f"; expected one of: {', '.join(allowed)}" if allowed else "")
        got = "" if err["type"] in ("extra_forbidden", "missing") else f" (got {err.get('input')!r})"
        out.append(f"{where + ': ' if where else ''}'{key}': {expected}{got}")
    return out


def allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the sub-model at ``loc`` (for 'expected one of' messages)."""
    return sorted(getattr(_walk(model, loc)[1], "model_fields", {}).keys())


def _walk(model: type[BaseModel], loc: tuple) -> tuple[tuple, Any]:
    """Follow a pydantic error location through ``model``: (the location as YAML keys, the sub-model it ends in).

    pydantic puts a tagged union's tag into the location (``preferences.judge.options``); the YAML has no such
    key, so the tag is dropped here and picks the union member the rest of the location lies in."""
    keys: list = []
    cur: Any = model
    tags: dict = {}
    for part in loc:
        if part in tags:
            cur, tags = tags[part], {}
            continue
        keys.append(part)
        if isinstance(part, int):  # a list item: same model
            continue
        f = getattr(cur, "model_fields", {}).get(part)
        members = _models_in(f.annotation) if f is not None else []
        tags = {t: m for t, m in members if t is not None}
        cur = members[0][1] if members else None
    return tuple(keys), cur


def _models_in(ann) -> list[tuple[str | None, type[BaseModel]]]:
    """The models a field's annotation may hold, each with its tag when it is a member of a tagged union."""
    if typing.get_origin(ann) is typing.Annotated:
        base, *meta = typing.get_args(ann)
        tag = next((m.tag for m in meta if isinstance(m, Tag)), None)
        return [(tag or t, m) for t, m in _models_in(base)]
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [(None, ann)]
    return [x for a in typing.get_args(ann) for x in _models_in(a)]


# ---------------------------------------------------------------- model references

class ModelRef(str):
    """A model named in a config: ``run:<stage>`` (a model a stage of this run trained) or a path / hub id.

    The one place that parses the ``run:`` form."""

    PREFIX = "run:"

    @property
    def stage(self) -> str | None:
        return self[len(self.PREFIX):] if self.startswith(self.PREFIX) else None

    def resolve(self, run_dir: str | Path | None = None) -> str:
        """A path (for ``run:<stage>``: ``<run_dir>/<stage>/model``, which must exist) or the reference as given."""
        stage = self.stage
        if stage is None:
            return str(self)
        if run_dir is None:
            raise InputError(f"model '{self}': 'run:<stage>' references only work inside a recipe run")
        path = Path(run_dir) / stage / "model"
        if not path.exists():
            raise InputError(f"model '{self}': {path} does not exist (run the '{stage}' stage first)")
        return str(path)

    @classmethod
    def __get_pydantic_core_schema__(cls, source, handler):
        from pydantic_core import core_schema

        return core_schema.no_info_after_validator_function(
            cls._check, core_schema.str_schema(min_length=1),
            serialization=core_schema.plain_serializer_function_ser_schema(str))

    @classmethod
    def _check(cls, v: str) -> "ModelRef":
        if v.startswith(cls.PREFIX) and not v[len(cls.PREFIX):].strip():
            raise ValueError("'run:' must name a stage, e.g. run:sft")
        return cls(v)
