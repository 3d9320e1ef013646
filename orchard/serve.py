"""Serve a local model folder as an OpenAI-compatible teacher with ``transformers serve``.

``TeacherServer`` starts the real server from the current environment as a child process on a free
127.0.0.1 port, waits for ``/health``, and on exit (normal, exception or Ctrl-C) stops it: SIGTERM to its
process group, then SIGKILL. The child also gets a parent-death signal on Linux, so even a killed parent
leaves no server behind. ``base_url`` and ``model`` are exactly what an ``openai`` client needs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from orchard.errors import InputError
from orchard.process import ServerError, free_port, http_ok, log_tail, spawn, stop_group, wait_ready  # noqa: F401


def transformers_cli() -> list[str]:
    """The ``transformers`` command of the running interpreter's environment (never one found on PATH)."""
    script = Path(sys.executable).with_name("transformers")
    if script.exists():
        return [sys.executable, str(script)]
    return [sys.executable, "-c", "import sys; from transformers.cli.transformers import main; sys.exit(main())"]


class TeacherServer:
    """Context manager around ``transformers serve MODEL`` on 127.0.0.1.

    >>> with TeacherServer("runs/models/teacher") as srv:  # doctest: +SKIP
    ...     client = openai.OpenAI(base_url=srv.base_url, api_key="none")
    ...     client.chat.completions.create(model=srv.model, messages=[...])
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        device: str = "cpu",
        log_path: str | Path | None = None,
        continuous_batching: bool = True,
        cb_num_blocks: int = 512,
        cb_block_size: int = 32,
        cb_max_batch_tokens: int = 1024,
        threads: int | None = None,
        startup_timeout: float = 180.0,
        extra_args: list[str] | None = None,
    ):
        path = Path(model_path)
        if not (path / "config.json").is_file():
            raise InputError("not a model folder (no config.json); serve a merged model, not an adapter",
                             path=path)
        # The server pins itself to this exact string; requests must name it verbatim.
        self.model = str(path.resolve())
        self.host, self.port, self.device = host, port, device
        self.continuous_batching = continuous_batching
        self.cb_args = ["--cb-num-blocks", str(cb_num_blocks), "--cb-block-size", str(cb_block_size),
                        "--cb-max-batch-tokens", str(cb_max_batch_tokens)]
        self.threads = threads
        self.startup_timeout = startup_timeout
        self.extra_args = list(extra_args or [])
        self._log_path = Path(log_path) if log_path else None
        self._own_tmp: str | None = None
        self.proc: subprocess.Popen | None = None
        self.start_seconds: float | None = None
        self._final_log: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def _env(self) -> dict:
        env = dict(os.environ)
        env["HF_HUB_OFFLINE"] = "1"
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        if self.threads:
            env["OMP_NUM_THREADS"] = str(self.threads)
        else:
            env.setdefault("OMP_NUM_THREADS", "1")
        # /v1/models fails with CacheNotFound unless the hub cache folder exists.
        cache = env.get("HF_HUB_CACHE")
        if not cache or not Path(cache).is_dir():
            cache = os.path.join(self._tmpdir(), "hf-cache")
            os.makedirs(cache, exist_ok=True)
            env["HF_HUB_CACHE"] = cache
        return env

    def _tmpdir(self) -> str:
        if self._own_tmp is None:
            self._own_tmp = tempfile.mkdtemp(prefix="orchard-serve-")
        return self._own_tmp

    def command(self) -> list[str]:
        cmd = [*transformers_cli(), "serve", self.model, "--host", self.host, "--port", str(self.port),
               "--device", self.device, "--log-level", "warning"]
        if self.continuous_batching:
            # Without explicit sizes the paged KV cache takes a fraction of *all* free memory on CPU
            # (measured: 10.8 GB RSS for a 160k-parameter model); 512 x 32 tokens is plenty for a teacher.
            cmd += ["--continuous-batching", *self.cb_args]
        else:
            cmd.append("--no-continuous-batching")
        return cmd + self.extra_args

    def sampling_warning(self) -> str | None:
        """Why requests' sampling settings would be ignored by this server, or None.

        Under continuous batching `transformers serve` applies a request's temperature / top_p / top_k only when
        the model's generation config sets them, and samples only when it sets do_sample; otherwise every request
        is answered with the model's defaults, whatever it asks for."""
        if not self.continuous_batching:
            return None
        import json

        cfg_path = Path(self.model) / "generation_config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
        missing = [k for k in ("do_sample", "temperature", "top_p", "top_k") if cfg.get(k) in (None, False)]
        if missing:
            return (f"{cfg_path}: {', '.join(missing)} not set; under continuous batching the server then ignores "
                    f"the temperature, top_p and top_k of each request (set them, e.g. do_sample true, "
                    f"temperature 0.7, top_p 0.9, top_k 50)")
        return None

    def start(self) -> "TeacherServer":
        if self.proc is not None:
            return self
        if self.port is None:
            self.port = free_port(self.host)
        if self._log_path is None:
            self._log_path = Path(self._tmpdir()) / "server.log"
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        self.proc = spawn(self.command(), self._log_path, self._env(), die_with_parent=True)
        try:
            wait_ready(lambda: http_ok(f"http://{self.host}:{self.port}/health"), self.startup_timeout,
                       "transformers serve", self._log_path, self.proc)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = round(time.perf_counter() - t0, 2)
        return self

    def log_tail(self, n: int = 40) -> str:
        if not self._log_path or not self._log_path.exists():
            return self._final_log or "(no log)"
        return log_tail(self._log_path, n)

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server's process group, kill it if it lingers, and reap it."""
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_group(proc.pid, lambda: proc.poll() is None, timeout=timeout)
        if self._own_tmp:
            self._final_log = self.log_tail()  # the default log lives in our temp folder: keep its tail
            shutil.rmtree(self._own_tmp, ignore_errors=True)
            self._own_tmp = None
            if self._log_path and not self._log_path.exists():
                self._log_path = None

    def __enter__(self) -> "TeacherServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __del__(self):  # last resort; stop() is the real path
        with contextlib.suppress(Exception):
            if self.proc is not None:
                self.stop(timeout=2.0)
