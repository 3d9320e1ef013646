"""The server venv is created once (marker file), and a missing Redis gives a clear, actionable error."""

import json
import subprocess

import pytest

from orchard.review import local_server, server_env
from orchard.review.local_server import ServerError, free_port, start_server


def test_existing_env_with_matching_marker_is_reused(tmp_path, monkeypatch):
    env = tmp_path / "env"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").write_text("")
    (env / server_env.MARKER).write_text(json.dumps(server_env._wanted(postgres=True)))

    def no_install(*a, **k):
        raise AssertionError("pip must not run for a ready env")

    monkeypatch.setattr(subprocess, "run", no_install)
    assert server_env.ensure_server_env(env) == env
    assert server_env.ensure_server_env(env, postgres=True) == env  # has the extra already
    monkeypatch.setenv("ORCHARD_ARGILLA_ENV", str(env))
    assert server_env.default_env_path() == env


def test_env_without_postgres_is_upgraded_on_request(tmp_path, monkeypatch):
    env = tmp_path / "env"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").write_text("")
    (env / server_env.MARKER).write_text(json.dumps(server_env._wanted(postgres=False)))
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **k: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    server_env.ensure_server_env(env, postgres=True)
    # The drivers as wheels (the extra's psycopg2 would need a compiler and libpq headers).
    assert {"asyncpg~=0.30.0", "psycopg2-binary~=2.9.0", "argilla-server==2.8.0"} <= set(calls[0])
    assert json.loads((env / server_env.MARKER).read_text())["postgres"] is True


def test_missing_redis_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(local_server.shutil, "which", lambda name: None)
    with pytest.raises(ServerError, match="apt-get install redis-server"):
        start_server(tmp_path / "srv", port=free_port())
    creds = tmp_path / "srv" / "credentials.json"
    assert oct(creds.stat().st_mode & 0o777) == "0o600"


def test_older_credentials_gain_a_redis_password_and_database_urls_are_remembered(tmp_path):
    from orchard.errors import InputError

    folder = tmp_path / "srv"
    folder.mkdir()
    old = {"username": "argilla", "password": "pw", "api_key": "orchard.k", "auth_secret_key": "s"}
    (folder / "credentials.json").write_text(json.dumps(old))
    creds = local_server.credentials(folder)
    assert {k: creds[k] for k in old} == old and len(creds["redis_password"]) >= 40
    assert oct((folder / "credentials.json").stat().st_mode & 0o777) == "0o600"
    assert local_server.credentials(folder)["redis_password"] == creds["redis_password"]  # stable

    url = local_server._remember_database(folder, "postgresql://u:secret@127.0.0.1:5433/argilla")
    assert url == "postgresql+asyncpg://u:secret@127.0.0.1:5433/argilla"
    assert local_server._remember_database(folder, None) == url  # a restart without the option keeps PostgreSQL
    assert local_server.normalize_database_url("postgres://h/db") == "postgresql+asyncpg://h/db"
    with pytest.raises(InputError, match=r"\[database_url\].*'mysql'"):
        local_server.normalize_database_url("mysql://h/db")


def test_start_tightens_what_orchard_keeps_and_leaves_the_users_own_files(tmp_path):
    folder = tmp_path / "srv"
    (folder / "argilla").mkdir(parents=True)
    (folder / "notes").mkdir()
    for rel in ("argilla/argilla.db", "argilla/argilla.db-wal", "credentials.json", "notes/todo.txt", "plan.md"):
        (folder / rel).write_text("x")
        (folder / rel).chmod(0o644)
    for d in (folder, folder / "argilla", folder / "notes"):
        d.chmod(0o755)
    local_server._make_private(folder)

    def mode(rel):
        return oct((folder / rel).stat().st_mode & 0o777)

    assert [mode(r) for r in (".", "argilla", "argilla/argilla.db", "argilla/argilla.db-wal", "credentials.json")] \
        == ["0o700", "0o700", "0o600", "0o600", "0o600"]
    assert [mode(r) for r in ("notes", "notes/todo.txt", "plan.md")] == ["0o755", "0o644", "0o644"]
