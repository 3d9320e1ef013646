"""Writing one output folder safely, for the runner and for the packages' own CLI commands alike.

The spine's small helper that packages may import (see docs/CONTRACT.md): an exclusive lock per output, removal
of what a killed writer left, the one manifest writer, and ``run_standalone``, which runs a package's stage
function outside a recipe with the same temporary folder, rename and manifest as ``orchard run``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import re
import shutil
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from orchard import __version__
from orchard.dataio import MANIFEST, atomic_dir, atomic_write_json, content_hash, tree_hash

TRACKED_PACKAGES = [
    "torch", "transformers", "peft", "trl", "datasets", "bitsandbytes", "accelerate", "sdv", "sdmetrics",
    "openai", "argilla", "sentence-transformers", "datasketch", "pydantic",
]


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "orchard": __version__}
    for name in TRACKED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def output_status(result: dict) -> str:
    """A manifest's status: ``complete``, or ``incomplete`` when the stage's outcome says items were lost or fewer
    rows than asked were written; the runner then runs it again (from the call cache) instead of skipping it."""
    oc = (result or {}).get("outcome") or {}
    return "complete" if oc.get("status", "complete") == "complete" else "incomplete"


@contextlib.contextmanager
def output_lock(lock_file: Path, what: Path):
    """Hold an exclusive lock on ``lock_file`` while writing ``what``; another process holding it gets an
    OrchardError naming it (pid, command, start time), instead of both paying for the same teacher calls."""
    from orchard.errors import OrchardError

    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as fh:  # not "w": that would wipe the holder's name before we know we hold it
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown process"
            raise OrchardError(f"another orchard process is writing {what} ({holder}); wait for it to finish or "
                               "stop it, then run this again") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}: {' '.join(sys.argv)[:300]}, started "
                 f"{datetime.now().astimezone().isoformat(timespec='seconds')}\n")
        fh.flush()
        yield


def remove_stale_temps(parent: Path, name: str) -> None:
    """Remove the temporary and old folders that a killed writer of ``parent/name`` left (``atomic_dir``'s
    ``.tmp-NAME-XXXXXXXX`` and ``.old-NAME-PID``), and only those: not another output's whose name starts alike.
    Call it holding that output's lock."""
    pat = re.compile(r"\.tmp-" + re.escape(name) + r"-[a-z0-9_]{8}|\.old-" + re.escape(name) + r"-\d+")
    for p in Path(parent).glob(f".*-{name}-*"):
        if pat.fullmatch(p.name) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def hash_inputs(inputs: dict[str, Path] | None) -> dict[str, dict]:
    """``{key: {"path", "hash"}}`` of a stage's input files and folders (their manifests left out)."""
    return {k: {"path": str(v), "hash": tree_hash(v, ignore=[MANIFEST])} for k, v in (inputs or {}).items()}


def write_manifest(tmp: Path, final: Path, *, stage: str, fingerprint: str, inputs: dict, config: Any,
                   started: datetime, seconds: float, result: dict) -> dict:
    """The one manifest writer: ``manifest.json`` into the temporary folder ``tmp`` that becomes ``final``.

    Returns the result with paths into ``tmp`` renamed to ``final`` (what a stage reports must name the final
    place)."""
    result = json.loads(json.dumps(result or {}, default=str).replace(str(tmp), str(final)))
    manifest = {
        "stage": stage,
        "status": output_status(result),
        "fingerprint": fingerprint,
        "inputs": inputs,
        "config": config,
        "versions": package_versions(),
        "started_at": started.isoformat(),
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "seconds": round(seconds, 3),
        "result": result,
    }
    if "gate" in result:
        manifest["gate"] = result["gate"]
    atomic_write_json(tmp / MANIFEST, manifest)
    return result


def run_standalone(fn: Callable[..., dict], out: str | Path, *args, name: str = "stage", config=None,
                   inputs: dict[str, Path] | None = None, work_dir: str | Path | None = None, **kwargs) -> dict:
    """Run one package stage function outside a recipe: same atomic output folder, manifest and work folder.

    Used by the CLI's per-package commands (``orchard synth instructions …``).
    """
    out = Path(out)
    work = Path(work_dir) if work_dir else out.parent / ".work" / out.name
    work.mkdir(parents=True, exist_ok=True)
    # One writer per output: a second command on the same --out would pay for every call again.
    with output_lock(work / ".lock", out):
        remove_stale_temps(out.parent, out.name)
        input_hashes = hash_inputs(inputs)
        cfg = config.model_dump(mode="json") if config is not None else None
        started, t0 = datetime.now(timezone.utc), time.perf_counter()
        with atomic_dir(out) as tmp:
            result = fn(*args, out_dir=tmp, work_dir=work, config=config, **kwargs) or {}
            write_manifest(tmp, out, stage=name, fingerprint=content_hash({"inputs": input_hashes, "config": cfg}, n=32),
                           inputs=input_hashes, config={"stage": cfg}, started=started,
                           seconds=time.perf_counter() - t0, result=result)
    return result
