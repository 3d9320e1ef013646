"""orchard's own Argilla server: Redis, the API/web UI process and the background worker, kept in one folder.

Layout of the folder the user names (mode 700; everything the processes write in it is created under umask 077,
so the database, which holds every user's API key, its WAL and SHM files, and the logs are 600):
    credentials.json  owner username/password/API key, the UI's session secret, Redis's password and the
                      database URL when one was given (mode 600)
    state.json        what is running: pids, ports, URL (removed by a clean stop)
    argilla/          ARGILLA_HOME_PATH, with the SQLite database argilla.db (unless a database URL is given)
    redis/            Redis working folder (nothing persisted: the queue only holds transient jobs)
    logs/             server.log, worker.log, redis.log, init.log

Redis asks for a password (requirepass, given to redis-server on its stdin, never on a command line); the server
and the worker get it inside their Redis URL, in their environment.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import stat
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from orchard.dataio import atomic_write_json, atomic_write_text
from orchard.errors import InputError
from orchard.process import (ServerError, free_port, log_tail, open_log, port_open, spawn,  # noqa: F401
                             stop_group, wait_ready)

from .server_env import ensure_server_env, env_python

OWNER = "argilla"  # the username argilla-server's create_default gives the owner


@dataclass
class ServerInfo:
    url: str
    username: str
    password: str
    api_key: str
    data_dir: Path
    credentials_path: Path
    pids: dict

    def __repr__(self) -> str:  # never print secrets
        return f"ServerInfo(url={self.url!r}, data_dir={str(self.data_dir)!r}, credentials={str(self.credentials_path)!r})"


def credentials(data_dir: str | Path) -> dict:
    """Owner credentials of the server in `data_dir`, created (random) on first use; file mode 600.

    A file written by an older orchard gains the secrets it lacks (Redis's password) on first read.
    """
    path = Path(data_dir) / "credentials.json"
    creds = json.loads(path.read_text()) if path.exists() else {}
    fresh = {
        "username": OWNER,
        "password": secrets.token_urlsafe(18),
        "api_key": "orchard." + secrets.token_urlsafe(32),
        "auth_secret_key": secrets.token_hex(32),  # fixed so that UI sessions survive a restart
        "redis_password": secrets.token_urlsafe(32),
    }
    if not all(k in creds for k in fresh):
        creds = {**fresh, **creds}
        atomic_write_json(path, creds, mode=0o600)
    return creds


def _remember_database(data_dir: Path, database_url: str | None) -> str | None:
    """The database URL to use: the one given (recorded in the credentials file: it may hold a password), else
    the one recorded at an earlier start, so that a restart never silently swaps PostgreSQL for a new SQLite."""
    creds = credentials(data_dir)
    if database_url is None:
        return creds.get("database_url")
    database_url = normalize_database_url(database_url)
    if creds.get("database_url") != database_url:
        atomic_write_json(data_dir / "credentials.json", {**creds, "database_url": database_url}, mode=0o600)
    return database_url


def normalize_database_url(url: str) -> str:
    """postgresql:// (or postgres://) as the asyncpg driver's URL, which argilla-server needs."""
    for prefix in ("postgresql+asyncpg://", "postgresql+psycopg2://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix):]
    if url.startswith("sqlite"):
        return url
    raise InputError(f"unsupported database URL scheme {url.split('://', 1)[0]!r}: use postgresql://…",
                     field="database_url")


def _resp(*parts: str) -> bytes:
    """One Redis command in the protocol's array form (safe for any bytes in a password)."""
    out = [f"*{len(parts)}\r\n".encode()]
    for p in parts:
        b = p.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def redis_call(port: int, *command: str, password: str | None = None, timeout: float = 0.5) -> bytes:
    """Send one command to the local Redis (after AUTH when a password is given); the raw reply.
    Raises OSError when nothing answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        if password is not None:
            s.sendall(_resp("AUTH", password))
            reply = s.recv(256)
            if not reply.startswith(b"+OK"):
                return reply
        s.sendall(_resp(*command))
        return s.recv(256)


def _redis_ping(port: int, password: str | None) -> bool:
    try:
        return redis_call(port, "PING", password=password).startswith(b"+PONG")
    except OSError:
        return False


# What orchard keeps in the folder; only these are tightened (the folder may be one the user also keeps other
# things in, and those are not orchard's to change).
_OWN_FILES = ("credentials.json", "state.json", "reviewers.json")
_OWN_FOLDERS = ("argilla", "redis", "logs")


def _make_private(data_dir: Path) -> None:
    """The folder 700 and what orchard keeps in it owner-only: also tightens folders made by older orchard
    versions, whose database and WAL were created 644 in 755 folders."""
    os.chmod(data_dir, 0o700)
    paths = [data_dir / f for f in _OWN_FILES]
    for name in _OWN_FOLDERS:
        if (data_dir / name).is_dir() and not (data_dir / name).is_symlink():
            paths += [data_dir / name, *(data_dir / name).rglob("*")]
    for path in paths:
        if path.is_symlink() or not path.exists():
            continue
        os.chmod(path, 0o700 if path.is_dir() else stat.S_IMODE(path.stat().st_mode) & 0o700)


def _alive(pid: int, needle: str) -> bool:
    """True when `pid` runs and is still the process we started (its command line holds `needle`)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return needle in cmd


_NEEDLES = {"redis": "redis-server", "server": "launch.py serve", "worker": "launch.py worker"}


def read_state(data_dir: str | Path) -> dict | None:
    path = Path(data_dir) / "state.json"
    return json.loads(path.read_text()) if path.exists() else None


def server_health(data_dir: str | Path) -> dict:
    """What runs and whether the API answers: {"running": bool, "url", "processes": {name: alive}}."""
    state = read_state(data_dir)
    if not state:
        return {"running": False, "url": None, "processes": {}}
    procs = {name: _alive(pid, _NEEDLES[name]) for name, pid in state["pids"].items()}
    api = _api_ok(state["url"], credentials(data_dir)["api_key"])
    return {"running": api and all(procs.values()), "url": state["url"], "processes": procs, "api": api}


def _api_ok(url: str, api_key: str) -> bool:
    req = urllib.request.Request(f"{url}/api/v1/me", headers={"X-Argilla-Api-Key": api_key})
    try:
        with urllib.request.urlopen(req, timeout=3) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _server_files() -> Path:
    return Path(str(resources.files("orchard.review") / "server"))


# What the server's processes create (the SQLite database, its WAL and SHM, logs) is readable by the owner only.
UMASK = 0o077


def start_server(
    data_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 6900,
    redis_port: int | None = None,
    database_url: str | None = None,
    env_path: str | Path | None = None,
    worker: bool = True,
    timeout: float = 180.0,
) -> ServerInfo:
    """Start (or find running) the server kept in `data_dir` and return how to reach it.

    Creates the server venv if needed, starts Redis (from PATH, with a password) on `redis_port` (a free one by
    default), migrates the database and creates the owner on first start, then the API/UI process and the worker.
    `database_url` (postgresql://…) puts the data in PostgreSQL instead of SQLite in the folder; it is remembered
    for later starts. Waits until the API answers; on failure stops what it started and raises ServerError with
    the log's tail.
    """
    data_dir = Path(data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    _make_private(data_dir)
    creds = credentials(data_dir)
    database_url = _remember_database(data_dir, database_url)
    health = server_health(data_dir)
    if health["running"]:
        return _info(data_dir, read_state(data_dir))
    if read_state(data_dir):
        stop_server(data_dir)  # leftovers of a crashed run
    if port_open("127.0.0.1" if host in ("0.0.0.0", "") else host, port):
        raise ServerError(f"port {port} is already in use; choose another with --port")

    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        raise ServerError("redis-server was not found on PATH; install it with `apt-get install redis-server`")

    postgres = bool(database_url and database_url.startswith("postgresql"))
    venv_dir = ensure_server_env(env_path, postgres=postgres)
    python = str(env_python(venv_dir))
    launcher = str(_server_files() / "launch.py")
    logs = data_dir / "logs"
    home = data_dir / "argilla"
    home.mkdir(exist_ok=True, mode=0o700)
    (data_dir / "redis").mkdir(exist_ok=True, mode=0o700)
    logs.mkdir(exist_ok=True, mode=0o700)
    redis_port = redis_port or free_port()
    redis_password = creds["redis_password"]

    env = {k: v for k, v in os.environ.items() if not k.startswith("ARGILLA_")}
    env.update(
        ARGILLA_HOME_PATH=str(home),
        ARGILLA_DATABASE_URL=database_url or f"sqlite+aiosqlite:///{home / 'argilla.db'}?check_same_thread=False",
        ARGILLA_REDIS_URL=f"redis://:{redis_password}@127.0.0.1:{redis_port}/0",
        ARGILLA_SEARCH_ENGINE="orchard_sql",
        ARGILLA_AUTH_SECRET_KEY=creds["auth_secret_key"],
        ARGILLA_DATABASE_SQLITE_TIMEOUT="30",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    env.pop("PYTHONPATH", None)

    pids: dict = {}
    state = {"url": f"http://{host}:{port}", "host": host, "port": port, "redis_port": redis_port, "pids": pids,
             "env": str(venv_dir), "database": "postgresql" if postgres else "sqlite", "started_at": time.time()}
    try:
        # The password reaches Redis on its stdin ("-" reads configuration from there), so that no process
        # listing shows it.
        redis = spawn([redis_bin, "-", "--bind", "127.0.0.1", "--port", str(redis_port), "--dir",
                        str(data_dir / "redis"), "--save", "", "--appendonly", "no", "--daemonize", "no"],
                       logs / "redis.log", env, stdin_text=f"requirepass {redis_password}\n")
        pids["redis"] = redis.pid
        atomic_write_json(data_dir / "state.json", state)
        wait_ready(lambda: _redis_ping(redis_port, redis_password), 20, "Redis", logs / "redis.log", redis)

        marker = home / "orchard-initialized"
        # A database given by URL is migrated at every start (cheap, idempotent): it may have been reset or
        # upgraded behind the folder's back.
        if not marker.exists() or database_url:
            init_env = dict(env, ORCHARD_OWNER_API_KEY=creds["api_key"], ORCHARD_OWNER_PASSWORD=creds["password"])
            with open_log(logs / "init.log") as f:
                rc = subprocess.run([python, launcher, "init"], stdout=f, stderr=subprocess.STDOUT, env=init_env,
                                    timeout=300, umask=UMASK).returncode
            if rc != 0:
                raise ServerError(f"database initialisation failed:\n{log_tail(logs / 'init.log')}")
            atomic_write_text(marker, "ok\n")

        server = spawn([python, launcher, "serve", "--host", host, "--port", str(port)], logs / "server.log", env)
        pids["server"] = server.pid
        atomic_write_json(data_dir / "state.json", state)
        if worker:
            pids["worker"] = spawn([python, launcher, "worker"], logs / "worker.log", env).pid
            atomic_write_json(data_dir / "state.json", state)
        wait_ready(lambda: _api_ok(state["url"], creds["api_key"]), timeout, "Argilla server", logs / "server.log", server)
    except BaseException:
        stop_server(data_dir)
        raise
    return _info(data_dir, state)


def _info(data_dir: Path, state: dict) -> ServerInfo:
    creds = credentials(data_dir)
    return ServerInfo(url=state["url"], username=creds["username"], password=creds["password"],
                      api_key=creds["api_key"], data_dir=data_dir, credentials_path=data_dir / "credentials.json",
                      pids=dict(state["pids"]))


def stop_server(data_dir: str | Path, timeout: float = 20.0) -> bool:
    """Stop what `start_server` started in `data_dir` (worker, server, then Redis). False if nothing ran."""
    data_dir = Path(data_dir).expanduser().resolve()
    state = read_state(data_dir)
    if not state:
        return False
    for name in ("worker", "server", "redis"):
        pid = state["pids"].get(name)
        if pid is None or not _alive(pid, _NEEDLES[name]):
            continue
        # Its own session: the group holds exactly what we spawned.
        stop_group(pid, lambda: _alive(pid, _NEEDLES[name]), timeout=timeout)
    (data_dir / "state.json").unlink(missing_ok=True)
    return True
