"""Table metadata: SDV's detection, then the user's YAML overrides (types, key, PII, constraints, renames).

YAML shape (every key optional)::

    rename: {id: patient_id}          # orchard adds id/seed_id/provenance, so a table's own must move
    primary_key: patient_id
    columns:                          # any SDV column keyword, e.g. sdtype, datetime_format
      age: {sdtype: numerical}
      zip: {sdtype: categorical}
    pii:                              # drop the column, or let SDV generate realistic fakes for it
      ssn: drop
      full_name: name                 # a Faker-backed sdtype: name, email, phone_number, address, ...
      notes: fake                     # anonymised placeholder values
    constraints:
      - {type: Inequality, low_column_name: admitted, high_column_name: discharged}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from orchard.errors import InputError
from orchard.schema import load_yaml

TABLE = "table"
# Column types SDMetrics (and our privacy evaluation) measure distances on.
STATISTICAL = ("numerical", "categorical", "boolean", "datetime")
_TOP_KEYS = {"rename", "primary_key", "columns", "pii", "constraints"}
_CONSTRAINTS = ("FixedCombinations", "FixedIncrements", "Inequality", "Range", "OneHotEncoding")


@dataclass
class TablePlan:
    """What to fit: the prepared DataFrame, SDV metadata, constraints, and what was dropped or faked."""

    data: pd.DataFrame
    metadata: Any  # sdv.metadata.Metadata
    constraints: list = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    faked: dict[str, str] = field(default_factory=dict)

    def columns(self) -> dict[str, dict]:
        return self.metadata.to_dict()["tables"][TABLE]["columns"]

    def eval_columns(self) -> dict[str, str]:
        """Columns the privacy metrics compare, with the type they are compared as.

        SDV 2 detects ordered small-cardinality columns as ``ordinal``, which SDMetrics' DCR skips; a
        leak through them is still a leak, so they are compared as categories here.
        """
        out = {}
        for name, meta in self.columns().items():
            sdtype = meta["sdtype"]
            if sdtype == "ordinal":
                sdtype = "categorical"
            if sdtype in STATISTICAL:
                out[name] = sdtype
        return out

    def eval_metadata(self) -> dict:
        """Single-table SDMetrics metadata matching :meth:`eval_columns` (for SDMetrics' own reports)."""
        cols = {}
        for name, sdtype in self.eval_columns().items():
            meta = {"sdtype": sdtype}
            fmt = self.columns()[name].get("datetime_format")
            if fmt:
                meta["datetime_format"] = fmt
            cols[name] = meta
        return {"columns": cols}


def build_plan(df: pd.DataFrame, metadata_path: str | Path | None = None) -> TablePlan:
    """Detect metadata for ``df`` and apply the YAML overrides; raise InputError naming the YAML line."""
    from sdv.metadata import Metadata

    spec: dict = {}
    path = Path(metadata_path) if metadata_path else None
    doc = None
    if path is not None:
        if not path.is_file():
            raise InputError("no such metadata file", path=path)
        doc = load_yaml(path, what="metadata file")
        spec = doc.data
        unknown = set(spec) - _TOP_KEYS
        if unknown:
            key = sorted(unknown)[0]
            raise InputError(
                f"unknown key '{key}' (allowed: {sorted(_TOP_KEYS)})", path=path, line=doc.line_of((key,)), field=key
            )

    def line_of(*keys) -> int | None:
        """The line of the key reached by ``keys`` in the metadata YAML (for errors that point at it)."""
        return doc.line_of(keys) if doc is not None else None

    def check_col(col, *where):
        if col not in df.columns:
            raise InputError(
                f"unknown column '{col}' (the table has: {', '.join(map(str, df.columns))})",
                path=path,
                line=line_of(*where),
                field=".".join(map(str, where)),
            )

    df = df.copy()
    rename = spec.get("rename") or {}
    for old in rename:
        check_col(old, "rename", old)
    df = df.rename(columns=rename)
    from .table import RESERVED, validate_table

    dropped = []
    faked: dict[str, str] = {}
    pii = spec.get("pii") or {}
    for col, action in pii.items():
        check_col(col, "pii", col)
        if action == "drop":
            dropped.append(col)
    df = df.drop(columns=dropped)
    for col in df.columns:
        if col in RESERVED:
            raise InputError(
                f"column '{col}' clashes with a column orchard adds to every record; add `rename: {{{col}: "
                f"{col}_orig}}` to the metadata YAML",
                path=path or "table",
                field=col,
            )
    validate_table(df, path or "table")

    # SDV 2 takes a dict of tables; the single table is named TABLE throughout.
    metadata = Metadata.detect_from_dataframes({TABLE: df})
    for col, kwargs in (spec.get("columns") or {}).items():
        check_col(col, "columns", col)
        if col in dropped:
            continue
        if not isinstance(kwargs, dict) or "sdtype" not in kwargs:
            raise InputError(
                "each column override needs at least `sdtype`", path=path, line=line_of("columns", col), field=f"columns.{col}"
            )
        try:
            metadata.update_column(col, table_name=TABLE, **kwargs)
        except Exception as e:  # SDV raises its own error types for bad sdtypes/keywords
            raise InputError(f"SDV rejects this column override: {e}", path=path, line=line_of("columns", col), field=f"columns.{col}") from None
    for col, action in pii.items():
        if action == "drop":
            continue
        sdtype = "unknown" if action in ("fake", True) else str(action)
        try:
            metadata.update_column(col, table_name=TABLE, sdtype=sdtype, pii=True)
        except Exception as e:
            raise InputError(f"cannot fake column '{col}' as '{sdtype}': {e}", path=path, line=line_of("pii", col), field=f"pii.{col}") from None
        faked[col] = sdtype
    table_meta = metadata.to_dict()["tables"][TABLE]
    pk = spec.get("primary_key")
    detected_pk = table_meta.get("primary_key")
    if detected_pk and detected_pk != pk and table_meta["columns"][detected_pk]["sdtype"] in STATISTICAL + ("ordinal",):
        # SDV takes any column of unique integers for a key (gapminder's `pop`); a YAML that gives it a
        # statistical type means it is data, so it stops being the key instead of failing SDV's validation.
        metadata.remove_primary_key(table_name=TABLE)
    if pk is not None:
        check_col(pk, "primary_key")
        if table_meta["columns"][pk]["sdtype"] in STATISTICAL + ("ordinal",):
            metadata.update_column(pk, table_name=TABLE, sdtype="id")
        if table_meta.get("primary_key") != pk:
            metadata.set_primary_key(pk, table_name=TABLE)

    constraints = []
    for i, c in enumerate(spec.get("constraints") or []):
        constraints.append(_constraint(c, i, df, path))
    try:
        metadata.validate()
        metadata.validate_data({TABLE: df})
    except Exception as e:
        raise InputError(f"the table does not fit its metadata: {e}", path=path or "table") from None
    return TablePlan(data=df, metadata=metadata, constraints=constraints, dropped=dropped, faked=faked)


def _constraint(spec: Any, i: int, df: pd.DataFrame, path):
    import sdv.cag

    field_name = f"constraints[{i}]"
    if not isinstance(spec, dict) or spec.get("type") not in _CONSTRAINTS:
        raise InputError(f"each constraint needs `type:` one of {list(_CONSTRAINTS)}", path=path, field=field_name)
    kwargs = {k: v for k, v in spec.items() if k != "type"}
    for k, v in kwargs.items():
        names = v if k.endswith("column_names") else [v] if k.endswith("column_name") else []
        for col in names:
            if col not in df.columns:
                raise InputError(f"unknown column '{col}' in {k}", path=path, field=f"{field_name}.{k}")
    try:
        return getattr(sdv.cag, spec["type"])(**kwargs)
    except (TypeError, ValueError) as e:
        raise InputError(f"bad {spec['type']} constraint: {e}", path=path, field=field_name) from None
