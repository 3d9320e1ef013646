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
    assert any("argilla-server[postgresql]==2.8.0" in c for c in calls[0])
    assert json.loads((env / server_env.MARKER).read_text())["postgres"] is True


def test_missing_redis_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(local_server.shutil, "which", lambda name: None)
    with pytest.raises(ServerError, match="apt-get install redis-server"):
        start_server(tmp_path / "srv", port=free_port())
    creds = tmp_path / "srv" / "credentials.json"
    assert oct(creds.stat().st_mode & 0o777) == "0o600"
