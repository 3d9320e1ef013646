"""Supervising the servers orchard starts (the teacher's `transformers serve`, Argilla and its Redis): a free
local port, a child in its own process group whose output goes to a private log file, waiting until it answers,
and stopping the whole group (SIGTERM, then SIGKILL).

A spine module that packages may import (docs/CONTRACT.md), so that there is one way to run a server process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from orchard.errors import OrchardError


class ServerError(OrchardError):
    """A server did not start or died; the message holds the tail of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def log_tail(path: Path | None, lines: int = 40) -> str:
    """The last lines of a log file ('' when it cannot be read)."""
    try:
        return "\n".join(Path(path).read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except (OSError, TypeError):
        return ""


def open_log(log: Path):
    """Open ``log`` for appending, created 0600 in a 0700 folder (logs may name local paths)."""
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return os.fdopen(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")


def _die_with_parent() -> None:  # runs in the child between fork and exec
    os.setsid()  # own process group: we can signal the server and anything it spawns at once
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn(cmd: list, log: Path, env: dict | None = None, *, stdin_text: str | None = None,
          die_with_parent: bool = False, umask: int = 0o077) -> subprocess.Popen:
    """Start ``cmd`` in a session of its own, stdout and stderr appended to ``log`` (created 0600: logs may name
    local paths), so that nothing of it reaches the console.

    ``die_with_parent``: the child gets SIGTERM when this process dies, even by SIGKILL (for servers a run owns;
    not for ones that must outlive the command that started them). PR_SET_PDEATHSIG fires when the *thread* that
    forked exits, so it is used only from the main thread."""
    pdeath = die_with_parent and threading.current_thread() is threading.main_thread()
    with open_log(log) as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, umask=umask,
                                stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL,
                                start_new_session=not pdeath, preexec_fn=_die_with_parent if pdeath else None)
    if stdin_text is not None:
        proc.stdin.write(stdin_text.encode())
        proc.stdin.close()
    return proc


def wait_ready(ready: Callable[[], bool], timeout: float, what: str, log: Path | None,
               proc: subprocess.Popen, poll_s: float = 0.25) -> None:
    """Wait until ``ready()`` is true; a child that exits first, or the timeout, is a ServerError with its log."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            if ready():
                return
        if proc.poll() is not None:
            raise ServerError(f"{what} exited with code {proc.returncode} before it was ready; its log ({log}):\n"
                              f"{log_tail(log)}")
        if time.monotonic() > deadline:
            raise ServerError(f"{what} did not become ready in {timeout:.0f} s; its log ({log}):\n{log_tail(log)}")
        time.sleep(poll_s)


def http_ok(url: str, headers: dict | None = None, timeout: float = 2.0) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def reap(pid: int) -> None:
    """Collect a child that exited (when this process started it), so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def stop_group(pid: int, alive: Callable[[], bool], timeout: float = 10.0) -> None:
    """Stop the process group that ``pid`` leads: SIGTERM, up to ``timeout`` s for ``alive()`` to turn false,
    then SIGKILL; stragglers left in the group get SIGKILL too."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    except PermissionError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        reap(pid)
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    for _ in range(50):
        reap(pid)
        if not alive():
            break
        time.sleep(0.1)
