"""`orchard review …`: set up and run a local Argilla server, push datasets for review, follow progress, pull.

The CLI parses and prints; the work happens in orchard.review's Python API.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from orchard.errors import OrchardError

app = typer.Typer(help="Human review on Argilla: setup, serve, health, stop, push, status, pull.", no_args_is_help=True)

DirOpt = typer.Option(None, "--dir", help="Folder of orchard's local server (default ~/.local/share/orchard/argilla).")
UrlOpt = typer.Option(None, "--url", help="An existing Argilla deployment (its key in --api-key-env).")
KeyEnvOpt = typer.Option("ARGILLA_API_KEY", "--api-key-env", help="Env var holding the API key for --url.")
DatasetOpt = typer.Option("orchard-review", "--dataset", help="Argilla dataset name.")
WorkspaceOpt = typer.Option("orchard", "--workspace", help="Argilla workspace.")


def _fail(e: Exception):
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(2)


def _cfg(url, api_key_env, server_dir, dataset, workspace, **kw):
    from .config import ArgillaReview

    return ArgillaReview(url=url, api_key_env=api_key_env, server_dir=str(server_dir) if server_dir else None,
                         dataset=dataset, workspace=workspace, **kw)


@app.command()
def setup(env: Optional[Path] = typer.Option(None, help="Where to create the server venv (default "
                                             "~/.cache/orchard/argilla-server-env or $ORCHARD_ARGILLA_ENV)."),
          postgres: bool = typer.Option(False, help="Also install the PostgreSQL driver.")):
    """Create the Argilla server's own venv (argilla-server 2.8.0), once.

    Example: orchard review setup
    """
    from .server_env import ensure_server_env

    try:
        typer.echo(f"Argilla server environment ready: {ensure_server_env(env, postgres=postgres)}")
    except OrchardError as e:
        _fail(e)


@app.command()
def serve(server_dir: Optional[Path] = DirOpt,
          port: int = typer.Option(6900, help="Port of the API and web UI."),
          host: str = typer.Option("127.0.0.1", help="Interface to bind (127.0.0.1 keeps it local)."),
          database_url: Optional[str] = typer.Option(None, help="PostgreSQL URL (postgresql://USER:PW@HOST:PORT/DB), "
                                                     "remembered for later starts; default: SQLite in the folder."),
          redis_port: Optional[int] = typer.Option(None, help="Port for orchard's Redis (default: a free one)."),
          no_worker: bool = typer.Option(False, help="Do not start the background worker.")):
    """Start a real Argilla 2.8 server (web UI, API, Redis, worker) keeping its data in --dir; returns when ready.

    Example: orchard review serve --dir ./review-data --port 6900
    Example: orchard review serve --dir ./team --database-url postgresql://argilla:PW@db.internal:5432/argilla
    """
    from .client import server_dir_or_default
    from .local_server import start_server

    try:
        info = start_server(server_dir_or_default(server_dir), host=host, port=port, redis_port=redis_port,
                            database_url=database_url, worker=not no_worker)
    except OrchardError as e:
        _fail(e)
    typer.echo(f"Argilla is up at {info.url} (web UI and API); sign in as '{info.username}'.")
    typer.echo(f"Password and API key: {info.credentials_path} (mode 600). Logs: {info.data_dir / 'logs'}")
    typer.echo(f"Stop it with: orchard review stop --dir {info.data_dir}")


@app.command()
def stop(server_dir: Optional[Path] = DirOpt):
    """Stop the local server (worker, API, Redis); the data stays in the folder.

    Example: orchard review stop --dir ./review-data
    """
    from .client import server_dir_or_default
    from .local_server import stop_server

    folder = server_dir_or_default(server_dir)
    typer.echo("stopped" if stop_server(folder) else f"nothing was running from {folder}")


@app.command()
def health(server_dir: Optional[Path] = DirOpt,
           logs: int = typer.Option(0, help="Also print the last N lines of the server log.")):
    """Is the local server up? Processes, API, URL (and optionally the log's tail). Exit code 1 when down.

    Example: orchard review health --dir ./review-data --logs 20
    """
    from .client import server_dir_or_default
    from .local_server import server_health

    folder = server_dir_or_default(server_dir)
    h = server_health(folder)
    typer.echo(f"{'up' if h['running'] else 'down'}: {h['url'] or 'not started'} "
               + " ".join(f"{k}={'ok' if v else 'DEAD'}" for k, v in h["processes"].items()))
    if logs:
        log = folder / "logs" / "server.log"
        if log.exists():
            typer.echo("\n".join(log.read_text(errors="replace").splitlines()[-logs:]))
    raise typer.Exit(0 if h["running"] else 1)


@app.command()
def push(data: Path = typer.Argument(..., help="Dataset folder (train.parquet): SFT rows or preference pairs."),
         dataset: str = DatasetOpt, workspace: str = WorkspaceOpt, url: Optional[str] = UrlOpt,
         api_key_env: str = KeyEnvOpt, server_dir: Optional[Path] = DirOpt,
         min_submitted: int = typer.Option(1, help="Reviewers needed per record (overlap)."),
         guidelines: Optional[Path] = typer.Option(None, help="Markdown file with reviewer guidelines."),
         reviewer: list[str] = typer.Option([], help="Reviewer username to create (repeatable)."),
         vectors: bool = typer.Option(False, help="Embed instructions for similarity search.")):
    """Push a dataset for review; only rows the server lacks are sent (ids are content hashes).

    Example: orchard review push runs/demo/synth --dataset demo --reviewer alice --reviewer bob --min-submitted 2
    """
    from .workflow import push as do_push, rows_of

    try:
        cfg = _cfg(url, api_key_env, server_dir, dataset, workspace, min_submitted=min_submitted,
                   guidelines=guidelines.read_text() if guidelines else None, reviewers=reviewer, with_vectors=vectors)
        from .client import server_dir_or_default

        # New reviewers' passwords (mode 600): beside the local server's credentials, or in the current folder.
        secrets = Path("argilla-reviewers.json") if url else server_dir_or_default(server_dir) / "reviewers.json"
        out = do_push(rows_of(data), cfg, secrets_path=secrets)
    except OrchardError as e:
        _fail(e)
    typer.echo(json.dumps(out, indent=2))
    if reviewer:
        typer.echo(f"reviewer passwords: {secrets} (mode 600)")


@app.command()
def status(dataset: str = DatasetOpt, workspace: str = WorkspaceOpt, url: Optional[str] = UrlOpt,
           api_key_env: str = KeyEnvOpt, server_dir: Optional[Path] = DirOpt):
    """Progress of a dataset, overall and per reviewer.

    Example: orchard review status --dataset demo
    """
    from .workflow import status as do_status

    try:
        prog = do_status(_cfg(url, api_key_env, server_dir, dataset, workspace))
    except OrchardError as e:
        _fail(e)
    typer.echo(f"{dataset}: {prog.get('completed', 0)}/{prog.get('total', 0)} completed, "
               f"{prog.get('pending', 0)} pending")
    for user, d in (prog.get("users") or {}).items():
        c, p = d.get("completed", {}), d.get("pending", {})
        typer.echo(f"  {user}: submitted {c.get('submitted', 0) + p.get('submitted', 0)}, "
                   f"discarded {c.get('discarded', 0) + p.get('discarded', 0)}, drafts {c.get('draft', 0) + p.get('draft', 0)}")


@app.command()
def pull(data: Path = typer.Argument(..., help="The dataset folder that was pushed (rows are joined on id)."),
         out: Path = typer.Option(..., "--out", help="Output dataset folder (accepted rows in train.parquet)."),
         dataset: str = DatasetOpt, workspace: str = WorkspaceOpt, url: Optional[str] = UrlOpt,
         api_key_env: str = KeyEnvOpt, server_dir: Optional[Path] = DirOpt,
         min_submitted: Optional[int] = typer.Option(None, min=1, help="Reviews a record needs before it counts "
                                                     "(default: the overlap the dataset was pushed with)."),
         apply_calibration: bool = typer.Option(False, help="Decide unreviewed rows with the calibrated judge.")):
    """Pull submitted reviews: accepted/rejected rows, preference pairs from edits, agreement report with plots.

    Example: orchard review pull runs/demo/synth --out runs/demo/reviewed --dataset demo
    """
    from orchard.dataio import atomic_dir

    from .workflow import pull as do_pull, rows_of

    try:
        cfg = _cfg(url, api_key_env, server_dir, dataset, workspace, min_submitted=min_submitted,
                   apply_calibration=apply_calibration)
        rows = rows_of(data)
        with atomic_dir(out) as tmp:
            summary = do_pull(rows, tmp, cfg)
    except OrchardError as e:
        _fail(e)
    typer.echo(json.dumps({k: summary[k] for k in ("counts", "min_submitted", "judge_agreement", "calibration")},
                          indent=2))
    typer.echo(f"report: {out / 'report.md'}")
