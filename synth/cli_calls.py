"""`orchard synth calls`: list and summarise the teacher call log (like `llm logs`). Parsing and printing only."""

from __future__ import annotations

import datetime as _dt
import json
import sqlite3
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from orchard.errors import InputError

from .teacher import CALL_LOG_NAME, CallLog, find_call_log

calls_app = typer.Typer(help="Inspect the teacher call log.", no_args_is_help=False)


def calls(
    db: Path = typer.Option(Path("runs"), "--db",
                            help=f"a call log ({CALL_LOG_NAME}) or a folder to search (newest log wins)"),
    limit: int = typer.Option(20, "--limit", "-n", min=0, help="how many recent calls to list"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of tables"),
    summary_only: bool = typer.Option(False, "--summary", help="print only the summary"),
    full: bool = typer.Option(False, "--full", help="with --json: include request and response text"),
    status: Optional[str] = typer.Option(None, "--status", help="only calls with this status: ok, error or cached"),
    tag: Optional[str] = typer.Option(None, "--tag", help="only calls whose tag starts with this (e.g. evol:)"),
) -> None:
    """List recent teacher calls and summarise them: count, ok/errors, cache hits, tokens, cost, p50/p95 latency.

    Example: orchard synth calls --db runs/quickstart --limit 10 --summary

    Example: orchard synth calls --status error --tag evol: --json
    """
    try:
        path = find_call_log(db)
        log = CallLog(path, readonly=True)
        if status not in (None, "ok", "error", "cached"):
            raise InputError(f"must be ok, error or cached, not {status!r}", field="--status")
        rows = [] if summary_only else log.recent(limit, status=status, tag_prefix=tag)
        summ = log.summary()
        log.close()
    except FileNotFoundError as e:
        raise InputError(str(e), path=db, field="--db") from None
    except sqlite3.DatabaseError as e:
        raise InputError(f"not a teacher call log ({e})", path=db, field="--db") from None

    if as_json:
        if not full:
            rows = [_brief(r) for r in rows]
        out = {"db": str(path), "summary": summ} if summary_only else {"db": str(path), "summary": summ, "calls": rows}
        typer.echo(json.dumps(out, indent=2, ensure_ascii=False))
        return

    console = Console()
    if rows:
        t = Table(title=f"recent calls — {path}")
        widths = {"id": 3, "time": 8, "status": 6, "endpoint": 8, "tag": 3, "tokens": 5, "latency": 5, "try": 3}
        for col, w in widths.items():
            t.add_column(col, no_wrap=True, min_width=w, overflow="ellipsis")
        t.add_column("text / error", overflow="ellipsis", no_wrap=True, ratio=1)
        for r in rows:
            status = "cached" if r["cached"] else r["status"]
            style = {"ok": "green", "error": "red", "cached": "cyan"}[status]
            snippet = r["error"] if r["status"] == "error" else (r["response_text"] or "")
            t.add_row(
                str(r["id"]), _when(r["ts"]), f"[{style}]{status}[/{style}]", r["endpoint"] or "",
                r["tag"] or "", f"{r['prompt_tokens']}/{r['completion_tokens']}",
                "" if r["latency_s"] is None else f"{r['latency_s']:.2f}s", str(r["attempts"]),
                _clip(snippet, 60),
            )
        console.print(t)
    s = Table(title="summary", show_header=False)
    for k in ("rows", "ok", "errors", "cache_hits", "attempts", "prompt_tokens", "completion_tokens", "cost_usd",
              "latency_p50_s", "latency_p95_s"):
        s.add_row(k, str(summ[k]))
    for err, n in summ["top_errors"].items():
        s.add_row(f"error ×{n}", err)
    console.print(s)


def _brief(r: dict) -> dict:
    d = {k: v for k, v in r.items() if k not in ("request_json", "response_text")}
    d["response_preview"] = _clip(r.get("response_text") or "", 120)
    return d


def _clip(s: str, n: int) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= n else s[: n - 1] + "…"


def _when(ts: Optional[float]) -> str:
    return "" if ts is None else _dt.datetime.fromtimestamp(ts).strftime("%H:%M:%S")


calls_app.command("calls")(calls)


def register(app: typer.Typer) -> None:
    """Mount ``calls`` on the lead's ``orchard synth`` Typer app."""
    app.command("calls")(calls)
