"""orchard's own Argilla server: Redis, the API/web UI process and the background worker, kept in one folder.

Layout of the folder the user names:
    credentials.json  owner username/password/API key and the UI's session secret (mode 600)
    state.json        what is running: pids, ports, URL (removed by a clean stop)
    argilla/          ARGILLA_HOME_PATH, with the SQLite database argilla.db (unless a database URL is given)
    redis/            Redis working folder (nothing persisted: the queue only holds transient jobs)
    logs/             server.log, worker.log, redis.log, init.log
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from orchard.dataio import atomic_write_json
from orchard.errors import OrchardError

from .server_env import ensure_server_env, env_python

OWNER = "argilla"  # the username argilla-server's create_default gives the owner


class ServerError(OrchardError):
    """The local Argilla server (or its Redis) could not start or answer."""


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def credentials(data_dir: str | Path) -> dict:
    """Owner credentials of the server in `data_dir`, created (random) on first use; file mode 600."""
    path = Path(data_dir) / "credentials.json"
    if path.exists():
        return json.loads(path.read_text())
    creds = {
        "username": OWNER,
        "password": secrets.token_urlsafe(18),
        "api_key": "orchard." + secrets.token_urlsafe(32),
        "auth_secret_key": secrets.token_hex(32),  # fixed so that UI sessions survive a restart
    }
    atomic_write_json(path, creds, mode=0o600)
    return creds


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _alive(pid: int, needle: str) -> bool:
    """True when `pid` runs and is still the process we started (its command line holds `needle`)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return needle in cmd


_NEEDLES = {"redis": "redis-server", "server": "launch.py serve", "worker": "launch.py worker"}


def _log_tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


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


def _spawn(cmd: list, log: Path, env: dict) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
        # A session of its own: the processes outlive the CLI command that started them, and stop as a group.
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                stdin=subprocess.DEVNULL)


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

    Creates the server venv if needed, starts Redis (from PATH) on `redis_port` (a free one by default), migrates
    the database and creates the owner on first start, then the API/UI process and the worker. Waits until the API
    answers; on failure stops what it started and raises ServerError with the log's tail.
    """
    data_dir = Path(data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    creds = credentials(data_dir)
    health = server_health(data_dir)
    if health["running"]:
        return _info(data_dir, read_state(data_dir))
    if read_state(data_dir):
        stop_server(data_dir)  # leftovers of a crashed run
    if _port_open("127.0.0.1" if host in ("0.0.0.0", "") else host, port):
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
    home.mkdir(exist_ok=True)
    (data_dir / "redis").mkdir(exist_ok=True)
    redis_port = redis_port or free_port()

    env = {k: v for k, v in os.environ.items() if not k.startswith("ARGILLA_")}
    env.update(
        ARGILLA_HOME_PATH=str(home),
        ARGILLA_DATABASE_URL=database_url or f"sqlite+aiosqlite:///{home / 'argilla.db'}?check_same_thread=False",
        ARGILLA_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
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
        redis = _spawn([redis_bin, "--bind", "127.0.0.1", "--port", str(redis_port), "--dir", str(data_dir / "redis"),
                        "--save", "", "--appendonly", "no", "--daemonize", "no"], logs / "redis.log", env)
        pids["redis"] = redis.pid
        atomic_write_json(data_dir / "state.json", state)
        _wait(lambda: _redis_ping(redis_port), 20, "Redis", logs / "redis.log", redis)

        marker = home / "orchard-initialized"
        if not marker.exists() or database_url:
            init_env = dict(env, ORCHARD_OWNER_API_KEY=creds["api_key"], ORCHARD_OWNER_PASSWORD=creds["password"])
            with open(logs / "init.log", "ab") as f:
                rc = subprocess.run([python, launcher, "init"], stdout=f, stderr=subprocess.STDOUT, env=init_env,
                                    timeout=300).returncode
            if rc != 0:
                raise ServerError(f"database initialisation failed:\n{_log_tail(logs / 'init.log')}")
            marker.write_text("ok\n")

        server = _spawn([python, launcher, "serve", "--host", host, "--port", str(port)], logs / "server.log", env)
        pids["server"] = server.pid
        atomic_write_json(data_dir / "state.json", state)
        if worker:
            pids["worker"] = _spawn([python, launcher, "worker"], logs / "worker.log", env).pid
            atomic_write_json(data_dir / "state.json", state)
        _wait(lambda: _api_ok(state["url"], creds["api_key"]), timeout, "Argilla server", logs / "server.log", server)
    except BaseException:
        stop_server(data_dir)
        raise
    return _info(data_dir, state)


def _wait(ready, timeout: float, what: str, log: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if proc.poll() is not None:
            raise ServerError(f"{what} exited with code {proc.returncode}; its log ({log}):\n{_log_tail(log)}")
        time.sleep(0.3)
    raise ServerError(f"{what} did not become ready in {timeout:.0f} s; its log ({log}):\n{_log_tail(log)}")


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
        try:
            os.killpg(pid, signal.SIGTERM)  # its own session: the group holds exactly what we spawned
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid, _NEEDLES[name]):
            _reap(pid)
            time.sleep(0.1)
        if _alive(pid, _NEEDLES[name]):
            os.killpg(pid, signal.SIGKILL)
            time.sleep(0.2)
            _reap(pid)
    (data_dir / "state.json").unlink(missing_ok=True)
    return True


def _reap(pid: int) -> None:
    """Collect a child that exited (when this process started it), so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
