"""Read a user's table (CSV or Parquet) and refuse what cannot be synthesized, before anything is written."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from orchard.errors import InputError

# Columns the dataset contract adds to every record; a table may not bring its own.
RESERVED = ("id", "seed_id", "provenance")


def read_table(path: str | Path) -> pd.DataFrame:
    """Load ``path`` as a DataFrame and validate it (see :func:`validate_table`)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no such table file", path=path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv", ".txt"):
            df = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
        elif suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        else:
            raise InputError(f"unsupported table format '{suffix}' (expected .csv or .parquet)", path=path)
    except pd.errors.EmptyDataError:
        raise InputError("the table is empty (no header, no rows)", path=path) from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"cannot read the table: {e}", path=path) from None
    validate_table(df, path, csv=suffix in (".csv", ".tsv", ".txt"))
    return df


def validate_table(df: pd.DataFrame, path: str | Path, csv: bool = False) -> None:
    """Raise InputError for an empty table, a single column, or a column holding mixed types.

    Reserved column names (``RESERVED``) are checked after the metadata YAML's renames, in ``metadata``.
    """
    if len(df.columns) == 0 or len(df) == 0:
        raise InputError("the table is empty: it has no rows to learn from", path=path)
    if len(df.columns) < 2:
        raise InputError(
            f"the table has one column ('{df.columns[0]}'); synthesizing and privacy checks need at least two",
            path=path,
        )
    dupes = df.columns[df.columns.duplicated()].tolist()
    if dupes:
        raise InputError(f"duplicate column names: {dupes}", path=path)
    for col in df.columns:
        _check_mixed(df[col], str(col), path, csv)


def _check_mixed(s: pd.Series, name: str, path, csv: bool) -> None:
    if s.dtype != object:
        return
    values = s.dropna()
    if values.empty:
        return
    kinds = values.map(lambda v: "number" if isinstance(v, (int, float)) and not isinstance(v, bool) else type(v).__name__)
    if kinds.nunique() > 1:
        # Python objects of different kinds (Parquet object columns, or a DataFrame built in code).
        first = kinds.iloc[0]
        odd = values[kinds != first]
        _mixed_error(name, path, csv, f"{first} and {odd.map(type).iloc[0].__name__}", odd.index[0], odd.iloc[0])
    if csv and (kinds == "str").all():
        # CSV: pandas keeps a column as text when any cell fails to parse as a number. Mostly-numeric
        # text with a few words in it is a typo or a sentinel ("n/a", "?"), not a category.
        parsed = pd.to_numeric(values, errors="coerce")
        numeric = parsed.notna()
        if numeric.any() and (~numeric).any() and numeric.mean() >= 0.5:
            odd = values[~numeric]
            _mixed_error(name, path, csv, "numbers and text", odd.index[0], odd.iloc[0])


def _mixed_error(name, path, csv, what, index, value) -> None:
    # CSV rows are numbered from the header (line 1); the first data row is line 2.
    line = int(index) + 2 if csv else None
    raise InputError(
        f"column '{name}' mixes {what} (e.g. {value!r}); make the column one type "
        "or mark missing values as empty cells",
        path=path,
        line=line,
        field=name,
    )
