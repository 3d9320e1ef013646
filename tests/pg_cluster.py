"""A throwaway PostgreSQL cluster for tests: Debian's server binaries (/usr/lib/postgresql/*/bin), a fresh temp
folder, a free port on 127.0.0.1, password authentication. PostgreSQL refuses to run as root, so under root the
cluster runs as an unprivileged system user made for it."""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

PG_USER = "orchard-pg"  # the system account the cluster runs as when the tests run as root
DB_USER, DB_NAME = "orchard", "argilla"


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def ensure_system_user(name: str) -> pwd.struct_passwd:
    """An unprivileged local account (created when missing: needs root)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                       check=True, capture_output=True)
        return pwd.getpwnam(name)


def wait_gone(pids: list[int], timeout: float = 20.0) -> None:
    """Wait until none of `pids` runs (a zombie counts as gone: it holds no files, ports or shared memory)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = []
        for pid in pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                running.append(pid)
        if not running:
            return
        time.sleep(0.05)
    raise TimeoutError(f"processes {running} still run {timeout:.0f} s after SIGKILL")


def _children(pid: int) -> list[int]:
    out = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.split("/")[2]))
    return out


class PgCluster:
    def __init__(self, port: int):
        self.bin = pg_bin()
        if self.bin is None:
            raise RuntimeError("PostgreSQL server binaries not found; apt-get install postgresql")
        self.port = port
        self.password = secrets.token_urlsafe(16)
        # Not under pytest's tmp folder: that one is 700 root, which the cluster's user could not enter.
        self.root = Path(tempfile.mkdtemp(prefix="orchard-pg-"))
        self.data = self.root / "data"
        self.user = None
        if os.geteuid() == 0:
            self.user = ensure_system_user(PG_USER)
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)

    @property
    def url(self) -> str:
        return f"postgresql://{DB_USER}:{self.password}@127.0.0.1:{self.port}/{DB_NAME}"

    def _run(self, *cmd, check=True, env=None) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", PG_USER, "--"] if self.user else []
        return subprocess.run(prefix + [str(self.bin / cmd[0]), *cmd[1:]], check=check, capture_output=True,
                              text=True, cwd=self.root, env={**os.environ, **(env or {})}, timeout=120)

    def start(self) -> "PgCluster":
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if self.user:
            os.chown(pwfile, self.user.pw_uid, self.user.pw_gid)
        os.chmod(pwfile, 0o600)
        self._run("initdb", "-D", str(self.data), "-U", DB_USER, f"--pwfile={pwfile}", "--auth=scram-sha-256",
                  "-E", "UTF8", "--no-sync")
        pwfile.unlink()
        self._pg_ctl_start()
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", DB_USER, DB_NAME,
                  env={"PGPASSWORD": self.password})
        return self

    def _pg_ctl_start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "60", "-o",
                  f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1", "start")

    def crash(self) -> None:
        """Stop the way a crash does: every server process quits at once, nothing is flushed or checkpointed, and
        the next start runs crash recovery from the write-ahead log ("immediate" mode, documented as such).
        A SIGKILL to the postmaster would leave it a zombie where PID 1 does not reap (this container), and its
        lock file would then refuse the restart."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children = _children(postmaster)
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        wait_gone([postmaster, *children])

    def sql(self, statement: str) -> str:
        """Run one SQL statement with psql as the database's user; its output."""
        return self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", DB_USER, "-d", DB_NAME, "-At",
                         "-v", "ON_ERROR_STOP=1", "-c", statement, env={"PGPASSWORD": self.password}).stdout

    def restart(self) -> None:
        self._pg_ctl_start()

    def stop(self) -> None:
        if self.data.exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)
