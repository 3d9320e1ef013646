"""Push → wait → pull on Argilla: what the review stage and the CLI commands run."""

from __future__ import annotations

import time
from pathlib import Path

from orchard.dataio import read_rows
from orchard.errors import InputError

from .client import connect, connect_config
from .config import ArgillaReview
from .pull import collect, decide, write_outputs
from .push import push_rows


def _dataset(client, name: str, workspace: str):
    ws = client.workspaces(name=workspace)
    ds = client.datasets(name=name, workspace=ws) if ws is not None else None
    if ds is None:
        raise InputError(f"no dataset '{name}' in workspace '{workspace}' on {client.api_url}", field="dataset")
    return ds


def push(rows: list[dict], cfg: ArgillaReview, client=None, secrets_path: Path | None = None) -> dict:
    client = client or connect_config(cfg)
    return push_rows(client, rows, cfg.dataset, cfg.workspace, cfg.guidelines, cfg.min_submitted or 1,
                     cfg.with_vectors, reviewers=cfg.reviewers, secrets_path=secrets_path)


def status(cfg: ArgillaReview, client=None) -> dict:
    client = client or connect_config(cfg)
    ds = _dataset(client, cfg.dataset, cfg.workspace)
    return ds.progress(with_users_distribution=True)


def pull(rows: list[dict], out_dir: Path, cfg: ArgillaReview, client=None) -> dict:
    client = client or connect_config(cfg)
    ds = _dataset(client, cfg.dataset, cfg.workspace)
    overlap = recorded_overlap(ds)
    need = overlap if cfg.min_submitted is None else cfg.min_submitted
    result = decide(rows, collect(client, ds), need, cfg.apply_calibration)
    result["min_submitted"] = {"used": need, "pushed_with": overlap,
                               "source": "dataset" if cfg.min_submitted is None else "option"}
    return write_outputs(result, out_dir)


def recorded_overlap(ds) -> int:
    """The reviews per record the dataset was pushed with (its task distribution on the server): what "completed"
    means there, so what pull waits for unless told otherwise."""
    return int(ds.settings.distribution.min_submitted)


def wait(cfg: ArgillaReview, client=None, total: int | None = None) -> dict:
    """Poll progress until every record is completed or `wait_timeout_s` passes; returns the last progress."""
    client = client or connect_config(cfg)
    ds = _dataset(client, cfg.dataset, cfg.workspace)
    deadline = None if cfg.wait_timeout_s is None else time.monotonic() + cfg.wait_timeout_s
    while True:
        prog = ds.progress()
        if prog.get("total") and prog.get("completed", 0) >= prog["total"]:
            return prog
        if deadline is not None and time.monotonic() >= deadline:
            return prog
        time.sleep(cfg.poll_interval_s)


def argilla_review(rows: list[dict], out_dir: Path, work_dir: Path, cfg: ArgillaReview) -> dict:
    """The review stage's `mode: argilla`: push (new rows only), wait if asked, pull. "pending" while unfinished;
    running the stage again (`orchard run --from review`) pushes nothing new and pulls what was done since."""
    client = connect_config(cfg)
    pushed = push(rows, cfg, client, secrets_path=Path(work_dir) / "reviewers.json")
    progress = wait(cfg, client) if cfg.wait else status(cfg, client)
    summary = pull(rows, out_dir, cfg, client)
    pending = summary["counts"]["pending"]
    message = "" if pending == 0 else (f"{pending} records await review in '{cfg.dataset}'; resume later with "
                                       "`orchard run <recipe> --from review`")
    return {"mode": "argilla", "status": "pending" if pending else "done", "message": message, "push": pushed,
            "progress": {k: v for k, v in progress.items() if k != "users"}, **summary}


def rows_of(folder: str | Path) -> list[dict]:
    try:
        return read_rows(folder, "train")
    except FileNotFoundError as e:
        raise InputError(str(e), path=Path(folder) / "train.parquet") from e


__all__ = ["push", "pull", "status", "wait", "argilla_review", "rows_of", "connect"]
