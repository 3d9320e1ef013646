"""Entry point that orchard runs with the Argilla server venv's python (argilla-server + standard library only).

    python launch.py init  --api-key KEY --password PW   # migrate the database, create the owner `argilla`
    python launch.py serve --host 127.0.0.1 --port 6900  # the API and web UI, with the orchard_sql engine
    python launch.py worker                               # the rq worker (background jobs), same engine

Configuration comes from the ARGILLA_* environment variables that orchard sets (database URL, Redis URL, ...).
The API key and password are read from the environment (ORCHARD_OWNER_API_KEY, ORCHARD_OWNER_PASSWORD) when not
given, so that they never appear in a process listing.
"""

import argparse
import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("ARGILLA_SEARCH_ENGINE", "orchard_sql")

import orchard_sqlsearch  # noqa: E402,F401  (registers the engine before the app is imported)


def _sqlite_tuning() -> None:
    """WAL lets the worker and the server write without locking readers out; the extra indexes serve the review
    queue (responses already have a unique (record_id, user_id) index)."""
    from sqlalchemy import text

    from argilla_server.database import sync_engine

    if sync_engine.dialect.name != "sqlite":
        return
    with sync_engine.begin() as conn:
        conn.execute(text("PRAGMA journal_mode=WAL"))
        conn.execute(text("CREATE INDEX IF NOT EXISTS ix_orchard_records_ds_inserted ON records (dataset_id, inserted_at)"))
        conn.execute(text("CREATE INDEX IF NOT EXISTS ix_orchard_records_ds_status ON records (dataset_id, status)"))
        # The queue's default order (the judge's uncertainty, hardest first); the engine writes the same expression.
        conn.execute(text("CREATE INDEX IF NOT EXISTS ix_orchard_records_priority "
                          "ON records (dataset_id, json_extract(metadata, '$.review_priority'))"))
        _sqlite_fulltext(conn)


# Full-text index of the records' field values (not the JSON keys), kept in step with `records` by triggers, so a
# text query is an index lookup instead of a LIKE over every record. Rows share the records' rowid.
_FTS_VALUES = "(SELECT group_concat(value, ' ') FROM json_each({}.fields))"
_FTS_STATEMENTS = [
    "CREATE VIRTUAL TABLE IF NOT EXISTS orchard_records_fts USING fts5(body, tokenize='unicode61')",
    # The DELETE first: a reused rowid never collides with a stale entry (foreign-key cascades do fire triggers,
    # this is belt and braces so that Argilla's own writes can never fail because of the index).
    "CREATE TRIGGER IF NOT EXISTS orchard_records_fts_ai AFTER INSERT ON records BEGIN "
    "DELETE FROM orchard_records_fts WHERE rowid = new.rowid; "
    f"INSERT INTO orchard_records_fts(rowid, body) VALUES (new.rowid, {_FTS_VALUES.format('new')}); END",
    "CREATE TRIGGER IF NOT EXISTS orchard_records_fts_ad AFTER DELETE ON records BEGIN "
    "DELETE FROM orchard_records_fts WHERE rowid = old.rowid; END",
    "CREATE TRIGGER IF NOT EXISTS orchard_records_fts_au AFTER UPDATE OF fields ON records BEGIN "
    "DELETE FROM orchard_records_fts WHERE rowid = old.rowid; "
    f"INSERT INTO orchard_records_fts(rowid, body) VALUES (new.rowid, {_FTS_VALUES.format('new')}); END",
]


def _sqlite_fulltext(conn) -> None:
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    try:
        for stmt in _FTS_STATEMENTS:
            conn.execute(text(stmt))
    except OperationalError:  # an SQLite built without FTS5: text queries fall back to LIKE
        return
    # Records written before the index existed (an older database): index them once.
    conn.execute(text(
        "INSERT INTO orchard_records_fts(rowid, body) SELECT r.rowid, " + _FTS_VALUES.format("r")
        + " FROM records AS r WHERE r.rowid NOT IN (SELECT rowid FROM orchard_records_fts)"))


