"""The Argilla server's own virtual environment (argilla-server pins typer<0.10 and needs click<8.2, which would
break the main environment's tools), created once and reused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

from orchard.dataio import atomic_write_json
from orchard.errors import OrchardError

ARGILLA_SERVER_VERSION = "2.8.0"
REQUIREMENTS = [f"argilla-server=={ARGILLA_SERVER_VERSION}", "click<8.2"]
# PostgreSQL drivers: the versions argilla-server's [postgresql] extra asks for, but psycopg2 as its binary wheel
# (the extra's psycopg2 builds from source and needs a compiler and libpq headers). The server uses asyncpg;
# migrations run through psycopg2.
POSTGRES_REQUIREMENTS = ["asyncpg~=0.30.0", "psycopg2-binary~=2.9.0"]
MARKER = "orchard-server-env.json"


class ServerEnvError(OrchardError):
    """The server venv could not be created (network, pip)."""


def default_env_path() -> Path:
    env = os.environ.get("ORCHARD_ARGILLA_ENV")
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/orchard/argilla-server-env").expanduser()


def env_python(path: Path) -> Path:
    return Path(path) / "bin" / "python"


def _wanted(postgres: bool) -> dict:
    reqs = list(REQUIREMENTS) + (POSTGRES_REQUIREMENTS if postgres else [])
    return {"requirements": reqs, "python": f"{sys.version_info.major}.{sys.version_info.minor}", "postgres": postgres}


def _plain(reqs: list[str]) -> list[str]:
    """The server's own requirements (no database drivers, no extras), to compare a marker with what is wanted."""
    return [r.replace("[postgresql]", "") for r in reqs if r not in POSTGRES_REQUIREMENTS]


def ensure_server_env(path: str | Path | None = None, postgres: bool = False, quiet: bool = True) -> Path:
    """Create (or reuse) the server venv and return its folder.

    Idempotent: a marker file records what was installed; a venv whose marker matches is reused untouched. A venv
    that already has the postgres extra also serves a request without it.
    """
    path = Path(path).expanduser() if path else default_env_path()
    wanted = _wanted(postgres)
    marker = path / MARKER
    if marker.exists() and env_python(path).exists():
        have = json.loads(marker.read_text())
        if _plain(have.get("requirements", [])) == _plain(wanted["requirements"]) and (have.get("postgres") or not postgres):
            return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if not env_python(path).exists():
        venv.EnvBuilder(with_pip=True, clear=False).create(path)
    cmd = [str(env_python(path)), "-m", "pip", "install", "--disable-pip-version-check"]
    if quiet:
        cmd.append("-q")
    proc = subprocess.run(cmd + wanted["requirements"], capture_output=quiet, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or "")[-2000:] if quiet else ""
        raise ServerEnvError(f"could not install {' '.join(wanted['requirements'])} into {path}:\n{tail}")
    atomic_write_json(marker, wanted)
    return path