def _skip_unwatched_events() -> None:
    """Build webhook events only when an enabled webhook listens for them.

    argilla-server builds every record/response event (a dataset load with five relationships, a schema dump)
    before it looks for webhooks; in bulk pushes that is most of the time spent per record. The wrapper asks the
    same question first (one query), so behaviour with webhooks is unchanged.
    """
    import importlib

    from argilla_server.contexts import webhooks
    from argilla_server.webhooks.v1 import records as record_events
    from argilla_server.webhooks.v1 import responses as response_events

    def guard(original):
        async def notify(db, event, obj):
            hooks = await webhooks.list_enabled_webhooks(db)
            if not any(str(event) in (h.events or []) for h in hooks):
                return []
            return await original(db, event, obj)

        return notify

    rec, resp = guard(record_events.notify_record_event), guard(response_events.notify_response_event)
    for name in ("argilla_server.bulk.records_bulk", "argilla_server.contexts.records",
                 "argilla_server.contexts.datasets", "argilla_server.contexts.distribution"):
        module = importlib.import_module(name)
        if hasattr(module, "notify_record_event_v1"):
            module.notify_record_event_v1 = rec
        if hasattr(module, "notify_response_event_v1"):
            module.notify_response_event_v1 = resp


def _repair_record_status() -> int:
    """Set each record's status from its submitted responses, where they disagree; the number repaired.

    argilla-server commits a response, then updates the record's status in a second transaction. A crash between
    the two (kill -9, OOM, power) keeps the response but leaves its record "pending" for good: progress never
    completes and the record stays in other reviewers' queues. Run at start, before requests are served.
    """
    from sqlalchemy import case, cast, func, select, update

    from argilla_server.database import sync_engine
    from argilla_server.enums import RecordStatus, ResponseStatus
    from argilla_server.models import Dataset, Record, Response

    submitted = (select(func.count()).select_from(Response)
                 .where(Response.record_id == Record.id, Response.status == ResponseStatus.submitted)
                 .scalar_subquery())
    needed = (select(Dataset.distribution["min_submitted"].as_integer())
              .where(Dataset.id == Record.dataset_id, Dataset.distribution["strategy"].as_string() == "overlap")
              .scalar_subquery())
    # Cast to the column's type: PostgreSQL compares and assigns an enum column only with its own enum type.
    wanted = cast(case((submitted >= needed, RecordStatus.completed.value), else_=RecordStatus.pending.value),
                  Record.status.type)
    with sync_engine.begin() as conn:
        result = conn.execute(update(Record).where(needed.is_not(None), Record.status != wanted)
                              .values(status=wanted).execution_options(synchronize_session=False))
    if result.rowcount:
        print(f"orchard: repaired the status of {result.rowcount} record(s) that an interrupted write had left "
              "stale", flush=True)
    return result.rowcount


def init(api_key: str, password: str) -> None:
    from argilla_server.cli.database.migrate import migrate_db
    from argilla_server.cli.database.users.create_default import _create_default

    migrate_db(revision="head")
    asyncio.run(_create_default(api_key=api_key, password=password, quiet=True))
    _sqlite_tuning()


def serve(host: str, port: int) -> None:
    import uvicorn

    _skip_unwatched_events()
    _sqlite_tuning()  # idempotent; also brings databases made by older orchard versions up to date
    _repair_record_status()
    from argilla_server import app  # the same object `python -m argilla_server start` serves

    uvicorn.run(app, host=host, port=port, access_log=False, log_level="info")


def worker(num_workers: int) -> None:
    from argilla_server.cli.worker import worker as run_worker

    _skip_unwatched_events()

    run_worker(queues=["default", "high"], num_workers=num_workers)


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("init")
    i.add_argument("--api-key", default=os.environ.get("ORCHARD_OWNER_API_KEY"))
    i.add_argument("--password", default=os.environ.get("ORCHARD_OWNER_PASSWORD"))
    s = sub.add_parser("serve")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=6900)
    w = sub.add_parser("worker")
    w.add_argument("--num-workers", type=int, default=1)
    a = p.parse_args()
    if a.cmd == "init":
        if not a.api_key or not a.password:
            p.error("init needs an API key and a password")
        init(a.api_key, a.password)
    elif a.cmd == "serve":
        serve(a.host, a.port)
    else:
        worker(a.num_workers)


if __name__ == "__main__":
    main()
